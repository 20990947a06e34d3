//! From what serde read to a [`Config`]: defaults, ranges, formats and
//! combinations, with every error collected rather than the first returned.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::raw::{RawAutoban, RawConfig, RawDaemon, RawFilter, RawFlood, RawGeo, Text, TextList};
use super::source::Source;
use super::{
    AttachMode, Config, CountryCode, CountryPolicy, DEFAULT_EVENTS_BURST,
    DEFAULT_EVENTS_PER_SECOND, DEFAULT_FLOOD_IPV6_PREFIX, DEFAULT_GEO_DATABASE,
    DEFAULT_MAX_DENY_ENTRIES, DaemonConfig, Diagnostic, FilterConfig, FloodConfig, GeoConfig,
    LogLevel, LogTarget, MAX_DENY_ENTRIES, MAX_EVENTS_BURST, MAX_EVENTS_PER_SECOND,
    MAX_FLOOD_BURST, MAX_FLOOD_IPV6_PREFIX, MAX_FLOOD_PACKETS_PER_SECOND, MIN_DENY_ENTRIES,
    MIN_FLOOD_IPV6_PREFIX, ProtectScope,
};
mod gateway;

use crate::paths::{DEFAULT_PIN_ROOT, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};
use crate::policy::ban::AutobanSettings;

/// Linux's IFNAMSIZ, including the terminating NUL.
const IFNAMSIZ: usize = 16;

const ATTACH_MODES: [(&str, AttachMode); 2] =
    [("native", AttachMode::Native), ("skb", AttachMode::Skb)];

pub(super) fn validate(raw: RawConfig, source: &Source<'_>) -> Result<Config, Vec<Diagnostic>> {
    let mut checker = Checker {
        source,
        errors: Vec::new(),
    };
    let daemon = checker.daemon(raw.daemon);
    let filter = raw.filter.map(|filter| checker.filter(filter));
    let has_listeners = raw.listener.as_ref().is_some_and(|l| !l.is_empty());
    if filter.is_none() && !has_listeners {
        checker.error(
            0,
            "missing section [filter] (it must at least list `interfaces`) or [[listener]]",
        );
    }
    let listeners = checker.listeners(raw.listener.unwrap_or_default());
    let (products, claim_counters) = checker.products(raw.product.unwrap_or_default());
    let jwt_providers = checker.jwt_providers(raw.jwt_provider.unwrap_or_default());
    let apis = checker.apis(
        raw.api.unwrap_or_default(),
        &products,
        &jwt_providers,
        &listeners,
    );
    checker.claim_counters_have_tokens(&claim_counters, &apis);
    let subscriptions =
        checker.subscriptions(raw.subscription.unwrap_or_default(), &apis, &products);
    let gateway = checker.gateway(raw.gateway);
    let mut errors = checker.errors;
    if errors.is_empty() {
        Ok(Config {
            daemon,
            filter,
            listeners,
            apis,
            products,
            subscriptions,
            gateway,
            jwt_providers,
        })
    } else {
        errors.sort_by_key(|d| (d.line, d.column));
        Err(errors)
    }
}

struct Checker<'a> {
    source: &'a Source<'a>,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.push(self.source.diagnostic(offset, message));
    }

    fn daemon(&mut self, raw: Option<RawDaemon>) -> DaemonConfig {
        let Some(raw) = raw else {
            return DaemonConfig::default();
        };
        DaemonConfig {
            state_dir: self.path_or("daemon.state_dir", raw.state_dir, DEFAULT_STATE_DIR),
            runtime_dir: self.path_or("daemon.runtime_dir", raw.runtime_dir, DEFAULT_RUNTIME_DIR),
            pin_root: self.path_or("daemon.pin_root", raw.pin_root, DEFAULT_PIN_ROOT),
            log_level: self.choice(
                "daemon.log_level",
                raw.log_level,
                &LogLevel::ALL,
                LogLevel::default(),
            ),
            log_target: self.choice(
                "daemon.log_target",
                raw.log_target,
                &LogTarget::ALL,
                LogTarget::default(),
            ),
            control_socket: raw
                .control_socket
                .map(|p| self.path("daemon.control_socket", p)),
            control_group: raw.control_group.and_then(|g| {
                let name = g.get_ref();
                let valid = !name.is_empty()
                    && name.len() <= 32
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if valid {
                    Some(name.clone())
                } else {
                    self.error(
                        g.span().start,
                        format!("`daemon.control_group` {name:?} is not a valid group name"),
                    );
                    None
                }
            }),
            admin_listen: raw
                .admin_listen
                .map_or(Some(super::DEFAULT_ADMIN_LISTEN), |a| self.admin_listen(&a)),
        }
    }

    /// `daemon.admin_listen`: an address with a port, or "off".
    fn admin_listen(&mut self, value: &Text) -> Option<std::net::SocketAddr> {
        let text = value.get_ref();
        if text == "off" {
            return None;
        }
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    value.span().start,
                    format!(
                        "`daemon.admin_listen` {text:?} is not an address with a port \
                         (e.g. \"127.0.0.1:9180\" or \"[::1]:9180\") or \"off\""
                    ),
                );
                None
            }
        }
    }

    fn filter(&mut self, raw: Spanned<RawFilter>) -> FilterConfig {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let interfaces = match raw.interfaces {
            Some(list) => self.interfaces(list),
            None => {
                self.error(
                    section,
                    "[filter] needs `interfaces`, e.g. interfaces = [\"eth0\"]",
                );
                Vec::new()
            }
        };
        FilterConfig {
            interfaces,
            attach_mode: self.choice(
                "filter.attach_mode",
                raw.attach_mode,
                &ATTACH_MODES,
                AttachMode::default(),
            ),
            protect: self.protect(raw.protect),
            drop_malformed: raw.drop_malformed.unwrap_or(true),
            monitor: raw.monitor.unwrap_or(false),
            bypass: self.networks("filter.bypass", raw.bypass),
            deny: self.networks("filter.deny", raw.deny),
            allow: self.networks("filter.allow", raw.allow),
            events_per_second: self.integer(
                "filter.events_per_second",
                raw.events_per_second,
                0..=MAX_EVENTS_PER_SECOND,
                DEFAULT_EVENTS_PER_SECOND,
            ),
            events_burst: self.integer(
                "filter.events_burst",
                raw.events_burst,
                1..=MAX_EVENTS_BURST,
                DEFAULT_EVENTS_BURST,
            ),
            max_deny_entries: self.integer(
                "filter.max_deny_entries",
                raw.max_deny_entries,
                MIN_DENY_ENTRIES..=MAX_DENY_ENTRIES,
                DEFAULT_MAX_DENY_ENTRIES,
            ),
            geo: raw.geo.and_then(|geo| self.geo(geo)),
            flood: raw.flood.and_then(|flood| self.flood(flood)),
            autoban: raw
                .autoban
                .map(|autoban| self.autoban(autoban))
                .unwrap_or_default(),
        }
    }

    fn autoban(&mut self, raw: Spanned<RawAutoban>) -> AutobanSettings {
        use crate::policy::ban::{
            MAX_BAN, MAX_IPV6_PREFIX, MAX_THRESHOLD, MAX_TRACKED_SOURCES, MAX_WINDOW,
            MIN_IPV6_PREFIX, MIN_TRACKED_SOURCES,
        };
        let raw = raw.into_inner();
        let defaults = AutobanSettings::default();
        let secs = |this: &mut Self, key, value, max: Duration, default: Duration| {
            Duration::from_secs(this.integer64(key, value, 1..=max.as_secs(), default.as_secs()))
        };
        let max_tracked_sources = self.integer64(
            "filter.autoban.max_tracked_sources",
            raw.max_tracked_sources,
            MIN_TRACKED_SOURCES as u64..=MAX_TRACKED_SOURCES as u64,
            defaults.max_tracked_sources as u64,
        );
        AutobanSettings {
            enabled: raw.enabled.unwrap_or(defaults.enabled),
            auth_failures: self.integer(
                "filter.autoban.auth_failures",
                raw.auth_failures,
                0..=MAX_THRESHOLD,
                defaults.auth_failures,
            ),
            rate_limited: self.integer(
                "filter.autoban.rate_limited",
                raw.rate_limited,
                0..=MAX_THRESHOLD,
                defaults.rate_limited,
            ),
            window: secs(
                self,
                "filter.autoban.window_secs",
                raw.window_secs,
                MAX_WINDOW,
                defaults.window,
            ),
            ban: secs(
                self,
                "filter.autoban.ban_secs",
                raw.ban_secs,
                MAX_BAN,
                defaults.ban,
            ),
            max_tracked_sources: usize::try_from(max_tracked_sources)
                .unwrap_or(defaults.max_tracked_sources),
            ipv6_prefix: self.prefix_len(
                "filter.autoban.ipv6_prefix",
                raw.ipv6_prefix,
                MIN_IPV6_PREFIX..=MAX_IPV6_PREFIX,
                defaults.ipv6_prefix,
            ),
        }
    }

    fn interfaces(&mut self, list: TextList) -> Vec<String> {
        if list.get_ref().is_empty() {
            self.error(
                list.span().start,
                "`filter.interfaces` must list at least one interface",
            );
        }
        let mut names: Vec<String> = Vec::new();
        for name in list.into_inner() {
            let at = name.span().start;
            let name = name.into_inner();
            if let Err(why) = check_ifname(&name) {
                self.error(at, format!("invalid interface name {name:?}: {why}"));
            } else if names.contains(&name) {
                self.error(at, format!("interface {name:?} is listed twice"));
            } else {
                names.push(name);
            }
        }
        names
    }

    fn protect(&mut self, list: Option<TextList>) -> ProtectScope {
        let Some(list) = list else {
            return ProtectScope::default();
        };
        let mut all_at = None;
        let mut ports_given = false;
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for entry in list.into_inner() {
            let at = entry.span().start;
            match parse_protect_entry(entry.get_ref()) {
                Ok(ProtectEntry::All) => all_at = all_at.or(Some(at)),
                Ok(ProtectEntry::Tcp(ports)) => tcp.push(ports),
                Ok(ProtectEntry::Udp(ports)) => udp.push(ports),
                Err(why) => self.error(
                    at,
                    format!(
                        "invalid `filter.protect` entry {:?}: {why}",
                        entry.get_ref()
                    ),
                ),
            }
            ports_given |= !entry.get_ref().trim().eq_ignore_ascii_case("all");
        }
        match all_at {
            Some(at) => {
                if ports_given {
                    self.error(
                        at,
                        "\"all\" must be the only entry of `filter.protect` (it covers every port)",
                    );
                }
                ProtectScope::All
            }
            None => ProtectScope::Ports {
                tcp: merge_ranges(tcp),
                udp: merge_ranges(udp),
            },
        }
    }

    fn networks(&mut self, key: &str, list: Option<TextList>) -> Vec<IpNet> {
        let mut networks = Vec::new();
        for entry in list.map(Spanned::into_inner).unwrap_or_default() {
            match crate::rules::parse_entry(entry.get_ref()) {
                Ok(parsed) => networks.extend(parsed),
                Err(e) => self.error(
                    entry.span().start,
                    format!("invalid `{key}` entry {:?}: {e}", entry.get_ref()),
                ),
            }
        }
        networks
    }

    fn geo(&mut self, raw: Spanned<RawGeo>) -> Option<GeoConfig> {
        let raw = raw.into_inner();
        let database = self.path_or("filter.geo.database", raw.database, DEFAULT_GEO_DATABASE);
        let allow_only_empty = raw
            .allow_only
            .as_ref()
            .is_some_and(|list| list.get_ref().is_empty());
        let block = raw
            .block
            .map(|list| self.countries("filter.geo.block", list));
        let allow_only = raw
            .allow_only
            .map(|list| self.countries("filter.geo.allow_only", list));

        if let (Some(_), Some((at, _))) = (&block, &allow_only) {
            self.error(
                *at,
                "`filter.geo.block` and `filter.geo.allow_only` cannot both be set: choose one",
            );
        }
        if let Some((at, _)) = &allow_only
            && allow_only_empty
        {
            self.error(
                *at,
                "`filter.geo.allow_only` must list at least one country (remove it to allow every country)",
            );
        }
        // `allow_unknown = false` is what every other policy does anyway.
        if let Some(flag) = &raw.allow_unknown
            && *flag.get_ref()
            && allow_only.is_none()
        {
            self.error(
                flag.span().start,
                "`filter.geo.allow_unknown` only applies together with `filter.geo.allow_only`",
            );
        }
        let policy = match (block, allow_only) {
            (_, Some((_, countries))) => CountryPolicy::AllowOnly {
                countries,
                allow_unknown: raw.allow_unknown.is_some_and(Spanned::into_inner),
            },
            (Some((_, countries)), None) if !countries.is_empty() => {
                CountryPolicy::Block(countries)
            }
            _ => CountryPolicy::LabelOnly,
        };
        Some(GeoConfig { database, policy })
    }

    /// Checks a list of country codes; returns where the list starts and the
    /// codes, sorted and without duplicates.
    fn countries(&mut self, key: &str, list: TextList) -> (usize, Vec<CountryCode>) {
        let at = list.span().start;
        let mut codes = Vec::new();
        for code in list.into_inner() {
            match CountryCode::parse(code.get_ref()) {
                Some(parsed) => codes.push(parsed),
                None => self.error(
                    code.span().start,
                    format!(
                        "invalid country code {:?} in `{key}`: expected two ASCII letters, e.g. \"de\"",
                        code.get_ref()
                    ),
                ),
            }
        }
        codes.sort_unstable();
        codes.dedup();
        (at, codes)
    }

    fn flood(&mut self, raw: Spanned<RawFlood>) -> Option<FloodConfig> {
        let section = raw.span().start;
        let raw = raw.into_inner();
        let Some(rate) = raw.packets_per_second else {
            self.error(
                section,
                "[filter.flood] needs `packets_per_second` (remove the section to disable the flood limit)",
            );
            return None;
        };
        let packets_per_second = self.integer(
            "filter.flood.packets_per_second",
            Some(rate),
            1..=MAX_FLOOD_PACKETS_PER_SECOND,
            1,
        );
        let burst = self.integer(
            "filter.flood.burst",
            raw.burst,
            1..=MAX_FLOOD_BURST,
            packets_per_second,
        );
        let ipv6_prefix = self.prefix_len(
            "filter.flood.ipv6_prefix",
            raw.ipv6_prefix,
            MIN_FLOOD_IPV6_PREFIX..=MAX_FLOOD_IPV6_PREFIX,
            DEFAULT_FLOOD_IPV6_PREFIX,
        );
        Some(FloodConfig {
            packets_per_second,
            burst,
            ipv6_prefix,
        })
    }

    /// An integer within `range`, or `default` when absent (or invalid, after
    /// reporting it).
    fn integer(
        &mut self,
        key: &str,
        value: Option<Spanned<i64>>,
        range: RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        let wide = u64::from(*range.start())..=u64::from(*range.end());
        let n = self.integer64(key, value, wide, default.into());
        u32::try_from(n).unwrap_or(default)
    }

    /// A prefix length within `range`, or `default` when absent (or invalid, after
    /// reporting it).
    pub(super) fn prefix_len(
        &mut self,
        key: &str,
        value: Option<Spanned<i64>>,
        range: RangeInclusive<u8>,
        default: u8,
    ) -> u8 {
        let wide = u32::from(*range.start())..=u32::from(*range.end());
        let n = self.integer(key, value, wide, default.into());
        u8::try_from(n).unwrap_or(default)
    }

    /// A 64-bit integer within `range`, or `default` when absent (or invalid, after
    /// reporting it).
    fn integer64(
        &mut self,
        key: &str,
        value: Option<Spanned<i64>>,
        range: RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        match u64::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.error(
                    value.span().start,
                    format!(
                        "`{key}` must be between {} and {}, not {}",
                        range.start(),
                        range.end(),
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// One of `options` (by its configuration spelling), or `default` when
    /// absent (or invalid, after reporting it).
    fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<Text>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        match options.iter().find(|(name, _)| name == value.get_ref()) {
            Some((_, choice)) => *choice,
            None => {
                let names: Vec<String> = options
                    .iter()
                    .map(|(name, _)| format!("{name:?}"))
                    .collect();
                self.error(
                    value.span().start,
                    format!(
                        "invalid `{key}` {:?}: expected one of {}",
                        value.get_ref(),
                        names.join(", ")
                    ),
                );
                default
            }
        }
    }

    fn path_or(&mut self, key: &str, value: Option<Text>, default: &str) -> PathBuf {
        match value {
            Some(value) => self.path(key, value),
            None => PathBuf::from(default),
        }
    }

    /// An absolute path: the daemon's working directory is not something an
    /// operator should have to think about.
    fn path(&mut self, key: &str, value: Text) -> PathBuf {
        let path = PathBuf::from(value.get_ref());
        if !path.is_absolute() {
            self.error(
                value.span().start,
                format!(
                    "`{key}` must be an absolute path, not {:?}",
                    value.get_ref()
                ),
            );
        }
        path
    }
}

/// Whether the kernel would accept `name` as an interface name
/// (`dev_valid_name` in net/core/dev.c).
fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() >= IFNAMSIZ {
        return Err("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names");
    }
    if name.contains('/') {
        return Err("it contains '/'");
    }
    if name.contains(':') {
        return Err("it contains ':'");
    }
    if name.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err("it contains whitespace or a NUL");
    }
    Ok(())
}

enum ProtectEntry {
    All,
    Tcp(RangeInclusive<u16>),
    Udp(RangeInclusive<u16>),
}

/// `all`, `tcp/N`, `udp/N`, `tcp/N-M` or `udp/N-M`.
fn parse_protect_entry(entry: &str) -> Result<ProtectEntry, String> {
    let entry = entry.trim();
    if entry.eq_ignore_ascii_case("all") {
        return Ok(ProtectEntry::All);
    }
    let Some((protocol, ports)) = entry.split_once('/') else {
        return Err("expected \"tcp/PORT\", \"udp/PORT\", \"tcp/FIRST-LAST\" or \"all\"".into());
    };
    let ports = match ports.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (parse_port(first)?, parse_port(last)?);
            if first > last {
                return Err(format!("port range {first}-{last} is reversed"));
            }
            first..=last
        }
        None => {
            let port = parse_port(ports)?;
            port..=port
        }
    };
    if protocol.eq_ignore_ascii_case("tcp") {
        Ok(ProtectEntry::Tcp(ports))
    } else if protocol.eq_ignore_ascii_case("udp") {
        Ok(ProtectEntry::Udp(ports))
    } else {
        Err(format!(
            "unknown protocol {protocol:?} (expected tcp or udp)"
        ))
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    // `u32::from_str` accepts a leading '+'; a port is digits only.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a port number"));
    }
    text.parse::<u32>()
        .ok()
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("port {text} is out of range 1..=65535"))
}

/// Sorts ranges and merges those that overlap or touch.
fn merge_ranges(mut ranges: Vec<RangeInclusive<u16>>) -> Vec<RangeInclusive<u16>> {
    ranges.sort_by_key(|range| *range.start());
    let mut merged: Vec<RangeInclusive<u16>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(*range.start()) <= u32::from(*last.end()) + 1 => {
                if range.end() > last.end() {
                    *last = *last.start()..=*range.end();
                }
            }
            _ => merged.push(range),
        }
    }
    merged
}
