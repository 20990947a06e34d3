//! End-to-end fixtures for the control plane: a real `rampartd` with
//! `[filter]` attached to a test veth ([`rig`]), the real `rampart` CLI run as
//! a subprocess ([`cli`]), the system objects some tests need (users and
//! groups, small or failing file systems: [`system`]), TLS certificates and a
//! client for the gateway ([`tls`]), a rig with the gateway running
//! ([`gateway`]), and timed connection probes ([`probe`]). Every object is owned by a guard that removes it on drop,
//! also when the test fails.

pub mod cli;
pub mod gateway;
pub mod probe;
pub mod rig;
pub mod system;
pub mod tls;

pub use cli::{Cli, Run};
pub use rig::{PORT, Rig, RigOptions};

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Unix seconds now (the clock of list expiries).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The entry of a `--json` list whose `entry` is `net`.
pub fn find<'a>(list: &'a [Value], net: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["entry"] == net)
}
