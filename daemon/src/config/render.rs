//! The commented default configuration an installer writes.

use super::{
    AttachMode, DEFAULT_EVENTS_BURST, DEFAULT_EVENTS_PER_SECOND, DEFAULT_GEO_DATABASE,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE, DEFAULT_MAX_DENY_ENTRIES, DEFAULT_PROTECT, LogLevel,
    LogTarget, MAX_DENY_ENTRIES, MAX_EVENTS_PER_SECOND, MAX_FLOOD_PACKETS_PER_SECOND,
    MIN_DENY_ENTRIES,
};
use crate::paths::{DEFAULT_CONFIG_FILE, DEFAULT_PIN_ROOT, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};

/// A configuration file with every key at its default value, each explained,
/// filtering on `interfaces`. The optional sections are present but
/// commented out. Parsing the result gives the default configuration.
pub fn render_default<S: AsRef<str>>(interfaces: &[S]) -> String {
    let interfaces = interfaces
        .iter()
        .map(|name| quote(name.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    let log_level = quote(LogLevel::default().as_str());
    let log_target = quote(LogTarget::default().as_str());
    let attach_mode = quote(AttachMode::default().as_str());
    let state_dir = quote(DEFAULT_STATE_DIR);
    let runtime_dir = quote(DEFAULT_RUNTIME_DIR);
    let pin_root = quote(DEFAULT_PIN_ROOT);
    let protect = quote(DEFAULT_PROTECT);
    let geo_database = quote(DEFAULT_GEO_DATABASE);
    format!(
        r##"# rampart configuration ({DEFAULT_CONFIG_FILE}).
#
# Every key is shown with its default value; keys marked "required" have none.
# Unknown keys are errors. `rampartd --check-config FILE` checks a file, and
# docs/configuration.md describes every key.

[daemon]
# Durable state: rules added with the CLI, keys, quotas.
state_dir = {state_dir}
# Runtime files: the control socket.
runtime_dir = {runtime_dir}
# Pinned BPF maps and XDP links (on a bpffs mount). They keep the filter
# running while the daemon restarts.
pin_root = {pin_root}
# "trace", "debug", "info", "warn" or "error".
log_level = {log_level}
# Where log events go: "journald" (structured fields such as RAMPART_EVENT),
# "stderr" (text lines), or "auto": the journal when stderr is connected to it
# (a systemd service), else stderr.
log_target = {log_target}
# The control socket the `rampart` CLI talks to (default: <runtime_dir>/control.sock).
# control_socket = "/run/rampart/control.sock"
# The group (besides root) allowed to use the control socket; without it, root only.
# control_group = "rampart"
# The admin listener: /metrics (Prometheus), /healthz, /readyz, plain HTTP.
# "off" disables it. /metrics reveals traffic: keep it on loopback or a
# management network (another address is logged as a warning at start).
admin_listen = "127.0.0.1:9180"

[filter]
# Required. Interfaces the XDP program is attached to. Whether they exist is
# checked when attaching.
interfaces = [{interfaces}]
# "native" (in the driver) or "skb" (generic XDP, slower). There is no
# fallback: if the driver cannot run XDP natively, attaching fails. A change
# re-attaches each interface (unfiltered for a moment).
attach_mode = {attach_mode}
# Destinations the allowlist, country and flood rules apply to: "tcp/PORT",
# "udp/PORT", "tcp/FIRST-LAST", "udp/FIRST-LAST", or "all" alone.
# Bypass and deny apply to every destination.
protect = [{protect}]
# Drop packets with truncated or malformed headers.
drop_malformed = true
# Dry run: count and report drops, but let every packet pass.
monitor = false
# Address lists take addresses, CIDRs ("192.0.2.0/24", "2001:db8::/32") and
# inclusive ranges ("192.0.2.10-192.0.2.20").
# Management networks, never filtered: put the sources you administer from here.
bypass = []
# Always dropped (unless bypassed).
deny = []
# When not empty, only these sources reach the protected destinations.
allow = []
# Sampled drop events per second and CPU (0 = no events; at most {MAX_EVENTS_PER_SECOND}),
# and how many may come at once.
events_per_second = {DEFAULT_EVENTS_PER_SECOND}
events_burst = {DEFAULT_EVENTS_BURST}
# Capacity of the kernel's exact-address deny maps, per address family
# ({MIN_DENY_ENTRIES}..={MAX_DENY_ENTRIES}). Larger maps cost cache misses on every packet;
# changing it needs `rampartd --detach` first (the pinned maps keep their size).
max_deny_entries = {DEFAULT_MAX_DENY_ENTRIES}

# Country rules: remove the leading "# " to enable.
# [filter.geo]
# # Country database, recognised by its content: an MMDB file (MaxMind
# # GeoLite2/GeoIP2 Country or City, DB-IP), a GeoLite2 CSV directory or
# # Blocks file, a DB-IP CSV file, a directory of <cc>.cidr zone files, or a
# # network,country CSV file. The default is where geoipupdate writes.
# database = {geo_database}
# # Either drop sources from these countries (two-letter codes) ...
# block = ["xx", "yy"]
# # ... or let only these countries through. Not both.
# allow_only = ["de", "fr"]
# # With allow_only: whether sources of no known country pass.
# allow_unknown = false

# Per-source packet rate limit on protected traffic: remove the leading "# "
# to enable.
# [filter.flood]
# # Required, 1 to {MAX_FLOOD_PACKETS_PER_SECOND}.
# packets_per_second = 1000
# # Default: packets_per_second.
# burst = 1000
# # IPv6 sources are limited by their prefix of this length, as a client can
# # change address at will inside its /64 (32..128; 128 = per address).
# ipv6_prefix = 64

# Automatic bans: sources that keep failing at the gateway get a temporary
# deny entry in the kernel. On by default with these values; bypass networks
# and trusted proxies are never banned. 0 turns a class off.
# [filter.autoban]
# enabled = true
# # Authentication failures (bad or missing key, token or client certificate).
# auth_failures = 20
# # Rate-limit rejections (429).
# rate_limited = 50
# window_secs = 60
# ban_secs = 600
# max_tracked_sources = 100000
# # An IPv6 client usually holds a whole /64 and can change address at will:
# # IPv6 sources are counted and banned by their prefix of this length
# # (32..128; 128 = per address). IPv4 sources: per address.
# ipv6_prefix = 64

# The gateway (TLS-terminating reverse proxy): remove the leading "# " to
# enable. Without a [[listener]], rampartd runs the kernel filter only.
# [[listener]]
# # Required. IP:PORT.
# address = "0.0.0.0:443"
# # Required unless plain_http = true: PEM certificate chain and key, re-read on
# # SIGHUP. Further certificates chosen by SNI go in
# # sni = [{{ hostname = "NAME", cert = PATH, key = PATH }}].
# tls = {{ cert = "/etc/rampart/tls/cert.pem", key = "/etc/rampart/tls/key.pem" }}
# # Plain HTTP instead of TLS, only when asked for: plain_http = true.
#
# # Optional: limits protecting the gateway (defaults shown).
# [gateway]
# max_header_bytes = 32768
# max_body_bytes = 104857600
# max_connections = 10000
# # Connections from one client address at once; more are closed at accept
# # (0 = no cap). Default: {DEFAULT_MAX_CONNECTIONS_PER_SOURCE}, or max_connections / 4 when that is less.
# # Trusted proxies are not capped.
# max_connections_per_source = {DEFAULT_MAX_CONNECTIONS_PER_SOURCE}
# # Requests in flight to backends, all APIs together (each holds a backend
# # connection); more get 503 at once.
# max_backend_requests = 10000
# # Requests in flight to backends from one client address (counted as
# # max_connections_per_source counts); more get 503 at once (0 = no cap).
# # Default: max_backend_requests / 4. Trusted proxies are not capped.
# max_backend_requests_per_source = 2500
# header_read_timeout_secs = 10
# # HTTP/1: no request waiting and no byte moving; HTTP/2: no request waiting,
# # none started and no response body moving (PINGs do not count).
# idle_timeout_secs = 60
# request_timeout_secs = 300
# max_concurrent_streams = 100
# drain_timeout_secs = 30
# # Proxies whose X-Forwarded-For names the client (addresses or CIDRs).
# trusted_proxies = []
# # Rate limits and quotas counted by client address count an IPv6 client by
# # its prefix of this length (32..128; 128 = per address; 80 or 96 where
# # each customer gets a smaller piece of a shared /64).
# ipv6_client_prefix = 64
# # Extra CA certificates (PEM) for https:// backends.
# backend_ca = []
# # 0: one thread per CPU rampartd may run on.
# worker_threads = 0
# # Access events (target rampart::access): "all", "errors" (status >= 400) or "off".
# access_log = "all"
# # Request paths are normalised before routing (dot segments, escapes of
# # unreserved characters, repeated slashes); paths with an encoded slash or
# # backslash (%2F, %5C, \) get 400 unless this is true.
# allow_encoded_slashes = false
# # After the gateway closes a connection, it reads and drops what the client
# # still sends (the rest of a refused upload), so that the client gets the
# # answer instead of a reset: until the client falls silent for
# # lingering_timeout_secs (0 = off) or lingering_time_secs have passed.
# lingering_timeout_secs = 5
# lingering_time_secs = 30
#
# # Products group APIs; a subscription scoped to a product may call its APIs.
# [[product]]
# # Required, unique.
# name = "starter"
# # Optional: calls per period, counted per subscription. A product's limit and
# # quota apply only to subscriptions scoped to it (not to "all" or API-scoped
# # ones, nor to calls without a key).
# rate_limit = {{ calls = 100, period_secs = 60 }}
# # Optional: calls and/or kilobytes per fixed period (0 = never renews).
# quota = {{ calls = 100000, period_secs = 86400 }}
#
# [[api]]
# # Required, unique.
# name = "orders"
# # Optional: only requests for this host (without port) match.
# host = "api.example.com"
# # Required: matched on whole path segments, longest prefix wins.
# path_prefix = "/orders"
# # Optional: the listeners (by address) that serve it; default: every TLS
# # listener (plain-HTTP listeners serve only the APIs that name them).
# listeners = ["0.0.0.0:443"]
# # Required: http:// or https:// base URL; its path is prepended.
# backend = "http://127.0.0.1:8080"
# # Products this API belongs to (each declared with [[product]]).
# products = ["starter"]
# # "required", "optional" or "none".
# subscription = "required"
# # Where the key is read: the header first, then the query parameter.
# subscription_key_header = "Ocp-Apim-Subscription-Key"
# subscription_key_query = "subscription-key"
# # Send the key on to the backend (it is removed by default).
# forward_subscription_key = false
# # Optional: calls per period, counted per "subscription" (default), "ip"
# # or "header:NAME"; algorithm "sliding_window" (default) or "token_bucket".
# rate_limit = {{ calls = 10, period_secs = 1, counter = "subscription" }}
# # Optional request validation: allowed content types, JSON bodies parsed and
# # checked against a schema (json_schema_file = PATH or an inline table).
# validation = {{ content_types = ["application/json"], max_body_bytes = 102400 }}
# # Backend timeouts (defaults shown).
# timeouts = {{ connect_secs = 5, response_secs = 30, pool_idle_secs = 90 }}
# # Optional CORS (see docs/configuration.md for every key).
# cors = {{ allowed_origins = ["https://app.example.com"], allowed_methods = ["GET", "POST"] }}
# # Optional header rules: action "set" (default), "append" or "remove".
# headers = {{ request = [{{ name = "X-Env", values = ["prod"] }}], response = [{{ name = "Server", action = "remove" }}] }}
#
# # Subscriptions declared here carry key hashes only (printf %s KEY | sha256sum);
# # others live in the state directory.
# [[subscription]]
# name = "partner-a"
# # "all", "product:NAME" or "api:NAME".
# scope = "product:starter"
# # "active", "suspended" or "cancelled".
# state = "active"
# primary_key_sha256 = "<64 hex digits>"
# secondary_key_sha256 = "<64 hex digits>"
"##
    )
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}
