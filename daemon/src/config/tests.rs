//! Unit tests of the configuration: `valid` for what a correct file yields
//! (defaults, every key, the examples, the rendered default), `errors` for
//! what a wrong one reports and where.

mod autoban;
mod backend_auth;
mod errors;
mod gateway;
mod jwt;
mod valid;

use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "t.toml";

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid configuration, got:\n{e}"),
    }
}

/// Every diagnostic, rendered as the user sees it.
fn parse_err(text: &str) -> Vec<String> {
    match parse(text, Path::new(FILE)) {
        Err(ConfigError::Invalid { path, errors }) => {
            assert_eq!(path, Path::new(FILE));
            assert!(!errors.is_empty());
            errors.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
}

/// The single diagnostic of `text`.
fn single_error(text: &str) -> String {
    let errors = parse_err(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors[0].clone()
}

/// A valid `[filter]` (lines 1-2) followed by `extra` from line 3 on.
fn with_filter(extra: &str) -> String {
    format!("[filter]\ninterfaces = [\"eth0\"]\n{extra}")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
