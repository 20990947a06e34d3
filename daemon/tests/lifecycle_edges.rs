//! Edges of rampartd's life that an operator meets: where the control socket may go
//! (rampartd makes the socket's directory its own, so it refuses a directory shared
//! with other files, and replaces only a socket, never another file at its path),
//! and signals it has no use for.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("rampart-socket-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway-only configuration in `d` with its control socket at `socket`; its
/// path and the plain listener's port.
fn config(d: &Path, socket: &Path) -> (PathBuf, u16) {
    let port = free_port();
    let config = d.join("rampart.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {state:?}\nruntime_dir = {run:?}\ncontrol_socket = {socket:?}\n\
             log_target = \"stderr\"\nadmin_listen = \"off\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\nplain_http = true\n\n\
             [[api]]\nname = \"a\"\npath_prefix = \"/a\"\nbackend = \"http://127.0.0.1:9/\"\n\
             subscription = \"none\"\nlisteners = [\"127.0.0.1:{port}\"]\n",
            state = d.join("state").display().to_string(),
            run = d.join("run").display().to_string(),
            socket = socket.display().to_string(),
        ),
    )
    .unwrap();
    (config, port)
}

/// Starts rampartd with its control socket at `socket`; it must refuse to start.
fn refused_start(d: &Path, socket: &Path) -> (i32, String) {
    let (config, _) = config(d, socket);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampartd"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "rampartd started with its socket at {}: {}",
                socket.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_directory_shared_with_other_files_is_refused_and_left_as_it_is() {
    let d = dir("shared");
    // A directory such as /tmp or /run: sticky, open to all, others' files in it.
    let shared = d.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("someone-elses"), "data").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, stderr) = refused_start(&d.0, &shared.join("control.sock"));
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("holds other files (someone-elses)")
            && stderr.contains("needs a directory of its own"),
        "{stderr}"
    );
    // Before, it became 0700 root:root: every other user of it locked out.
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777);
    assert_eq!(
        std::fs::read_to_string(shared.join("someone-elses")).unwrap(),
        "data"
    );
}

#[test]
fn a_file_at_the_socket_path_is_not_deleted() {
    let d = dir("file");
    let own = d.0.join("own");
    std::fs::create_dir(&own).unwrap();
    let victim = own.join("notes.txt");
    std::fs::write(&victim, "precious").unwrap();
    let (code, stderr) = refused_start(&d.0, &victim);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// SIGUSR1 or SIGUSR2 (a log-rotation script that signals every daemon, as it would
/// nginx) used to end rampartd by the default action, and so did a SIGHUP before the
/// reload handler exists (not tested: that window is a few milliseconds here).
#[test]
fn stray_signals_do_not_end_rampartd() {
    let d = dir("signals");
    let (config, port) = config(&d.0, &d.0.join("run").join("control.sock"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampartd"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let signal = |signal| {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("rampartd ended before it listened: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rampartd never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for stray in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP] {
        signal(stray);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "rampartd ended on signal {stray}"
        );
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    signal(libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
