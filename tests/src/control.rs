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
