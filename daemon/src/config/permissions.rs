//! Files holding secrets that other users can read or change: the
//! configuration (it can hold `hmac_secret_base64`), TLS private keys, JWT HMAC
//! secrets and backend credentials. Start, reload and `--check-config` warn
//! about each, naming the file and the `chmod` that fixes it, as sshd does for
//! an unprotected key; they do not refuse it (a host that works keeps working
//! while it is fixed).
//!
//! Root's group and rampartd's own are trusted: the unit's
//! `ConfigurationDirectoryMode=0750` and `cargo xtask install` give root's
//! group read access, and only root is in it.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::{Config, ListenerTransport};
use crate::policy::backend_auth::BackendAuth;

/// What others may do to a file holding a secret; one sentence per file,
/// empty when every file is private (or cannot be read: the rest of the check
/// says so).
pub fn exposed_secrets(file: &Path, config: &Config) -> Vec<String> {
    let owner = nix::unistd::geteuid().as_raw();
    let group = nix::unistd::getegid().as_raw();
    let mut seen = Vec::new();
    let mut warnings = Vec::new();
    for (path, what) in secret_files(file, config) {
        if seen.contains(&path) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if let Some(warning) = exposure(&path, &what, &meta, owner, group) {
            warnings.push(warning);
        }
        seen.push(path);
    }
    warnings
}

/// Every file of `config` holding a secret, with what it is.
fn secret_files(file: &Path, config: &Config) -> Vec<(PathBuf, String)> {
    let mut files = vec![(file.to_path_buf(), "the configuration".to_string())];
    for listener in &config.listeners {
        if let ListenerTransport::Tls { key, sni, .. } = &listener.transport {
            files.push((
                key.clone(),
                format!("TLS private key of listener {}", listener.address),
            ));
            for cert in sni {
                files.push((
                    cert.key.clone(),
                    format!("TLS private key for {}", cert.hostname),
                ));
            }
        }
    }
    for provider in &config.jwt_providers {
        for key in &provider.keys {
            if let Some(path) = &key.hmac_secret_file {
                files.push((
                    path.clone(),
                    format!("HMAC secret of jwt_provider \"{}\"", provider.name),
                ));
            }
        }
    }
    for api in &config.apis {
        let (path, what) = match &api.backend_auth {
            Some(BackendAuth::ClientCert { key, .. }) => (key, "backend client key"),
            Some(BackendAuth::BearerTokenFile(path)) => (path, "backend bearer token"),
            Some(BackendAuth::OAuth2(o)) => (&o.client_secret_file, "OAuth2 client secret"),
            None => continue,
        };
        files.push((path.clone(), format!("{what} of api \"{}\"", api.name)));
    }
    files
}

/// The warning for one file, if anyone but its owner (root or rampartd's user)
/// and a trusted group can read or change it.
fn exposure(
    path: &Path,
    what: &str,
    meta: &std::fs::Metadata,
    owner: u32,
    group: u32,
) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    let trusted_group = meta.gid() == 0 || meta.gid() == group;
    let mut who = Vec::new();
    let mut remove = mode & 0o007;
    if let Some(can) = access(mode & 0o007) {
        who.push(format!("every user can {can} it"));
    }
    // A trusted group may read; no group may write.
    let group_bits = if trusted_group { 0o020 } else { 0o060 };
    if let Some(can) = access((mode & group_bits) >> 3) {
        who.push(format!("group {} can {can} it", meta.gid()));
        remove |= mode & group_bits;
    }
    let foreign_owner = meta.uid() != 0 && meta.uid() != owner;
    if foreign_owner {
        who.push(format!("its owner, uid {}, can change it", meta.uid()));
    }
    if who.is_empty() {
        return None;
    }
    let path = path.display();
    let mut fix = Vec::new();
    if remove != 0 {
        fix.push(format!("`chmod {:04o} {path}`", mode & !remove));
    }
    if foreign_owner {
        fix.push(format!("`chown root {path}`"));
    }
    Some(format!(
        "{path} ({what}) is not private (mode {mode:04o}): {}; run {}",
        who.join(", "),
        fix.join(" and ")
    ))
}

/// What the read and write bits of one class (`rwx` as 0..=7) allow.
fn access(bits: u32) -> Option<&'static str> {
    match (bits & 0o4 != 0, bits & 0o2 != 0) {
        (true, true) => Some("read and change"),
        (true, false) => Some("read"),
        (false, true) => Some("change"),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn warning_for(mode: u32) -> Option<String> {
        let dir = std::env::temp_dir().join(format!(
            "rampart-permissions-{}-{mode:o}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key.pem");
        std::fs::write(&file, "secret").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let owner = meta.uid();
        // As if rampartd's group were another: the file's group is not trusted
        // unless it is root's.
        let warning = exposure(&file, "TLS private key", &meta, owner, u32::MAX - 1);
        std::fs::remove_dir_all(&dir).unwrap();
        warning.map(|w| w.replace(&dir.display().to_string(), "DIR"))
    }

    #[test]
    fn private_modes_are_not_reported() {
        assert_eq!(warning_for(0o600), None);
        assert_eq!(warning_for(0o400), None);
    }

    #[test]
    fn others_reading_or_writing_is_reported_with_the_fix() {
        // Under root's group (tests run as root), the group keeps its read access.
        let group_keeps = if nix::unistd::getegid().as_raw() == 0 {
            0o640
        } else {
            0o600
        };
        let w = warning_for(0o644).unwrap();
        assert!(
            w.starts_with("DIR/key.pem (TLS private key) is not private (mode 0644): "),
            "{w}"
        );
        assert!(w.contains("every user can read it"), "{w}");
        assert!(
            w.ends_with(&format!("`chmod {group_keeps:04o} DIR/key.pem`")),
            "{w}"
        );
        let w = warning_for(0o602).unwrap();
        assert!(w.contains("every user can change it"), "{w}");
        assert!(w.ends_with("`chmod 0600 DIR/key.pem`"), "{w}");
    }
}
