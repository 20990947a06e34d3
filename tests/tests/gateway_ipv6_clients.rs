//! IPv6 clients as the gateway's rate limits count them: a real rampartd with a
//! TLS listener on the server's IPv6 address, requests from several addresses
//! of the client namespace. An IPv6 client holds a whole /64 and can change
//! address at will: `counter = "ip"` counts it by its /64 (`[gateway]
//! ipv6_client_prefix`), IPv4 clients per address.
//!
//! Needs root; skipped visibly otherwise.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use rampart_tests::{
    control::{
        RigOptions,
        gateway::{GATEWAY_PORT, Gateway},
    },
    privileged,
};

/// Addresses of the rig's client /64 (2001:db8::/64).
const SAME_64: [&str; 3] = ["2001:db8::10", "2001:db8::11", "2001:db8::12"];
/// An address of another /64, routed to the client side by the test.
const OTHER_64: &str = "2001:db8:1::5";

/// The rig plus an API `open` (`/open`, no key) limited to `calls` per minute
/// per client address, served on the IPv6 listener too; `gateway` goes into a
/// `[gateway]` section.
fn start(calls: u32, gateway: &str) -> Gateway {
    let addrs = SAME_64
        .into_iter()
        .chain([OTHER_64, "198.18.0.3", "198.18.0.4"]);
    let mut gw = Gateway::prepare(
        RigOptions {
            client_addrs: addrs.map(|a| a.parse().unwrap()).collect(),
            ..RigOptions::default()
        },
        &format!("[gateway]\n{gateway}\n"),
    )
    .unwrap();
    // The echo API's backend serves this one too.
    let backend = (gw.rig.opts.sections.lines())
        .find(|l| l.starts_with("backend = "))
        .unwrap()
        .to_owned();
    gw.start_with_ipv6(&format!(
        "\n[[api]]\nname = \"open\"\npath_prefix = \"/open\"\n{backend}\n\
         subscription = \"none\"\n\
         rate_limit = {{ calls = {calls}, period_secs = 60, counter = \"ip\" }}\n"
    ))
    .unwrap();
    gw
}

/// `GET /open/x` from `src`: the status.
fn get(gw: &Gateway, src: &str) -> u16 {
    let src: IpAddr = src.parse().unwrap();
    let dst = SocketAddr::new(gw.rig.server_addr(src), GATEWAY_PORT);
    let (status, _) = (gw.pki)
        .get(&gw.rig.pair.cli, src, dst, "localhost", "/open/x", &[])
        .unwrap_or_else(|e| panic!("{src}: {e:#}"));
    status
}

/// Changing address within a /64 gets no more calls: two calls per minute are
/// the /64's, whichever of its addresses makes them (before, each address had
/// two). Another /64 has its own; IPv4 clients are counted per address.
#[test]
fn an_ipv6_client_is_rate_limited_by_its_prefix() {
    if !privileged() {
        return;
    }
    let gw = start(2, "");
    assert_eq!(get(&gw, SAME_64[0]), 200);
    assert_eq!(get(&gw, SAME_64[1]), 200);
    assert_eq!(
        get(&gw, SAME_64[2]),
        429,
        "a third address of the same /64 gets a third call"
    );
    assert_eq!(get(&gw, SAME_64[0]), 429);
    assert_eq!(get(&gw, OTHER_64), 200, "another /64");
    for src in ["198.18.0.3", "198.18.0.3", "198.18.0.4", "198.18.0.4"] {
        assert_eq!(get(&gw, src), 200, "IPv4: per address ({src})");
    }
    assert_eq!(get(&gw, "198.18.0.3"), 429);
}

/// `ipv6_client_prefix = 128` counts each address (clouds that give each machine
/// one address of a shared /64).
#[test]
fn the_ipv6_client_prefix_can_count_per_address() {
    if !privileged() {
        return;
    }
    let gw = start(1, "ipv6_client_prefix = 128");
    for src in SAME_64 {
        assert_eq!(get(&gw, src), 200, "{src}");
    }
    assert_eq!(get(&gw, SAME_64[0]), 429);
}
