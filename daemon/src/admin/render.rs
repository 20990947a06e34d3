//! `/metrics`: every family rampart exports, from the gateway's counters and
//! the control thread's snapshot. docs/operations.md lists them.

use super::exposition::{Exposition, Kind, format_float};
use super::{AdminSources, ControlSnapshot};
use crate::gateway::StatsSnapshot;
use crate::gateway::metrics::{ApiSnapshot, BackendTokenReading};
use crate::gateway::running::JwksStatus;

/// What the gateway reports at one scrape.
#[derive(Debug, Clone, Default)]
pub struct GatewayReadings {
    pub stats: StatsSnapshot,
    pub apis: Vec<ApiSnapshot>,
    pub jwks: Vec<JwksStatus>,
}

/// The exposition of one scrape. `control` is `None` when the control thread
/// did not answer: its families are left out and `rampart_control_up` is 0.
pub fn render_metrics(
    sources: &AdminSources,
    control: Option<&ControlSnapshot>,
    now: f64,
) -> String {
    let gateway = sources.gateway.as_ref().map(|gateway| GatewayReadings {
        stats: gateway.stats(),
        apis: gateway.http_metrics(),
        jwks: gateway.jwks_status(),
    });
    render(
        sources.started,
        crate::logging::dropped(),
        control,
        gateway.as_ref(),
        now,
    )
}

/// [`render_metrics`] from readings; `log_dropped` is [`crate::logging::dropped`].
pub fn render(
    started: f64,
    log_dropped: u64,
    control: Option<&ControlSnapshot>,
    gateway: Option<&GatewayReadings>,
    now: f64,
) -> String {
    let mut out = Exposition::default();
    process(&mut out, started, log_dropped, control.is_some());
    if let Some(control) = control {
        control_families(&mut out, control);
    }
    if let Some(gateway) = gateway {
        gateway_families(&mut out, &gateway.stats, &gateway.apis, &gateway.jwks, now);
    }
    out.finish()
}

fn process(out: &mut Exposition, started: f64, log_dropped: u64, control_up: bool) {
    out.family(
        "rampart_build_info",
        Kind::Gauge,
        "rampartd's version and target; always 1.",
    );
    out.sample(
        "rampart_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("arch", std::env::consts::ARCH),
        ],
        1u64,
    );
    out.family(
        "rampart_start_time_seconds",
        Kind::Gauge,
        "When rampartd started, in seconds since the Unix epoch.",
    );
    out.sample("rampart_start_time_seconds", &[], started);
    out.family(
        "rampart_log_entries_dropped_total",
        Kind::Counter,
        "Log events dropped because the journal (or stderr) did not take them as fast as rampartd wrote them.",
    );
    out.sample("rampart_log_entries_dropped_total", &[], log_dropped);
    out.family(
        "rampart_control_up",
        Kind::Gauge,
        "1 when the control thread answered this scrape within 2 s; 0 leaves out the kernel and reload families.",
    );
    out.sample("rampart_control_up", &[], u64::from(control_up));
}

fn control_families(out: &mut Exposition, control: &ControlSnapshot) {
    out.family(
        "rampart_reloads_total",
        Kind::Counter,
        "Configuration reloads (SIGHUP, rampart reload) by result.",
    );
    out.sample(
        "rampart_reloads_total",
        &[("result", "ok")],
        control.reloads_ok,
    );
    out.sample(
        "rampart_reloads_total",
        &[("result", "failed")],
        control.reloads_failed,
    );
    out.family(
        "rampart_last_reload_success_timestamp_seconds",
        Kind::Gauge,
        "When the configuration in force was loaded (start or last successful reload), Unix seconds.",
    );
    out.sample(
        "rampart_last_reload_success_timestamp_seconds",
        &[],
        control.last_reload_success,
    );
    out.family(
        "rampart_bans_issued_total",
        Kind::Counter,
        "Automatic bans put into the kernel since start.",
    );
    out.sample("rampart_bans_issued_total", &[], control.bans_issued);
    let Some(kernel) = &control.filter else {
        return;
    };
    if let Some(counters) = &kernel.counters {
        out.family(
            "rampart_xdp_packets_total",
            Kind::Counter,
            "Packets seen by the XDP filter (all interfaces) by verdict reason; drops: denied, not_allowlisted, country, flood, malformed.",
        );
        for (reason, n) in &counters.by_reason {
            out.sample("rampart_xdp_packets_total", &[("reason", reason)], *n);
        }
        out.family(
            "rampart_xdp_interface_packets_total",
            Kind::Counter,
            "Packets seen by the XDP filter by attached interface and verdict reason (interfaces sharing a counter slot are one series, names joined by +).",
        );
        for (interface, reasons) in &counters.by_interface {
            for (reason, n) in reasons {
                out.sample(
                    "rampart_xdp_interface_packets_total",
                    &[("interface", interface), ("reason", reason)],
                    *n,
                );
            }
        }
        out.family(
            "rampart_xdp_drops_by_country_total",
            Kind::Counter,
            "Packets dropped by the XDP filter by source country (ISO code, ?? unknown).",
        );
        for (country, n) in &counters.drops_by_country {
            out.sample(
                "rampart_xdp_drops_by_country_total",
                &[("country", &country.to_ascii_uppercase())],
                *n,
            );
        }
    }
    out.family(
        "rampart_list_entries",
        Kind::Gauge,
        "Live entries of the kernel lists by list and origin (config, operator, auto).",
    );
    for (list, origin, n) in &kernel.lists {
        out.sample(
            "rampart_list_entries",
            &[("list", list), ("origin", origin)],
            *n,
        );
    }
    out.family(
        "rampart_country_prefixes",
        Kind::Gauge,
        "Prefixes in the kernel's country table.",
    );
    out.sample("rampart_country_prefixes", &[], kernel.country_prefixes);
    out.family(
        "rampart_active_bans",
        Kind::Gauge,
        "Automatic temporary deny entries in force.",
    );
    out.sample("rampart_active_bans", &[], kernel.active_bans);
    out.family(
        "rampart_interfaces_attached",
        Kind::Gauge,
        "Interfaces the XDP filter is attached to.",
    );
    out.sample(
        "rampart_interfaces_attached",
        &[],
        kernel.interfaces_attached,
    );
}

/// Reason codes with a family of their own.
const RATE_LIMITED: &str = "RateLimitExceeded";
const QUOTA_EXCEEDED: &str = "QuotaExceeded";

fn gateway_families(
    out: &mut Exposition,
    stats: &StatsSnapshot,
    apis: &[ApiSnapshot],
    jwks: &[JwksStatus],
    now: f64,
) {
    let connection_counters: [(&str, &str, u64); 6] = [
        (
            "rampart_http_connections_accepted_total",
            "Client connections accepted by the gateway listeners.",
            stats.connections_accepted,
        ),
        (
            "rampart_http_connections_over_source_limit_total",
            "Client connections closed at accept because their source address had max_connections_per_source open.",
            stats.connections_over_source_limit,
        ),
        (
            "rampart_tls_handshake_failures_total",
            "TLS handshakes that failed (bad client, no shared protocol, refused client certificate).",
            stats.tls_handshake_failures,
        ),
        (
            "rampart_http_malformed_requests_total",
            "Requests refused as malformed (400, 414, 431, 501): framing, Host, path, unreadable body.",
            stats.malformed_requests,
        ),
        (
            "rampart_http_header_timeouts_total",
            "Connections closed because the TLS handshake or request head was too slow.",
            stats.header_timeouts,
        ),
        (
            "rampart_http_request_panics_total",
            "Requests whose handler panicked (answered 500; the daemon went on).",
            stats.request_panics,
        ),
    ];
    for (name, help, value) in connection_counters {
        out.family(name, Kind::Counter, help);
        out.sample(name, &[], value);
    }
    out.family(
        "rampart_http_connections_open",
        Kind::Gauge,
        "Client connections open now.",
    );
    out.sample(
        "rampart_http_connections_open",
        &[],
        stats
            .connections_accepted
            .saturating_sub(stats.connections_closed),
    );

    out.family(
        "rampart_http_requests_total",
        Kind::Counter,
        "Responses by API (\"\" = no API matched), status and reason (APIM LastError reason of a gateway-made error, \"\" when proxied).",
    );
    for api in apis {
        for r in &api.responses {
            out.sample(
                "rampart_http_requests_total",
                &[
                    ("api", &api.api),
                    ("status", &r.status),
                    ("reason", r.reason),
                ],
                r.count,
            );
        }
    }
    out.family(
        "rampart_http_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's arrival to its response head, by API.",
    );
    let mut bound = String::new();
    for api in apis.iter().filter(|a| a.latency_count > 0) {
        for (le, n) in &api.latency_buckets {
            bound.clear();
            format_float(&mut bound, *le);
            out.sample(
                "rampart_http_request_duration_seconds_bucket",
                &[("api", &api.api), ("le", &bound)],
                *n,
            );
        }
        out.sample(
            "rampart_http_request_duration_seconds_bucket",
            &[("api", &api.api), ("le", "+Inf")],
            api.latency_count,
        );
        out.sample(
            "rampart_http_request_duration_seconds_sum",
            &[("api", &api.api)],
            api.latency_sum_seconds,
        );
        out.sample(
            "rampart_http_request_duration_seconds_count",
            &[("api", &api.api)],
            api.latency_count,
        );
    }
    for (name, reason, help) in [
        (
            "rampart_rate_limited_total",
            RATE_LIMITED,
            "Requests refused by a rate limit (429), by API.",
        ),
        (
            "rampart_quota_exceeded_total",
            QUOTA_EXCEEDED,
            "Requests refused by a quota, by API.",
        ),
    ] {
        out.family(name, Kind::Counter, help);
        for api in apis.iter().filter(|a| !a.api.is_empty()) {
            let n: u64 = (api.responses.iter())
                .filter(|r| r.reason == reason)
                .map(|r| r.count)
                .sum();
            out.sample(name, &[("api", &api.api)], n);
        }
    }
    out.family(
        "rampart_backend_retries_total",
        Kind::Counter,
        "Requests sent again on a new backend connection because the reused one was closed before answering, by API.",
    );
    for api in apis.iter().filter(|a| !a.api.is_empty()) {
        out.sample(
            "rampart_backend_retries_total",
            &[("api", &api.api)],
            api.backend_retries,
        );
    }

    for (name, kind, help, reading) in [
        (
            "rampart_backend_token_present",
            Kind::Gauge,
            "1 when the API has a backend_auth token to send (0: its requests get 503), for APIs with a token file or OAuth2 client credentials.",
            (|token| u64::from(token.present)) as fn(&BackendTokenReading) -> u64,
        ),
        (
            "rampart_backend_token_failures_total",
            Kind::Counter,
            "backend_auth token requests (OAuth2) or token file reads that failed, by API.",
            |token| token.failures,
        ),
    ] {
        out.family(name, kind, help);
        for api in apis.iter().filter(|a| !a.api.is_empty()) {
            if let Some(token) = &api.backend_token {
                out.sample(name, &[("api", &api.api)], reading(token));
            }
        }
    }

    out.family(
        "rampart_jwks_loaded",
        Kind::Gauge,
        "1 when the JWT provider has keys (0: its APIs answer 503), for providers that fetch their keys.",
    );
    for p in jwks {
        out.sample(
            "rampart_jwks_loaded",
            &[("provider", &p.provider)],
            u64::from(p.loaded_at.is_some()),
        );
    }
    out.family(
        "rampart_jwks_age_seconds",
        Kind::Gauge,
        "Seconds since the JWT provider's keys were last fetched (refreshed hourly).",
    );
    for p in jwks {
        if let Some(at) = p.loaded_at {
            out.sample(
                "rampart_jwks_age_seconds",
                &[("provider", &p.provider)],
                (now - at as f64).max(0.0).floor(),
            );
        }
    }
    out.family(
        "rampart_jwks_fetch_failures_total",
        Kind::Counter,
        "JWKS or OIDC discovery fetches that failed (the last good keys stay).",
    );
    for p in jwks {
        out.sample(
            "rampart_jwks_fetch_failures_total",
            &[("provider", &p.provider)],
            p.fetch_failures,
        );
    }
}
