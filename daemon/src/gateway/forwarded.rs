//! Header rewriting between client and backend: hop-by-hop headers (RFC 9110 §7.6.1)
//! and the forwarding headers `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `Forwarded` (RFC 7239).

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{
    CONNECTION, FORWARDED, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Other headers that backends and their frameworks read as the client's address
/// (nginx's realip module and many frameworks read `X-Real-IP`; Rails `Client-IP`;
/// the request-ip library of Node.js `X-Client-IP`, `True-Client-IP`,
/// `X-Cluster-Client-IP`, `X-Forwarded` and `Forwarded-For`) or as the URL the
/// request was for (IIS, Zend and older Symfony route by `X-Original-URL` and
/// `X-Rewrite-URL`, which would serve `/admin` for a request the gateway routed and
/// checked as `/public`). A client's copies of them are dropped like its
/// `X-Forwarded-*`, unless it is a trusted proxy: the gateway does not set them, so
/// the backend sees none that the client made up.
const CLIENT_CLAIMS: [&str; 9] = [
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-original-url",
    "x-rewrite-url",
];

/// The hop-by-hop headers every message loses (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes the headers that concern only one hop: the fixed list, every `Proxy-*`
/// header, and every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // The usual message carries none of them: one pass over its few names tells,
    // instead of a hashed lookup per listed name (twice per proxied request).
    let hop_by_hop =
        |name: &HeaderName| HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-");
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    // The names `Connection` lists, removed by name as text (looked up without
    // making a `HeaderName`, which a name like `keep-alive` would allocate). The
    // values are taken first (clones share their bytes), as a listed name may be
    // `Connection` itself; a message rarely has more than one.
    let (first, more) = {
        let mut values = headers.get_all(CONNECTION).iter();
        (values.next().cloned(), values.next().is_some())
    };
    if more {
        let values: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
        for value in &values {
            remove_listed(headers, value);
        }
    } else if let Some(value) = first {
        remove_listed(headers, &value);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Removes the headers a `Connection` value names.
fn remove_listed(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(list) = connection.to_str() else {
        return;
    };
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        headers.remove(name);
    }
}

/// Removes the client's own copies of headers the gateway vouches for (the names
/// `vouched` accepts), and their look-alikes: names with `_` that, read with `-`
/// for `_`, are such a header. CGI-style servers (PHP, Rack servers such as Puma:
/// CVE-2024-45614) read `X_Forwarded_For` and `X-Forwarded-For` as the same
/// `HTTP_X_FORWARDED_FOR`, so a look-alike could stand in for, or clobber, the
/// header the gateway sets.
pub fn remove_client_copies(headers: &mut HeaderMap, vouched: impl Fn(&str) -> bool) {
    let copies: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            if name.contains('_') {
                vouched(&name.replace('_', "-"))
            } else {
                vouched(name)
            }
        })
        .cloned()
        .collect();
    for name in copies {
        headers.remove(name);
    }
}

/// What the gateway knows about the hop it received a request on.
#[derive(Debug, Clone, Copy)]
pub struct ClientHop<'a> {
    pub peer: IpAddr,
    /// `https` or `http`: what the client spoke to the gateway.
    pub proto: &'a str,
    /// The host the client asked for (`Host` or the `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// The peer is a configured proxy: its forwarding headers are kept and extended.
    pub trusted: bool,
}

/// Sets the forwarding headers for the backend. From an untrusted peer, whatever
/// the client sent in `X-Forwarded-*` and `Forwarded` (and their look-alikes with
/// `_`) is dropped first, so the backend sees only what the gateway itself observed.
pub fn set_forwarding_headers(headers: &mut HeaderMap, hop: ClientHop<'_>) {
    let peer = canonical(hop.peer);
    if !hop.trusted {
        remove_client_copies(headers, |name| {
            name.starts_with("x-forwarded-")
                || name == FORWARDED.as_str()
                || CLIENT_CLAIMS.contains(&name)
        });
    }

    // The peer's text once, for both headers (IPv4 is the same in each), written
    // on the stack: the common case (an untrusted peer, no prior chain) makes two
    // allocations, one for each value.
    let mut peer_buf = [0u8; 48];
    let peer_text = ip_text(peer, &mut peer_buf);
    let prior_xff = joined(headers, &X_FORWARDED_FOR);
    match &prior_xff {
        Some(prior) => insert(headers, X_FORWARDED_FOR, &format!("{prior}, {peer_text}")),
        None => insert(headers, X_FORWARDED_FOR, peer_text),
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, proto_value(hop.proto));
    }
    if let Some(host) = hop.host
        && !headers.contains_key(X_FORWARDED_HOST)
    {
        // The client's own value (hyper checked it): shared, not copied.
        headers.insert(X_FORWARDED_HOST, host.clone());
    }

    let host = hop.host.and_then(|host| host.to_str().ok());
    // Its exact length first: a value built to its capacity becomes the header's
    // bytes without a copy.
    let for_len = match peer {
        IpAddr::V4(_) => peer_text.len(),
        IpAddr::V6(_) => peer_text.len() + 4,
    };
    let len = "for=".len()
        + for_len
        + host.map_or(0, |host| ";host=".len() + forwarded_value_len(host))
        + ";proto=".len()
        + hop.proto.len();
    let mut element = String::with_capacity(len);
    element.push_str("for=");
    match peer {
        IpAddr::V4(_) => element.push_str(peer_text),
        // RFC 7239 §6: an IPv6 node is quoted and bracketed.
        IpAddr::V6(_) => {
            element.push_str("\"[");
            element.push_str(peer_text);
            element.push_str("]\"");
        }
    }
    if let Some(host) = host {
        element.push_str(";host=");
        push_forwarded_value(&mut element, host);
    }
    element.push_str(";proto=");
    element.push_str(hop.proto);
    debug_assert_eq!(element.len(), len);
    // A trusted proxy that sent only `X-Forwarded-For` (most do: nginx, HAProxy and
    // the cloud load balancers by default) named the client there; carried over, so
    // that `Forwarded` names the client too and not only the proxy.
    let prior =
        joined(headers, &FORWARDED).or_else(|| prior_xff.as_deref().map(forwarded_from_xff));
    let forwarded = match prior {
        Some(prior) => format!("{prior}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
        headers.insert(FORWARDED, value);
    }
}

/// `ip` as text, written into `buf` (an IPv6 address takes at most 45 bytes).
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &str {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 48 bytes hold any address's text, so the write does not fail.
    let _ = write!(cursor, "{ip}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// `Forwarded` elements for an `X-Forwarded-For` chain: `for=` each address (IPv6
/// quoted and bracketed, RFC 7239 §6), `for=unknown` for an entry that is no address
/// (§6.2), so the number of hops stays what the chain said.
fn forwarded_from_xff(chain: &str) -> String {
    let mut out = String::with_capacity(chain.len() + 16);
    for entry in chain.split(',') {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str("for=");
        match parse_forwarded_for(entry.trim()).map(canonical) {
            Some(IpAddr::V4(ip)) => out.push_str(&ip.to_string()),
            Some(IpAddr::V6(ip)) => {
                out.push_str("\"[");
                out.push_str(&ip.to_string());
                out.push_str("]\"");
            }
            None => out.push_str("unknown"),
        }
    }
    out
}

/// `X-Forwarded-Proto`: the two values the gateway speaks need no copy.
fn proto_value(proto: &str) -> HeaderValue {
    match proto {
        "https" => HeaderValue::from_static("https"),
        "http" => HeaderValue::from_static("http"),
        other => HeaderValue::from_str(other).unwrap_or_else(|_| HeaderValue::from_static("http")),
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` address that is not itself a trusted proxy (the
/// left-most when all are). Entries that do not parse end the walk: what lies left
/// of them was written by someone nobody vouches for.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    let mut client = canonical(peer);
    if !super::settings::is_trusted(trusted, client) {
        return client;
    }
    let Some(chain) = joined(headers, &X_FORWARDED_FOR) else {
        return client;
    };
    for entry in chain.rsplit(',') {
        let Some(ip) = parse_forwarded_for(entry.trim()) else {
            break;
        };
        client = canonical(ip);
        if !super::settings::is_trusted(trusted, client) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_forwarded_for(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip())
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
}

/// An IPv4-mapped IPv6 peer (dual-stack listener) is reported as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// All values of a header joined with ", " (several header lines are one list).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Values built here come from an IP address, `http`/`https` and a host that
/// hyper already accepted as a header value, so they are always valid; a value that
/// is not is skipped rather than sent broken.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Whether `value` is an RFC 7230 token (sent as is in `Forwarded`).
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The length of what [`push_forwarded_value`] writes for `value`.
fn forwarded_value_len(value: &str) -> usize {
    if is_token(value) {
        value.len()
    } else {
        2 + value.len() + value.bytes().filter(|b| matches!(b, b'\\' | b'"')).count()
    }
}

/// A token as is, anything else as a quoted-string.
fn push_forwarded_value(out: &mut String, value: &str) {
    if is_token(value) {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            if matches!(c, '\\' | '"') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    static API_HOST: HeaderValue = HeaderValue::from_static("api.example.com");

    fn hop(peer: &str, trusted: bool) -> ClientHop<'static> {
        ClientHop {
            peer: peer.parse().unwrap(),
            proto: "https",
            host: Some(&API_HOST),
            trusted,
        }
    }

    #[test]
    fn lookalikes_of_vouched_headers_go_others_stay() {
        let mut headers = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_host", "evil.example"),
            ("x_forwarded-proto", "http"),
            ("my_header", "1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        set_forwarding_headers(&mut headers, hop("192.0.2.1", false));
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("x_") || n.contains("_host")),
            "{names:?}"
        );
        assert!(names.contains(&"my_header"), "{names:?}");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
        // From a trusted proxy nothing of the client's is removed.
        let mut headers = map(&[("x_forwarded_for", "203.0.113.9")]);
        set_forwarding_headers(&mut headers, hop("192.0.2.1", true));
        assert!(headers.contains_key("x_forwarded_for"));
    }

    #[test]
    fn client_ip_is_the_peer_unless_a_trusted_proxy_names_one() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = map(&[(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7:4711, 10.1.1.1",
        )]);
        let peer = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(&xff, peer("192.0.2.1"), &trusted),
            peer("192.0.2.1")
        );
        // From a trusted proxy: the right-most untrusted entry (ports stripped).
        assert_eq!(
            client_ip(&xff, peer("10.0.0.1"), &trusted),
            peer("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(&map(&[]), peer("10.0.0.1"), &trusted),
            peer("10.0.0.1")
        );
        // All trusted: the left-most.
        let all = map(&[("x-forwarded-for", "10.9.9.9, [::ffff:10.2.2.2]:1")]);
        assert_eq!(
            client_ip(&all, peer("10.0.0.1"), &trusted),
            peer("10.9.9.9")
        );
        // Garbage stops the walk at the last good address.
        let junk = map(&[("x-forwarded-for", "198.51.100.1, bogus, 10.3.3.3")]);
        assert_eq!(
            client_ip(&junk, peer("10.0.0.1"), &trusted),
            peer("10.3.3.3")
        );
        // IPv6 with brackets and port.
        let v6 = map(&[("x-forwarded-for", "[2001:db8::5]:443")]);
        assert_eq!(
            client_ip(&v6, peer("10.0.0.1"), &trusted),
            peer("2001:db8::5")
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret , close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("authorization", "Bearer t"),
        ]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept", "authorization"]);
    }

    #[test]
    fn every_connection_value_is_read_even_after_one_naming_connection() {
        let mut headers = map(&[
            ("connection", "Connection"),
            ("connection", "X-A"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-b"]);
    }

    #[test]
    fn forwarded_host_that_is_no_token_is_quoted_and_escaped() {
        let mut headers = HeaderMap::new();
        let odd_host = HeaderValue::from_static(r#"a"b\c"#);
        let hop = ClientHop {
            host: Some(&odd_host),
            ..hop("192.0.2.7", false)
        };
        set_forwarding_headers(&mut headers, hop);
        assert_eq!(
            headers[FORWARDED],
            r#"for=192.0.2.7;host="a\"b\\c";proto=https"#
        );
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ] {
            let mut headers = map(&[("accept", "*/*"), (name, "x"), ("x-app", "1")]);
            remove_hop_by_hop(&mut headers);
            let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["accept", "x-app"], "{name}");
        }
        let mut plain = map(&[("accept", "*/*"), ("host", "a"), ("x-app", "1")]);
        remove_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 3);
    }

    #[test]
    fn untrusted_peer_cannot_forge_forwarding_headers() {
        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-client-cert", "forged"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("X_Real_IP", "1.2.3.4"),
            ("client-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-app", "1"),
        ]);
        set_forwarding_headers(&mut headers, hop("192.0.2.7", false));
        for claim in [
            "x-real-ip",
            "x_real_ip",
            "client-ip",
            "true-client-ip",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(!headers.contains_key(claim), "{claim}");
        }
        assert_eq!(headers["x-app"], "1");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        assert!(!headers.contains_key("x-forwarded-client-cert"));
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.7;host=api.example.com;proto=https"
        );
    }

    #[test]
    fn a_trusted_proxys_x_forwarded_for_is_carried_into_forwarded() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.1, [2001:db8::7]:4711"),
            ("x-forwarded-for", "not-an-address"),
        ]);
        set_forwarding_headers(&mut headers, hop("10.0.0.1", true));
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.1, for=\"[2001:db8::7]\", for=unknown, \
             for=10.0.0.1;host=api.example.com;proto=https"
        );

        // From a peer nobody vouches for, its chain is dropped, not carried over.
        let mut headers = map(&[("x-forwarded-for", "203.0.113.1")]);
        set_forwarding_headers(&mut headers, hop("192.0.2.7", false));
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.7;host=api.example.com;proto=https"
        );
    }

    #[test]
    fn trusted_proxy_headers_are_extended() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=203.0.113.1"),
            ("x-real-ip", "203.0.113.1"),
        ]);
        set_forwarding_headers(&mut headers, hop("10.0.0.1", true));
        assert_eq!(headers["x-real-ip"], "203.0.113.1");
        assert_eq!(
            headers["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 10.0.0.1"
        );
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.1, for=10.0.0.1;host=api.example.com;proto=https"
        );
    }

    #[test]
    fn ipv6_and_ported_host_are_quoted() {
        let mut headers = HeaderMap::new();
        let v6_host = HeaderValue::from_static("[::1]:8080");
        let hop = ClientHop {
            peer: "2001:db8::1".parse().unwrap(),
            proto: "http",
            host: Some(&v6_host),
            trusted: false,
        };
        set_forwarding_headers(&mut headers, hop);
        assert_eq!(headers["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::1]\";host=\"[::1]:8080\";proto=http"
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_reported_as_ipv4() {
        let mut headers = HeaderMap::new();
        set_forwarding_headers(&mut headers, hop("::ffff:192.0.2.9", false));
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
    }
}
