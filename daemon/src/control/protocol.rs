//! The control protocol between `rampart` (the CLI) and `rampartd`, defined once
//! for both sides.
//!
//! JSON lines over the control socket: the client writes one [`RequestEnvelope`]
//! per line, the daemon answers each with one [`Response`] line (an `events
//! --follow` request is answered by a stream of `Response::Ok(Reply::Event)` lines
//! until the client hangs up). Every request carries [`PROTOCOL_VERSION`]; a
//! daemon refuses a version it does not speak with [`ErrorKind::Version`].
//! Fields are added with `#[serde(default)]` so that an older peer's messages
//! still parse; removing or renaming one is a new version.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Version of the request/response shapes below.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads (a `--from-file` of 100k entries fits).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The longest TTL of a list entry (365 days), checked by the CLI and again by the
/// daemon: a longer one is meant as permanent, which is no TTL at all.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// The longest comment of a list entry, in bytes; checked by the CLI and again by
/// the daemon.
pub const MAX_COMMENT_BYTES: usize = 1024;

/// Whether `c` changes how text around it is shown rather than being shown
/// itself: control characters (Unicode category Cc: a newline that would start
/// a line of its own in a listing, terminal escapes), format characters (Cf:
/// bidirectional overrides such as U+202E that reverse what follows,
/// zero-width characters, U+FEFF) and the line and paragraph separators (Zl,
/// Zp). Comments may not hold them, and the CLI escapes them wherever it prints
/// free text (`\u{202e}`), since a state written before they were refused may
/// hold them. The categories come from `unicode-general-category` (Unicode
/// 16), not hand-kept ranges.
pub fn is_control_or_format(c: char) -> bool {
    use unicode_general_category::{GeneralCategory, get_general_category};
    // ASCII first: the common case needs no table lookup.
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Why a comment is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    #[error("longer than {MAX_COMMENT_BYTES} bytes")]
    TooLong,
    #[error("it contains control characters (one line only)")]
    Control,
    #[error(
        "it contains U+{:04X}, an invisible format character (such as a bidirectional override or a zero-width space)",
        u32::from(*ch)
    )]
    Format { ch: char },
}

/// The rule for a list entry's comment, shared by the CLI and the daemon: at
/// most [`MAX_COMMENT_BYTES`], one line, nothing that changes how a listing
/// reads ([`is_control_or_format`]).
pub fn check_comment(text: &str) -> Result<(), CommentError> {
    if text.len() > MAX_COMMENT_BYTES {
        return Err(CommentError::TooLong);
    }
    match text.chars().find(|c| is_control_or_format(*c)) {
        None => Ok(()),
        // The line and paragraph separators break lines as a newline does.
        Some(c) if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
            Err(CommentError::Control)
        }
        Some(ch) => Err(CommentError::Format { ch }),
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl RequestEnvelope {
    pub fn new(request: Request) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

/// The kernel lists an operator edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    Deny,
    Allow,
    Bypass,
}

impl ListName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
            Self::Bypass => "bypass",
        }
    }
}

/// Which key of a subscription (`keys rotate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySlotName {
    Primary,
    Secondary,
}

impl KeySlotName {
    /// As messages say it: `primary` or `secondary`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlotName::Primary => "primary",
            KeySlotName::Secondary => "secondary",
        }
    }
}

impl std::fmt::Display for KeySlotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subscription's scope as the CLI gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum ScopeSpec {
    /// Every API.
    All,
    /// The APIs of one product.
    Product(String),
    /// One API.
    Api(String),
}

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Daemon, filter and gateway summary.
    Status,
    /// Kernel counters, drops by country, gateway requests and rejections.
    Stats,
    /// What the kernel decides for a source (and optionally a destination port).
    Check {
        addr: IpAddr,
        #[serde(default)]
        port: Option<u16>,
        /// `tcp` (default) or `udp`.
        #[serde(default)]
        udp: bool,
    },
    /// Adds entries (addresses, CIDRs or inclusive ranges `a-b`) to a list.
    /// With `replace`, the operator's entries of that list become exactly these
    /// (one atomic change); config-file and automatic entries are kept.
    ListAdd {
        list: ListName,
        entries: Vec<String>,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        comment: Option<String>,
        #[serde(default)]
        replace: bool,
    },
    /// Removes operator or automatic entries (config-file entries are changed in
    /// the file).
    ListDel {
        list: ListName,
        entries: Vec<String>,
    },
    /// The live entries of a list, with where each comes from.
    ListShow {
        list: ListName,
    },
    /// Adds countries (two-letter codes) to the blocked set.
    CountryBlock {
        countries: Vec<String>,
    },
    /// Removes countries from the blocked set.
    CountryUnblock {
        countries: Vec<String>,
    },
    /// Only these countries pass (sources of unknown country pass only with
    /// `allow_unknown`); an empty list turns the country policy off.
    CountryAllowOnly {
        countries: Vec<String>,
        #[serde(default)]
        allow_unknown: bool,
    },
    /// The country policy and database.
    CountryList,
    /// Loads a country database (MMDB, CSV or a directory of zone files) from a
    /// path the daemon reads, replacing the table atomically.
    GeoLoad {
        path: String,
    },
    KeysCreate {
        name: String,
        scope: ScopeSpec,
    },
    KeysList,
    KeysRotate {
        name: String,
        slot: KeySlotName,
    },
    KeysSuspend {
        name: String,
    },
    KeysActivate {
        name: String,
    },
    KeysRevoke {
        name: String,
    },
    /// Reads the configuration file again and swaps it in when valid.
    Reload,
    /// Recent events; with `follow`, new ones as they happen.
    Events {
        #[serde(default)]
        follow: bool,
        /// How many recent events to send first.
        #[serde(default = "default_event_backlog")]
        last: usize,
    },
}

fn default_event_backlog() -> usize {
    50
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ErrorReply),
}

/// Why a request failed; decides the CLI's exit code (never the message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (bad address, unknown country, bad name).
    InvalidInput,
    /// The entry, subscription or file named does not exist.
    NotFound,
    /// It exists already (a subscription name).
    Conflict,
    /// The peer may not use the control socket.
    PermissionDenied,
    /// The change could not be made durable (disk full, read-only); nothing changed.
    Storage,
    /// The kernel refused the change; nothing changed.
    Kernel,
    /// The daemon has no such part configured (no `[filter]`, no gateway).
    Unavailable,
    /// The configuration file is invalid (reload); the running one stays.
    Config,
    /// The peer speaks another protocol version.
    Version,
    /// Anything else.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
    /// Every problem, one per line (e.g. each configuration error).
    #[serde(default)]
    pub details: Vec<String>,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

/// Exit codes of the `rampart` CLI, which scripts can rely on.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The daemon could not carry the request out (storage, kernel, internal).
    pub const FAILED: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// Invalid input: an entry, country, name or file the CLI or daemon refused.
    pub const INVALID_INPUT: u8 = 3;
    /// Not found (entry, subscription).
    pub const NOT_FOUND: u8 = 4;
    /// Permission denied on the control socket.
    pub const PERMISSION_DENIED: u8 = 5;
    /// The daemon is not running (no socket, or nobody listening).
    pub const DAEMON_DOWN: u8 = 6;
    /// Already exists.
    pub const CONFLICT: u8 = 7;
    /// Reload refused: the configuration file is invalid.
    pub const BAD_CONFIG: u8 = 8;
    /// `check`: the kernel drops this source (only with `check --exit-code`).
    pub const CHECK_DROPPED: u8 = 10;
}

impl ErrorKind {
    /// The CLI's exit code for this error.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::InvalidInput => exit::INVALID_INPUT,
            Self::NotFound => exit::NOT_FOUND,
            Self::Conflict => exit::CONFLICT,
            Self::PermissionDenied => exit::PERMISSION_DENIED,
            Self::Config => exit::BAD_CONFIG,
            Self::Storage | Self::Kernel | Self::Unavailable | Self::Version | Self::Internal => {
                exit::FAILED
            }
        }
    }
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReply>),
    Stats(StatsReply),
    Check(CheckReply),
    Changed(ChangeReply),
    Entries {
        entries: Vec<EntryView>,
    },
    Countries(CountriesReply),
    GeoLoaded(GeoReply),
    /// The keys of a new subscription: shown once, never again.
    KeysCreated {
        name: String,
        primary: String,
        secondary: String,
    },
    KeyRotated {
        name: String,
        slot: KeySlotName,
        key: String,
    },
    Subscriptions {
        subscriptions: Vec<SubscriptionView>,
    },
    Reloaded {
        message: String,
    },
    Event(EventView),
    /// Done, nothing to report.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// rampartd's version.
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: String,
    /// `None` without `[filter]`.
    pub filter: Option<FilterStatus>,
    /// `None` without listeners.
    pub gateway: Option<GatewayStatus>,
    /// The last reload, if any: when (unix secs) and whether it was applied.
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStatus {
    /// `interface (mode)` per attachment.
    pub interfaces: Vec<String>,
    pub pins: String,
    pub deny: usize,
    pub allow: usize,
    pub bypass: usize,
    /// Entries from automatic bans (part of `deny`).
    pub auto_bans: usize,
    pub country_policy: String,
    /// The countries the policy blocks (or, `allow_only`, lets through),
    /// upper case.
    #[serde(default)]
    pub countries: Vec<String>,
    pub country_prefixes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub listeners: Vec<String>,
    pub apis: usize,
    pub subscriptions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub at: u64,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Kernel counters by reason (passed, denied, ...), summed over CPUs.
    pub kernel: Vec<(String, u64)>,
    /// Kernel drops by country code.
    pub drops_by_country: Vec<(String, u64)>,
    /// Gateway requests handled.
    pub requests: u64,
    /// Gateway-made errors by APIM reason.
    pub rejections: Vec<(String, u64)>,
    /// Automatic bans issued since start.
    pub bans_issued: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReply {
    pub addr: IpAddr,
    pub port: Option<u16>,
    /// `pass` or `drop`.
    pub action: String,
    /// The kernel's reason name (`bypass`, `denied`, `not_allowed`, `country`, ...).
    pub reason: String,
    /// The list and entry that decided, when one did.
    pub list: Option<ListName>,
    pub entry: Option<String>,
    /// `config`, `operator` or `auto`.
    pub origin: Option<String>,
    pub expires_in_secs: Option<u64>,
    pub country: Option<String>,
    /// Whether the destination is in the protected scope (allowlist, country and
    /// flood rules apply); `None` when no port was given.
    pub in_scope: Option<bool>,
    /// One sentence for people.
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReply {
    /// Entries (or countries) added, updated or removed.
    pub changed: usize,
    /// Of `changed`, the entries that were there already and were updated in
    /// place: by a list add (without `replace`), an entry extended to a later
    /// expiry or made permanent. 0 from a daemon older than this field.
    #[serde(default)]
    pub updated: usize,
    /// Already there (add: for at least as long as asked) or not there (del).
    pub unchanged: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub list: ListName,
    /// The network (a CIDR; single addresses as /32 or /128).
    pub entry: String,
    /// `config`, `operator` or `auto`.
    pub origin: String,
    /// Unix seconds; `None` = permanent.
    pub expires_at: Option<u64>,
    pub comment: Option<String>,
    /// The uid that made the change (operator and auto entries).
    pub added_by: Option<u32>,
    pub added_at: Option<u64>,
    /// Why an automatic ban was made.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountriesReply {
    /// `off` (labels only), `block` or `allow_only`.
    pub policy: String,
    pub countries: Vec<String>,
    pub allow_unknown: bool,
    /// `config` or `operator`: where the policy in force comes from.
    pub origin: String,
    /// The database in force, described.
    pub database: Option<String>,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoReply {
    pub source: String,
    pub countries: usize,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub name: String,
    /// `all`, `product:NAME` or `api:NAME`.
    pub scope: String,
    /// The API or product `scope` names is not configured (removed from the
    /// file): the subscription's keys grant nothing. Absent (false) from a
    /// daemon that does not tell.
    #[serde(default)]
    pub scope_missing: bool,
    /// `active`, `suspended` or `cancelled`.
    pub state: String,
    /// `config` or `store`.
    pub origin: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// `list_changed`, `ban_added`, `ban_expired`, `config_reloaded`, `keys_changed`,
    /// `geo_loaded`, `xdp_drop`, ...
    pub event: String,
    pub message: String,
    #[serde(default)]
    pub fields: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_json_lines() {
        let line = serde_json::to_string(&RequestEnvelope::new(Request::ListAdd {
            list: ListName::Deny,
            entries: vec!["198.18.0.1".into()],
            ttl_secs: Some(600),
            comment: None,
            replace: false,
        }))
        .unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""version":1"#), "{line}");
        assert!(line.contains(r#""op":"list_add""#), "{line}");
        let back: RequestEnvelope = serde_json::from_str(&line).unwrap();
        assert_eq!(back.version, PROTOCOL_VERSION);
    }

    #[test]
    fn optional_fields_may_be_left_out() {
        let r: RequestEnvelope =
            serde_json::from_str(r#"{"version":1,"op":"list_add","list":"allow","entries":[]}"#)
                .unwrap();
        assert_eq!(
            r.request,
            Request::ListAdd {
                list: ListName::Allow,
                entries: vec![],
                ttl_secs: None,
                comment: None,
                replace: false
            }
        );
        let r: RequestEnvelope = serde_json::from_str(r#"{"version":1,"op":"events"}"#).unwrap();
        assert_eq!(
            r.request,
            Request::Events {
                follow: false,
                last: 50
            }
        );
    }

    #[test]
    fn comments_are_one_line_of_visible_text() {
        assert_eq!(check_comment("ticket 42 — café 🚫"), Ok(()));
        assert_eq!(check_comment(&"x".repeat(MAX_COMMENT_BYTES)), Ok(()));
        assert_eq!(
            check_comment(&"x".repeat(MAX_COMMENT_BYTES + 1)),
            Err(CommentError::TooLong)
        );
        for text in ["a\nb", "a\u{0}b", "a\u{7f}b", "a\u{9b}b", "a\u{2029}b"] {
            assert_eq!(check_comment(text), Err(CommentError::Control), "{text:?}");
        }
        // Category Cf, from the bidirectional controls to the tag characters.
        for ch in [
            '\u{ad}',
            '\u{61c}',
            '\u{200b}',
            '\u{200d}',
            '\u{200f}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{fff9}',
            '\u{e0001}',
            '\u{e007f}',
        ] {
            assert_eq!(
                check_comment(&format!("a{ch}b")),
                Err(CommentError::Format { ch }),
                "U+{:04X}",
                u32::from(ch)
            );
        }
    }

    #[test]
    fn a_change_reply_without_updated_is_an_older_daemons() {
        let r: ChangeReply = serde_json::from_str(r#"{"changed":2,"unchanged":1}"#).unwrap();
        assert_eq!(
            r,
            ChangeReply {
                changed: 2,
                updated: 0,
                unchanged: 1
            }
        );
    }

    #[test]
    fn responses_say_ok_or_error() {
        let ok = serde_json::to_string(&Response::Ok(Reply::Done)).unwrap();
        assert_eq!(ok, r#"{"ok":{"type":"done"}}"#);
        let err = serde_json::to_string(&Response::Error(ErrorReply::new(
            ErrorKind::NotFound,
            "no such entry",
        )))
        .unwrap();
        let back: Response = serde_json::from_str(&err).unwrap();
        assert_eq!(
            back,
            Response::Error(ErrorReply::new(ErrorKind::NotFound, "no such entry"))
        );
        assert_eq!(ErrorKind::NotFound.exit_code(), exit::NOT_FOUND);
    }
}
