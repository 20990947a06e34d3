//! Every filesystem path rampart uses at run time, in one place.
//!
//! The defaults are the system locations an installed rampart uses. Each
//! directory can be overridden in the `[daemon]` section of the configuration,
//! so tests (and a second instance) never touch the system's state, sockets or
//! pinned maps. Code elsewhere asks a [`Paths`] value for a location instead of
//! joining path fragments itself.

use std::path::{Path, PathBuf};

/// Default configuration file (`rampartd --config`).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rampart/rampart.toml";
/// Default directory of durable state (CLI changes, quotas, keys).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rampart";
/// Default directory of runtime files (control socket).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/rampart";
/// Default root of the pinned BPF objects (on a bpffs mount).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/rampart";
/// File name of the control socket inside the runtime directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";
/// Default control socket (the CLI's `--socket` default).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/rampart/control.sock";
/// Environment variable the CLI reads to find the control socket.
pub const CONTROL_SOCKET_ENV: &str = "RAMPART_SOCKET";

/// The directories one rampart instance works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    state_dir: PathBuf,
    runtime_dir: PathBuf,
    pin_root: PathBuf,
}

impl Default for Paths {
    /// The system locations.
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
        }
    }
}

impl Paths {
    /// Paths rooted at the given directories (the `[daemon]` section's values).
    pub fn new(
        state_dir: impl Into<PathBuf>,
        runtime_dir: impl Into<PathBuf>,
        pin_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            state_dir: state_dir.into(),
            runtime_dir: runtime_dir.into(),
            pin_root: pin_root.into(),
        }
    }

    /// Durable state: survives reboots; written before a change is acknowledged.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Runtime files: gone at reboot.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// Root of the pinned maps and XDP links of every layout version.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// The control socket, created inside [`Self::runtime_dir`].
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir.join(CONTROL_SOCKET_NAME)
    }

    /// Pin directory of the map layout this build uses.
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir_for(rampart_common::LAYOUT_VERSION)
    }

    /// Pin directory of a given map layout version: `<pin_root>/v<version>`.
    /// Pins of other versions are never reused, because their maps have a
    /// different binary layout.
    pub fn pin_dir_for(&self, layout_version: u32) -> PathBuf {
        self.pin_root.join(format!("v{layout_version}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_system_locations() {
        let paths = Paths::default();
        assert_eq!(paths.state_dir(), Path::new("/var/lib/rampart"));
        assert_eq!(paths.runtime_dir(), Path::new("/run/rampart"));
        assert_eq!(paths.pin_root(), Path::new("/sys/fs/bpf/rampart"));
        assert_eq!(paths.control_socket(), Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(
            paths.pin_dir(),
            PathBuf::from(format!(
                "/sys/fs/bpf/rampart/v{}",
                rampart_common::LAYOUT_VERSION
            ))
        );
    }

    #[test]
    fn overrides_move_every_derived_path() {
        let paths = Paths::new("/tmp/t/state", "/tmp/t/run", "/tmp/t/bpf");
        assert_eq!(paths.state_dir(), Path::new("/tmp/t/state"));
        assert_eq!(paths.control_socket(), Path::new("/tmp/t/run/control.sock"));
        assert_eq!(paths.pin_dir_for(7), Path::new("/tmp/t/bpf/v7"));
    }
}
