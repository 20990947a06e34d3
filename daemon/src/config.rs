//! The configuration file: TOML read with serde (`deny_unknown_fields`), then
//! validated into typed values.
//!
//! [`load`] and [`parse`] either return a fully validated [`Config`] or every
//! problem found, each located as `file:line:column`. A syntax error or a
//! wrong type stops parsing at once (serde cannot go on); everything past
//! that (values, ranges, combinations) is checked in one pass that reports
//! all errors together. A bad file never yields a partial or defaulted
//! configuration.

mod gateway;
pub mod permissions;
mod raw;
mod render;
mod source;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::paths::Paths;

pub use gateway::{
    AccessLogConfig, ApiConfig, ApiJwtConfig, BackendProtocolConfig, BackendTimeoutsConfig,
    ClaimHeader, ClientAuthConfig, CounterConfig, DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    GatewayConfig, ListenerConfig, ListenerTransport, MAX_RATE_LIMIT_CALLS,
    MAX_RATE_LIMIT_PERIOD_SECS, ProductConfig, QuotaConfig, RateLimitAlgorithm, RateLimitConfig,
    RoleRule, SniCertConfig, SubscriptionConfig, SubscriptionRequirement,
};
pub use render::render_default;

/// Drop events per second (per CPU) unless configured.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 100;
/// Highest configurable drop event rate (per CPU).
pub const MAX_EVENTS_PER_SECOND: u32 = 100_000;
/// Drop event burst unless configured.
pub const DEFAULT_EVENTS_BURST: u32 = 50;
/// Highest configurable drop event burst.
pub const MAX_EVENTS_BURST: u32 = 100_000;
/// Exact deny entries per address family unless configured.
pub const DEFAULT_MAX_DENY_ENTRIES: u32 = 131_072;
/// Smallest configurable exact deny map.
pub const MIN_DENY_ENTRIES: u32 = 1024;
/// Largest configurable exact deny map.
pub const MAX_DENY_ENTRIES: u32 = 16_777_216;
/// Highest configurable per-source flood limit.
pub const MAX_FLOOD_PACKETS_PER_SECOND: u32 = 10_000_000;
/// Highest configurable flood burst.
pub const MAX_FLOOD_BURST: u32 = 100_000_000;
/// The IPv6 prefix the flood limit counts a source by, unless configured (as
/// autoban and the gateway count IPv6 clients).
pub const DEFAULT_FLOOD_IPV6_PREFIX: u8 = 64;
/// Bounds of `[filter.flood] ipv6_prefix` (128: per address).
pub const MIN_FLOOD_IPV6_PREFIX: u8 = 32;
pub const MAX_FLOOD_IPV6_PREFIX: u8 = 128;
/// The protected scope unless configured.
pub const DEFAULT_PROTECT: &str = "tcp/443";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    /// `None` when the file has no `[filter]` (then it has a `[[listener]]`):
    /// the gateway runs without the kernel filter.
    pub filter: Option<FilterConfig>,
    /// `[[listener]]`s, in file order; none means no gateway.
    pub listeners: Vec<ListenerConfig>,
    /// `[[api]]`s, in file order, names unique.
    pub apis: Vec<ApiConfig>,
    /// `[[product]]`s, in file order, names unique.
    pub products: Vec<ProductConfig>,
    /// `[[subscription]]`s declared in the file (key hashes only), names unique.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// `[gateway]`: limits, trusted proxies, backend CAs (defaults when absent).
    pub gateway: GatewayConfig,
    /// `[[jwt_provider]]`s, names unique, each checked (keys and CA files read).
    pub jwt_providers: Vec<crate::policy::jwt::JwtProviderSettings>,
}

/// `[daemon]`: where the daemon keeps its files, and how much it logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub pin_root: PathBuf,
    pub log_level: LogLevel,
    /// Where log events go: the journal or stderr.
    pub log_target: LogTarget,
    /// The control socket; `None` = `<runtime_dir>/control.sock`.
    pub control_socket: Option<PathBuf>,
    /// The group (besides root) allowed to use the control socket.
    pub control_group: Option<String>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None` = `"off"`.
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// `[daemon] admin_listen` unless configured: loopback only, because `/metrics`
/// reveals traffic (APIs, sources dropped by country, bans).
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9180),
);

impl Default for DaemonConfig {
    fn default() -> Self {
        let paths = Paths::default();
        Self {
            state_dir: paths.state_dir().to_path_buf(),
            runtime_dir: paths.runtime_dir().to_path_buf(),
            pin_root: paths.pin_root().to_path_buf(),
            log_level: LogLevel::default(),
            log_target: LogTarget::default(),
            control_socket: None,
            control_group: None,
            admin_listen: Some(DEFAULT_ADMIN_LISTEN),
        }
    }
}

impl DaemonConfig {
    /// The runtime paths this configuration selects.
    pub fn paths(&self) -> Paths {
        Paths::new(&self.state_dir, &self.runtime_dir, &self.pin_root)
    }

    /// The control socket this configuration selects.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.paths().control_socket())
    }
}

/// `[daemon] log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Every level with its configuration spelling.
    pub const ALL: [(&'static str, LogLevel); 5] = [
        ("trace", LogLevel::Trace),
        ("debug", LogLevel::Debug),
        ("info", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("error", LogLevel::Error),
    ];

    /// The configuration spelling (also a valid `tracing` filter directive).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// `[daemon] log_target`: where rampartd's log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// The journal when stderr is connected to it (`JOURNAL_STREAM`, as systemd
    /// sets it for a service), else stderr.
    #[default]
    Auto,
    /// The journal, with structured fields; stderr (with a warning) when the
    /// journal socket cannot be used.
    Journald,
    /// Plain text lines on stderr.
    Stderr,
}

impl LogTarget {
    /// Every target with its configuration spelling.
    pub const ALL: [(&'static str, LogTarget); 3] = [
        ("auto", LogTarget::Auto),
        ("journald", LogTarget::Journald),
        ("stderr", LogTarget::Stderr),
    ];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogTarget::Auto => "auto",
            LogTarget::Journald => "journald",
            LogTarget::Stderr => "stderr",
        }
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    }
}

/// `[filter]`: the XDP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// Interface names, in file order, without duplicates. Whether they exist
    /// is checked when the program is attached, not here.
    pub interfaces: Vec<String>,
    pub attach_mode: AttachMode,
    pub protect: ProtectScope,
    pub drop_malformed: bool,
    /// Dry run: drops are counted and reported, packets pass.
    pub monitor: bool,
    /// Management networks: never filtered.
    pub bypass: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// Non-empty: allowlist mode on protected traffic.
    pub allow: Vec<IpNet>,
    /// Drop events per second per CPU; 0 = no drop events.
    pub events_per_second: u32,
    pub events_burst: u32,
    /// Capacity of each exact deny map (IPv4 and IPv6).
    pub max_deny_entries: u32,
    pub geo: Option<GeoConfig>,
    /// `Some` when `[filter.flood]` is present.
    pub flood: Option<FloodConfig>,
    /// `[filter.autoban]` (its defaults when absent: on).
    pub autoban: crate::policy::ban::AutobanSettings,
}

/// `[filter] attach_mode`. There is no fallback from one to the other: a
/// driver without native XDP support is an attach error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    #[default]
    Native,
    /// Generic XDP on the socket buffer (`XDP_FLAGS_SKB_MODE`), slower.
    Skb,
}

impl AttachMode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

/// `[filter] protect`: the destinations allowlist, country and flood rules
/// apply to. Bypass and deny apply to every packet regardless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectScope {
    /// Every packet.
    All,
    /// Destination ports, per protocol: sorted, merged, non-overlapping
    /// inclusive ranges within 1..=65535. Both empty protects nothing.
    Ports {
        tcp: Vec<RangeInclusive<u16>>,
        udp: Vec<RangeInclusive<u16>>,
    },
}

impl Default for ProtectScope {
    /// [`DEFAULT_PROTECT`]: HTTPS.
    fn default() -> Self {
        ProtectScope::Ports {
            tcp: vec![443..=443],
            udp: Vec::new(),
        }
    }
}

/// `[filter.geo] database` unless configured: where Debian's geoipupdate
/// writes MaxMind's free country database.
pub const DEFAULT_GEO_DATABASE: &str = "/var/lib/GeoIP/GeoLite2-Country.mmdb";

/// `[filter.geo]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoConfig {
    /// The country database: an MMDB file, a GeoLite2 or DB-IP CSV download,
    /// a directory of `<cc>.cidr` zone files or a `network,country` CSV file
    /// (see [`crate::geo::load`]). [`DEFAULT_GEO_DATABASE`] unless set.
    pub database: PathBuf,
    pub policy: CountryPolicy,
}

/// What the country of a source decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountryPolicy {
    /// The database only labels events and `rampart check` output.
    LabelOnly,
    /// Sources from these countries are dropped.
    Block(Vec<CountryCode>),
    /// Only sources from these countries pass; sources with no known
    /// country pass only if `allow_unknown`.
    AllowOnly {
        countries: Vec<CountryCode>,
        allow_unknown: bool,
    },
}

/// A two-letter country code, stored in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Two ASCII letters, either case; `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 2] = text.as_bytes().try_into().ok()?;
        rampart_common::country_index(bytes)?;
        Some(Self(bytes.map(|b| b.to_ascii_lowercase())))
    }

    /// The kernel's country index (1..COUNTRY_SLOTS).
    pub fn index(self) -> u16 {
        // The constructor checked the letters, so an index always exists.
        rampart_common::country_index(self.0).unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        // Two ASCII letters are always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[filter.flood]`: a per-source packet rate limit on protected traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodConfig {
    pub packets_per_second: u32,
    pub burst: u32,
    /// The length of the IPv6 prefix counted as one source (128: per address).
    pub ipv6_prefix: u8,
}

/// One problem in a configuration file, with its position (1-based line,
/// 1-based column counted in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", DiagnosticList(errors))]
    Invalid {
        path: PathBuf,
        /// Every problem found, in file order; never empty.
        errors: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// Process exit status for this error (sysexits.h): `EX_USAGE` (64) for
    /// an invalid file, `EX_NOINPUT` (66) for one that cannot be read.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Io { .. } => 66,
            ConfigError::Invalid { .. } => 64,
        }
    }
}

/// Displays diagnostics one per line.
struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, path),
        Err(e) => {
            // Point at the first byte that is not UTF-8, not at "the file".
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            let source = source::Source::new(&prefix, path);
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                errors: vec![source.diagnostic(valid, "the file is not valid UTF-8")],
            })
        }
    }
}

/// Parses and validates configuration text; `origin` names it in diagnostics.
/// A `[filter.autoban]`, `[filter.geo]` or `[filter.flood]` in a file without
/// `[filter]` makes toml's implicit `filter` table, which fails to deserialize with a
/// message about types ("expected a borrowed string") at the subsection's name: said
/// plainly instead, when the error is there and `filter` holds only subsections.
fn filter_section_missing(text: &str, offset: usize) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        filter: Option<toml::Table>,
    }
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |nl| nl + 1);
    let header = text.get(line_start..)?.lines().next()?.trim();
    let name = header.strip_prefix("[filter.")?.split(']').next()?.trim();
    let filter = toml::from_str::<Probe>(text).ok()?.filter?;
    if !filter.values().all(toml::Value::is_table) {
        return None;
    }
    Some(format!(
        "[filter.{name}] needs [filter] (with `interfaces`): it sets up the kernel filter, \
         which this file does not configure; add [filter] or remove [filter.{name}]"
    ))
}

pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let source = source::Source::new(text, origin);
    let invalid = |errors| ConfigError::Invalid {
        path: origin.to_path_buf(),
        errors,
    };
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |span| span.start);
        if let Some(message) = filter_section_missing(text, offset) {
            return invalid(vec![source.diagnostic(offset, message)]);
        }
        // toml's messages may span lines ("invalid string\nexpected ...");
        // a diagnostic is one line.
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        invalid(vec![source.diagnostic(offset, message)])
    })?;
    validate::validate(raw, &source).map_err(invalid)
}
