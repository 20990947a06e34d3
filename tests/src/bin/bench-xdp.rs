//! `cargo xtask bench xdp`: nanoseconds per packet of rampart's XDP program,
//! side by side with xdp-filter (Debian's xdp-tools), in one run.
//!
//! 1. BPF_PROG_TEST_RUN, `repeat` runs of one packet per packet type and rule
//!    set (median of 3), for rampart and for xdp-filter with the same exact
//!    address rules (xdp-filter has no CIDR or country support, and its maps
//!    hold 10,000 addresses).
//! 2. Under traffic: `kernel.bpf_stats_enabled=1` and the program's
//!    run_time_ns / run_cnt while trafgen sends TCP SYNs with random source
//!    addresses across a veth pair (this counts the cache misses a repeated
//!    packet hides).
//!
//! Traffic only flows between two network namespaces this program creates.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
use ipnet::IpNet;
use rampart::{
    filter::{AttachMode, EntryOrigin, Filter, ListEntry, ListKind, Lists, Settings},
    rules::CountryPolicy,
};
use rampart_tests::{
    PinDir,
    netns::Pair,
    packet::{Frame, Ipv4, Ipv6},
};

struct Args {
    geo: Option<PathBuf>,
    out: Option<PathBuf>,
    repeat: u32,
    traffic_secs: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        geo: None,
        out: None,
        repeat: 1_000_000,
        traffic_secs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--geo" => a.geo = Some(v()?.into()),
            "--out" => a.out = Some(v()?.into()),
            "--repeat" => a.repeat = v()?.parse()?,
            "--traffic-secs" => a.traffic_secs = v()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if a.repeat < 1_000_000 {
        eprintln!("note: --repeat below 1,000,000 is for quick checks only");
    }
    Ok(a)
}

/// A small deterministic generator (xorshift64*): the same rules every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Addresses the benchmark packets use; rule generators avoid them.
fn reserved(a: u32) -> bool {
    a >> 24 == 198 || a >> 24 == 0
}

fn exact_v4(n: usize, rng: &mut Rng) -> Vec<IpNet> {
    let mut set = BTreeSet::new();
    while set.len() < n {
        let a = rng.next() as u32;
        if !reserved(a) {
            set.insert(a);
        }
    }
    set.into_iter()
        .map(|a| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), 32).unwrap_or_default())
        .collect()
}

fn exact_v6(n: usize, rng: &mut Rng) -> Vec<IpNet> {
    (0..n)
        .map(|_| {
            let a = (0x2a00u128 << 112)
                | (u128::from(rng.next()) << 48)
                | u128::from(rng.next() as u16);
            IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), 128).unwrap_or_default()
        })
        .collect()
}

/// 10k deny CIDRs: IPv4 /12-/30 and IPv6 /24-/64, mixed like blocklists.
fn deny_cidrs(n: usize, rng: &mut Rng) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.next();
        let net = if r.is_multiple_of(4) {
            let len = 24 + (r >> 8) as u8 % 41;
            let a = (0x2a00u128 << 112) | (u128::from(rng.next()) << 48);
            IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), len).map(|n| n.trunc())
        } else {
            let a = rng.next() as u32;
            if reserved(a) {
                continue;
            }
            let len = [12u8, 16, 18, 20, 22, 24, 24, 24, 26, 28, 30][(r >> 8) as usize % 11];
            IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len).map(|n| n.trunc())
        };
        if let Ok(net) = net {
            out.push(net);
        }
    }
    out
}

/// The real country table when its folder is given, otherwise a generated
/// one with the real data's prefix-length mix.
fn countries(geo: Option<&Path>, rng: &mut Rng) -> anyhow::Result<(Vec<(IpNet, u16)>, String)> {
    if let Some(dir) = geo.filter(|d| d.exists()) {
        let data = rampart::geo::load(dir)?;
        let what = format!(
            "real country-ip-blocks data ({} IPv4 + {} IPv6 prefixes)",
            data.v4_prefixes(),
            data.v6_prefixes()
        );
        return Ok((data.into_prefixes(), what));
    }
    // Lengths weighted as in the real IPv4 (/8../29) and IPv6 (/19../48) data.
    let v4_mix: [(u8, u32); 10] = [
        (12, 4),
        (14, 15),
        (16, 70),
        (18, 53),
        (19, 99),
        (20, 117),
        (21, 168),
        (22, 507),
        (23, 238),
        (24, 386),
    ];
    let v6_mix: [(u8, u32); 6] = [
        (29, 170),
        (32, 326),
        (36, 16),
        (40, 17),
        (44, 12),
        (48, 137),
    ];
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |net: IpNet, cc: u16, out: &mut Vec<(IpNet, u16)>| {
        if seen.insert(net) {
            out.push((net, cc));
        }
    };
    for (len, weight) in v4_mix {
        for _ in 0..weight * 100 {
            let a = rng.next() as u32;
            if reserved(a) {
                continue;
            }
            let cc = 1 + (rng.next() % 250) as u16;
            if let Ok(n) = IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len) {
                push(n.trunc(), cc, &mut out);
            }
        }
    }
    for (len, weight) in v6_mix {
        for _ in 0..weight * 100 {
            let a = (0x2000u128 << 112) | (u128::from(rng.next()) << 60);
            let cc = 1 + (rng.next() % 250) as u16;
            if let Ok(n) = IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), len) {
                push(n.trunc(), cc, &mut out);
            }
        }
    }
    let what = format!(
        "generated country table ({} prefixes, real length mix)",
        out.len()
    );
    Ok((out, what))
}

/// A source inside the longest prefix of a country that `pick` selects (the
/// deepest walk), not covered by any of `avoid`.
fn deep_source(
    countries: &[(IpNet, u16)],
    v6: bool,
    pick: impl Fn(u16) -> bool,
    avoid: &[IpNet],
) -> Option<IpAddr> {
    let mut candidates: Vec<&(IpNet, u16)> = countries
        .iter()
        .filter(|(n, c)| matches!(n, IpNet::V6(_)) == v6 && pick(*c))
        .collect();
    candidates.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
    candidates
        .into_iter()
        .map(|(n, _)| n.network())
        .find(|a| !avoid.iter().any(|d| d.contains(a)))
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Case {
    name: &'static str,
    lists: Lists,
    countries: Vec<(IpNet, u16)>,
    policy: CountryPolicy,
    /// (label, packet, expected XDP action)
    packets: Vec<(String, Vec<u8>, u32)>,
}

fn lists_of(entries: &[(ListKind, &[IpNet])]) -> Lists {
    let mut l = Lists::default();
    for (kind, nets) in entries {
        for n in *nets {
            l.insert(
                *kind,
                ListEntry {
                    net: *n,
                    expires_ns: 0,
                    origin: EntryOrigin::Config,
                },
            );
        }
    }
    l
}

fn packet(src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(a) => Frame::new().ipv4(&Ipv4::tcp(a, 443)),
        IpAddr::V6(a) => Frame::new().ipv6(&Ipv6::tcp(a, 443)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn test_run_ns(run: impl Fn() -> anyhow::Result<Duration>) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(run()?.as_nanos() as f64);
    }
    Ok(median(v))
}

/// Figures keyed by "case/label".
type Figures = std::collections::BTreeMap<String, f64>;

fn main() -> anyhow::Result<()> {
    let args = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the XDP benchmark needs root (BPF_PROG_TEST_RUN, XDP attach, namespaces)");
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let started = Instant::now();
    eprintln!("generating rule sets...");
    let exact4 = exact_v4(1_000_000, &mut rng);
    let exact6 = exact_v6(1_000_000, &mut rng);
    let cidrs = deny_cidrs(10_000, &mut rng);
    let (geo, geo_what) = countries(args.geo.as_deref(), &mut rng)?;
    let geo_codes: Vec<u16> = geo
        .iter()
        .map(|(_, c)| *c)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Block every other country: a policy of ~120 blocked countries.
    let blocked: BTreeSet<u16> = geo_codes.iter().step_by(2).copied().collect();
    let block = CountryPolicy::Block(blocked.clone());

    let pass4: IpAddr = "198.18.0.2".parse()?;
    let pass6: IpAddr = "2001:db8::2".parse()?;
    let deny4 = exact4[5_000].addr();
    let deny6 = exact6[5_000].addr();
    let cidr4 = cidrs
        .iter()
        .find(|n| matches!(n, IpNet::V4(_)))
        .map(IpNet::network)
        .context("no v4 cidr")?;
    let cidr6 = cidrs
        .iter()
        .find(|n| matches!(n, IpNet::V6(_)))
        .map(IpNet::network)
        .context("no v6 cidr")?;
    let allowed = |c: u16| !blocked.contains(&c);
    let is_blocked = |c: u16| blocked.contains(&c);
    let geo_pass4 = deep_source(&geo, false, allowed, &cidrs).context("no allowed v4 country")?;
    let geo_pass6 = deep_source(&geo, true, allowed, &cidrs).context("no allowed v6 country")?;
    let geo_drop4 =
        deep_source(&geo, false, is_blocked, &cidrs).context("no blocked v4 country")?;
    let geo_drop6 = deep_source(&geo, true, is_blocked, &cidrs).context("no blocked v6 country")?;

    let exact_all: Vec<IpNet> = exact4.iter().chain(exact6.iter()).copied().collect();
    let exact_10k: Vec<IpNet> = exact4[..10_000]
        .iter()
        .chain(exact6[..10_000].iter())
        .copied()
        .collect();
    let full_lists = {
        let deny: Vec<IpNet> = exact_all.iter().chain(cidrs.iter()).copied().collect();
        lists_of(&[(ListKind::Deny, &deny)])
    };
    let pass = |label: &str, src: IpAddr| (format!("{label} ({src})"), packet(src), XDP_PASS);
    let dropped = |label: &str, src: IpAddr| (format!("{label} ({src})"), packet(src), XDP_DROP);
    let cases = vec![
        Case {
            name: "no rules",
            lists: Lists::default(),
            countries: vec![],
            policy: CountryPolicy::Off,
            packets: vec![pass("IPv4 pass", pass4), pass("IPv6 pass", pass6)],
        },
        Case {
            name: "10k+10k exact deny (xdp-filter's rules)",
            lists: lists_of(&[(ListKind::Deny, &exact_10k)]),
            countries: vec![],
            policy: CountryPolicy::Off,
            packets: vec![
                pass("IPv4 pass", pass4),
                dropped("IPv4 drop", deny4),
                pass("IPv6 pass", pass6),
                dropped("IPv6 drop", deny6),
            ],
        },
        Case {
            name: "1M+1M exact deny",
            lists: lists_of(&[(ListKind::Deny, &exact_all)]),
            countries: vec![],
            policy: CountryPolicy::Off,
            packets: vec![
                pass("IPv4 pass", pass4),
                dropped("IPv4 drop", deny4),
                pass("IPv6 pass", pass6),
                dropped("IPv6 drop", deny6),
            ],
        },
        Case {
            name: "10k deny CIDRs",
            lists: lists_of(&[(ListKind::Deny, &cidrs)]),
            countries: vec![],
            policy: CountryPolicy::Off,
            packets: vec![
                pass("IPv4 pass", pass4),
                dropped("IPv4 drop", cidr4),
                pass("IPv6 pass", pass6),
                dropped("IPv6 drop", cidr6),
            ],
        },
        Case {
            name: "country table",
            lists: Lists::default(),
            countries: geo.clone(),
            policy: block.clone(),
            packets: vec![
                pass("IPv4 pass", geo_pass4),
                dropped("IPv4 drop", geo_drop4),
                pass("IPv6 pass", geo_pass6),
                dropped("IPv6 drop", geo_drop6),
            ],
        },
        Case {
            name: "everything",
            lists: full_lists,
            countries: geo.clone(),
            policy: block.clone(),
            packets: vec![
                pass("IPv4 pass", geo_pass4),
                dropped("IPv4 drop, exact", deny4),
                dropped("IPv4 drop, country", geo_drop4),
                pass("IPv6 pass", geo_pass6),
                dropped("IPv6 drop, exact", deny6),
                dropped("IPv6 drop, country", geo_drop6),
            ],
        },
    ];

    let mut report = String::new();
    let mut fig = Figures::new();
    writeln!(
        report,
        "### BPF_PROG_TEST_RUN: rampart, ns per packet (median of 3 runs of {} repeats)\n",
        args.repeat
    )?;
    writeln!(
        report,
        "Rule sets: \"everything\" = country table + 1M exact IPv4 + 1M exact IPv6 deny entries + 10k deny CIDRs. \
         Country data: {geo_what}; {} countries blocked. Pass packets come from the longest prefix of an allowed \
         country (the deepest table walk).\n",
        blocked.len()
    )?;
    writeln!(report, "| rule set | packet | ns/packet |\n|---|---|---:|")?;
    // Rule sets up to 10k exact entries run with the default exact-map size
    // (filter.max_deny_entries); the 1M sets need maps sized for them.
    let (pins_small, pins_big) = (PinDir::new(), PinDir::new());
    let mut small = Filter::open(pins_small.path())?;
    let mut big = Filter::open_sized(pins_big.path(), 2 * 1024 * 1024)?;
    for case in &cases {
        let filter = if case.name.starts_with("1M") || case.name == "everything" {
            &mut big
        } else {
            &mut small
        };
        let t = Instant::now();
        filter.replace_all(
            Settings::default(),
            case.lists.clone(),
            case.countries.clone(),
            case.policy.clone(),
        )?;
        eprintln!("{}: rules applied in {:.1?}", case.name, t.elapsed());
        for (label, pkt, want) in &case.packets {
            let (got, _) = filter.kernel().test_run(pkt, 1)?;
            if got != *want {
                bail!("{} / {label}: XDP action {got}, expected {want}", case.name);
            }
            let ns = test_run_ns(|| Ok(filter.kernel().test_run(pkt, args.repeat)?.1))?;
            writeln!(report, "| {} | {} | {:.1} |", case.name, label, ns)?;
            let short = label.split(" (").next().unwrap_or(label);
            fig.insert(format!("{}/{}", case.name, short), ns);
        }
    }

    // Under traffic: the same rules as xdp-filter, then everything.
    let traffic = under_traffic(&mut small, args.traffic_secs, &cases[1]).and_then(|same| {
        Ok(vec![
            same,
            under_traffic(&mut big, args.traffic_secs, &cases[5])?,
        ])
    });
    drop((small, big, pins_small, pins_big));

    let xf = xdp_filter(
        &exact4[..10_000],
        &exact6[..10_000],
        deny4,
        args.repeat,
        args.traffic_secs,
    );
    writeln!(report)?;
    match (&xf, &traffic) {
        (Ok(x), Ok(t)) => {
            writeln!(
                report,
                "### Side by side with xdp-filter ({}), same run\n\nxdp-filter holds exact addresses only (10,000 per family at most): \
                 it is loaded with the first 10,000 IPv4 and IPv6 entries of the deny set, and rampart is measured with \
                 those same rules and with everything.\n",
                x.version
            )?;
            writeln!(
                report,
                "| measurement | xdp-filter | rampart, same rules | ratio | rampart, everything | ratio |\n|---|---:|---:|---:|---:|---:|"
            )?;
            let g = |k: &str| fig.get(k).copied().unwrap_or(f64::NAN);
            let rows = [
                (
                    "test run, IPv4 pass",
                    x.v4_pass,
                    g("10k+10k exact deny (xdp-filter's rules)/IPv4 pass"),
                    g("everything/IPv4 pass"),
                ),
                (
                    "test run, IPv4 drop (exact)",
                    x.v4_drop,
                    g("10k+10k exact deny (xdp-filter's rules)/IPv4 drop"),
                    g("everything/IPv4 drop, exact"),
                ),
                (
                    "test run, IPv6 pass",
                    x.v6_pass,
                    g("10k+10k exact deny (xdp-filter's rules)/IPv6 pass"),
                    g("everything/IPv6 pass"),
                ),
                (
                    "under traffic, IPv4 random sources",
                    x.traffic_v4,
                    t[0].v4,
                    t[1].v4,
                ),
                (
                    "under traffic, IPv6 random sources",
                    x.traffic_v6,
                    t[0].v6,
                    t[1].v6,
                ),
            ];
            for (what, xv, same, all) in rows {
                writeln!(
                    report,
                    "| {what} | {xv:.1} ns | {same:.1} ns | {:.2} | {all:.1} ns | {:.2} |",
                    same / xv,
                    all / xv
                )?;
            }
        }
        (x, t) => {
            if let Err(e) = x {
                writeln!(report, "xdp-filter comparison failed: {e:#}")?;
            }
            if let Err(e) = t {
                writeln!(report, "under-traffic measurement failed: {e:#}")?;
            }
        }
    }
    writeln!(report, "\nTotal benchmark time: {:.0?}.", started.elapsed())?;
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| out.display().to_string())?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
}

struct Traffic {
    v4: f64,
    v6: f64,
}

/// The trafgen packet config: TCP SYNs to port 443 with random sources.
fn trafgen_conf(v6: bool) -> String {
    if v6 {
        "{ 0x02,0,0,0,0,1, 0x02,0,0,0,0,2, c16(0x86dd), 0x60,0,0,0, c16(20), 6, 64, \
         0x2a,0x00, drnd(14), 0x20,0x01,0x0d,0xb8,0,0,0,0,0,0,0,0,0,0,0,1, \
         drnd(2), c16(443), drnd(4), c32(0), 0x50, 0x02, c16(512), c16(0), c16(0) }"
            .to_string()
    } else {
        "{ 0x02,0,0,0,0,1, 0x02,0,0,0,0,2, c16(0x0800), 0x45, 0, c16(40), drnd(2), c16(0x4000), 64, 6, \
         csumip(14, 33), drnd(4), 198, 18, 0, 1, \
         drnd(2), c16(443), drnd(4), c32(0), 0x50, 0x02, c16(512), c16(0), c16(0) }"
            .to_string()
    }
}

/// (run_time_ns, run_cnt) of a program.
fn prog_stats(id: u32) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// The id of the XDP program attached to `dev` in namespace `ns`.
fn attached_prog(ns: &str, dev: &str) -> anyhow::Result<u32> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "-d", "link", "show", dev])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
        .map(|i| i as u32)
        .with_context(|| format!("no XDP program on {dev}: {v}"))
}

/// ns per packet of the program on `pair.srv_if` while trafgen sends from
/// the client side for `secs` seconds.
fn measure_stream(pair: &Pair, prog: u32, v6: bool, secs: u64) -> anyhow::Result<f64> {
    let conf = std::env::temp_dir().join(rampart_tests::unique("trafgen-"));
    std::fs::write(&conf, trafgen_conf(v6))?;
    let before = prog_stats(prog)?;
    let status = Command::new("timeout")
        .arg(secs.to_string())
        .args([
            "ip",
            "netns",
            "exec",
            &pair.cli,
            "taskset",
            "-c",
            "0",
            "trafgen",
            "-q",
            "-C",
            "-P",
            "1",
            "--dev",
            &pair.cli_if,
            "--conf",
        ])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_file(&conf);
    status.context("running trafgen")?;
    let after = prog_stats(prog)?;
    let (ns, cnt) = (after.0 - before.0, after.1 - before.1);
    if cnt == 0 {
        bail!("the program saw no packets");
    }
    eprintln!("  {cnt} packets, {:.1} ns/packet", ns as f64 / cnt as f64);
    Ok(ns as f64 / cnt as f64)
}

struct BpfStats;

impl BpfStats {
    fn on() -> anyhow::Result<Self> {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

fn under_traffic(filter: &mut Filter, secs: u64, case: &Case) -> anyhow::Result<Traffic> {
    filter.replace_all(
        Settings::default(),
        case.lists.clone(),
        case.countries.clone(),
        case.policy.clone(),
    )?;
    let pair = Pair::new(&[])?;
    let iface = pair.srv_if.clone();
    let pins = filter.kernel().pin_dir().to_path_buf();
    let capacity = filter.kernel().max_deny_entries();
    // Attach a second handle on the same maps from inside the namespace.
    let attached = Pair::in_ns(&pair.srv, move || -> anyhow::Result<Filter> {
        let mut f = Filter::open_sized(&pins, capacity)?;
        f.attach(&iface, AttachMode::Native)?;
        Ok(f)
    })??;
    let _stats = BpfStats::on()?;
    let prog = attached_prog(&pair.srv, &pair.srv_if)?;
    eprintln!("under traffic, rampart, {}:", case.name);
    let v4 = measure_stream(&pair, prog, false, secs)?;
    let v6 = measure_stream(&pair, prog, true, secs)?;
    drop(attached);
    Ok(Traffic { v4, v6 })
}

struct XdpFilterResult {
    version: String,
    v4_pass: f64,
    v6_pass: f64,
    v4_drop: f64,
    traffic_v4: f64,
    traffic_v6: f64,
}

/// Unloads xdp-filter from the device on drop.
struct XdpFilterLoaded {
    ns: String,
    dev: String,
}

impl Drop for XdpFilterLoaded {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .args(["xdp-filter", "unload", &self.dev])
            .output();
    }
}

fn xdp_filter(
    exact4: &[IpNet],
    exact6: &[IpNet],
    probe_drop: IpAddr,
    repeat: u32,
    secs: u64,
) -> anyhow::Result<XdpFilterResult> {
    // xdp-filter has no --version; Debian's package says which build it is.
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "xdp-tools ${Version}", "xdp-tools"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "xdp-tools".to_string());
    let pair = Pair::new(&[])?;
    // nsenter keeps this mount namespace, so xdp-filter pins its maps in the
    // host's /sys/fs/bpf/xdp-filter where this process can open them.
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", pair.srv))
        .args([
            "xdp-filter",
            "load",
            "-m",
            "native",
            "-f",
            "ipv4,ipv6",
            &pair.srv_if,
        ])
        .output()?;
    if !out.status.success() {
        bail!("xdp-filter load: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _loaded = XdpFilterLoaded {
        ns: pair.srv.clone(),
        dev: pair.srv_if.clone(),
    };
    // Its maps are pinned under /sys/fs/bpf/xdp-filter.
    let deny4: Vec<Ipv4Addr> = exact4
        .iter()
        .take(10_000)
        .filter_map(|n| match n.addr() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let deny6: Vec<Ipv6Addr> = exact6
        .iter()
        .take(10_000)
        .filter_map(|n| match n.addr() {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        })
        .collect();
    let nproc = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    {
        let (d4, d6) = (&deny4, &deny6);
        // MAP_FLAG_SRC = 1 (xdp-filter common_kern_user.h)

        let m4 = MapData::from_pin("/sys/fs/bpf/xdp-filter/filter_ipv4")?;
        let mut m4: PerCpuHashMap<MapData, u32, u64> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(m4))?;
        for a in d4 {
            m4.insert(
                u32::from_ne_bytes(a.octets()),
                PerCpuValues::try_from(vec![1u64; nproc])?,
                0,
            )?;
        }
        let m6 = MapData::from_pin("/sys/fs/bpf/xdp-filter/filter_ipv6")?;
        let mut m6: PerCpuHashMap<MapData, [u8; 16], u64> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(m6))?;
        for a in d6 {
            m6.insert(a.octets(), PerCpuValues::try_from(vec![1u64; nproc])?, 0)?;
        }
    }
    let prog = attached_prog(&pair.srv, &pair.srv_if)?;
    let run = |pkt: &[u8]| -> anyhow::Result<f64> {
        let file = std::env::temp_dir().join(rampart_tests::unique("pkt-"));
        std::fs::write(&file, pkt)?;
        let r = test_run_ns(|| {
            let out = Command::new("bpftool")
                .args(["prog", "run", "id", &prog.to_string(), "data_in"])
                .arg(&file)
                .args(["repeat", &repeat.to_string()])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            let ns = text
                .lines()
                .find_map(|l| l.split("duration (average):").nth(1).map(str::trim))
                .and_then(|d| d.trim_end_matches("ns").trim().parse::<u64>().ok())
                .with_context(|| format!("bpftool prog run said: {text}"))?;
            Ok(Duration::from_nanos(ns))
        });
        let _ = std::fs::remove_file(&file);
        r
    };
    let v4_pass = run(&packet("198.18.0.2".parse()?))?;
    let v6_pass = run(&packet("2001:db8::2".parse()?))?;
    let v4_drop = run(&packet(probe_drop))?;
    let _stats = BpfStats::on()?;
    eprintln!("under traffic, xdp-filter:");
    let traffic_v4 = measure_stream(&pair, prog, false, secs)?;
    let traffic_v6 = measure_stream(&pair, prog, true, secs)?;
    Ok(XdpFilterResult {
        version,
        v4_pass,
        v6_pass,
        v4_drop,
        traffic_v4,
        traffic_v6,
    })
}
