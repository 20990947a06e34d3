//! `rampartd --check-config`: what an operator sees for good and bad files.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::Command};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("rampart-check-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn check(file: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampartd"))
        .arg("--check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_file_passes_with_its_country_data() {
    let d = dir("ok");
    std::fs::write(
        d.0.join("geo.csv"),
        "network,country\n198.18.0.0/15,xx\n2001:db8::/32,aa\n",
    )
    .unwrap();
    let cfg = d.0.join("ok.toml");
    std::fs::write(
        &cfg,
        format!(
            "[filter]\ninterfaces = [\"eth0\"]\ndeny = [\"198.18.0.1-198.18.0.6\"]\n\n[filter.geo]\ndatabase = \"{}\"\nblock = [\"XX\"]\n",
            d.0.join("geo.csv").display()
        ),
    )
    .unwrap();
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
    assert!(out.contains("2 country prefixes"), "{out}");
}

#[test]
fn every_error_is_listed_with_its_position_and_exit_64() {
    let d = dir("bad");
    let cfg = d.0.join("bad.toml");
    std::fs::write(
        &cfg,
        "[filter]\ninterfaces = [\"eth0\"]\ndeny = [\"10.0.0.1/8\", \"nonsense\"]\nprotect = [\"tcp/70000\"]\nmax_deny_entries = 5\n",
    )
    .unwrap();
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 64, "{err}");
    let name = cfg.display().to_string();
    for needle in [
        ":3:9:",
        "did you mean 10.0.0.0/8",
        ":3:23:",
        ":4:12:",
        ":5:20:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        err.lines().filter(|l| l.starts_with(&name)).count() >= 4,
        "{err}"
    );
}

#[test]
fn a_bad_country_database_names_file_and_line() {
    let d = dir("geo");
    std::fs::write(
        d.0.join("geo.csv"),
        "network,country\n198.18.0.0/15,xx\nnot-a-network,aa\n",
    )
    .unwrap();
    let cfg = d.0.join("geo.toml");
    std::fs::write(
        &cfg,
        format!(
            "[filter]\ninterfaces = [\"eth0\"]\n[filter.geo]\ndatabase = \"{}\"\nblock = [\"xx\"]\n",
            d.0.join("geo.csv").display()
        ),
    )
    .unwrap();
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("geo.csv") && err.contains('3'), "{err}");
}

#[test]
fn an_unreadable_file_exits_66() {
    let (code, _, err) = check(std::path::Path::new("/nonexistent/rampart.toml"));
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("/nonexistent/rampart.toml"), "{err}");
}

#[test]
fn a_certificate_that_does_not_load_is_reported() {
    let d = dir("cert");
    let cert = d.0.join("cert.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let cfg = d.0.join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\n\n[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://127.0.0.1:9000\"\n",
            c = cert.display(),
            k = d.0.join("missing-key.pem").display()
        ),
    )
    .unwrap();
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("cert.pem") || err.contains("missing-key.pem"),
        "{err}"
    );
}

/// A gateway file: `[daemon]` in `d`, a plain-HTTP listener per address, then `rest`.
fn gateway_file(d: &Dir, name: &str, addresses: &[&str], rest: &str) -> PathBuf {
    let mut text = format!(
        "[daemon]\nstate_dir = {state:?}\nruntime_dir = {run:?}\nlog_target = \"stderr\"\nadmin_listen = \"off\"\n\n",
        state = d.0.join("state").display().to_string(),
        run = d.0.join("run").display().to_string(),
    );
    for address in addresses {
        text.push_str(&format!(
            "[[listener]]\naddress = \"{address}\"\nplain_http = true\n\n"
        ));
    }
    // Plain-HTTP listeners serve only the APIs that name them.
    let mut named: Vec<String> = Vec::new();
    for address in addresses {
        let quoted = format!("{address:?}");
        if !named.contains(&quoted) {
            named.push(quoted);
        }
    }
    text.push_str(&rest.replace(
        "[[api]]\n",
        &format!("[[api]]\nlisteners = [{}]\n", named.join(", ")),
    ));
    let cfg = d.0.join(name);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// `rampartd --config FILE`, for a file it refuses: exit code and stderr.
fn start(file: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampartd"))
        .arg("--config")
        .arg(file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TWO_ECHO_APIS: &str = "[[api]]\nname = \"echo\"\npath_prefix = \"/echo\"\nbackend = \"http://127.0.0.1:18080/\"\nsubscription = \"none\"\n\n\
     [[api]]\nname = \"echo2\"\npath_prefix = \"/echo/\"\nbackend = \"http://127.0.0.1:18080/\"\nsubscription = \"none\"\n";

#[test]
fn two_apis_with_one_route_fail_the_check_as_they_fail_start() {
    let d = dir("route");
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = gateway_file(&d, "route.toml", &[&address], TWO_ECHO_APIS);
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 64, "check said: {out}{err}");
    assert!(
        err.contains(&format!(
            "gateway: APIs \"echo\" and \"echo2\" have the same host and path prefix (no host; prefix \"/echo\"; both served on listener {address})"
        )),
        "{err}"
    );
    let (start_code, start_err) = start(&cfg);
    assert_eq!(start_code, code, "start said: {start_err}");
    assert!(
        start_err.contains(&format!("rampartd: {}", err.trim_end())),
        "start said:\n{start_err}\ncheck said:\n{err}"
    );
}

#[test]
fn hosts_that_differ_only_in_case_are_one_route() {
    let d = dir("host-case");
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = gateway_file(
        &d,
        "hosts.toml",
        &[&address],
        "[[api]]\nname = \"upper\"\nhost = \"A.example\"\npath_prefix = \"/v1\"\nbackend = \"http://127.0.0.1:18080/\"\nsubscription = \"none\"\n\n\
         [[api]]\nname = \"lower\"\nhost = \"a.example\"\npath_prefix = \"/v1\"\nbackend = \"http://127.0.0.1:18080/\"\nsubscription = \"none\"\n",
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 64, "check said: {out}{err}");
    assert!(
        err.contains(&format!("APIs \"upper\" and \"lower\" have the same host and path prefix (host \"a.example\", names compared without case; prefix \"/v1\"; both served on listener {address})")),
        "{err}"
    );
    let (start_code, start_err) = start(&cfg);
    assert_eq!(start_code, 64, "{start_err}");
    assert!(
        start_err.contains("APIs \"upper\" and \"lower\""),
        "{start_err}"
    );
}

#[test]
fn listeners_that_cannot_both_bind_are_a_positioned_error() {
    let d = dir("listeners");
    let port = free_port();
    let api = "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://127.0.0.1:18080/\"\nsubscription = \"none\"\n";
    // [daemon] takes 7 lines and each listener 4: the first address is on
    // line 8, the second on line 12, column 11.
    for (first, second, needle) in [
        (
            format!("127.0.0.1:{port}"),
            format!("0.0.0.0:{port}"),
            format!("0.0.0.0:{port} takes port {port} on every IPv4 address"),
        ),
        (
            format!("127.0.0.1:{port}"),
            format!("[::]:{port}"),
            format!("[::]:{port} takes port {port} on every IPv6 and IPv4 address"),
        ),
        (
            format!("[::1]:{port}"),
            format!("[::]:{port}"),
            format!("[::]:{port} takes port {port} on every IPv6 and IPv4 address"),
        ),
        (
            format!("127.0.0.1:{port}"),
            format!("[::ffff:127.0.0.1]:{port}"),
            "they are the same address".to_owned(),
        ),
    ] {
        let cfg = gateway_file(&d, "listeners.toml", &[&first, &second], api);
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 64, "{first} and {second}: check said {out}{err}");
        let expected = format!(
            "{}:12:11: listener address {second} overlaps listener {first} (line 8): {needle}",
            cfg.display()
        );
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
        let (start_code, start_err) = start(&cfg);
        assert_eq!(start_code, 64, "{start_err}");
        assert!(start_err.contains(&expected), "{start_err}");
    }
    // The same address twice names the first one's line too.
    let same = format!("127.0.0.1:{port}");
    let cfg = gateway_file(&d, "same.toml", &[&same, &same], api);
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!(
            ":12:11: listener address {same} appears twice (first at line 8)"
        )),
        "{err}"
    );
    // Another port, or IPv6 loopback beside IPv4 loopback, binds.
    let other = free_port();
    for (first, second) in [
        (format!("127.0.0.1:{port}"), format!("0.0.0.0:{other}")),
        (format!("[::1]:{port}"), format!("127.0.0.1:{port}")),
    ] {
        let cfg = gateway_file(&d, "fine.toml", &[&first, &second], api);
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 0, "{first} and {second}: {out}{err}");
    }
}

/// 64 hex digits of `byte` repeated: a key hash for the files below.
fn hash(byte: char) -> String {
    byte.to_string().repeat(64)
}

/// `<d>/state/subscriptions.json` holding one subscription, as `rampart keys
/// create` writes it.
fn stored_subscription(d: &Dir, name: &str, primary: &str, secondary: &str) {
    let state = d.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("subscriptions.json"),
        format!(
            r#"{{"version":1,"subscriptions":[{{"name":"{name}","scope":{{"kind":"all_apis"}},"state":"active","primary":"{primary}","secondary":"{secondary}","created_at":1700000000}}]}}"#
        ),
    )
    .unwrap();
}

/// A gateway file with one API and the `[[subscription]]` `name`.
fn file_with_subscription(d: &Dir, address: &str, name: &str, primary: &str) -> PathBuf {
    gateway_file(
        d,
        &format!("{name}-{primary}.toml"),
        &[address],
        &format!(
            "[[api]]\nname = \"a\"\npath_prefix = \"/a\"\nbackend = \"http://127.0.0.1:18080/\"\n\n\
             [[subscription]]\nname = \"{name}\"\nprimary_key_sha256 = \"{primary}\"\nsecondary_key_sha256 = \"{}\"\n",
            hash('f')
        ),
    )
}

/// A `[[subscription]]` whose name or key hash the state directory's store has
/// already: start refuses it (exit 65), and so does the check, with the same
/// message; the store is only read (not locked, nothing written). Without a
/// state directory, the check passes and creates none.
#[test]
fn a_subscription_the_store_has_already_fails_the_check_as_it_fails_start() {
    let d = dir("subs-store");
    let address = format!("127.0.0.1:{}", free_port());
    let state = d.0.join("state");

    // No state directory yet: nothing to clash with, and none is made.
    let cfg = file_with_subscription(&d, &address, "filesub", &hash('1'));
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "check said: {out}{err}");
    assert!(!state.exists(), "the check made {}", state.display());

    for (cfg, expected) in [
        (
            file_with_subscription(&d, &address, "s-all", &hash('1')),
            "subscriptions: a subscription named \"s-all\" already exists",
        ),
        (
            file_with_subscription(&d, &address, "filesub", &hash('a')),
            "subscriptions: subscription \"s-all\" uses a key hash already used by \"filesub\"",
        ),
    ] {
        stored_subscription(&d, "s-all", &hash('a'), &hash('b'));
        let store = std::fs::read(state.join("subscriptions.json")).unwrap();
        let (code, out, err) = check(&cfg);
        assert_eq!(code, 65, "check said: {out}{err}");
        assert_eq!(err.trim_end(), expected);
        // Only read: the store is as it was, and no journal or lock was made.
        assert_eq!(
            std::fs::read(state.join("subscriptions.json")).unwrap(),
            store
        );
        let entries: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["subscriptions.json"], "{}", state.display());

        let (start_code, start_err) = start(&cfg);
        assert_eq!(start_code, 65, "start said: {start_err}");
        assert!(
            start_err.contains(&format!("rampartd: {expected}\n")),
            "start said:\n{start_err}\ncheck said:\n{err}"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }

    // A store start cannot read is reported by the check as start reports it.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("subscriptions.json"), "{ not json").unwrap();
    let cfg = file_with_subscription(&d, &address, "filesub", &hash('1'));
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 65, "check said: {out}{err}");
    let expected = format!(
        "subscriptions: subscription store {} is corrupt (refusing to start with no subscriptions)",
        state.join("subscriptions.json").display()
    );
    assert!(err.starts_with(&expected), "{err}");
    let (start_code, start_err) = start(&cfg);
    assert_eq!(start_code, 65, "start said: {start_err}");
    assert!(
        start_err.contains(&format!("rampartd: {}", err.trim_end())),
        "start said:\n{start_err}\ncheck said:\n{err}"
    );
}

/// Start refuses corrupt quota counters (`quota.json`, or a `quota.journal` line
/// that does not parse before its last); the check did not read them and said
/// "ok". It now reports what start reports, with start's exit code, and only
/// reads them (nothing is created or changed).
#[test]
fn corrupt_quota_counters_fail_the_check_as_they_fail_start() {
    let d = dir("quota-store");
    let address = format!("127.0.0.1:{}", free_port());
    let state = d.0.join("state");
    let cfg = file_with_subscription(&d, &address, "filesub", &hash('1'));
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "check said: {out}{err}");

    let good_line = r#"{"key":"k","counter":{"window_start":0,"window_end":18446744073709551615,"calls":1,"bytes":0}}"#;
    for (file, content) in [
        ("quota.json", "{ not json".to_owned()),
        ("quota.journal", format!("not json\n{good_line}\n")),
    ] {
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join(file), &content).unwrap();
        let (code, out, err) = check(&cfg);
        // Bad data (65), as a corrupt subscription store and a newer format are.
        assert_eq!(code, 65, "{file}: check said: {out}{err}");
        let expected = format!(
            "gateway policies: cannot open the quota counters: quota counters {} are corrupt (move the file away to start from zero)",
            state.join(file).display()
        );
        assert!(err.starts_with(&expected), "{file}: {err}");
        assert_eq!(err.lines().count(), 1, "{file}: {err}");
        // Only read.
        assert_eq!(std::fs::read_to_string(state.join(file)).unwrap(), content);
        let entries: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, [file], "{}", state.display());

        let (start_code, start_err) = start(&cfg);
        assert_eq!(start_code, code, "{file}: start said: {start_err}");
        assert!(
            start_err.contains(&format!("rampartd: {}", err.trim_end())),
            "{file}: start said:\n{start_err}\ncheck said:\n{err}"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }

    // A last journal line cut short by a crash: start drops it (and cuts the file),
    // the check passes and leaves the file as it is.
    std::fs::create_dir_all(&state).unwrap();
    let cut_short = format!("{good_line}\n{{\"key\":\"k\",\"cou");
    std::fs::write(state.join("quota.journal"), &cut_short).unwrap();
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "check said: {out}{err}");
    assert_eq!(
        std::fs::read_to_string(state.join("quota.journal")).unwrap(),
        cut_short
    );
}

/// Quota counters a newer rampartd wrote (seen after a downgrade) are reported
/// as such, as state.json and subscriptions.json of a newer rampartd are, with
/// their exit code (65), by start and by the check; before, they were "corrupt"
/// (exit 64) with the advice to move the file away, losing every counter. A
/// version this one never wrote is still corrupt.
#[test]
fn quota_counters_of_a_newer_rampartd_say_so() {
    let d = dir("quota-newer");
    let address = format!("127.0.0.1:{}", free_port());
    let state = d.0.join("state");
    let cfg = file_with_subscription(&d, &address, "filesub", &hash('1'));
    std::fs::create_dir_all(&state).unwrap();
    let quota = state.join("quota.json");
    // Fields this version does not know, as a newer format may have.
    let newer = r#"{"version":2,"counters":{},"future":true}"#;
    std::fs::write(&quota, newer).unwrap();
    let expected = format!(
        "gateway policies: cannot open the quota counters: quota counters {} were written by a newer rampartd (format 2; this one reads format 1): upgrade rampartd, or restore a backup of the state directory",
        quota.display()
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 65, "check said: {out}{err}");
    assert_eq!(err.trim_end(), expected);
    let (start_code, start_err) = start(&cfg);
    assert_eq!(start_code, 65, "start said: {start_err}");
    assert!(
        start_err.contains(&format!("rampartd: {expected}\n")),
        "start said:\n{start_err}"
    );
    assert!(!start_err.contains("corrupt"), "{start_err}");
    assert_eq!(std::fs::read_to_string(&quota).unwrap(), newer, "untouched");

    std::fs::write(&quota, r#"{"version":0,"counters":{}}"#).unwrap();
    let (start_code, start_err) = start(&cfg);
    assert_eq!(start_code, 65, "start said: {start_err}");
    assert!(
        start_err.contains(&format!(
            "quota counters {} are corrupt (move the file away to start from zero): unsupported format version 0",
            quota.display()
        )),
        "start said:\n{start_err}"
    );
}

/// A TLS listener with a self-signed certificate whose key file is `key_mode`,
/// a JWT provider whose HMAC secret file is `secret_mode`, in a file of
/// `config_mode`; `[daemon]` in `d`.
fn file_with_secrets(d: &Dir, config_mode: u32, key_mode: u32, secret_mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let set = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (d.0.join("cert.pem"), d.0.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    set(&key_file, key_mode);
    let secret = d.0.join("hs.b64");
    // 32 bytes, base64.
    std::fs::write(&secret, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
    set(&secret, secret_mode);
    let cfg = d.0.join("secrets.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {run:?}\nlog_target = \"stderr\"\nadmin_listen = \"off\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = {{ cert = {c:?}, key = {k:?} }}\n\n\
             [[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"HS256\"]\nkeys = [{{ hmac_secret_file = {s:?} }}]\n\n\
             [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://127.0.0.1:9000\"\nsubscription = \"none\"\n\
             jwt = {{ provider = \"corp\" }}\n",
            state = d.0.join("state").display().to_string(),
            run = d.0.join("run").display().to_string(),
            port = free_port(),
            c = cert_file.display().to_string(),
            k = key_file.display().to_string(),
            s = secret.display().to_string(),
        ),
    )
    .unwrap();
    set(&cfg, config_mode);
    cfg
}

#[test]
fn secrets_other_users_can_read_or_change_are_warned_about() {
    let d = dir("secrets");
    let cfg = file_with_secrets(&d, 0o666, 0o644, 0o604);
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(out.contains("ok"), "{out}");
    let name = |file: &str| d.0.join(file).display().to_string();
    for (file, what, mode, who) in [
        (
            "secrets.toml",
            "the configuration",
            "0666",
            "every user can read and change it",
        ),
        (
            "key.pem",
            "TLS private key of listener 127.0.0.1:",
            "0644",
            "every user can read it",
        ),
        (
            "hs.b64",
            "HMAC secret of jwt_provider \"corp\"",
            "0604",
            "every user can read it",
        ),
    ] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("warning: {} ({what}", name(file))))
            .unwrap_or_else(|| panic!("no warning for {file} in:\n{err}"));
        assert!(line.contains(&format!("(mode {mode})")), "{line}");
        assert!(line.contains(who), "{line}");
        assert!(line.contains("`chmod 06"), "{line}");
        assert!(line.ends_with(&format!(" {}`", name(file))), "{line}");
    }

    // Start says the same (then stops here: its state directory is a file).
    std::fs::write(d.0.join("state"), "not a directory").unwrap();
    let (code, err) = start(&cfg);
    assert_eq!(code, 74, "{err}");
    assert!(
        err.contains(&format!(
            "{} (the configuration) is not private",
            name("secrets.toml")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} (TLS private key", name("key.pem"))),
        "{err}"
    );

    // Private files: no warning.
    let quiet = dir("secrets-private");
    let cfg = file_with_secrets(&quiet, 0o600, 0o600, 0o400);
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}
