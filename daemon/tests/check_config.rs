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
