//! Checks of what an operator types, made before anything is sent: a request
//! the CLI can tell is wrong never reaches the daemon (exit 3).

use std::{
    io::{self, Read as _},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use crate::rules::{self, RuleError};

/// Longest `--ttl`: longer bans are permanent entries in disguise.
pub const MAX_TTL: Duration = Duration::from_secs(crate::control::protocol::MAX_TTL_SECS);
/// Largest `--from-file` read (`/dev/zero` would otherwise be read until memory
/// runs out): 256 MiB, about 10 million entries.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Longest subscription, product or API name (the key store's limit).
const MAX_NAME_BYTES: usize = 256;

/// Input the CLI refuses to send.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("invalid entry{}", entry_problem(entry, source))]
    Entry {
        entry: String,
        #[source]
        source: RuleError,
    },
    #[error("{file}:{line}: invalid entry{}", entry_problem(entry, source))]
    FileEntry {
        file: String,
        line: usize,
        entry: String,
        #[source]
        source: RuleError,
    },
    #[error("cannot read {file}: {source}")]
    ReadFile {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file} is larger than {} MiB: split it, or check that it is the list meant", MAX_FILE_BYTES >> 20)]
    FileTooLarge { file: String },
    #[error("no entries given{}", if *from_file { " (the file has none)" } else { "" })]
    NoEntries { from_file: bool },
    #[error("`{code}` is not a two-letter country code")]
    Country { code: String },
    #[error("invalid --ttl `{text}`: {problem}")]
    Ttl { text: String, problem: String },
    #[error("invalid {what} {name:?}: {problem}")]
    Name {
        what: &'static str,
        name: String,
        problem: &'static str,
    },
    #[error("invalid --comment: {source}")]
    Comment {
        #[source]
        source: crate::control::protocol::CommentError,
    },
    #[error("`{text}` is not an IPv4 or IPv6 address")]
    Address { text: String },
    #[error("path {path:?} is not valid UTF-8")]
    Path { path: String },
}

/// The rule error, prefixed with the entry unless the error names it already.
fn entry_problem(entry: &str, error: &RuleError) -> String {
    let named = match error {
        RuleError::InvalidAddress { input }
        | RuleError::InvalidPrefixLength { input, .. }
        | RuleError::HostBitsSet { input, .. }
        | RuleError::MappedPrefixTooShort { input }
        | RuleError::IncompleteRange { input }
        | RuleError::MappedRange { input }
        | RuleError::ZoneIndex { input } => input == entry,
        RuleError::MixedFamilies { .. } | RuleError::ReversedRange { .. } => true,
        _ => false,
    };
    if named {
        format!(": {error}")
    } else {
        format!(" `{entry}`: {error}")
    }
}

/// Checks every entry given on the command line and, with `--from-file`,
/// in the file (`-` = standard input); returns them trimmed, in order.
pub fn entries(
    args: &[String],
    from_file: Option<&Path>,
    allow_empty: bool,
) -> Result<Vec<String>, InputError> {
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let entry = arg.trim();
        rules::parse_entry(entry).map_err(|source| InputError::Entry {
            entry: entry.to_string(),
            source,
        })?;
        out.push(entry.to_string());
    }
    if let Some(path) = from_file {
        let (name, text) = read_source(path)?;
        out.extend(entries_in_text(&name, &text)?);
    }
    if out.is_empty() && !allow_empty {
        return Err(InputError::NoEntries {
            from_file: from_file.is_some(),
        });
    }
    Ok(out)
}

/// The entries of a file's text: one a line; blank lines and `#` comments
/// (whole-line or trailing) skipped, and a UTF-8 byte order mark at the start
/// (Windows Notepad writes one).
pub fn entries_in_text(file: &str, text: &str) -> Result<Vec<String>, InputError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let entry = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if entry.is_empty() {
            continue;
        }
        rules::parse_entry(entry).map_err(|source| InputError::FileEntry {
            file: file.to_string(),
            line: index + 1,
            entry: entry.to_string(),
            source,
        })?;
        out.push(entry.to_string());
    }
    Ok(out)
}

fn read_source(path: &Path) -> Result<(String, String), InputError> {
    if path == Path::new("-") {
        let text = read_capped(io::stdin().lock(), "standard input")?;
        return Ok(("<stdin>".into(), text));
    }
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| InputError::ReadFile {
        file: name.clone(),
        source,
    })?;
    let text = read_capped(file, &name)?;
    Ok((name, text))
}

/// The text of `reader`, refused past [`MAX_FILE_BYTES`].
pub(crate) fn read_capped(reader: impl io::Read, name: &str) -> Result<String, InputError> {
    let read_err = |source| InputError::ReadFile {
        file: name.to_string(),
        source,
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(InputError::FileTooLarge {
            file: name.to_string(),
        });
    }
    String::from_utf8(bytes)
        .map_err(|e| read_err(io::Error::new(io::ErrorKind::InvalidData, e.utf8_error())))
}

/// Two-letter country codes (any case; registry codes like `eu` included),
/// lower-cased as the daemon stores them.
pub fn countries(codes: &[String]) -> Result<Vec<String>, InputError> {
    codes
        .iter()
        .map(|code| {
            let bytes: Option<[u8; 2]> = code.as_bytes().try_into().ok();
            match bytes.and_then(rampart_common::country_index) {
                Some(_) => Ok(code.to_ascii_lowercase()),
                None => Err(InputError::Country { code: code.clone() }),
            }
        })
        .collect()
}

/// A `--ttl` in whole seconds: more than zero, at most [`MAX_TTL`].
///
/// Only the units docs/cli.md gives (s, m, h, d), one or more
/// number-unit pairs (`90s`, `1h30m`, `1h 30m`). Hand-written because
/// humantime cannot be limited to some units, and its `M` (months) next to
/// `m` (minutes) turned a typo into a ban of most of a year.
pub fn ttl(text: &str) -> Result<u64, InputError> {
    const UNITS: &str =
        "use whole numbers with the units s, m, h and d, like 90s, 10m, 1h30m or 7d";
    let bad = |problem: String| InputError::Ttl {
        text: text.to_string(),
        problem,
    };
    let too_long = || bad("longer than 365d; leave --ttl out for a permanent entry".into());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad(format!("it is empty; {UNITS}")));
    }
    let mut secs: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad(UNITS.into()));
        }
        let (number, after) = rest.split_at(digits);
        let after = after.trim_start();
        let letters = after.len() - after.trim_start_matches(char::is_alphabetic).len();
        let (unit, after) = after.split_at(letters);
        let size: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "" if after.is_empty() || after.starts_with(|c: char| c.is_ascii_digit()) => {
                return Err(bad(format!("`{number}` has no unit; {UNITS}")));
            }
            "" => return Err(bad(UNITS.into())),
            other => return Err(bad(format!("unknown unit `{other}`; {UNITS}"))),
        };
        // Digits only, so the parse fails on overflow alone.
        let n: u64 = number.parse().map_err(|_| too_long())?;
        secs = n
            .checked_mul(size)
            .and_then(|part| secs.checked_add(part))
            .ok_or_else(too_long)?;
        rest = after.trim_start();
    }
    if secs == 0 {
        return Err(bad("must be longer than zero".into()));
    }
    if secs > MAX_TTL.as_secs() {
        return Err(too_long());
    }
    Ok(secs)
}

/// A subscription, product or API name: not empty, no control characters.
pub fn name(what: &'static str, name: &str) -> Result<String, InputError> {
    let bad = |problem| InputError::Name {
        what,
        name: name.to_string(),
        problem,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad("it is longer than 256 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("it contains control characters"));
    }
    Ok(name.to_string())
}

/// A `--comment`: the daemon's own rule (one line, no invisible format
/// characters, at most 1024 bytes), checked before sending.
pub fn comment(text: &str) -> Result<String, InputError> {
    crate::control::protocol::check_comment(text)
        .map_err(|source| InputError::Comment { source })?;
    Ok(text.to_string())
}

/// The source address of `check`; an IPv4-mapped one (`::ffff:a.b.c.d`) is
/// the IPv4 source it maps, as for list entries.
pub fn address(text: &str) -> Result<IpAddr, InputError> {
    text.trim()
        .parse()
        .map(|ip: IpAddr| ip.to_canonical())
        .map_err(|_| InputError::Address {
            text: text.to_string(),
        })
}

/// A path the daemon reads: made absolute, since rampartd's working
/// directory is not the operator's.
pub fn daemon_path(path: &Path) -> Result<String, InputError> {
    let absolute = std::path::absolute(path).map_err(|source| InputError::ReadFile {
        file: path.display().to_string(),
        source,
    })?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|os| InputError::Path {
            path: os.to_string_lossy().into_owned(),
        })
}
