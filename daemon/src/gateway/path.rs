//! Request paths in the one form the gateway routes, checks and forwards.
//!
//! A backend may resolve `/public/../admin`, `/public/%2e%2e/admin`, `/%61dmin` or
//! `//admin` to `/admin`, as nginx and most frameworks do. Were the gateway to
//! route such a path by its raw text, it would apply the policies of `/public` (or
//! of a catch-all API) to a request the backend serves as `/admin`. So the path is
//! first normalised the way RFC 3986 (sections 6.2.2 and 5.2.4) does, slashes are
//! merged, and the result is what routing, the policies and the backend all see.
//! The same reasoning refuses what no normalisation can settle: an encoded slash
//! or backslash (`%2F`, `%5C`, which one backend decodes into a separator and
//! another does not), a raw backslash (a separator to some servers), an encoded
//! NUL, and a `%` that starts no escape.
//!
//! Servlet containers (Tomcat, Jetty, Spring) drop a segment's parameters (`;`
//! and what follows) before they map it, so `/admin;x/users` is `/admin/users` and
//! `/public/..;/admin` is `/admin` to them. Routing therefore reads segments
//! without their parameters ([`without_parameters`]); a dot segment with
//! parameters is refused, and so are parameters on the segments that name the API
//! ([`rest_after_prefix`]).

use std::borrow::Cow;

/// Why a request path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProblem {
    /// `%2F`, `%5C` or `\`, unless encoded slashes are allowed.
    EncodedSlash,
    /// `%00`.
    EncodedNul,
    /// A `%` not followed by two hexadecimal digits.
    BadEscape,
    /// `.;...` or `..;...`: a dot segment to a servlet container, a name to others.
    DotSegmentParameters,
    /// Parameters on a segment of the API's path prefix (`/admin;x/users`).
    ParametersInPrefix,
}

impl PathProblem {
    /// What is wrong, after "the path" (also said of a configured prefix).
    pub(crate) fn what(self) -> &'static str {
        match self {
            Self::EncodedSlash => "contains an encoded slash or a backslash",
            Self::EncodedNul => "contains an encoded NUL",
            Self::BadEscape => "contains an invalid percent-encoding",
            Self::DotSegmentParameters => "contains a dot segment with parameters",
            Self::ParametersInPrefix => "has parameters (;) in the segments that name the API",
        }
    }

    /// The message of the 400 answer.
    pub(crate) fn message(self) -> String {
        format!("Bad request: the path {}", self.what())
    }
}

/// The normal form of `path`: unreserved characters decoded (`%61` is `a`, `%2E`
/// is `.`), the hexadecimal digits of the escapes left in capitals, `.` and `..`
/// segments resolved (never above the root), and runs of slashes merged into one.
/// A trailing slash is kept. Borrowed when `path` is already normal (the usual
/// case). A path that does not start with `/` (`*`, or the empty path of an
/// authority-form target) is returned as it is.
///
/// With `allow_encoded_slashes`, `%2F`, `%5C` and `\` are kept as they are (the
/// escapes in capitals), and an encoded slash does not separate segments.
pub(crate) fn normalize(
    path: &str,
    allow_encoded_slashes: bool,
) -> Result<Cow<'_, str>, PathProblem> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    if !allow_encoded_slashes && path.contains('\\') {
        return Err(PathProblem::EncodedSlash);
    }
    if is_plain(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, allow_encoded_slashes)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ if matches!(segment.split_once(';'), Some(("." | "..", _))) => {
                return Err(PathProblem::DotSegmentParameters);
            }
            _ => segments.push(segment),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        normal.push('/');
    }
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// No escape, no empty segment, no segment starting with `.` followed by nothing,
/// `.` or `;`: already normal (and no dot segment with parameters).
fn is_plain(path: &str) -> bool {
    !path.contains('%')
        && !path.contains("//")
        && path[1..].split('/').all(|segment| {
            let name = segment.split_once(';').map_or(segment, |(name, _)| name);
            name != "." && name != ".."
        })
}

/// `path` as routing reads it: each segment without its parameters (`;` and what
/// follows it). Borrowed when there are none (the usual case).
pub(crate) fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut key = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            key.push('/');
        }
        key.push_str(segment.split_once(';').map_or(segment, |(name, _)| name));
    }
    Cow::Owned(key)
}

/// What follows the API's prefix in `path`, when routing matched `key` (the
/// [`without_parameters`] form of `path`) and left `key_rest` of it: the prefix's
/// segments must carry no parameters in `path`, so that the backend gets exactly
/// the segments the route was chosen by.
pub(crate) fn rest_after_prefix<'p>(
    path: &'p str,
    key: &str,
    key_rest: &str,
) -> Result<&'p str, PathProblem> {
    let prefix = &key[..key.len() - key_rest.len()];
    match path.strip_prefix(prefix) {
        Some(rest) if prefix.is_empty() || rest.is_empty() || rest.starts_with('/') => Ok(rest),
        _ => Err(PathProblem::ParametersInPrefix),
    }
}

/// `path` with its escapes of unreserved characters decoded and the others in
/// capitals.
fn decode_unreserved(path: &str, allow_encoded_slashes: bool) -> Result<String, PathProblem> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Up to the next escape, as it is (whole UTF-8 sequences included).
            let run = path[i..].find('%').map_or(path.len(), |n| i + n);
            out.push_str(&path[i..run]);
            i = run;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|&h| hex(h)),
            bytes.get(i + 2).and_then(|&l| hex(l)),
        ) else {
            return Err(PathProblem::BadEscape);
        };
        let value = hi << 4 | lo;
        match value {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(value));
            }
            0 => return Err(PathProblem::EncodedNul),
            b'/' | b'\\' if !allow_encoded_slashes => return Err(PathProblem::EncodedSlash),
            _ => {
                const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(DIGITS[usize::from(hi)]));
                out.push(char::from(DIGITS[usize::from(lo)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Whether a configured path prefix is in the form [`normalize`] gives requests
/// (else no request could ever match it); the form to write if not.
pub(crate) fn normal_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(';') {
        return Err("contains a path parameter (;), which routing reads past".to_owned());
    }
    match normalize(prefix, true) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(normal)) => Err(format!(
            "is not in the normal form requests are routed by; write {normal:?}"
        )),
        Err(problem) => Err(problem.what().to_owned()),
    }
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> Result<String, PathProblem> {
        normalize(path, false).map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        for path in [
            "/",
            "/orders",
            "/orders/",
            "/orders/1/lines",
            "/a.b/..c/.d",
            "/ü",
        ] {
            assert!(matches!(normalize(path, false), Ok(Cow::Borrowed(p)) if p == path));
        }
    }

    #[test]
    fn dot_segments_are_resolved_never_above_the_root() {
        assert_eq!(normal("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(normal("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(normal("/a/b/..").unwrap(), "/a/");
        assert_eq!(normal("/..").unwrap(), "/");
        assert_eq!(normal("/../../admin").unwrap(), "/admin");
        assert_eq!(normal("/.").unwrap(), "/");
    }

    #[test]
    fn encoded_dots_and_unreserved_characters_are_decoded_first() {
        assert_eq!(normal("/public/%2e%2E/admin").unwrap(), "/admin");
        assert_eq!(normal("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(normal("/%61dmin/%7Euser").unwrap(), "/admin/~user");
        // Reserved and non-ASCII escapes stay escaped, with capital digits.
        assert_eq!(normal("/a%3fb/%c3%bc").unwrap(), "/a%3Fb/%C3%BC");
        assert_eq!(normal("/a%20b").unwrap(), "/a%20b");
        assert!(matches!(normalize("/a%20b", false), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn slashes_are_merged_and_a_trailing_slash_kept() {
        assert_eq!(normal("//admin").unwrap(), "/admin");
        assert_eq!(normal("/a//b///c//").unwrap(), "/a/b/c/");
        assert_eq!(normal("//").unwrap(), "/");
    }

    #[test]
    fn encoded_slashes_backslashes_nul_and_bad_escapes_are_refused() {
        for path in ["/public/..%2Fadmin", "/a%2fb", "/a%5Cb", "/a\\..\\admin"] {
            assert_eq!(normal(path), Err(PathProblem::EncodedSlash), "{path}");
        }
        assert_eq!(normal("/a%00.json"), Err(PathProblem::EncodedNul));
        for path in ["/a%", "/a%2", "/a%zz", "/a%%41"] {
            assert_eq!(normal(path), Err(PathProblem::BadEscape), "{path}");
        }
    }

    #[test]
    fn allowed_encoded_slashes_are_kept_and_separate_nothing() {
        let kept = |p| normalize(p, true).map(Cow::into_owned);
        assert_eq!(
            kept("/projects/group%2fproject").unwrap(),
            "/projects/group%2Fproject"
        );
        assert_eq!(kept("/a/..%2F..%2Fb").unwrap(), "/a/..%2F..%2Fb");
        assert_eq!(kept("/a\\b/../c").unwrap(), "/c");
        assert_eq!(kept("/a%00"), Err(PathProblem::EncodedNul));
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for path in [
            "/public/..;/admin",
            "/public/.;x/a",
            "/a/%2e%2e;x/b",
            "/..;",
        ] {
            assert_eq!(
                normal(path),
                Err(PathProblem::DotSegmentParameters),
                "{path}"
            );
        }
        // Other parameters are left to routing; `..x;` is a name.
        assert_eq!(normal("/a;x/b;y=1").unwrap(), "/a;x/b;y=1");
        assert_eq!(normal("/a/..x;y/../b").unwrap(), "/a/b");
    }

    #[test]
    fn routing_reads_segments_without_parameters() {
        assert!(matches!(without_parameters("/a/b"), Cow::Borrowed("/a/b")));
        assert_eq!(without_parameters("/admin;x/users;v=1/"), "/admin/users/");
        assert_eq!(without_parameters("/;x"), "/");
    }

    #[test]
    fn parameters_may_follow_the_prefix_but_not_sit_in_it() {
        let rest = |path| {
            let key = without_parameters(path);
            // As the route table would for prefix `/admin`.
            let key_rest = key.strip_prefix("/admin").unwrap().to_owned();
            rest_after_prefix(path, &key, &key_rest)
        };
        assert_eq!(rest("/admin/users;v=1"), Ok("/users;v=1"));
        assert_eq!(rest("/admin"), Ok(""));
        assert_eq!(rest("/admin;x/users"), Err(PathProblem::ParametersInPrefix));
        assert_eq!(rest("/admin;x"), Err(PathProblem::ParametersInPrefix));
        // The catch-all prefix `/` leaves the whole path.
        assert_eq!(rest_after_prefix("/a;x/b", "/a/b", "/a/b"), Ok("/a;x/b"));
    }

    #[test]
    fn other_targets_are_left_alone() {
        assert_eq!(normal("*").unwrap(), "*");
        assert_eq!(normal("").unwrap(), "");
    }

    #[test]
    fn normal_form_is_stable() {
        for path in ["/public/../admin/", "/%2e/a//b/%7e", "/a%3fb/./c/.."] {
            let once = normal(path).unwrap();
            assert_eq!(normal(&once).unwrap(), once);
        }
    }
}
