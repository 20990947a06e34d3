//! The control plane: the protocol `rampart` and `rampartd` speak over the
//! control socket ([`protocol`]), the daemon's side of the socket ([`server`])
//! and the CLI's ([`client`]).

pub mod client;
pub mod protocol;
pub mod server;
