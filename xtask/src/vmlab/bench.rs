//! The bench scenario: numbers from the guests, written to bench/vm.md (a "Router VM" section
//! for BENCHMARKS.md).
//!
//! - Memory: what portguard's maps take by CPU count (bpftool's memlock figure per map, and the
//!   rise in the guest's per-CPU memory when portguard starts), and how long `stats --json`
//!   takes with 2 sources and with a table of a few thousand.
//! - Drop rate: a UDP flood to 2745 through the tap, dropped in turn by portguard, by the
//!   smallest XDP program there is (`r0 = XDP_DROP; exit`, attached with iproute2), and by an
//!   nftables ingress rule, plus the kernel stack delivering it to a socket, in the same guest.
//!   Under emulation the absolute rates say little (QEMU's main thread bounds them); the ratio
//!   between the three and the guest CPU time per packet are what to read.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Run,
    report::Checks,
    scenario::{GUARDED, Guest},
    traffic::{self, Proto, Rng, Tap},
};

/// An ELF64 section header: name, type, flags, offset, size, link, info, align, entsize.
type Shdr = (u32, u32, u64, u64, u64, u32, u32, u64, u64);

/// A relocatable ELF object holding one XDP program, `r0 = XDP_DROP (1); exit`, in section
/// "xdp" with a GPL license section: what `ip link set dev X xdpdrv obj F sec xdp` loads.
pub fn xdp_drop_object() -> Vec<u8> {
    // BPF instructions: opcode, dst/src registers, offset, immediate.
    let code: [u8; 16] = [0xb7, 0x00, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let strtab = b"\0xdp_drop\0";
    let shstrtab = b"\0xdp\0license\0.symtab\0.strtab\0.shstrtab\0";
    let name = |s: &str| {
        shstrtab.windows(s.len() + 2).position(|w| w == format!("\0{s}\0").as_bytes()).unwrap()
            as u32
            + 1
    };
    // Symbols: the null one, then xdp_drop (global function in section 1, 16 bytes).
    let mut symtab = vec![0u8; 24];
    symtab.extend_from_slice(&1u32.to_le_bytes());
    symtab.extend_from_slice(&[0x12, 0]);
    symtab.extend_from_slice(&1u16.to_le_bytes());
    symtab.extend_from_slice(&0u64.to_le_bytes());
    symtab.extend_from_slice(&16u64.to_le_bytes());

    let mut out = vec![0u8; 64];
    let mut place = |data: &[u8], align: usize| {
        while !out.len().is_multiple_of(align) {
            out.push(0);
        }
        let off = out.len() as u64;
        out.extend_from_slice(data);
        off
    };
    let o_code = place(&code, 8);
    let o_lic = place(license, 1);
    let o_sym = place(&symtab, 8);
    let o_str = place(strtab, 1);
    let o_shstr = place(shstrtab, 1);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    let sections: [Shdr; 6] = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0),
        (name("xdp"), 1, 0x6, o_code, 16, 0, 0, 8, 0),
        (name("license"), 1, 0x3, o_lic, license.len() as u64, 0, 0, 1, 0),
        (name(".symtab"), 2, 0, o_sym, symtab.len() as u64, 4, 1, 8, 24),
        (name(".strtab"), 3, 0, o_str, strtab.len() as u64, 0, 0, 1, 0),
        (name(".shstrtab"), 3, 0, o_shstr, shstrtab.len() as u64, 0, 0, 1, 0),
    ];
    for (n, t, f, off, size, link, info, align, entsize) in sections {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&f.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&link.to_le_bytes());
        out.extend_from_slice(&info.to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
        out.extend_from_slice(&entsize.to_le_bytes());
    }
    // ELF header: 64-bit, little endian, relocatable, EM_BPF (247).
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&247u16.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&shoff.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes());
    h.extend_from_slice(&6u16.to_le_bytes());
    h.extend_from_slice(&5u16.to_le_bytes());
    out[..64].copy_from_slice(&h);
    out
}

/// One drop-rate measurement.
#[derive(Clone, Debug)]
pub struct Rate {
    pub variant: String,
    pub offered_pps: f64,
    pub guest_pps: f64,
    /// Guest kernel CPU time (system + irq + softirq, all vCPUs) per received packet.
    pub cpu_ns: f64,
    /// Of the received packets, those the variant itself reported dropping.
    pub dropped: u64,
    pub received: u64,
}

/// One of portguard's maps as bpftool shows it.
#[derive(Clone, Debug)]
pub struct Map {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    /// Value size (per CPU, for per-CPU maps).
    pub value_bytes: u64,
    pub memlock: u64,
}

/// What one guest measured.
#[derive(Clone, Debug)]
pub struct Row {
    /// The commit measured.
    pub commit: String,
    pub series: String,
    pub release: String,
    pub cpus: u32,
    pub queues: u32,
    pub boot_s: f64,
    pub maps: Vec<Map>,
    pub percpu_rise_kb: i64,
    pub stats_ms_small: u64,
    pub stats_ms_full: u64,
    pub sources_full: u64,
    pub sources_sent: u64,
    pub rates: Vec<Rate>,
}

impl Row {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "commit": self.commit, "series": self.series, "release": self.release, "cpus": self.cpus,
            "queues": self.queues, "boot_s": self.boot_s, "percpu_rise_kb": self.percpu_rise_kb,
            "stats_ms_small": self.stats_ms_small, "stats_ms_full": self.stats_ms_full,
            "sources_full": self.sources_full, "sources_sent": self.sources_sent,
            "maps": self.maps.iter().map(|m| serde_json::json!({
                "name": m.name, "kind": m.kind, "max_entries": m.max_entries,
                "value_bytes": m.value_bytes, "memlock": m.memlock })).collect::<Vec<_>>(),
            "rates": self.rates.iter().map(|r| serde_json::json!({
                "variant": r.variant, "offered_pps": r.offered_pps, "guest_pps": r.guest_pps,
                "cpu_ns": r.cpu_ns, "dropped": r.dropped, "received": r.received }))
                .collect::<Vec<_>>(),
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Row> {
        let u = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let st = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_string();
        Some(Row {
            commit: st(v, "commit"),
            series: v["series"].as_str()?.to_string(),
            release: st(v, "release"),
            cpus: u(v, "cpus") as u32,
            queues: u(v, "queues") as u32,
            boot_s: f(v, "boot_s"),
            maps: v["maps"]
                .as_array()?
                .iter()
                .map(|m| Map {
                    name: st(m, "name"),
                    kind: st(m, "kind"),
                    max_entries: u(m, "max_entries"),
                    value_bytes: u(m, "value_bytes"),
                    memlock: u(m, "memlock"),
                })
                .collect(),
            percpu_rise_kb: v["percpu_rise_kb"].as_i64().unwrap_or(0),
            stats_ms_small: u(v, "stats_ms_small"),
            stats_ms_full: u(v, "stats_ms_full"),
            sources_full: u(v, "sources_full"),
            sources_sent: u(v, "sources_sent"),
            rates: v["rates"]
                .as_array()?
                .iter()
                .map(|r| Rate {
                    variant: st(r, "variant"),
                    offered_pps: f(r, "offered_pps"),
                    guest_pps: f(r, "guest_pps"),
                    cpu_ns: f(r, "cpu_ns"),
                    dropped: u(r, "dropped"),
                    received: u(r, "received"),
                })
                .collect(),
        })
    }
}

/// Seconds of flood per variant and rounds (variants interleaved in every round).
const FLOOD_SECS: f64 = 6.0;
const ROUNDS: usize = 3;
/// The rate the host offers: above what an emulated guest takes.
const OFFERED_PPS: f64 = 150_000.0;
/// The drop rate is measured in small guests only: with many vCPUs the emulator is the limit.
const RATE_MAX_CPUS: u32 = 4;
/// Distinct sources for the full-table `stats` timing.
const MANY_SOURCES: u32 = 4096;

pub fn run(run: &Run) -> Result<Row> {
    let mut c = Checks::new(&format!("bench {}", run.label()));
    let r = steps(run, &mut c);
    if let Err(e) = &r {
        c.that("scenario ran to the end", false, format!("{e:#}"));
    }
    c.write(&super::artifacts::lab_dir().join("results.txt"))?;
    c.verdict()?;
    r
}

fn meminfo_kb(text: &str, key: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn steps(run: &Run, c: &mut Checks) -> Result<Row> {
    let mut g = Guest::boot(run, c)?;
    let nic = g.nic.clone();
    let percpu0 = meminfo_kb(&g.vm.ok("cat /proc/meminfo")?, "Percpu");
    let pid = g.start_daemon("")?;
    let percpu1 = meminfo_kb(&g.vm.ok("cat /proc/meminfo")?, "Percpu");
    let maps: serde_json::Value = serde_json::from_str(&g.vm.ok("bpftool map show -j")?)?;
    let maps: Vec<Map> = maps
        .as_array()
        .context("bpftool map show")?
        .iter()
        .map(|m| Map {
            name: m["name"].as_str().unwrap_or("?").to_string(),
            kind: m["type"].as_str().unwrap_or("?").to_string(),
            max_entries: m["max_entries"].as_u64().unwrap_or(0),
            value_bytes: m["bytes_value"].as_u64().unwrap_or(0),
            memlock: m["bytes_memlock"].as_u64().unwrap_or(0),
        })
        .collect();
    let total: u64 = maps.iter().map(|m| m.memlock).sum();
    c.value("maps_memlock_mib", format!("{:.1}", total as f64 / 1048576.0));
    c.value("percpu_rise_mib", format!("{:.1}", (percpu1 - percpu0) as f64 / 1024.0));

    // stats with two sources, then with a few thousand (random addresses of 198.18.0.0/15).
    let before = g.stats()?;
    let p = super::scenario::probes(
        &[traffic::source(false, 31), traffic::source(true, 0x31)],
        5,
        0,
        g.rng(),
    );
    g.probe(&p, &before)?;
    let small = g.vm.sh("portguard stats --json >/dev/null", Duration::from_secs(300))?;
    c.eq("stats (2 sources) exits 0", small.code.as_str(), "0");
    c.value("stats_ms_2_sources", small.ms);
    let mut rng = Rng::new(0xb0b);
    let frames: Vec<Vec<u8>> = (0..MANY_SOURCES)
        .map(|_| {
            let r = rng.next();
            let src =
                IpAddr::V4(Ipv4Addr::new(198, 18 + (r & 1) as u8, (r >> 8) as u8, (r >> 16) as u8));
            traffic::frame(
                src,
                traffic::guest_addr(false),
                rng.port(),
                GUARDED,
                Proto::Udp,
                r as u32,
            )
        })
        .collect();
    let matched0 = g.stats_top(1)?.totals.get("matched").copied().unwrap_or(0);
    g.tap.send_paced(&frames, 25, Duration::from_millis(10))?;
    let mut full = g.stats_top(1)?;
    super::wait_for("the sources to be counted", Duration::from_secs(120), || {
        full = g.stats_top(1)?;
        Ok(full.totals.get("matched").copied().unwrap_or(0) >= matched0 + u64::from(MANY_SOURCES))
    })?;
    let big = g.vm.sh("portguard stats --json >/dev/null", Duration::from_secs(600))?;
    c.eq("stats (full) exits 0", big.code.as_str(), "0");
    c.value("sources_tracked", full.sources_tracked);
    c.value("stats_ms_many_sources", big.ms);

    let mut rates = Vec::new();
    if run.cpus <= RATE_MAX_CPUS {
        g.stop_daemon(pid)?;
        g.vm.sh("portguard detach --all", Duration::from_secs(60))?;
        for round in 0..ROUNDS {
            for variant in ["portguard", "xdp-drop", "nftables", "stack"] {
                let r = measure(&mut g, variant, &nic)
                    .with_context(|| format!("{variant}, round {round}"))?;
                c.value(
                    &format!("{variant}_r{round}"),
                    format!(
                        "{:.0}pps,{:.0}ns/pkt,offered={:.0}",
                        r.guest_pps, r.cpu_ns, r.offered_pps
                    ),
                );
                if variant != "stack" {
                    // Each filter reported dropping what the guest received of the flood (a
                    // handful of ARP/ND frames aside).
                    c.that(
                        &format!("{variant} dropped the flood (round {round})"),
                        r.dropped + 50 >= r.received && r.dropped <= r.received,
                        format!("dropped {} of {} received", r.dropped, r.received),
                    );
                }
                rates.push(r);
            }
        }
    }
    g.save_log()?;
    g.vm.end(0)?;
    Ok(Row {
        commit: super::artifacts::commit(),
        series: run.kernel.series.clone(),
        release: run.kernel.release.clone(),
        cpus: run.cpus,
        queues: run.queues,
        boot_s: g_boot(c),
        maps,
        percpu_rise_kb: percpu1 - percpu0,
        stats_ms_small: small.ms,
        stats_ms_full: big.ms,
        sources_full: full.sources_tracked,
        sources_sent: u64::from(MANY_SOURCES) + 2,
        rates,
    })
}

fn g_boot(c: &Checks) -> f64 {
    c.values.iter().find(|(k, _)| k == "boot_s").and_then(|(_, v)| v.parse().ok()).unwrap_or(0.0)
}

/// The nftables variant, as one shell line (the runner's protocol is line based).
fn nft_commands(nic: &str) -> String {
    format!(
        "nft add table netdev pgvm && nft add chain netdev pgvm ingress \
         '{{ type filter hook ingress device {nic} priority -500; }}' && \
         nft add rule netdev pgvm ingress udp dport {GUARDED} counter drop"
    )
}

/// (kernel busy jiffies: system + irq + softirq over all CPUs, rx packets of the NIC)
fn snapshot(g: &mut Guest, nic: &str) -> Result<(u64, u64)> {
    let out = g.vm.ok(&format!("head -n 1 /proc/stat; grep '{nic}:' /proc/net/dev"))?;
    let mut lines = out.lines();
    let cpu: Vec<u64> = lines
        .next()
        .context("/proc/stat")?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq
    let busy = cpu.get(2).copied().unwrap_or(0)
        + cpu.get(5).copied().unwrap_or(0)
        + cpu.get(6).copied().unwrap_or(0);
    let dev = lines.next().context("/proc/net/dev")?;
    let rx = dev
        .split_once(':')
        .context("/proc/net/dev line")?
        .1
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((busy, rx))
}

/// What the variant reports it dropped, cumulatively.
fn dropped_so_far(g: &mut Guest, variant: &str, nic: &str) -> Result<u64> {
    Ok(match variant {
        "portguard" => g.stats_top(1)?.totals.get("dropped").copied().unwrap_or(0),
        "xdp-drop" => {
            let s = g.vm.ok(&format!("ethtool -S {nic}"))?;
            super::queues::rx_queues(&s).values().map(|v| v.1).sum()
        }
        "nftables" => {
            let s = g.vm.ok("nft list table netdev pgvm")?;
            s.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }
        _ => 0,
    })
}

fn measure(g: &mut Guest, variant: &str, nic: &str) -> Result<Rate> {
    match variant {
        "portguard" => {
            g.start_daemon("")?;
        }
        "xdp-drop" => {
            g.vm.ok(&format!(
                "/usr/sbin/ip link set dev {nic} xdpdrv obj /pgvm/xdp_drop.o sec xdp"
            ))?;
        }
        "nftables" => {
            g.vm.ok(&nft_commands(nic))?;
        }
        _ => {}
    }
    let d0 = dropped_so_far(g, variant, nic)?;
    let (busy0, rx0) = snapshot(g, nic)?;
    let (tx0, tapdrop0) = g.lab.tap_tx()?;
    let sent = flood(g.tap.clone(), FLOOD_SECS)?;
    thread::sleep(Duration::from_millis(1000));
    let (busy1, rx1) = snapshot(g, nic)?;
    let (tx1, tapdrop1) = g.lab.tap_tx()?;
    let d1 = dropped_so_far(g, variant, nic)?;
    match variant {
        "portguard" => {
            let pid = g.vm.ok("cat /tmp/pg.pid")?.trim().parse().context("pid")?;
            g.stop_daemon(pid)?;
            // Whether a stopped daemon detaches is portguard's policy; the next variant needs
            // the NIC free either way.
            g.vm.sh("portguard detach --all", Duration::from_secs(60))?;
        }
        "xdp-drop" => {
            g.vm.ok(&format!("/usr/sbin/ip link set dev {nic} xdpdrv off"))?;
        }
        "nftables" => {
            g.vm.ok("nft delete table netdev pgvm")?;
        }
        _ => {}
    }
    let received = rx1 - rx0;
    if received == 0 {
        bail!(
            "the guest received nothing of the flood ({sent} sent, tap: {} out, {} dropped)",
            tx1 - tx0,
            tapdrop1 - tapdrop0
        );
    }
    Ok(Rate {
        variant: variant.to_string(),
        offered_pps: sent as f64 / FLOOD_SECS,
        guest_pps: received as f64 / FLOOD_SECS,
        // USER_HZ is 100: a jiffy is 10 ms.
        cpu_ns: (busy1 - busy0) as f64 * 1e7 / received as f64,
        dropped: d1 - d0,
        received,
    })
}

/// UDP to the guarded port from 16 sources with random ports, at OFFERED_PPS, for `secs`.
fn flood(tap: Arc<Tap>, secs: f64) -> Result<u64> {
    let mut rng = Rng::new(0xf100d);
    let pool: Vec<Vec<u8>> = (0..4096)
        .map(|i| {
            let src = traffic::source(false, 100 + (i % 16) as u8);
            traffic::frame(src, traffic::guest_addr(false), rng.port(), GUARDED, Proto::Udp, i)
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let limit = Duration::from_secs_f64(secs);
    while start.elapsed() < limit {
        for _ in 0..32 {
            tap.send(&pool[(sent % pool.len() as u64) as usize])?;
            sent += 1;
        }
        let due = Duration::from_secs_f64(sent as f64 / OFFERED_PPS);
        if let Some(d) = due.checked_sub(start.elapsed()) {
            thread::sleep(d);
        }
    }
    Ok(sent)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Where every bench row measured so far is kept (one JSON object per line): bench/vm.md is
/// generated from the newest row of each kernel and CPU count, so a partial run (one kernel,
/// one CPU count) updates its rows and keeps the others.
fn store() -> std::path::PathBuf {
    super::artifacts::lab_dir().join("bench-rows.jsonl")
}

/// Records this run's rows and regenerates bench/vm.md.
pub fn write(rows: &[Row]) -> Result<()> {
    let mut text = std::fs::read_to_string(store()).unwrap_or_default();
    for r in rows {
        text.push_str(&r.to_json().to_string());
        text.push('\n');
    }
    std::fs::write(store(), &text)?;
    let mut latest: std::collections::BTreeMap<(String, u32), Row> = Default::default();
    for l in text.lines() {
        if let Some(r) = serde_json::from_str(l).ok().as_ref().and_then(Row::from_json) {
            latest.insert((r.series.clone(), r.cpus), r);
        }
    }
    let mut all: Vec<Row> = latest.into_values().collect();
    all.sort_by(|a, b| {
        let key = |r: &Row| {
            r.series.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>()
        };
        key(a).cmp(&key(b)).then(a.cpus.cmp(&b.cpus))
    });
    let root = crate::util::root();
    std::fs::write(root.join("bench/vm.md"), markdown(&all))?;
    // BENCHMARKS.md carries the same section (see vm_section).
    let benchmarks = root.join("BENCHMARKS.md");
    let md = std::fs::read_to_string(&benchmarks).unwrap_or_default();
    std::fs::write(&benchmarks, crate::vm_section::with_router_vm(&md, &root))?;
    eprintln!("vmlab: wrote bench/vm.md and its section of BENCHMARKS.md");
    Ok(())
}

/// The kernels of `cargo xtask vmlab --ci`'s basic runs, by architecture.
fn ci_kernels() -> String {
    let mut by_arch: Vec<(super::Arch, Vec<&str>)> = Vec::new();
    for (series, arch, scenario) in super::CI_RUNS {
        if scenario != super::Scenario::Basic {
            continue;
        }
        match by_arch.iter_mut().find(|(a, _)| *a == arch) {
            Some((_, v)) => v.push(series),
            None => by_arch.push((arch, vec![series])),
        }
    }
    by_arch
        .iter()
        .map(|(a, v)| format!("{} on {} (2 vCPUs)", v.join(", "), a.name()))
        .collect::<Vec<_>>()
        .join("; ")
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

/// The "Router VM" section.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Router VM\n");
    let _ = writeln!(
        s,
        "portguard on the kernels routers run, in QEMU guests on this machine: Debian's own \
         kernel packages, a virtio-net NIC with native XDP, the static portguard binary the \
         Debian package ships, and real frames through a tap. Generated by `cargo xtask vmlab \
         --scenario bench` (last written {}; each row names the commit it measured).\n",
        crate::vmlab::artifacts::date()
    );
    let _ = writeln!(
        s,
        "Kernels where every check of the basic scenario passes (load, native attach, exact drops and counts over IPv4 and IPv6, ordinary traffic delivered, count mode, `--persist` restarts under a stream, detach), run by `cargo xtask test` through `cargo xtask vmlab --ci`: {}.\n",
        ci_kernels()
    );
    let _ = writeln!(
        s,
        "Caveats: the guests are emulated (TCG; this machine has 2 cores shared with other \
         work), so absolute speeds and times mean little: compare within a guest. The NIC is \
         virtio-net with 2 queue pairs per vCPU; a real NIC's driver does more work per \
         frame outside XDP, and a real CPU runs XDP far faster. Each guest runs `portguard \
         run --iface eth0 --xdp-mode native` with its default 65,536-source table.\n"
    );
    let _ = writeln!(
        s,
        "| kernel | release | vCPUs | queue pairs | boot (s) | portguard commit |\n| --- | --- | ---: | ---: | ---: | --- |"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {} |",
            r.series, r.release, r.cpus, r.queues, r.boot_s, r.commit
        );
    }
    let _ = writeln!(s, "\n### Map memory and `stats` by CPU count\n");
    let _ = writeln!(
        s,
        "memlock: the sum of bpftool's `bytes_memlock` over portguard's maps (kernels account \
         differently: 6.12 counts more of the hash tables' overhead); per-CPU rise: \
         /proc/meminfo Percpu before and after portguard starts. `stats --json` runs in the \
         guest, with 2 sources and after {MANY_SOURCES} distinct sources were sent (the \
         admission budget decides how many get a row); \"read\" is what one `stats` copies \
         out of SOURCES: rows × value size, times the CPU count for a per-CPU table (SOURCES \
         was one until #17).\n"
    );
    let _ = writeln!(
        s,
        "| kernel | vCPUs | memlock (MiB) | per-CPU rise (MiB) | largest map | stats, 2 sources (ms) | sources tracked | read (MiB) | stats (ms) |\n| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        let total: u64 = r.maps.iter().map(|m| m.memlock).sum();
        let big = r.maps.iter().max_by_key(|m| m.memlock);
        let big_s = big
            .map(|m| {
                format!(
                    "{} ({}, {} × {} B): {:.1} MiB",
                    m.name,
                    m.kind,
                    m.max_entries,
                    m.value_bytes,
                    m.memlock as f64 / 1048576.0
                )
            })
            .unwrap_or_default();
        let sources = r.maps.iter().find(|m| m.name == "SOURCES");
        let per_cpu = sources
            .is_some_and(|m| m.kind.starts_with("percpu") || m.kind.starts_with("lru_percpu"));
        let read = sources.map_or(0.0, |m| {
            (r.sources_full * m.value_bytes * if per_cpu { u64::from(r.cpus) } else { 1 }) as f64
                / 1048576.0
        });
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {big_s} | {} | {} of {} | {read:.1} | {} |",
            r.series,
            r.cpus,
            total as f64 / 1048576.0,
            r.percpu_rise_kb as f64 / 1024.0,
            r.stats_ms_small,
            r.sources_full,
            r.sources_sent,
            r.stats_ms_full
        );
    }
    let with_rates: Vec<&Row> = rows.iter().filter(|r| !r.rates.is_empty()).collect();
    if !with_rates.is_empty() {
        let _ = writeln!(
            s,
            "\n### Drop rate in the guest: portguard, a minimal XDP program, nftables\n"
        );
        let _ = writeln!(
            s,
            "A UDP flood to 2745 from 16 sources (random source ports, so every RX queue takes \
             some), offered at {OFFERED_PPS:.0} frames/s for {FLOOD_SECS:.0} s per variant, \
             {ROUNDS} rounds with the variants interleaved; medians, and the range over the \
             rounds. `xdp-drop` is `r0 = XDP_DROP; exit`; `nftables` is `udp dport 2745 counter \
             drop` in a netdev ingress chain at priority -500; `stack` is no filter (the kernel \
             delivers the flood to a UDP socket). pps: frames the guest received per second \
             (QEMU's tap and virtio emulation bound it: it is below what was offered); CPU: \
             guest kernel time (system + irq + softirq, all vCPUs) per received frame, which \
             includes the emulated driver's work. Ratios are medians against xdp-drop's. When \
             the rounds' ranges overlap, the variants cannot be told apart here.\n"
        );
        let _ = writeln!(
            s,
            "| kernel | vCPUs | variant | guest pps | range | ÷ xdp-drop | CPU ns/frame | range | ÷ xdp-drop |\n| --- | ---: | --- | ---: | --- | ---: | ---: | --- | ---: |"
        );
        for r in with_rates {
            let pick = |variant: &str, f: fn(&Rate) -> f64| -> Vec<f64> {
                r.rates.iter().filter(|x| x.variant == variant).map(f).collect()
            };
            let base_pps = median(&mut pick("xdp-drop", |x| x.guest_pps));
            let base_ns = median(&mut pick("xdp-drop", |x| x.cpu_ns));
            for variant in ["portguard", "xdp-drop", "nftables", "stack"] {
                let (mut pps, mut ns) =
                    (pick(variant, |x| x.guest_pps), pick(variant, |x| x.cpu_ns));
                let (rp, rn) = (range(&pps), range(&ns));
                let (mp, mn) = (median(&mut pps), median(&mut ns));
                let _ = writeln!(
                    s,
                    "| {} | {} | {variant} | {mp:.0} | {rp} | {:.2}× | {mn:.0} | {rn} | {:.2}× |",
                    r.series,
                    r.cpus,
                    mp / base_pps.max(1.0),
                    mn / base_ns.max(1.0)
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_round_trip_and_render() {
        let r = super::Row {
            commit: "abc1234".into(),
            series: "6.1".into(),
            release: "6.1.0-57-amd64".into(),
            cpus: 2,
            queues: 4,
            boot_s: 3.5,
            maps: vec![super::Map {
                name: "SOURCES".into(),
                kind: "percpu_hash".into(),
                max_entries: 65536,
                value_bytes: 48,
                memlock: 7 << 20,
            }],
            percpu_rise_kb: 6144,
            stats_ms_small: 200,
            stats_ms_full: 250,
            sources_full: 4000,
            sources_sent: 4098,
            rates: vec![super::Rate {
                variant: "xdp-drop".into(),
                offered_pps: 1.0,
                guest_pps: 2.0,
                cpu_ns: 3.0,
                dropped: 4,
                received: 5,
            }],
        };
        let back = super::Row::from_json(&r.to_json()).unwrap();
        assert_eq!(format!("{r:?}"), format!("{back:?}"));
        let md = super::markdown(&[back]);
        assert!(md.contains("| 6.1 | 2 | 7.0 | 6.0 | SOURCES (percpu_hash, 65536 × 48 B): 7.0 MiB | 200 | 4000 of 4098 | 0.4 | 250 |"), "{md}");
    }

    #[test]
    fn xdp_drop_object_is_elf_for_bpf() {
        let o = super::xdp_drop_object();
        assert_eq!(&o[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247);
        assert!(o.windows(4).any(|w| w == b"GPL\0"));
    }
}
