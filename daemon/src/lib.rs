//! rampart: an edge filter for HTTP APIs on Linux hosts.
//!
//! The library behind `rampartd` (the service) and, later, the `rampart` CLI.
//! Each module owns one concern and its errors.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod filter;
pub mod gateway;
pub mod geo;
pub mod lifecycle;
pub mod logging;
pub mod paths;
pub mod pipeline;
pub mod policy;
pub mod rules;
pub mod service;
pub mod state;
