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

    // Side by side, interleaved: each round measures xdp-filter, rampart with
    // the same rules, and rampart with everything, so that the machine's
    // drift (a shared VM) hits all three alike; medians over the rounds.
    small.replace_all(
        Settings::default(),
        cases[1].lists.clone(),
        vec![],
        CountryPolicy::Off,
    )?;
    let xf = XdpFilter::load(&exact4[..10_000], &exact6[..10_000])?;
    let probes = [
        ("test run, IPv4 pass", packet(pass4), packet(geo_pass4)),
        ("test run, IPv4 drop (exact)", packet(deny4), packet(deny4)),
        ("test run, IPv6 pass", packet(pass6), packet(geo_pass6)),
        ("test run, IPv6 drop (exact)", packet(deny6), packet(deny6)),
    ];
    let rounds = 9;
    let mut series: Vec<[Vec<f64>; 3]> = vec![Default::default(); probes.len() + 2];
    for round in 0..rounds {
        eprintln!("side by side, test runs, round {}/{rounds}", round + 1);
        for (i, (_, same_pkt, all_pkt)) in probes.iter().enumerate() {
            series[i][0].push(xf.test_run(same_pkt, args.repeat)?);
            series[i][1].push(small.kernel().test_run(same_pkt, args.repeat)?.1.as_nanos() as f64);
            series[i][2].push(big.kernel().test_run(all_pkt, args.repeat)?.1.as_nanos() as f64);
        }
    }
    let same_pair = Attached::new(&small)?;
    let all_pair = Attached::new(&big)?;
    for round in 0..3 {
        eprintln!("side by side, under traffic, round {}/3", round + 1);
        for (j, v6) in [false, true].into_iter().enumerate() {
            let row = &mut series[probes.len() + j];
            row[0].push(measure_stream(&xf.pair, xf.prog, v6, args.traffic_secs)?);
            row[1].push(measure_stream(
                &same_pair.pair,
                same_pair.prog,
                v6,
                args.traffic_secs,
            )?);
            row[2].push(measure_stream(
                &all_pair.pair,
                all_pair.prog,
                v6,
                args.traffic_secs,
            )?);
        }
    }
    drop((same_pair, all_pair));
    writeln!(
        report,
        "\n### Side by side with xdp-filter ({}), same run\n\n\
         xdp-filter holds exact addresses only (10,000 per family at most): it is loaded with the \
         first 10,000 IPv4 and IPv6 entries of the deny set; rampart is measured with those same \
         rules (default `max_deny_entries`) and with everything. Measurements are interleaved \
         round by round; test runs are medians of {rounds} rounds of {} repeats, traffic figures \
         medians of 3 rounds of {} s of trafgen SYNs with random sources (run_time_ns / run_cnt \
         with `kernel.bpf_stats_enabled=1`). Ratios below 1 mean rampart is faster.\n",
        xf.version, args.repeat, args.traffic_secs
    )?;
    writeln!(
        report,
        "| measurement | xdp-filter | rampart, same rules | ratio | rampart, everything | ratio |\n|---|---:|---:|---:|---:|---:|"
    )?;
    let names: Vec<&str> = probes
        .iter()
        .map(|p| p.0)
        .chain([
            "under traffic, IPv4 random sources",
            "under traffic, IPv6 random sources",
        ])
        .collect();
    for (name, row) in names.iter().zip(series) {
        let [x, same, all] = row.map(median);
        writeln!(
            report,
            "| {name} | {x:.1} ns | {same:.1} ns | {:.2} | {all:.1} ns | {:.2} |",
            same / x,
            all / x
        )?;
    }
    drop(xf);
    drop((small, big, pins_small, pins_big));
    writeln!(report, "\nTotal benchmark time: {:.0?}.", started.elapsed())?;
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| out.display().to_string())?;
        eprintln!("written to {}", out.display());
    }
    Ok(())
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
    // Only while measuring: statistics cost two clock reads per run, which
    // would also inflate the test-run figures.
    let _stats = BpfStats::on()?;
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

/// A second handle on a filter's pinned maps, attached in native mode to the
/// server side of its own namespace pair, for measurements under traffic.
struct Attached {
    // Field order: the handle (and its link) goes before the namespaces.
    _filter: Filter,
    pair: Pair,
    prog: u32,
}

impl Attached {
    fn new(filter: &Filter) -> anyhow::Result<Self> {
        let pair = Pair::new(&[])?;
        let iface = pair.srv_if.clone();
        let pins = filter.kernel().pin_dir().to_path_buf();
        let capacity = filter.kernel().max_deny_entries();
        // Attaching looks the interface up in the calling thread's namespace.
        let attached = Pair::in_ns(&pair.srv, move || -> anyhow::Result<Filter> {
            let mut f = Filter::open_sized(&pins, capacity)?;
            f.attach(&iface, AttachMode::Native)?;
            Ok(f)
        })??;
        let prog = attached_prog(&pair.srv, &pair.srv_if)?;
        Ok(Self {
            _filter: attached,
            pair,
            prog,
        })
    }
}

/// xdp-filter loaded on the server side of its own namespace pair; unloaded
/// on drop.
struct XdpFilter {
    version: String,
    prog: u32,
    // Dropped before the pair: unloads xdp-filter while the device exists.
    _loaded: XdpFilterLoaded,
    pair: Pair,
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

impl XdpFilter {
    fn load(exact4: &[IpNet], exact6: &[IpNet]) -> anyhow::Result<Self> {
        // xdp-filter has no --version; Debian's package says which build it is.
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "xdp-tools ${Version}", "xdp-tools"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "xdp-tools".to_string());
        let pair = Pair::new(&[])?;
        // nsenter keeps this mount namespace, so xdp-filter pins its maps in
        // the host's /sys/fs/bpf/xdp-filter where this process can open them.
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
        let loaded = XdpFilterLoaded {
            ns: pair.srv.clone(),
            dev: pair.srv_if.clone(),
        };
        let nproc = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        // MAP_FLAG_SRC = 1 (xdp-filter common_kern_user.h), on every CPU.
        let flags = || PerCpuValues::try_from(vec![1u64; nproc]);
        let m4 = MapData::from_pin("/sys/fs/bpf/xdp-filter/filter_ipv4")?;
        let mut m4: PerCpuHashMap<MapData, u32, u64> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(m4))?;
        for n in exact4 {
            if let IpAddr::V4(a) = n.addr() {
                m4.insert(u32::from_ne_bytes(a.octets()), flags()?, 0)?;
            }
        }
        let m6 = MapData::from_pin("/sys/fs/bpf/xdp-filter/filter_ipv6")?;
        let mut m6: PerCpuHashMap<MapData, [u8; 16], u64> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(m6))?;
        for n in exact6 {
            if let IpAddr::V6(a) = n.addr() {
                m6.insert(a.octets(), flags()?, 0)?;
            }
        }
        let prog = attached_prog(&pair.srv, &pair.srv_if)?;
        Ok(Self {
            version,
            prog,
            _loaded: loaded,
            pair,
        })
    }

    /// ns per packet through `bpftool prog run ... repeat` (its dispatcher
    /// included: that is how xdp-filter runs on an interface).
    fn test_run(&self, pkt: &[u8], repeat: u32) -> anyhow::Result<f64> {
        let file = std::env::temp_dir().join(rampart_tests::unique("pkt-"));
        std::fs::write(&file, pkt)?;
        let out = Command::new("bpftool")
            .args(["prog", "run", "id", &self.prog.to_string(), "data_in"])
            .arg(&file)
            .args(["repeat", &repeat.to_string()])
            .output();
        let _ = std::fs::remove_file(&file);
        let out = out?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        text.lines()
            .find_map(|l| l.split("duration (average):").nth(1).map(str::trim))
            .and_then(|d| d.trim_end_matches("ns").trim().parse::<f64>().ok())
            .with_context(|| format!("bpftool prog run said: {text}"))
    }
}
