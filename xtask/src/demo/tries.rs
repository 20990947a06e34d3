//! The commands the demo prints, each with the outcome it should have. The
//! same text is printed for people and, with `--check`, run by `sh -c` after
//! the demo's environment file: what is tested is exactly what is shown.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{ADMIN, CLI, SRV};

/// What a command should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// curl's `-w` line ends the output with `(HTTP <status>)`.
    Http(u16),
    /// curl gives up: exit status 28 (the SYN was dropped in XDP).
    TimesOut,
    /// Exits 0 and prints this text.
    Prints(&'static str),
}

/// One command to try.
pub(super) struct Try {
    /// A shell command line, ready to paste after the environment file.
    pub(super) command: String,
    /// What it shows, printed as a comment above it.
    pub(super) what: &'static str,
    pub(super) expect: Expect,
}

/// What the demo runs with, for the commands.
pub(super) struct Setup {
    /// Whether rampartd logs to the journal (else to the demo's terminal).
    pub(super) journal: bool,
}

const URL: &str = "https://198.18.0.1:8443";

/// curl from the client namespace (source 198.18.0.2, its first address,
/// unless `args` has `--interface`), showing the status after the body.
fn curl(args: &str) -> String {
    format!("ip netns exec {CLI} curl -sk -w ' (HTTP %{{http_code}})\\n' {args}")
}

/// Every command, in the order they make sense (and are checked): the rate
/// limit loop comes after the other key uses, the deny entry is removed again.
pub(super) fn all(setup: &Setup) -> Vec<Try> {
    let key = r#"-H "Ocp-Apim-Subscription-Key: $KEY""#;
    let bearer = r#"-H "Authorization: Bearer $TOKEN""#;
    let mut tries = vec![
        Try {
            what: "no subscription key: 401",
            command: curl(&format!("{URL}/hello")),
            expect: Expect::Http(401),
        },
        Try {
            what: "with the key made by `rampart keys create`: 200 from the backend",
            command: curl(&format!("{key} {URL}/hello")),
            expect: Expect::Http(200),
        },
        Try {
            what: "/secure wants a token: 401",
            command: curl(&format!("{URL}/secure")),
            expect: Expect::Http(401),
        },
        Try {
            what: "with the demo token (role reader): 200, the backend sees X-Demo-User",
            command: curl(&format!("{bearer} {URL}/secure")),
            expect: Expect::Http(200),
        },
        Try {
            what: "POST needs role writer: 403",
            command: curl(&format!("-X POST {bearer} {URL}/secure")),
            expect: Expect::Http(403),
        },
        Try {
            what: "198.18.0.3 is on the deny list: times out (dropped in XDP)",
            command: curl(&format!("-m 2 --interface 198.18.0.3 {URL}/hello")),
            expect: Expect::TimesOut,
        },
        Try {
            what: "198.18.0.4 is in country xx, which is blocked: times out",
            command: curl(&format!("-m 2 --interface 198.18.0.4 {URL}/hello")),
            expect: Expect::TimesOut,
        },
        Try {
            what: "why the kernel drops 198.18.0.3",
            command: "rampart check 198.18.0.3 --port 8443".into(),
            expect: Expect::Prints("drop"),
        },
        Try {
            what: "deny the allowed client for a minute...",
            command: "rampart deny add 198.18.0.2 --ttl 1m".into(),
            expect: Expect::Prints("1 entry added"),
        },
        Try {
            what: "...and it times out at once",
            command: curl(&format!("-m 2 {key} {URL}/hello")),
            expect: Expect::TimesOut,
        },
        Try {
            what: "lift it again",
            command: "rampart deny del 198.18.0.2".into(),
            expect: Expect::Prints("1 entry removed"),
        },
        Try {
            what: "product starter allows 5 calls in 10 s: then 429",
            command: format!(
                "for i in 1 2 3 4 5 6 7; do ip netns exec {CLI} curl -sk -o /dev/null \
                 -w '%{{http_code}} ' {key} {URL}/hello; done; echo"
            ),
            expect: Expect::Prints("429"),
        },
        Try {
            what: "what rampartd did: key and list changes, reloads, bans, sampled drops",
            command: "rampart events".into(),
            expect: Expect::Prints("deny list: 1 added"),
        },
    ];
    if setup.journal {
        tries.push(Try {
            what: "the failed authentications, with their structured fields",
            command: "journalctl _PID=$RAMPARTD_PID RAMPART_EVENT=auth_failed -o json \
                      --output-fields=RAMPART_EVENT,SRC_IP,API,REASON,STATUS"
                .into(),
            expect: Expect::Prints("auth_failed"),
        });
    }
    tries.push(Try {
        what: "Prometheus metrics of the admin listener: requests by API and status, drops",
        command: format!(
            "ip netns exec {SRV} curl -s http://{ADMIN}/metrics \
             | grep -E '^rampart_(http_requests|xdp_drops_by_country|rate_limited)_total'"
        ),
        expect: Expect::Prints("rampart_http_requests_total{"),
    });
    tries
}

/// Prints the commands to paste.
pub(super) fn print(tries: &[Try], env_file: &Path) {
    println!(
        "  . {}   # PATH, RAMPART_SOCKET, KEY, TOKEN and RAMPARTD_PID",
        env_file.display()
    );
    for t in tries {
        println!("  # {}\n  {}", t.what, t.command);
    }
}

/// Runs every command as printed; prints each outcome and returns how many
/// differed from what was expected.
pub(super) fn check(tries: &[Try], env_file: &Path) -> Result<usize> {
    let mut failed = 0;
    for t in tries {
        println!("$ {}", t.command);
        // `timeout`: a command that hangs fails the check instead of CI.
        let output = Command::new("timeout")
            .args(["20", "sh", "-c"])
            .arg(format!(". {} && {}", env_file.display(), t.command))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", t.command))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines().take(6) {
            println!("    {line}");
        }
        let code = output.status.code();
        let verdict = judge(t.expect, code, &stdout);
        match &verdict {
            Ok(()) => println!("  ok: {}", t.what),
            Err(why) => {
                failed += 1;
                let stderr = String::from_utf8_lossy(&output.stderr);
                println!(
                    "  FAILED: {} ({why}; exit {code:?}; stderr: {})",
                    t.what,
                    stderr.trim()
                );
            }
        }
    }
    Ok(failed)
}

/// Whether an outcome is the expected one; the difference otherwise.
fn judge(expect: Expect, code: Option<i32>, stdout: &str) -> Result<(), String> {
    match expect {
        Expect::Http(want) => {
            let got = stdout
                .rsplit_once("(HTTP ")
                .and_then(|(_, rest)| rest.get(..3))
                .and_then(|s| s.parse::<u16>().ok());
            match got {
                Some(status) if status == want && code == Some(0) => Ok(()),
                Some(status) => Err(format!("expected HTTP {want}, got {status}")),
                None => Err(format!("expected HTTP {want}, got no answer")),
            }
        }
        Expect::TimesOut if code == Some(28) => Ok(()),
        Expect::TimesOut => Err("expected a time-out (curl exit 28)".into()),
        Expect::Prints(text) if code == Some(0) && stdout.contains(text) => Ok(()),
        Expect::Prints(text) => Err(format!("expected success printing {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_from_the_last_curl_line() {
        let out = "{\"statusCode\": 401, \"message\": \"(HTTP 200)\"} (HTTP 401)\n";
        assert_eq!(judge(Expect::Http(401), Some(0), out), Ok(()));
        assert!(judge(Expect::Http(200), Some(0), out).is_err());
        assert!(judge(Expect::Http(200), Some(28), "").is_err());
    }

    #[test]
    fn time_outs_are_curl_exit_28_only() {
        assert_eq!(judge(Expect::TimesOut, Some(28), ""), Ok(()));
        assert!(judge(Expect::TimesOut, Some(7), "").is_err());
        assert!(judge(Expect::TimesOut, Some(0), " (HTTP 200)").is_err());
    }

    #[test]
    fn every_try_is_one_line_and_journal_ones_only_with_a_journal() {
        let with = all(&Setup { journal: true });
        let without = all(&Setup { journal: false });
        assert_eq!(with.len(), without.len() + 1);
        assert!(with.iter().all(|t| !t.command.contains('\n')));
        assert!(!without.iter().any(|t| t.command.contains("journalctl")));
    }
}
