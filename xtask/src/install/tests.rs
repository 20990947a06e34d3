use std::{os::unix::fs::PermissionsExt as _, process::Command};

use super::*;

fn place(prefix: &str, destdir: Option<&Path>) -> Place {
    Place {
        prefix: prefix.into(),
        destdir: destdir.map(Path::to_path_buf),
    }
}

#[test]
fn units_go_where_debian_keeps_them() {
    let usr = Layout::new(&place("/usr", None)).unwrap();
    assert_eq!(usr.unit_dir(), Path::new("/lib/systemd/system"));
    assert_eq!(usr.rampartd(), Path::new("/usr/sbin/rampartd"));
    let local = Layout::new(&place("/usr/local", None)).unwrap();
    assert_eq!(local.unit_dir(), Path::new("/etc/systemd/system"));
    assert_eq!(
        local.completion("zsh"),
        Path::new("/usr/local/share/zsh/vendor-completions/_rampart")
    );
    assert!(Layout::new(&place("usr", None)).is_err());
}

#[test]
fn staging_puts_every_path_under_destdir() {
    let layout = Layout::new(&place("/usr/local", Some(Path::new("/tmp/stage")))).unwrap();
    assert_eq!(
        layout.staged(Path::new(CONFIG_FILE)),
        Path::new("/tmp/stage/etc/rampart/rampart.toml")
    );
    assert_eq!(
        layout.staged(&layout.rampart()),
        Path::new("/tmp/stage/usr/local/bin/rampart")
    );
}

#[test]
fn units_name_the_installed_binaries() {
    let unit = "ExecStart=/usr/sbin/rampartd --config /etc/rampart/rampart.toml\n\
                ExecReload=/bin/kill -HUP $MAINPID\n";
    assert_eq!(unit_for_prefix(unit, Path::new("/usr")), unit);
    let local = unit_for_prefix(unit, Path::new("/opt/rampart"));
    assert!(local.starts_with("ExecStart=/opt/rampart/sbin/rampartd --config /etc/rampart/"));
    assert!(local.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn manifests_read_back_what_they_wrote() {
    let mut m = Manifest::default();
    m.add(Kind::Dir, "/usr/local/share/rampart".into());
    m.add(Kind::File, "/usr/local/bin/rampart".into());
    m.add(Kind::Config, "/etc/rampart/rampart.toml".into());
    // A second install rewriting the configuration keeps it configuration.
    m.add(Kind::File, "/etc/rampart/rampart.toml".into());
    let back = Manifest::parse(&m.render()).unwrap();
    assert_eq!(back, m);
    assert_eq!(
        back.entries().map(|e| e.kind).collect::<Vec<_>>(),
        [Kind::Dir, Kind::File, Kind::Config]
    );
    assert!(Manifest::parse("file relative/path\n").is_err());
    assert!(Manifest::parse("socket /run/x\n").is_err());
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The man pages are generated (as root) in a directory nobody else can
/// enter or have prepared: a new one each time, 0700, and a directory already
/// at the name the install used to take (`rampart-man-<pid>`) is neither
/// used nor removed.
#[test]
fn temporary_directories_are_private_and_new() {
    let planted = std::env::temp_dir().join(format!("rampart-man-{}", std::process::id()));
    fs::create_dir_all(&planted).unwrap();
    fs::write(planted.join("rampart-evil.1"), ".TH EVIL 1\n").unwrap();
    let first = tempdir("rampart-man").unwrap();
    let second = tempdir("rampart-man").unwrap();
    assert_ne!(first.0, second.0);
    assert_ne!(first.0, planted);
    for dir in [&first.0, &second.0] {
        assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 0, "{}", dir.display());
    }
    assert!(planted.join("rampart-evil.1").exists());
    drop(first);
    assert!(second.0.is_dir());
    fs::remove_dir_all(&planted).unwrap();
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The real thing, staged: a debug build installed under a temporary
/// DESTDIR, checked file by file, installed again over a changed
/// configuration, uninstalled, then purged. Touches nothing outside DESTDIR.
#[test]
fn install_and_uninstall_a_staged_tree() {
    let root = tempdir("rampart-install-test").unwrap();
    let place = place("/usr/local", Some(&root.0));
    let layout = Layout::new(&place).unwrap();
    let options = InstallOptions {
        place: place.clone(),
        profile: Profile::Debug,
    };
    let staged = |p: &Path| layout.staged(p);
    install(&options).unwrap();

    for binary in [layout.rampartd(), layout.rampart()] {
        let path = staged(&binary);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", path.display());
        let out = Command::new(&path).arg("--version").output().unwrap();
        assert!(out.status.success(), "{}", path.display());
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    }
    let man1 = staged(&layout.man1());
    for page in ["rampart.1", "rampart-deny-add.1", "rampart-keys-create.1"] {
        let text = fs::read_to_string(man1.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    for (shell, _) in COMPLETIONS {
        let script = fs::read_to_string(staged(&layout.completion(shell))).unwrap();
        assert!(script.contains("rampart"), "{shell}: {script}");
    }
    let unit = fs::read_to_string(staged(&layout.unit_dir().join(SERVICE))).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/local/sbin/rampartd --config /etc/rampart/rampart.toml\n"),
        "{unit}"
    );
    assert!(!unit.contains(PACKAGED_RAMPARTD));
    let default = fs::read(process::workspace_root().join("examples/rampart.toml")).unwrap();
    let config = staged(Path::new(CONFIG_FILE));
    assert_eq!(fs::read(&config).unwrap(), default);
    // The configuration can hold secrets: not for other users to read.
    let config_dir = staged(Path::new(CONFIG_DIR));
    assert_eq!(mode_of(&config_dir), 0o750);
    assert_eq!(mode_of(&config), 0o640);
    // The installed rampartd accepts the installed configuration.
    let checked = Command::new(staged(&layout.rampartd()))
        .arg("--check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // A changed configuration survives a second install; modes that let
    // others read it, or the group write it, are tightened.
    let mine = b"# edited by the operator\n";
    fs::write(&config, mine).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(&config_dir, fs::Permissions::from_mode(0o755)).unwrap();
    install(&options).unwrap();
    assert_eq!(fs::read(&config).unwrap(), mine);
    assert_eq!(mode_of(&config), 0o640);
    assert_eq!(mode_of(&config_dir), 0o750);
    let new = PathBuf::from(format!("{}.new", config.display()));
    assert_eq!(fs::read(&new).unwrap(), default);
    assert_eq!(mode_of(&new), 0o640);
    // Tighter modes stay as they are.
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    install(&options).unwrap();
    assert_eq!(mode_of(&config), 0o600);

    // Uninstall removes everything but the configuration and the state.
    let state = staged(Path::new(STATE_DIR)).join("lists.json");
    fs::create_dir_all(state.parent().unwrap()).unwrap();
    fs::write(&state, "{}").unwrap();
    let uninstall_options = |purge| UninstallOptions {
        place: place.clone(),
        purge,
    };
    uninstall(&uninstall_options(false)).unwrap();
    assert_eq!(
        files_under(&root.0),
        [
            PathBuf::from("etc/rampart/rampart.toml"),
            PathBuf::from("etc/rampart/rampart.toml.new"),
            PathBuf::from("var/lib/rampart/lists.json"),
        ]
    );
    assert!(
        uninstall(&uninstall_options(false)).is_err(),
        "no manifest left"
    );

    // Installed again, then purged: nothing is left.
    install(&options).unwrap();
    uninstall(&uninstall_options(true)).unwrap();
    assert_eq!(files_under(&root.0), Vec::<PathBuf>::new());
}
