//! How replies look: aligned tables and `key: value` blocks for people, JSON
//! for scripts. Pure functions of the reply (and of "now", passed in), so
//! that tests can pin the output.

use std::{
    borrow::Cow,
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::control::protocol::{
    CheckReply, CountriesReply, EntryView, EventView, FilterStatus, GeoReply, KeySlotName,
    ListName, Reply, ScopeSpec, StatsReply, StatusReply, SubscriptionView, is_control_or_format,
};

/// What `--json` prints: listings as their array (entries, subscriptions)
/// or object (countries, one event), every other reply as the daemon sent
/// it, with its `type`. Serialized straight from the protocol types, so the
/// fields keep the protocol's order.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Json<'a> {
    Entries(&'a [EntryView]),
    Subscriptions(&'a [SubscriptionView]),
    Countries(&'a CountriesReply),
    Event(&'a EventView),
    Reply(&'a Reply),
}

pub fn json(reply: &Reply) -> Json<'_> {
    match reply {
        Reply::Entries { entries } => Json::Entries(entries),
        Reply::Subscriptions { subscriptions } => Json::Subscriptions(subscriptions),
        Reply::Countries(countries) => Json::Countries(countries),
        Reply::Event(event) => Json::Event(event),
        other => Json::Reply(other),
    }
}

/// A compact duration, `9m58s`, `2h`, `1d3h`: what `--ttl` accepts back.
/// (humantime's own format puts spaces between units, which breaks columns.)
pub fn duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// Unix seconds as UTC RFC 3339, `2025-01-31T12:00:00Z`.
pub fn time(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// Unix milliseconds as UTC RFC 3339 with milliseconds.
pub fn time_ms(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Free text from the daemon as it may be printed: control and format
/// characters escaped (`\n`, `\u{202e}`), so that a comment cannot start a line
/// of its own or reverse the text after it. The daemon refuses them in what it
/// stores now, but a state written by an older rampartd may still hold them.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control_or_format) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control_or_format(c) {
            // `\t`, `\r`, `\n`, else `\u{...}`: none of these is printable.
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `1 entry`, `2 entries`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Columns padded to their widest cell, two spaces apart; the last column
/// is not padded, so lines carry no trailing blanks.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with this header row; `right[i]` right-aligns column `i`
    /// (numbers).
    pub fn new(header: &[&str], right: &[bool]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
            right: right.to_vec(),
        }
    }

    /// A table without a header row.
    pub fn bare(right: &[bool]) -> Self {
        Self {
            rows: Vec::new(),
            right: right.to_vec(),
        }
    }

    /// Adds a row; whatever a cell holds is [`shown`] escaped.
    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|cell| match shown(&cell) {
                Cow::Borrowed(_) => cell,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        self.rows.push(cells);
    }

    pub fn render(&self, indent: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = " ".repeat(indent);
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = widths[c].saturating_sub(cell.chars().count());
                let right = self.right.get(c).copied().unwrap_or(false);
                if right {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if c + 1 < row.len() {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
fn fields(rows: &[(&str, String)], indent: usize) -> String {
    let mut table = Table::bare(&[]);
    for (key, value) in rows {
        table.row(vec![format!("{key}:"), value.clone()]);
    }
    table.render(indent)
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

/// `deny list` and friends.
pub fn entries(list: ListName, entries: &[EntryView], now: u64) -> String {
    if entries.is_empty() {
        return format!("the {} list is empty\n", list.as_str());
    }
    let mut table = Table::new(
        &["ENTRY", "ORIGIN", "EXPIRES IN", "ADDED", "BY", "COMMENT"],
        &[],
    );
    for e in entries {
        let expires = match e.expires_at {
            None => "never".to_string(),
            Some(at) if at <= now => "expired".to_string(),
            Some(at) => duration(at - now),
        };
        let note = match (&e.comment, &e.reason) {
            (Some(c), Some(r)) => format!("{c} ({r})"),
            (Some(c), None) => c.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => "-".into(),
        };
        table.row(vec![
            e.entry.clone(),
            e.origin.clone(),
            expires,
            or_dash(e.added_at.map(time)),
            or_dash(e.added_by.map(|uid| uid.to_string())),
            note,
        ]);
    }
    table.render(0)
}

/// `keys list`.
pub fn subscriptions(subs: &[SubscriptionView]) -> String {
    if subs.is_empty() {
        return "no subscriptions\n".into();
    }
    let mut table = Table::new(&["NAME", "SCOPE", "STATE", "ORIGIN", "CREATED"], &[]);
    for s in subs {
        let scope = match (s.scope_missing, s.scope.split_once(':')) {
            (true, Some(("api", _))) => format!("{} (no such API)", s.scope),
            (true, Some(("product", _))) => format!("{} (no such product)", s.scope),
            (true, _) => format!("{} (not configured)", s.scope),
            (false, _) => s.scope.clone(),
        };
        table.row(vec![
            s.name.clone(),
            scope,
            s.state.clone(),
            s.origin.clone(),
            // A subscription declared in the configuration has no creation time
            // (0 on the wire): a dash, not 1970.
            or_dash((s.created_at != 0).then(|| time(s.created_at))),
        ]);
    }
    table.render(0)
}

/// How a scope reads in a sentence.
pub fn scope(scope: &ScopeSpec) -> String {
    match scope {
        ScopeSpec::All => "every API".into(),
        ScopeSpec::Product(p) => format!("the APIs of product {p:?}"),
        ScopeSpec::Api(a) => format!("API {a:?}"),
    }
}

const SHOWN_ONCE: &str =
    "These keys are shown once: rampartd keeps only their hashes. Store them now.";

/// `keys create`.
pub fn keys_created(name: &str, primary: &str, secondary: &str, scope_text: &str) -> String {
    let mut out = format!("subscription {name:?} created, scope: {scope_text}\n");
    out.push_str(&fields(
        &[
            ("primary key", primary.into()),
            ("secondary key", secondary.into()),
        ],
        0,
    ));
    out.push_str(SHOWN_ONCE);
    out.push('\n');
    out
}

/// `keys rotate`.
pub fn key_rotated(name: &str, slot: KeySlotName, key: &str) -> String {
    format!(
        "subscription {name:?}: new {slot} key\n{slot} key: {key}\n\
         This key is shown once: rampartd keeps only its hash. Store it now.\n"
    )
}

/// `check`: the daemon's sentence, then what it rests on (`udp`: the port
/// asked about is a UDP port).
pub fn check(c: &CheckReply, udp: bool) -> String {
    let mut out = format!("{}\n", shown(&c.explanation));
    let mut rows = vec![("verdict", format!("{} ({})", c.action, c.reason))];
    let mut source = c.addr.to_string();
    if let Some(country) = &c.country {
        let _ = write!(source, " (country {country})");
    }
    rows.push(("source", source));
    if let Some(port) = c.port {
        let scope = match c.in_scope {
            Some(true) => ", in the protected scope",
            Some(false) => ", not in the protected scope",
            None => "",
        };
        let protocol = if udp { "udp" } else { "tcp" };
        rows.push(("port", format!("{protocol}/{port}{scope}")));
    }
    if let Some(entry) = &c.entry {
        let mut rule = match c.list {
            Some(list) => format!("{} {entry}", list.as_str()),
            None => entry.clone(),
        };
        let mut notes = Vec::new();
        if let Some(origin) = &c.origin {
            notes.push(origin.clone());
        }
        if let Some(secs) = c.expires_in_secs {
            notes.push(format!("expires in {}", duration(secs)));
        }
        if !notes.is_empty() {
            let _ = write!(rule, " ({})", notes.join(", "));
        }
        rows.push(("rule", rule));
    }
    out.push_str(&fields(&rows, 2));
    out
}

/// `status`.
pub fn status(s: &StatusReply) -> String {
    let mut rows = vec![
        (
            "rampartd",
            format!(
                "{} (pid {}, up {})",
                s.version,
                s.pid,
                duration(s.uptime_secs)
            ),
        ),
        ("config", s.config.clone()),
    ];
    if let Some(reload) = &s.last_reload {
        rows.push((
            "last reload",
            format!(
                "{} {}: {}",
                time(reload.at),
                if reload.ok { "applied" } else { "refused" },
                reload.message
            ),
        ));
    }
    let mut out = fields(&rows, 0);
    match &s.filter {
        None => out.push_str("filter: off (no [filter] section)\n"),
        Some(f) => {
            out.push_str("filter:\n");
            out.push_str(&fields(
                &[
                    ("interfaces", f.interfaces.join(", ")),
                    ("pins", f.pins.clone()),
                    (
                        "deny",
                        format!(
                            "{} ({} automatic bans)",
                            count(f.deny, "entry", "entries"),
                            f.auto_bans
                        ),
                    ),
                    ("allow", count(f.allow, "entry", "entries")),
                    ("bypass", count(f.bypass, "entry", "entries")),
                    ("countries", country_status(f)),
                ],
                2,
            ));
        }
    }
    match &s.gateway {
        None => out.push_str("gateway: off (no listeners)\n"),
        Some(g) => {
            out.push_str("gateway:\n");
            out.push_str(&fields(
                &[
                    ("listeners", g.listeners.join(", ")),
                    ("apis", g.apis.to_string()),
                    ("subscriptions", g.subscriptions.to_string()),
                ],
                2,
            ));
        }
    }
    out
}

/// How many countries are blocked (or let through) and which, the first few;
/// then the table's size, which is not a number of countries.
fn country_status(f: &FilterStatus) -> String {
    const SHOWN: usize = 8;
    let mut text = match f.country_policy.as_str() {
        "off" => "off".to_string(),
        policy => {
            let verb = if policy == "allow_only" {
                "allow only"
            } else {
                "block"
            };
            let mut text = format!(
                "{verb} {}",
                count(f.countries.len(), "country", "countries")
            );
            if !f.countries.is_empty() {
                let shown: Vec<_> = f.countries.iter().take(SHOWN).map(|c| shown(c)).collect();
                let _ = write!(text, ": {}", shown.join(" "));
                if f.countries.len() > SHOWN {
                    let _ = write!(text, " and {} more", f.countries.len() - SHOWN);
                }
            }
            text
        }
    };
    let _ = write!(
        text,
        "; table of {}",
        count(f.country_prefixes, "prefix", "prefixes")
    );
    text
}

fn counters(out: &mut String, title: &str, rows: &[(String, u64)]) {
    out.push_str(title);
    if rows.is_empty() {
        out.push_str(" none\n");
        return;
    }
    out.push('\n');
    let mut table = Table::bare(&[false, true]);
    for (name, n) in rows {
        table.row(vec![name.clone(), n.to_string()]);
    }
    out.push_str(&table.render(2));
}

/// `stats`.
pub fn stats(s: &StatsReply) -> String {
    let mut out = String::new();
    counters(&mut out, "kernel packets:", &s.kernel);
    counters(&mut out, "kernel drops by country:", &s.drops_by_country);
    let _ = writeln!(out, "gateway requests: {}", s.requests);
    counters(&mut out, "gateway rejections:", &s.rejections);
    let _ = writeln!(out, "automatic bans issued: {}", s.bans_issued);
    out
}

/// `country list`.
pub fn countries(c: &CountriesReply) -> String {
    let mut rows = vec![("policy", format!("{} (from {})", c.policy, c.origin))];
    if c.policy != "off" || !c.countries.is_empty() {
        rows.push((
            "countries",
            if c.countries.is_empty() {
                "-".into()
            } else {
                c.countries.join(" ")
            },
        ));
    }
    if c.policy == "allow_only" {
        rows.push((
            "unknown country",
            if c.allow_unknown { "passes" } else { "dropped" }.into(),
        ));
    }
    rows.push((
        "database",
        c.database.clone().unwrap_or_else(|| "none loaded".into()),
    ));
    rows.push((
        "prefixes",
        format!("{} IPv4, {} IPv6", c.prefixes_v4, c.prefixes_v6),
    ));
    fields(&rows, 0)
}

/// `geo load`.
pub fn geo_loaded(g: &GeoReply) -> String {
    format!(
        "loaded {}: {}, {} IPv4 and {} IPv6 prefixes\n",
        shown(&g.source),
        count(g.countries, "country", "countries"),
        g.prefixes_v4,
        g.prefixes_v6
    )
}

/// One line of `events`.
pub fn event(e: &EventView) -> String {
    let mut line = format!(
        "{}  {}  {}",
        time_ms(e.time_ms),
        shown(&e.event),
        shown(&e.message)
    );
    for (key, value) in &e.fields {
        let key = shown(key);
        // `{:?}` escapes as `shown` does.
        if value.contains(char::is_whitespace) || value.is_empty() {
            let _ = write!(line, " {key}={value:?}");
        } else {
            let _ = write!(line, " {key}={}", shown(value));
        }
    }
    line.push('\n');
    line
}
