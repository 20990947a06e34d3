//! End-to-end tests: two network namespaces joined by a veth pair, the real
//! `rampartd` (or the filter library) attached in native mode on the server
//! side, and real TCP connections from several source addresses.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use rampart::filter::{AttachMode, EntryOrigin, Filter, ListEntry, ListKind, Lists, Settings};
use rampart_tests::{
    PinDir,
    control::{Rig, RigOptions},
    daemon::{Daemon, TempDir},
    netns::Pair,
    packet::{Frame, Ipv6, udp6_datagram},
    privileged,
};

const PORT: u16 = 8080;
const QUICK: Duration = Duration::from_millis(700);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(pair: &Pair, pins: &PinDir, dir: &TempDir, extra_deny: &[&str]) -> String {
    let mut deny = vec!["\"198.18.0.3\"".to_string(), "\"2001:db8::3\"".to_string()];
    deny.extend(extra_deny.iter().map(|d| format!("\"{d}\"")));
    format!(
        r#"
[daemon]
state_dir = "{state}"
runtime_dir = "{run}"
pin_root = "{pins}"

[filter]
interfaces = ["{iface}"]
attach_mode = "native"
protect = ["tcp/{PORT}"]
deny = [{deny}]

[filter.geo]
database = "{geo}"
block = ["xx"]
"#,
        state = dir.path.join("state").display(),
        run = dir.path.join("run").display(),
        pins = pins.path().display(),
        iface = pair.srv_if,
        deny = deny.join(", "),
        geo = dir.path.join("geo.csv").display(),
    )
}

#[test]
fn rampartd_enforces_reloads_and_survives_restarts() {
    if !privileged() {
        return;
    }
    let pair = Pair::new(&[ip("198.18.0.3"), ip("198.18.0.4"), ip("2001:db8::3")]).unwrap();
    let _server = pair.serve(PORT).unwrap();
    let dir = TempDir::new().unwrap();
    // The pin root is the test's own; the layout version is below it.
    let pins = PinDir::new();
    let pin_dir = pins
        .path()
        .join(format!("v{}", rampart_common::LAYOUT_VERSION));
    let _pins_guard = PinDirAt(pin_dir.clone());
    std::fs::write(
        dir.path.join("geo.csv"),
        "network,country\n198.18.0.4/32,xx\n203.0.113.0/24,aa\n",
    )
    .unwrap();
    let cfg = dir.path.join("rampart.toml");
    rampart_tests::write_private(&cfg, config(&pair, &pins, &dir, &[])).unwrap();

    let srv4 = pair.srv_v4;
    let srv6 = pair.srv_v6;
    let reach = |src: &str, dst: IpAddr| pair.connects(ip(src), dst, PORT, QUICK);

    // Before rampartd: everyone gets through.
    assert!(reach("198.18.0.3", srv4), "no filter yet");

    let mut d = Daemon::start(&pair.srv, &cfg).unwrap();
    assert!(d.log().contains("filter attached"), "{}", d.log());
    assert!(!d.log().contains("is not private"), "{}", d.log());
    assert!(reach("198.18.0.2", srv4), "allowed source connects");
    assert!(!reach("198.18.0.3", srv4), "denied source is dropped");
    assert!(
        !reach("198.18.0.4", srv4),
        "country-blocked source is dropped"
    );
    assert!(reach("2001:db8::2", srv6), "allowed IPv6 source connects");
    assert!(!reach("2001:db8::3", srv6), "denied IPv6 source is dropped");

    // Reload: a new deny entry takes effect without a restart...
    std::fs::write(&cfg, config(&pair, &pins, &dir, &["2001:db8::2"])).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded", Duration::from_secs(10))
        .unwrap();
    assert!(!reach("2001:db8::2", srv6), "entry added by reload applies");
    // ...and a bad file is rejected whole: the running rules stay.
    std::fs::write(
        &cfg,
        "[filter]\ninterfaces = [\"x\"]\ndeny = [\"not-an-address\"]\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_log("reload rejected", Duration::from_secs(10))
        .unwrap();
    assert!(
        !reach("2001:db8::2", srv6),
        "rules unchanged after a rejected reload"
    );
    assert!(
        reach("198.18.0.2", srv4),
        "rules unchanged after a rejected reload"
    );
    rampart_tests::write_private(&cfg, config(&pair, &pins, &dir, &[])).unwrap();

    // SIGKILL: the pinned filter keeps enforcing with no daemon at all.
    d.signal(libc::SIGKILL);
    d.wait(Duration::from_secs(5)).unwrap();
    assert!(!reach("198.18.0.3", srv4), "still dropped after SIGKILL");
    assert!(reach("198.18.0.2", srv4), "still passing after SIGKILL");

    // A new rampartd reuses the pins: probes during the restart never see
    // a gap (no denied connection gets through, no allowed one fails).
    let stop = Arc::new(AtomicBool::new(false));
    let leaked = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let probes = Arc::new(AtomicU32::new(0));
    let prober = {
        let (stop, leaked, refused, probes) = (
            stop.clone(),
            leaked.clone(),
            refused.clone(),
            probes.clone(),
        );
        let cli = pair.cli.clone();
        std::thread::spawn(move || {
            Pair::in_ns(&cli, move || {
                while !stop.load(Ordering::Relaxed) {
                    if rampart_tests::netns::connect_from(
                        ip("198.18.0.3"),
                        (srv4, PORT).into(),
                        Duration::from_millis(200),
                    ) {
                        leaked.fetch_add(1, Ordering::Relaxed);
                    }
                    if !rampart_tests::netns::connect_from(
                        ip("198.18.0.2"),
                        (srv4, PORT).into(),
                        Duration::from_secs(2),
                    ) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    probes.fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut d = Daemon::start(&pair.srv, &cfg).unwrap();
    assert!(
        d.log().contains("no gap"),
        "pinned link reused: {}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    assert!(probes.load(Ordering::Relaxed) >= 2, "the prober ran");
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "a denied source got through during the restart"
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "an allowed source was refused during the restart"
    );

    // SIGTERM: exit 0, the filter stays.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)).unwrap(), Some(0));
    assert!(!reach("198.18.0.3", srv4), "filter stays after SIGTERM");

    // --detach removes it. The pin root stays while it holds something else
    // (another tool's directory)...
    let detach = || {
        let out = std::process::Command::new(rampart_tests::daemon::rampartd_bin().unwrap())
            .args(["--detach", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let other = pins.path().join("other-tool");
    std::fs::create_dir(&other).unwrap();
    let detached = detach();
    assert!(detached.contains(&pair.srv_if), "{detached}");
    assert!(
        reach("198.18.0.3", srv4),
        "detached: the denied source connects again"
    );
    assert!(!pin_dir.exists(), "pins removed");
    assert!(other.exists(), "what rampart did not pin stays");
    // ...and is removed with the last pins, empty: nothing of rampart's is left.
    std::fs::remove_dir(&other).unwrap();
    assert_eq!(detach(), "detached: nothing was attached\n");
    assert!(!pins.path().exists(), "the empty pin root is removed");
}

#[test]
fn an_older_layouts_pinned_link_is_taken_over_without_a_gap() {
    if !privileged() {
        return;
    }
    let pair = Pair::new(&[ip("198.18.0.3")]).unwrap();
    let _server = pair.serve(PORT).unwrap();
    let dir = TempDir::new().unwrap();
    let pins = PinDir::new();
    let new_dir = pins
        .path()
        .join(format!("v{}", rampart_common::LAYOUT_VERSION));
    let old_dir = pins
        .path()
        .join(format!("v{}", rampart_common::LAYOUT_VERSION - 1));
    let _new_guard = PinDirAt(new_dir.clone());
    let _old_guard = PinDirAt(old_dir.clone());
    std::fs::write(
        dir.path.join("geo.csv"),
        "network,country\n203.0.113.0/24,aa\n",
    )
    .unwrap();
    let cfg = dir.path.join("rampart.toml");
    rampart_tests::write_private(&cfg, config(&pair, &pins, &dir, &[])).unwrap();

    // "The previous release": a filter pinned under the older layout's
    // directory, denying 198.18.0.3, left running with no daemon.
    let iface = pair.srv_if.clone();
    let old_pins = old_dir.clone();
    Pair::in_ns(&pair.srv, move || -> anyhow::Result<()> {
        let mut f = Filter::open(&old_pins)?;
        let mut lists = Lists::default();
        lists.insert(
            ListKind::Deny,
            ListEntry {
                net: "198.18.0.3/32".parse()?,
                expires_ns: 0,
                origin: EntryOrigin::Config,
            },
        );
        let settings = Settings {
            protect: rampart::filter::Protect::Ports {
                tcp: vec![PORT..=PORT],
                udp: vec![],
            },
            ..Settings::default()
        };
        f.replace_all(settings, lists, vec![], rampart::rules::CountryPolicy::Off)?;
        f.attach(&iface, AttachMode::Native)?;
        Ok(())
    })
    .unwrap()
    .unwrap();
    let srv4 = pair.srv_v4;
    let reach = |src: &str| pair.connects(ip(src), srv4, PORT, QUICK);
    assert!(!reach("198.18.0.3"), "the old filter enforces");

    // The new rampartd takes the link over: no probe sees a gap.
    let (probes, leaked, refused, d) =
        probing(&pair, srv4, || Daemon::start(&pair.srv, &cfg).unwrap());
    let link = format!("link_{}_native", pair.srv_if);
    assert!(d.log().contains("no gap"), "link reused: {}", d.log());
    assert!(
        d.log().contains("pins of an older map layout removed"),
        "{}",
        d.log()
    );
    assert!(probes >= 2, "the prober ran");
    assert_eq!(leaked, 0, "a denied source got through during the upgrade");
    assert_eq!(
        refused, 0,
        "an allowed source was refused during the upgrade"
    );
    assert!(
        new_dir.join(&link).exists(),
        "link pinned under the new layout"
    );
    assert!(!old_dir.exists(), "the older layout's pins are gone");
    assert!(!reach("198.18.0.3"), "the new filter enforces");
    assert!(reach("198.18.0.2"));
    drop(d);
}

/// Runs `during` while a prober connects from 198.18.0.3 (denied) and
/// 198.18.0.2 (allowed) in a loop: (probes, denied connects, allowed
/// failures, what `during` returned).
fn probing<T>(pair: &Pair, srv4: IpAddr, during: impl FnOnce() -> T) -> (u32, u32, u32, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let prober = {
        let (stop, counts) = (stop.clone(), counts.clone());
        let cli = pair.cli.clone();
        std::thread::spawn(move || {
            Pair::in_ns(&cli, move || {
                while !stop.load(Ordering::Relaxed) {
                    if rampart_tests::netns::connect_from(
                        ip("198.18.0.3"),
                        (srv4, PORT).into(),
                        Duration::from_millis(200),
                    ) {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    }
                    if !rampart_tests::netns::connect_from(
                        ip("198.18.0.2"),
                        (srv4, PORT).into(),
                        Duration::from_secs(2),
                    ) {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    }
                    counts[0].fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = during();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    let [p, l, r] = &*counts;
    (
        p.load(Ordering::Relaxed),
        l.load(Ordering::Relaxed),
        r.load(Ordering::Relaxed),
        out,
    )
}

/// Detaches a pin directory on drop (rampartd pins below the pin root).
struct PinDirAt(std::path::PathBuf);

impl Drop for PinDirAt {
    fn drop(&mut self) {
        let _ = rampart::filter::detach(&self.0);
    }
}

#[test]
fn live_changes_and_temporary_bans_on_a_real_interface() {
    if !privileged() {
        return;
    }
    let pair = Pair::new(&[ip("198.18.0.3")]).unwrap();
    let _server = pair.serve(PORT).unwrap();
    let pins = PinDir::new();
    let mut filter = tcp_port_filter(&pair, &pins, AttachMode::Native);
    let srv4 = pair.srv_v4;
    let reach = |src: &str| pair.connects(ip(src), srv4, PORT, QUICK);
    assert!(reach("198.18.0.3"));

    // An entry added while running applies at once.
    filter
        .add(
            ListKind::Deny,
            &["198.18.0.3/32".parse().unwrap()],
            None,
            EntryOrigin::Operator,
        )
        .unwrap();
    assert!(!reach("198.18.0.3"), "deny added live");
    assert!(reach("198.18.0.2"));
    filter
        .remove(ListKind::Deny, &["198.18.0.3/32".parse().unwrap()])
        .unwrap();
    assert!(reach("198.18.0.3"), "deny removed live");

    // An allowlist on the API port leaves other ports alone.
    filter
        .add(
            ListKind::Allow,
            &["198.18.0.2/32".parse().unwrap()],
            None,
            EntryOrigin::Operator,
        )
        .unwrap();
    assert!(!reach("198.18.0.3"), "not on the allowlist");
    assert!(reach("198.18.0.2"), "on the allowlist");
    filter
        .remove(ListKind::Allow, &["198.18.0.2/32".parse().unwrap()])
        .unwrap();

    // A temporary ban expires in the kernel with no userspace action.
    filter
        .add(
            ListKind::Deny,
            &["198.18.0.0/24".parse().unwrap()],
            Some(Duration::from_secs(2)),
            EntryOrigin::Auto,
        )
        .unwrap();
    assert!(!reach("198.18.0.3"), "banned");
    std::thread::sleep(Duration::from_millis(2300));
    assert!(reach("198.18.0.3"), "ban expired");
    let c = filter.counters().unwrap();
    assert!(
        c.get("denied") > 0 && c.get("not_allowlisted") > 0 && c.get("passed") > 0,
        "{c:?}"
    );
}

/// The `flood` counter of `rampart --json stats`.
fn flood_drops(rig: &Rig) -> u64 {
    counter(rig, "flood")
}

/// A kernel counter of `rampart --json stats`.
fn counter(rig: &Rig, name: &str) -> u64 {
    let stats = rig.cli.json(&["stats"]).unwrap();
    stats["kernel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or(0)
}

/// SYNs to the protected port from 40 addresses of 2001:db8:0:`net`::/64, one each.
fn rotating_v6_sources(net: u16) -> Vec<Vec<u8>> {
    (1..=40)
        .map(|i| {
            let src = Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, i);
            Frame::new().ipv6(&Ipv6::tcp(src, PORT))
        })
        .collect()
}

#[test]
fn the_flood_limit_counts_an_ipv6_client_by_its_prefix() {
    if !privileged() {
        return;
    }
    let flood = |extra: &str| format!("[filter.flood]\npackets_per_second = 1\nburst = 5\n{extra}");
    let mut rig = Rig::start(RigOptions {
        sections: flood(""),
        ..RigOptions::default()
    })
    .unwrap();

    // By default a /64 is one source: a client rotating addresses inside it
    // gets one burst of 5 (6 if a second passed meanwhile), then `flood`.
    rig.pair.inject(rotating_v6_sources(7)).unwrap();
    let dropped = flood_drops(&rig);
    assert!(dropped >= 30, "{dropped} of 40 dropped as flood");

    // ipv6_prefix = 128, applied by a reload: every address has its own burst...
    rig.opts.sections = flood("ipv6_prefix = 128\n");
    rig.write_config().unwrap();
    rig.cli.ok(&["reload"]).unwrap();
    rig.pair.inject(rotating_v6_sources(8)).unwrap();
    assert_eq!(
        flood_drops(&rig),
        dropped,
        "no drop: one packet per address"
    );
    // ...and one address is still limited.
    let one = Frame::new().ipv6(&Ipv6::tcp(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1),
        PORT,
    ));
    rig.pair.inject(vec![one; 10]).unwrap();
    assert!(flood_drops(&rig) - dropped >= 4, "{}", flood_drops(&rig));
}

/// A UDP datagram over IPv6 from an IPv4-mapped source (`::ffff:a.b.c.d`)
/// reaches a UDP service on Linux 5.12 and later (only TCP refuses such a
/// source), and the service sees the IPv4 address. No real host sends one
/// (RFC 4291 §2.5.5.2): the filter drops it as malformed, denied or not, so a
/// forger can neither slip past an IPv4 deny entry nor borrow an IPv4 bypass.
/// `rampart check ::ffff:a.b.c.d` answers for the IPv4 host (how dual-stack
/// services log IPv4 clients).
#[test]
fn ipv4_mapped_ipv6_datagrams_are_dropped_as_malformed() {
    if !privileged() {
        return;
    }
    const UDP_PORT: u16 = 9090;
    let rig = Rig::start(RigOptions::default()).unwrap();
    rig.cli.ok(&["deny", "add", "::ffff:198.18.0.77"]).unwrap();
    let c = rig
        .cli
        .json(&[
            "check",
            "::ffff:198.18.0.77",
            "--port",
            &UDP_PORT.to_string(),
            "--udp",
        ])
        .unwrap();
    assert_eq!(c["action"], "drop", "{c}");
    assert_eq!(c["entry"], "198.18.0.77/32", "{c}");

    // A V6ONLY UDP service on the server; the server interface takes the
    // injected frames' destination MAC so that the stack accepts them.
    let srv_if = rig.pair.srv_if.clone();
    rig.pair
        .ip(
            &rig.pair.srv,
            &[
                "link",
                "set",
                "dev",
                &srv_if,
                "address",
                "02:00:00:00:00:01",
            ],
        )
        .unwrap();
    let socket = Pair::in_ns(
        &rig.pair.srv,
        move || -> std::io::Result<std::net::UdpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
            s.set_only_v6(true)?;
            s.bind(&std::net::SocketAddr::from((Ipv6Addr::UNSPECIFIED, UDP_PORT)).into())?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok(s.into())
        },
    )
    .unwrap()
    .unwrap();
    let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let from = |v4: &str| v4.parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped();
    let malformed_before = counter(&rig, "malformed");
    let plain: Ipv6Addr = "2001:db8::99".parse().unwrap();
    rig.pair
        .inject(vec![
            Frame::new().ipv6(&udp6_datagram(
                from("198.18.0.77"),
                dst,
                UDP_PORT,
                b"denied",
            )),
            Frame::new().ipv6(&udp6_datagram(
                from("198.18.0.78"),
                dst,
                UDP_PORT,
                b"not denied",
            )),
            Frame::new().ipv6(&udp6_datagram(plain, dst, UDP_PORT, b"plain")),
        ])
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()));
    }
    assert_eq!(
        got,
        vec![("plain".to_string(), IpAddr::V6(plain))],
        "only the datagram from an ordinary IPv6 source reaches the service"
    );
    assert_eq!(counter(&rig, "malformed") - malformed_before, 2);
}

/// A filter pinned in `pins` that protects TCP `PORT` and nothing else, with
/// empty lists, attached in `mode` to the server side of `pair` (a fresh attach).
fn tcp_port_filter(pair: &Pair, pins: &PinDir, mode: AttachMode) -> Filter {
    let pin_path = pins.path().to_path_buf();
    let iface = pair.srv_if.clone();
    // Attaching looks the interface up in the calling thread's namespace.
    Pair::in_ns(&pair.srv, move || -> anyhow::Result<Filter> {
        let mut f = Filter::open(&pin_path)?;
        let settings = Settings {
            protect: rampart::filter::Protect::Ports {
                tcp: vec![PORT..=PORT],
                udp: vec![],
            },
            ..Settings::default()
        };
        f.replace_all(
            settings,
            Lists::default(),
            vec![],
            rampart::rules::CountryPolicy::Off,
        )?;
        let info = f.attach(&iface, mode)?;
        assert!(!info.reused);
        Ok(f)
    })
    .unwrap()
    .unwrap()
}

/// rtnetlink attributes iproute2 6.1 cannot set (linux/if_link.h).
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;

/// Sends `bytes` over one TCP connection from the client side to `dst`
/// (a listener on the server side): (bytes the server read, time taken).
/// Gives up at `within`.
fn bulk(pair: &Pair, dst: IpAddr, bytes: usize, within: Duration) -> (usize, Duration) {
    use std::io::{Read as _, Write as _};
    const BULK_PORT: u16 = PORT;
    let listener = Pair::in_ns(&pair.srv, move || {
        std::net::TcpListener::bind((dst, BULK_PORT))
    })
    .unwrap()
    .unwrap();
    let started = std::time::Instant::now();
    let server = std::thread::spawn(move || -> usize {
        listener.set_nonblocking(true).unwrap();
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if started.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return 0,
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(within)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            got += n;
        }
        got
    });
    let sent = Pair::in_ns(&pair.cli, move || -> std::io::Result<usize> {
        let mut s = std::net::TcpStream::connect_timeout(&(dst, BULK_PORT).into(), within)?;
        s.set_write_timeout(Some(within))?;
        let chunk = vec![b'x'; 256 << 10];
        let mut sent = 0;
        while sent < bytes && started.elapsed() < within {
            s.write_all(&chunk)?;
            sent += chunk.len();
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    })
    .unwrap();
    let got = server.join().unwrap();
    eprintln!(
        "{dst}: sent {sent:?}, server read {got} in {:?}",
        started.elapsed()
    );
    (got, started.elapsed())
}

/// In skb (generic) mode XDP runs after GRO. With BIG TCP (`gro_max_size`,
/// `gro_ipv4_max_size` above 64 KiB) a packet longer than 64 KiB carries an
/// IP length of 0 (IPv4 total length, IPv6 payload length): the filter takes
/// the frame's end as the packet's and judges it, where it used to call it
/// malformed and drop it (a bulk transfer crawled at ~3 MB/s).
#[test]
fn skb_mode_judges_big_tcp_packets_longer_than_64_kib() {
    if !privileged() {
        return;
    }
    const BIG: u32 = 185_000;
    const BYTES: usize = 64 << 20;
    let pair = Pair::new(&[]).unwrap();
    let pins = PinDir::new();
    let filter = tcp_port_filter(&pair, &pins, AttachMode::Skb);
    let big = BIG.to_string();
    pair.ip(
        &pair.srv,
        &["link", "set", "dev", &pair.srv_if, "gro_max_size", &big],
    )
    .unwrap();
    pair.ip(
        &pair.cli,
        &["link", "set", "dev", &pair.cli_if, "gso_max_size", &big],
    )
    .unwrap();
    pair.set_link_u32(&pair.srv, &pair.srv_if, IFLA_GRO_IPV4_MAX_SIZE, BIG)
        .unwrap();
    pair.set_link_u32(&pair.cli, &pair.cli_if, IFLA_GSO_IPV4_MAX_SIZE, BIG)
        .unwrap();

    for dst in [pair.srv_v4, pair.srv_v6] {
        let before = filter.counters().unwrap();
        let (got, took) = bulk(&pair, dst, BYTES, Duration::from_secs(10));
        let after = filter.counters().unwrap();
        let moved = |r: &str| after.get(r) - before.get(r);
        assert_eq!(moved("malformed"), 0, "{dst}: {after:?}");
        assert_eq!(got, BYTES, "{dst}: all sent within 10 s (took {took:?})");
        assert!(moved("passed") > 0, "{dst}: judged: {after:?}");
    }
}
