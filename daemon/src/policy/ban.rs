//! Automatic bans: sources that keep failing at the gateway are banned in the kernel for
//! a while (`[filter.autoban]`).
//!
//! The gateway calls [`BanTracker::record`] with the reason code of every rejection it
//! makes (nothing is called on the pass path). Two classes of reasons count, each against
//! its own threshold within a sliding window:
//! - authentication failures: a missing or invalid subscription key, a missing or invalid
//!   token (`validate-jwt` failures, claims included), a refused client certificate;
//! - rate-limit rejections (`RateLimitExceeded`, the 429 of `rate-limit`).
//!
//! Everything else (quotas, roles, CORS, unknown operations, backend failures, the
//! identity provider's keys being unavailable) says nothing about the client's intent and
//! is ignored. The threshold-th failure within the window returns a [`BanRequest`]; the
//! source's counters are then reset and it is not counted again until the ban ends.
//! Sources inside exempt networks (bypass list, trusted proxies) are never counted.
//!
//! A source is an IPv4 address, or the IPv6 prefix of `ipv6_prefix` bits that holds
//! the address ([`source_net`]): an IPv6 client usually holds a whole /64 and can
//! change address at will, so counting per address would give it a fresh allowance
//! per address and never ban it. The ban is of that prefix.
//!
//! The window is exact: the times of the last `threshold - 1` failures of each class are
//! kept (4 bytes each), so memory is at most about `max_tracked_sources × (auth_failures +
//! rate_limited) × 4` bytes plus about 100 bytes per source (27 MB with the defaults
//! under a flood of 100,000 failing sources). Past `max_tracked_sources`, idle sources are
//! dropped first, then the least recently seen (those under a ban last).
//!
//! Sources are spread over independent mutex-protected shards, so concurrent requests from
//! different sources rarely wait for each other.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[cfg(test)]
mod tests;

/// Authentication failures within the window that ban a source, unless configured.
pub const DEFAULT_AUTH_FAILURES: u32 = 20;
/// Rate-limit rejections within the window that ban a source, unless configured.
pub const DEFAULT_RATE_LIMITED: u32 = 50;
/// The sliding window, unless configured.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// How long a ban lasts, unless configured.
pub const DEFAULT_BAN: Duration = Duration::from_secs(600);
/// Sources tracked at most, unless configured.
pub const DEFAULT_MAX_TRACKED_SOURCES: usize = 100_000;
/// Highest configurable threshold (it bounds the memory per source).
pub const MAX_THRESHOLD: u32 = 1_000;
/// Longest configurable window (it keeps failure times within 32-bit milliseconds).
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// Longest configurable ban.
pub const MAX_BAN: Duration = Duration::from_secs(365 * 86_400);
/// Bounds of `max_tracked_sources`.
pub const MIN_TRACKED_SOURCES: usize = 1_024;
pub const MAX_TRACKED_SOURCES: usize = 10_000_000;
/// The IPv6 prefix counted and banned as one source, unless configured: what an
/// ISP or a cloud hands one customer.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Bounds of `ipv6_prefix` (128: per address).
pub const MIN_IPV6_PREFIX: u8 = 32;
pub const MAX_IPV6_PREFIX: u8 = 128;
/// Automatic bans of IPv6 prefixes in force at most; past it a source's address alone
/// is banned. A prefix takes room in the kernel's prefix table (a class of its own,
/// its expiry being its own, and up to six nodes): bans must never fill the table and
/// so lock the operator's own prefix rules out.
pub const MAX_PREFIX_BANS: usize = 1_024;

/// Independent locks; a power of two well above the number of gateway threads.
const SHARDS: usize = 64;

/// `[filter.autoban]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutobanSettings {
    pub enabled: bool,
    /// Authentication failures within `window` that ban a source; 0 = never.
    pub auth_failures: u32,
    /// Rate-limit rejections within `window` that ban a source; 0 = never.
    pub rate_limited: u32,
    pub window: Duration,
    /// How long a ban lasts.
    pub ban: Duration,
    pub max_tracked_sources: usize,
    /// Length of the IPv6 prefix counted and banned as one source (IPv4: per address).
    pub ipv6_prefix: u8,
}

impl Default for AutobanSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            auth_failures: DEFAULT_AUTH_FAILURES,
            rate_limited: DEFAULT_RATE_LIMITED,
            window: DEFAULT_WINDOW,
            ban: DEFAULT_BAN,
            max_tracked_sources: DEFAULT_MAX_TRACKED_SOURCES,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl AutobanSettings {
    fn threshold(&self, class: FailureClass) -> u32 {
        match class {
            FailureClass::Authentication => self.auth_failures,
            FailureClass::RateLimited => self.rate_limited,
        }
    }
}

/// What kind of failure a rejection is, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    Authentication,
    RateLimited,
}

impl FailureClass {
    /// The class of a rejection's reason code (`Rejection::reason`); `None` for reasons
    /// that do not count.
    pub fn of(reason: &str) -> Option<Self> {
        use super::client_cert::reason as cert;
        use super::jwt::reason as jwt;
        match reason {
            "SubscriptionKeyNotFound"
            | "SubscriptionKeyInvalid"
            | jwt::TOKEN_NOT_PRESENT
            | jwt::JWT_INVALID
            | jwt::SIGNATURE_INVALID
            | jwt::SIGNATURE_KEY_NOT_FOUND
            | jwt::EXPIRED
            | jwt::NOT_YET_VALID
            | jwt::AUDIENCE_NOT_ALLOWED
            | jwt::ISSUER_NOT_ALLOWED
            | jwt::CLAIM_NOT_FOUND
            | jwt::CLAIM_VALUE_NOT_ALLOWED
            | cert::NOT_FOUND
            | cert::EXPIRED
            | cert::NOT_YET_VALID
            | cert::IDENTITY_NOT_MATCHED => Some(Self::Authentication),
            "RateLimitExceeded" => Some(Self::RateLimited),
            _ => None,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::RateLimited => "rate_limited",
        }
    }

    /// "N authentication failures", "1 authentication failure".
    fn counted(self, n: u32) -> String {
        let what = match self {
            Self::Authentication => "authentication failure",
            Self::RateLimited => "rate-limit rejection",
        };
        format!("{n} {what}{}", if n == 1 { "" } else { "s" })
    }
}

/// The network counted and banned for `source`: an IPv4 address alone, the IPv6
/// prefix of `ipv6_prefix` bits holding an IPv6 address (an IPv4-mapped address is
/// the IPv4 address the kernel sees).
pub fn source_net(source: IpAddr, ipv6_prefix: u8) -> IpNet {
    match source.to_canonical() {
        IpAddr::V4(ip) => IpNet::V4(Ipv4Net::from(ip)),
        IpAddr::V6(ip) => IpNet::V6(
            Ipv6Net::new(ip, ipv6_prefix.min(MAX_IPV6_PREFIX))
                .unwrap_or_else(|_| Ipv6Net::from(ip))
                .trunc(),
        ),
    }
}

/// `net` narrowed to the shortest prefix around `source` that overlaps none of
/// `spared` (`net` itself when it overlaps none); `None` when even `source` alone is
/// in one of them.
fn spare(net: IpNet, source: IpAddr, spared: &[IpNet]) -> Option<IpNet> {
    let source = source.to_canonical();
    let overlaps = |n: &IpNet| {
        spared
            .iter()
            .any(|s| s.contains(&n.network()) || n.contains(&s.network()))
    };
    (net.prefix_len()..=net.max_prefix_len())
        .filter_map(|len| IpNet::new(source, len).ok().map(|n| n.trunc()))
        .find(|n| net.contains(n) && !overlaps(n))
}

/// The form a network takes in messages: an address alone without `/32` or `/128`.
pub fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// A source to ban in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRequest {
    /// The network to ban: the source's address, or its IPv6 prefix.
    pub net: IpNet,
    /// The address of the failure that reached the threshold.
    pub source: IpAddr,
    pub class: FailureClass,
    /// For the operator, e.g. "20 authentication failures within 60 s (last:
    /// TokenExpired)", or "20 authentication failures within 60 s from addresses in
    /// 2001:db8:1:2::/64 (last: TokenExpired, from 2001:db8:1:2::7)".
    pub reason: String,
    pub ttl: Duration,
}

impl BanRequest {
    /// The network to put in the deny list and the reason to record with it: `net`,
    /// narrowed to leave out the networks of `spared` (trusted proxies: the kernel
    /// does not know them, unlike bypass networks, which it lets through a deny
    /// prefix), or the source's address alone when `prefix_bans()` (the automatic
    /// prefix bans in force) is at [`MAX_PREFIX_BANS`]. `None`: nothing to ban (the
    /// source is in `spared`).
    pub fn target(
        &self,
        spared: &[IpNet],
        prefix_bans: impl FnOnce() -> usize,
    ) -> Option<(IpNet, String)> {
        let net = spare(self.net, self.source, spared)?;
        let mut reason = self.reason.clone();
        if net != self.net {
            reason = format!(
                "{reason}; banned as {net}: {} holds a trusted proxy",
                self.net
            );
        }
        if net.prefix_len() < net.max_prefix_len() && prefix_bans() >= MAX_PREFIX_BANS {
            let alone = IpNet::from(self.source.to_canonical());
            reason = format!(
                "{reason}; banned as {} alone: {MAX_PREFIX_BANS} prefix bans are in force",
                self.source
            );
            return Some((alone, reason));
        }
        Some((net, reason))
    }
}

/// Failure counts per source; see the module documentation.
#[derive(Debug)]
pub struct BanTracker {
    settings: ArcSwap<AutobanSettings>,
    exempt: ArcSwap<Exempt>,
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    evictions: AtomicU64,
}

impl BanTracker {
    pub fn new(settings: AutobanSettings) -> Self {
        Self {
            settings: ArcSwap::from_pointee(settings),
            exempt: ArcSwap::from_pointee(Exempt::default()),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            epoch: Instant::now(),
            evictions: AtomicU64::new(0),
        }
    }

    /// New settings (a reload); counts so far are kept.
    pub fn set_settings(&self, settings: AutobanSettings) {
        self.settings.store(settings.into());
    }

    pub fn settings(&self) -> AutobanSettings {
        **self.settings.load()
    }

    /// Replaces the networks whose sources are never banned (the bypass list and the
    /// trusted proxies).
    pub fn set_exempt(&self, networks: Vec<IpNet>) {
        self.exempt.store(Exempt::new(networks).into());
    }

    /// Forgets the source that `net` belongs to (a deny entry lifted by hand: the
    /// source's ban, or an address inside it): its failures count again at once.
    /// A network wider than a source is not looked into.
    pub fn forget(&self, net: IpNet) {
        let key = source_net(net.addr(), self.settings().ipv6_prefix);
        if key.contains(&net) {
            self.shard(key).tracks.remove(&key);
        }
    }

    /// Counts one rejection of `source` for `reason` (APIM's reason code) at `now`;
    /// returns a ban when this failure reaches its class's threshold.
    pub fn record(&self, source: IpAddr, reason: &'static str, now: Instant) -> Option<BanRequest> {
        let class = FailureClass::of(reason)?;
        let settings = self.settings();
        let threshold = settings.threshold(class);
        if !settings.enabled || threshold == 0 {
            return None;
        }
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the kernel sees them
        // as IPv4.
        let source = source.to_canonical();
        if self.exempt.load().contains(source) {
            return None;
        }
        let net = source_net(source, settings.ipv6_prefix);
        let now_ms = self.millis(now);
        let window_ms = millis(settings.window);
        let mut shard = self.shard(net);
        let capacity = (settings.max_tracked_sources / SHARDS).max(1);
        if shard.tracks.len() >= capacity && !shard.tracks.contains_key(&net) {
            let evicted = shard.make_room(now_ms, window_ms, capacity);
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        let track = shard.tracks.entry(net).or_default();
        if track.banned_until > now_ms {
            return None;
        }
        if now_ms.saturating_sub(track.last_seen) >= window_ms {
            // Nothing within the window: also frees the queues' memory.
            track.auth = VecDeque::new();
            track.rate = VecDeque::new();
        }
        track.last_seen = track.last_seen.max(now_ms);
        let times = match class {
            FailureClass::Authentication => &mut track.auth,
            FailureClass::RateLimited => &mut track.rate,
        };
        while times.front().is_some_and(|&t| age(now_ms, t) >= window_ms) {
            times.pop_front();
        }
        if times.len() + 1 < threshold as usize {
            times.push_back(now_ms as u32);
            return None;
        }
        track.auth = VecDeque::new();
        track.rate = VecDeque::new();
        track.banned_until = now_ms.saturating_add(millis(settings.ban));
        let counted = format!(
            "{} within {} s",
            class.counted(threshold),
            settings.window.as_secs()
        );
        let reason = if net.prefix_len() == net.max_prefix_len() {
            format!("{counted} (last: {reason})")
        } else {
            format!("{counted} from addresses in {net} (last: {reason}, from {source})")
        };
        Some(BanRequest {
            net,
            source,
            class,
            reason,
            ttl: settings.ban,
        })
    }

    /// Drops the sources with no failure within the window and no ban in force; returns
    /// how many. Call it periodically (every window, say).
    pub fn sweep(&self, now: Instant) -> usize {
        let now_ms = self.millis(now);
        let window_ms = millis(self.settings().window);
        self.shards
            .iter()
            .map(|shard| lock(shard).drop_idle(now_ms, window_ms))
            .sum()
    }

    /// Sources tracked now (failing, or banned).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).tracks.len())
            .sum()
    }

    /// Sources dropped to keep within `max_tracked_sources` since the start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn shard(&self, source: IpNet) -> MutexGuard<'_, Shard> {
        // SHARDS divides 2^64: the remainder is uniform.
        let index = (self.hasher.hash_one(source) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    fn millis(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic elsewhere cannot leave a shard half-updated in a way that matters here.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Age in milliseconds of a failure time kept as the low 32 bits of its milliseconds.
/// Exact because every kept time is less than two windows (two days at most) old: a
/// source's queues are emptied when it has been quiet for a window. A time slightly
/// ahead of `now` (another thread's clock reading) counts as age 0.
fn age(now_ms: u64, then: u32) -> u64 {
    let age = (now_ms as u32).wrapping_sub(then);
    if age > u32::MAX / 2 {
        0
    } else {
        u64::from(age)
    }
}

/// Tracks by source: an address (`/32`, `/128`) or an IPv6 prefix.
#[derive(Debug, Default)]
struct Shard {
    tracks: HashMap<IpNet, Track, foldhash::fast::RandomState>,
}

#[derive(Debug, Default)]
struct Track {
    /// Milliseconds since the tracker's epoch.
    last_seen: u64,
    /// End of the ban in force (milliseconds since the epoch); 0 = none.
    banned_until: u64,
    /// Times of the failures within the window, oldest first (low 32 bits of ms).
    auth: VecDeque<u32>,
    rate: VecDeque<u32>,
}

impl Track {
    fn idle(&self, now_ms: u64, window_ms: u64) -> bool {
        self.banned_until <= now_ms && now_ms.saturating_sub(self.last_seen) >= window_ms
    }
}

impl Shard {
    fn drop_idle(&mut self, now_ms: u64, window_ms: u64) -> usize {
        let before = self.tracks.len();
        self.tracks.retain(|_, t| !t.idle(now_ms, window_ms));
        before - self.tracks.len()
    }

    /// Makes room for new sources: drops idle ones, then, until an eighth of `capacity`
    /// is free, the least recently seen (sources under a ban last). Freeing a batch
    /// keeps the cost per new source constant under a flood of distinct sources.
    fn make_room(&mut self, now_ms: u64, window_ms: u64, capacity: usize) -> u64 {
        let mut dropped = self.drop_idle(now_ms, window_ms);
        let keep = capacity - (capacity / 8).max(1);
        if self.tracks.len() > keep {
            let excess = self.tracks.len() - keep;
            let mut order: Vec<(bool, u64, IpNet)> = self
                .tracks
                .iter()
                .map(|(net, t)| (t.banned_until > now_ms, t.last_seen, *net))
                .collect();
            order.select_nth_unstable(excess - 1);
            for (_, _, net) in &order[..excess] {
                self.tracks.remove(net);
            }
            dropped += excess;
        }
        dropped as u64
    }
}

/// Exempt networks, aggregated, by family.
#[derive(Debug, Default)]
struct Exempt {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Exempt {
    fn new(networks: Vec<IpNet>) -> Self {
        let mut exempt = Self::default();
        for net in IpNet::aggregate(&networks) {
            match net {
                IpNet::V4(net) => exempt.v4.push(net),
                IpNet::V6(net) => exempt.v6.push(net),
            }
        }
        exempt
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.iter().any(|net| net.contains(&ip)),
            IpAddr::V6(ip) => self.v6.iter().any(|net| net.contains(&ip)),
        }
    }
}
