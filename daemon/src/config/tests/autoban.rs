//! `[filter.autoban]`: defaults, every key, and the errors with their positions.

use std::time::Duration;

use super::*;
use crate::policy::ban::AutobanSettings;

fn autoban(config: &Config) -> AutobanSettings {
    config.filter.as_ref().unwrap().autoban
}

#[test]
fn absent_section_means_the_documented_defaults() {
    let expected = AutobanSettings {
        enabled: true,
        auth_failures: 20,
        rate_limited: 50,
        window: Duration::from_secs(60),
        ban: Duration::from_secs(600),
        max_tracked_sources: 100_000,
        ipv6_prefix: 64,
    };
    assert_eq!(autoban(&parse_ok(&with_filter(""))), expected);
    // An empty section is the same.
    assert_eq!(
        autoban(&parse_ok(&with_filter("[filter.autoban]\n"))),
        expected
    );
    assert_eq!(AutobanSettings::default(), expected);
}

#[test]
fn every_key_can_be_set() {
    let config = parse_ok(&with_filter(
        "[filter.autoban]\n\
         enabled = false\n\
         auth_failures = 5\n\
         rate_limited = 0\n\
         window_secs = 300\n\
         ban_secs = 86400\n\
         max_tracked_sources = 2000\n\
         ipv6_prefix = 56\n",
    ));
    assert_eq!(
        autoban(&config),
        AutobanSettings {
            enabled: false,
            auth_failures: 5,
            rate_limited: 0,
            window: Duration::from_secs(300),
            ban: Duration::from_secs(86_400),
            max_tracked_sources: 2000,
            ipv6_prefix: 56,
        }
    );
}

#[test]
fn the_bounds_are_accepted() {
    let config = parse_ok(&with_filter(
        "[filter.autoban]\n\
         auth_failures = 1000\n\
         rate_limited = 1\n\
         window_secs = 86400\n\
         ban_secs = 31536000\n\
         max_tracked_sources = 10000000\n\
         ipv6_prefix = 128\n",
    ));
    let settings = autoban(&config);
    assert_eq!(settings.auth_failures, 1000);
    assert_eq!(settings.rate_limited, 1);
    assert_eq!(settings.window, Duration::from_secs(86_400));
    assert_eq!(settings.ban, Duration::from_secs(31_536_000));
    assert_eq!(settings.max_tracked_sources, 10_000_000);
    assert_eq!(settings.ipv6_prefix, 128);
    let config = parse_ok(&with_filter("[filter.autoban]\nipv6_prefix = 32\n"));
    assert_eq!(autoban(&config).ipv6_prefix, 32);
}

#[test]
fn each_error_is_located() {
    let cases = [
        (
            "auth_failures = -1\n",
            "t.toml:4:17: `filter.autoban.auth_failures` must be between 0 and 1000, not -1",
        ),
        (
            "rate_limited = 1001\n",
            "t.toml:4:16: `filter.autoban.rate_limited` must be between 0 and 1000, not 1001",
        ),
        (
            "window_secs = 0\n",
            "t.toml:4:15: `filter.autoban.window_secs` must be between 1 and 86400, not 0",
        ),
        (
            "ban_secs = 31536001\n",
            "t.toml:4:12: `filter.autoban.ban_secs` must be between 1 and 31536000, not 31536001",
        ),
        (
            "max_tracked_sources = 10\n",
            "t.toml:4:23: `filter.autoban.max_tracked_sources` must be between 1024 and 10000000, not 10",
        ),
        (
            "ipv6_prefix = 31\n",
            "t.toml:4:15: `filter.autoban.ipv6_prefix` must be between 32 and 128, not 31",
        ),
        (
            "ipv6_prefix = 129\n",
            "t.toml:4:15: `filter.autoban.ipv6_prefix` must be between 32 and 128, not 129",
        ),
    ];
    for (line, expected) in cases {
        let text = with_filter(&format!("[filter.autoban]\n{line}"));
        assert_eq!(single_error(&text), expected, "{line}");
    }
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let errors = parse_err(&with_filter(
        "[filter.autoban]\nauth_failures = 5000\nwindow_secs = -3\n",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("t.toml:4:17: "), "{errors:#?}");
    assert!(errors[1].starts_with("t.toml:5:15: "), "{errors:#?}");
}

#[test]
fn unknown_keys_and_wrong_types_are_errors() {
    let error = single_error(&with_filter("[filter.autoban]\nthreshold = 3\n"));
    assert!(
        error.starts_with("t.toml:4:1: unknown field `threshold`"),
        "{error}"
    );
    let error = single_error(&with_filter("[filter.autoban]\nenabled = \"yes\"\n"));
    assert!(error.starts_with("t.toml:4:11: "), "{error}");
    let error = single_error(&with_filter("autoban = true\n"));
    assert!(error.starts_with("t.toml:3:11: "), "{error}");
}
