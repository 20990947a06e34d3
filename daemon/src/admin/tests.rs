use std::sync::Arc;

use super::exposition::{Exposition, Kind};
use super::render::{GatewayReadings, render};
use super::{ControlSnapshot, KernelSnapshot};
use crate::filter::Counters;
use crate::gateway::StatsSnapshot;
use crate::gateway::metrics::HttpMetrics;
use crate::gateway::running::JwksStatus;

/// Every line is a `# HELP`, a `# TYPE` or a sample `name{labels} value`
/// of the family last declared.
fn assert_well_formed(text: &str) {
    let mut family = String::new();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            family = rest.split(' ').next().unwrap().to_owned();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(name, family, "{line}");
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(
            name == family
                || [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count")
                ]
                .contains(&name.to_owned()),
            "{line} outside its family {family}"
        );
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value == "+Inf" || value.parse::<f64>().is_ok(),
            "{line}: value"
        );
    }
}

#[test]
fn label_values_are_escaped() {
    let mut out = Exposition::default();
    out.family("x_total", Kind::Counter, "help with \\ and\nnewline");
    out.sample("x_total", &[("a", "q\"b\\s\nn"), ("b", "")], 3u64);
    out.sample("x_total", &[], 0.25);
    assert_eq!(
        out.finish(),
        "# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\n\
         x_total{a=\"q\\\"b\\\\s\\nn\",b=\"\"} 3\nx_total 0.25\n"
    );
}

#[test]
fn without_control_only_the_process_and_gateway_families() {
    let text = render(1_700_000_000.5, 7, None, None, 1_700_000_100.0);
    assert_well_formed(&text);
    assert!(text.contains("rampart_control_up 0\n"), "{text}");
    assert!(text.contains("rampart_start_time_seconds 1700000000.5\n"));
    assert!(
        text.contains("rampart_log_entries_dropped_total 7\n"),
        "{text}"
    );
    assert!(text.contains("rampart_build_info{version=\""));
    assert!(!text.contains("rampart_xdp_packets_total"));
    assert!(!text.contains("rampart_http_requests_total"));
}

#[test]
fn every_family_renders_well_formed() {
    let http = HttpMetrics::default();
    let orders = http.api("orders");
    for _ in 0..4 {
        orders.record(200, None, std::time::Duration::from_millis(3));
    }
    orders.record(
        429,
        Some("RateLimitExceeded"),
        std::time::Duration::from_micros(100),
    );
    orders.record_backend_retry();
    // A backend token from a file: there to send, no failed read.
    let token_dir =
        std::env::temp_dir().join(format!("rampart-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&token_dir).unwrap();
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let credential =
        Arc::new(crate::policy::backend_auth::Credential::from_file(&token_file).unwrap());
    orders.watch_credential(Some(&credential));
    http.api("idle");
    http.unrouted().record(
        404,
        Some("OperationNotFound"),
        std::time::Duration::from_micros(50),
    );
    let gateway = GatewayReadings {
        stats: StatsSnapshot {
            connections_accepted: 7,
            connections_closed: 5,
            connections_over_source_limit: 3,
            ..StatsSnapshot::default()
        },
        apis: http.snapshot(),
        jwks: vec![
            JwksStatus {
                provider: "entra".into(),
                loaded_at: Some(1_000),
                fetch_failures: 2,
            },
            JwksStatus {
                provider: "never".into(),
                loaded_at: None,
                fetch_failures: 5,
            },
        ],
    };
    let control = ControlSnapshot {
        filter: Some(KernelSnapshot {
            counters: Some(Counters {
                by_reason: vec![("passed", 10), ("denied", 3)],
                drops_by_country: vec![("de".into(), 2), ("??".into(), 1)],
                by_interface: vec![
                    ("eth0".into(), vec![("passed", 7), ("denied", 3)]),
                    ("eth1+eth2".into(), vec![("passed", 3), ("denied", 0)]),
                ],
            }),
            lists: vec![("deny", "config", 2), ("deny", "auto", 1)],
            country_prefixes: 12,
            active_bans: 1,
            interfaces_attached: 1,
        }),
        reloads_ok: 2,
        reloads_failed: 1,
        last_reload_success: 1_500,
        bans_issued: 4,
    };
    let text = render(1_000.0, 0, Some(&control), Some(&gateway), 1_600.0);
    assert_well_formed(&text);
    for line in [
        "rampart_control_up 1",
        "rampart_reloads_total{result=\"ok\"} 2",
        "rampart_reloads_total{result=\"failed\"} 1",
        "rampart_last_reload_success_timestamp_seconds 1500",
        "rampart_xdp_packets_total{reason=\"denied\"} 3",
        "rampart_xdp_interface_packets_total{interface=\"eth0\",reason=\"denied\"} 3",
        "rampart_xdp_interface_packets_total{interface=\"eth1+eth2\",reason=\"passed\"} 3",
        "rampart_xdp_drops_by_country_total{country=\"DE\"} 2",
        "rampart_xdp_drops_by_country_total{country=\"??\"} 1",
        "rampart_list_entries{list=\"deny\",origin=\"auto\"} 1",
        "rampart_active_bans 1",
        "rampart_interfaces_attached 1",
        "rampart_http_connections_open 2",
        "rampart_http_connections_over_source_limit_total 3",
        "rampart_http_requests_total{api=\"orders\",status=\"200\",reason=\"\"} 4",
        "rampart_http_requests_total{api=\"orders\",status=\"429\",reason=\"RateLimitExceeded\"} 1",
        "rampart_http_requests_total{api=\"\",status=\"404\",reason=\"OperationNotFound\"} 1",
        "rampart_http_request_duration_seconds_bucket{api=\"orders\",le=\"0.0005\"} 1",
        "rampart_http_request_duration_seconds_bucket{api=\"orders\",le=\"0.005\"} 5",
        "rampart_http_request_duration_seconds_bucket{api=\"orders\",le=\"+Inf\"} 5",
        "rampart_http_request_duration_seconds_count{api=\"orders\"} 5",
        "rampart_rate_limited_total{api=\"orders\"} 1",
        "rampart_rate_limited_total{api=\"idle\"} 0",
        "rampart_quota_exceeded_total{api=\"orders\"} 0",
        "rampart_backend_retries_total{api=\"orders\"} 1",
        "rampart_backend_retries_total{api=\"idle\"} 0",
        "rampart_backend_token_present{api=\"orders\"} 1",
        "rampart_backend_token_failures_total{api=\"orders\"} 0",
        "rampart_jwks_loaded{provider=\"never\"} 0",
        "rampart_jwks_age_seconds{provider=\"entra\"} 600",
        "rampart_jwks_fetch_failures_total{provider=\"never\"} 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(!text.contains("rampart_jwks_age_seconds{provider=\"never\"}"));
    assert!(
        !text.contains("rampart_backend_token_present{api=\"idle\"}"),
        "an API without backend_auth has no token gauge"
    );
    // Once the backend no longer holds the token, its gauge goes.
    drop(credential);
    let apis = http.snapshot();
    assert!(
        apis.iter().all(|api| api.backend_token.is_none()),
        "{apis:?}"
    );
    let _ = std::fs::remove_dir_all(&token_dir);
    assert!(
        !text.contains("rampart_http_request_duration_seconds_count{api=\"idle\"}"),
        "an API without requests has no histogram"
    );
    // Histogram buckets never go down.
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("rampart_http_request_duration_seconds_bucket{api=\"orders\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
}
