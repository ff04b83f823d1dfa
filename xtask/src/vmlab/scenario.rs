//! The basic scenario, and what the scenarios share: booting a guest of a [`Run`], driving
//! portguard in it, and sending probes whose every packet is accounted for.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Run,
    lab::Lab,
    qemu::{Spec, Vm},
    report::{self, Checks, Stats},
    traffic::{self, Probe, Proto, Rng, Stream, Tap},
    wait_for,
};

/// The guarded port and an ordinary one.
pub const GUARDED: u16 = 2745;
pub const ORDINARY: u16 = 8080;

/// A booted guest in its lab, with the packet socket on the tap.
pub struct Guest {
    // Field order is drop order: QEMU goes before its namespace.
    pub vm: Vm,
    pub tap: Arc<Tap>,
    pub lab: Lab,
    pub nic: String,
    /// The run's directory on the host (serial transcript, the guest's portguard log).
    pub dir: std::path::PathBuf,
    rng: Rng,
}

impl Guest {
    pub fn boot(run: &Run, checks: &mut Checks) -> Result<Guest> {
        std::fs::create_dir_all(&run.dir)?;
        let lab = Lab::create()?;
        let spec = Spec {
            arch: run.arch,
            cpus: run.cpus,
            queues: run.queues,
            kernel: &run.kernel.image()?,
            initrd: run.initrd,
            dir: &run.dir,
        };
        // An emulated guest can crash while booting (multi-threaded TCG and the kernel
        // patching its own text on other vCPUs: an int3 Oops, seen once in dozens of boots).
        // Such a crash, before the runner starts, gets one more boot; the first transcript is
        // kept. Anything after the runner's hello counts.
        let vm = match Vm::boot(&lab, &spec) {
            Ok(vm) => vm,
            Err(e) if crashed_booting(&run.dir) => {
                let kept = run.dir.join("serial-crashed-boot.log");
                let _ = std::fs::rename(run.dir.join("serial.log"), &kept);
                eprintln!(
                    "vmlab: the guest crashed while booting ({e:#}); booting again (transcript kept in {})",
                    kept.display()
                );
                checks.value("boot_retries", 1);
                Vm::boot(&lab, &spec)?
            }
            Err(e) => return Err(e),
        };
        let tap = Arc::new(Tap::open(&lab)?);
        let h = &vm.hello;
        let nic = h.get("nic").cloned().unwrap_or_default();
        checks.value("release", h.get("release").map_or("?", |s| s.as_str()));
        checks.value("boot_s", format!("{:.1}", vm.boot.as_secs_f64()));
        checks.value("cpus", h.get("cpus").map_or("?", |s| s.as_str()));
        checks.value("rx_queues", h.get("rx_queues").map_or("?", |s| s.as_str()));
        checks.value("guest_mem_kb", h.get("mem_kb").map_or("?", |s| s.as_str()));
        checks.eq(
            "guest release",
            h.get("release").cloned().unwrap_or_default(),
            run.kernel.release.clone(),
        );
        checks.eq("guest vCPUs", h.get("cpus").cloned().unwrap_or_default(), run.cpus.to_string());
        checks.that("guest startup", vm.rc_errors.is_empty(), vm.rc_errors.join("; "));
        if nic.is_empty() {
            bail!("the guest found no network interface; {}", vm.tail());
        }
        let mut g =
            Guest { vm, tap, lab, nic, dir: run.dir.clone(), rng: Rng::new(0x9e37_79b9_7f4a_7c15) };
        let driver =
            g.vm.ok(&format!("basename $(readlink /sys/class/net/{}/device/driver)", g.nic))?;
        checks.eq("NIC driver", driver.trim(), "virtio_net");
        Ok(g)
    }

    /// Starts `portguard run` in the background on the guest's NIC; waits until its status
    /// names it as the owner. Returns its pid.
    pub fn start_daemon(&mut self, extra: &str) -> Result<u32> {
        let pid = self.vm.ok(&format!(
            "portguard run --iface {} --xdp-mode native --no-metrics --interval 1 {extra} \
             >>/tmp/pg.log 2>&1 & echo $! > /tmp/pg.pid; cat /tmp/pg.pid",
            self.nic
        ))?;
        let pid: u32 = pid.trim().parse().context("the daemon's pid")?;
        let nic = self.nic.clone();
        wait_for("portguard to guard the guest's NIC", Duration::from_secs(120), || {
            let o = self.vm.sh("portguard status --json", Duration::from_secs(30))?;
            if o.code == "0"
                && let Some(i) = report::status(&o.stdout(), &nic)?
                && i["owner_pid"].as_u64() == Some(u64::from(pid))
            {
                return Ok(true);
            }
            // The daemon died: say why (its log) rather than wait out the deadline.
            if !self.alive(pid)? {
                let path = self.save_log()?;
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "portguard run exited in the guest (whole log in {}); it ends with:\n{}",
                    path.display(),
                    tail.join("\n")
                );
            }
            Ok(false)
        })?;
        Ok(pid)
    }

    /// Copies the guest's portguard log (every daemon's output) to the run's directory.
    pub fn save_log(&mut self) -> Result<std::path::PathBuf> {
        let o = self.vm.sh("cat /tmp/pg.log", Duration::from_secs(120))?;
        let path = self.dir.join("portguard.log");
        std::fs::write(&path, o.stdout() + "\n")?;
        Ok(path)
    }

    /// Stops the daemon with SIGTERM and waits for it to exit.
    pub fn stop_daemon(&mut self, pid: u32) -> Result<()> {
        self.vm.ok(&format!("kill -TERM {pid}"))?;
        wait_for("portguard to exit", Duration::from_secs(60), || Ok(!self.alive(pid)?))
    }

    /// Whether a guest process runs (a zombie does not count).
    pub fn alive(&mut self, pid: u32) -> Result<bool> {
        let o = self
            .vm
            .sh(&format!("grep -q '^State:.*[RSD]' /proc/{pid}/status"), Duration::from_secs(10))?;
        Ok(o.code == "0")
    }

    /// `stats --json` with every source.
    pub fn stats(&mut self) -> Result<Stats> {
        self.stats_top(100_000)
    }

    /// `stats --json --top n`: the totals without a long list over the serial console.
    pub fn stats_top(&mut self, n: usize) -> Result<Stats> {
        let out = self.vm.ok(&format!("portguard stats --json --top {n}"))?;
        report::stats(&out, &self.nic)
    }

    pub fn status(&mut self) -> Result<Option<serde_json::Value>> {
        let out = self.vm.ok("portguard status --json")?;
        report::status(&out, &self.nic)
    }

    /// Sends probes and waits until portguard has seen them all (matched reaches `before +
    /// probes`), then once more after a pause, so an overcount shows too. Fails if the host's
    /// tap dropped a frame (then the counts would mean nothing).
    pub fn probe(&mut self, probes: &[Probe], before: &Stats) -> Result<Stats> {
        let frames = traffic::frames(probes, &mut self.rng);
        let (_, dropped0) = self.lab.tap_tx()?;
        self.tap.send_paced(&frames, 25, Duration::from_millis(10))?;
        let want = before.totals.get("matched").copied().unwrap_or(0) + probes.len() as u64;
        let mut last = Stats::default();
        let r = wait_for("portguard to count the probes", Duration::from_secs(60), || {
            last = self.stats()?;
            Ok(last.totals.get("matched").copied().unwrap_or(0) >= want)
        });
        let (_, dropped1) = self.lab.tap_tx()?;
        if dropped1 != dropped0 {
            bail!("the host's tap dropped {} frames on the way to the guest", dropped1 - dropped0);
        }
        r.with_context(|| format!("matched={:?}, want {want}", last.totals.get("matched")))?;
        std::thread::sleep(Duration::from_millis(500));
        self.stats()
    }

    /// The guest's delivery counts once each of `want` has risen by its amount over `base`
    /// (or 20 s passed): a listener may count a moment after the host's send returned. An
    /// overcount still shows.
    pub fn settled_counts(
        &mut self,
        base: &BTreeMap<String, u64>,
        want: &[(&str, u64)],
    ) -> Result<BTreeMap<String, u64>> {
        let mut now = BTreeMap::new();
        let _ = wait_for("the guest's listeners", Duration::from_secs(20), || {
            now = self.vm.counts()?;
            Ok(want.iter().all(|(k, n)| delta(&now, base, k) >= *n))
        });
        std::thread::sleep(Duration::from_millis(300));
        self.vm.counts()
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// Whether the guest's transcript shows a kernel crash (the runner never started).
fn crashed_booting(dir: &std::path::Path) -> bool {
    let t = std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default();
    !t.contains("PGVM hello") && (t.contains("Oops") || t.contains("Kernel panic"))
}

/// `udp` UDP datagrams and `tcp` TCP SYNs to the guarded port from each source, random source
/// ports, interleaved.
pub fn probes(sources: &[std::net::IpAddr], udp: u32, tcp: u32, rng: &mut Rng) -> Vec<Probe> {
    let mut v = Vec::new();
    for i in 0..udp.max(tcp) {
        for &src in sources {
            if i < udp {
                v.push(Probe { src, sport: rng.port(), dport: GUARDED, proto: Proto::Udp });
            }
            if i < tcp {
                v.push(Probe { src, sport: rng.port(), dport: GUARDED, proto: Proto::TcpSyn });
            }
        }
    }
    v
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0).saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// Checks one source's row against what was sent from it.
pub fn check_source(
    c: &mut Checks,
    s: &Stats,
    addr: std::net::IpAddr,
    udp: u64,
    tcp: u64,
    direction: &str,
) {
    let v6 = addr.is_ipv6();
    let want_bytes =
        udp * traffic::frame_len(v6, Proto::Udp) + tcp * traffic::frame_len(v6, Proto::TcpSyn);
    let Some(row) = s.sources.get(&traffic::row(addr)) else {
        c.that(&format!("source {addr}"), false, "no row in stats --json");
        return;
    };
    c.eq(&format!("{addr} packets"), row.packets, udp + tcp);
    c.eq(&format!("{addr} bytes"), row.bytes, want_bytes);
    c.eq(&format!("{addr} tcp_syns"), row.tcp_syns, tcp);
    let mut want_protocols = Vec::new();
    if tcp > 0 {
        want_protocols.push("tcp".to_string());
    }
    if udp > 0 {
        want_protocols.push("udp".to_string());
    }
    let mut got = row.protocols.clone();
    got.sort();
    c.eq(&format!("{addr} protocols"), got.join(","), want_protocols.join(","));
    c.eq(&format!("{addr} direction"), row.direction.as_str(), direction);
}

/// The basic scenario (see Scenario::Basic).
pub fn basic(run: &Run) -> Result<()> {
    let mut c = Checks::new(&format!("basic {}", run.label()));
    let r = basic_steps(run, &mut c);
    if let Err(e) = &r {
        c.that("scenario ran to the end", false, format!("{e:#}"));
    }
    c.write(&super::artifacts::lab_dir().join("results.txt"))?;
    c.verdict()
}

fn basic_steps(run: &Run, c: &mut Checks) -> Result<()> {
    let t0 = Instant::now();
    let mut g = Guest::boot(run, c)?;
    let nic = g.nic.clone();

    // 1. Load and attach natively; the pins are there.
    let t = Instant::now();
    let pid = g.start_daemon("--persist")?;
    c.value("attach_s", format!("{:.1}", t.elapsed().as_secs_f64()));
    let st = g.status()?.context("status --json does not list the NIC")?;
    c.eq("status xdp_mode", st["xdp_mode"].as_str().unwrap_or(""), "native");
    c.eq("status mode", st["mode"].as_str().unwrap_or(""), "drop");
    // Where the pins are is portguard's to say (status --json pin_dir).
    let pin_dir = st["pin_dir"].as_str().unwrap_or("").to_string();
    c.that("status names the pin directory", pin_dir.starts_with("/sys/fs/bpf/"), &pin_dir);
    let pins = g.vm.ok(&format!("ls {pin_dir}"))?;
    c.that("the XDP link is pinned", pins.lines().any(|l| l == "link"), &pins);
    if run.tools {
        let link = g.vm.ok(&format!("/usr/sbin/ip -d link show dev {nic}"))?;
        // Native attachment shows as prog/xdp (generic as prog/xdpgeneric).
        c.that(
            "ip -d link: native XDP",
            link.contains("prog/xdp ") && !link.contains("xdpgeneric"),
            &link,
        );
    }
    // `check` finds the runner's own listeners on 8080 (TCP and UDP): exit 1, "found".
    let chk = g.vm.sh("portguard check --port 8080 --json", Duration::from_secs(60))?;
    let v: serde_json::Value = serde_json::from_str(&chk.stdout()).unwrap_or_default();
    let found: Vec<String> = v["sockets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["local_port"] == ORDINARY)
                .map(|s| {
                    format!(
                        "{}/{}",
                        s["protocol"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    c.eq("check --port 8080 exits 1 (found)", chk.code.as_str(), "1");
    c.that(
        "check finds the TCP listener and the UDP socket on 8080",
        found.iter().any(|f| f == "tcp/listen") && found.iter().any(|f| f.starts_with("udp/")),
        format!("{found:?} {}", chk.err.join(" ")),
    );
    let counts0 = g.vm.counts()?;

    // 2. Drop mode: IPv4 and IPv6, UDP and TCP SYN probes from four sources, counted exactly,
    // none delivered; ordinary traffic to 8080 passes.
    let before = g.stats()?;
    let srcs = [
        traffic::source(false, 11),
        traffic::source(false, 12),
        traffic::source(true, 0x11),
        traffic::source(true, 0x12),
    ];
    let (udp, tcp) = (25u64, 15u64);
    let p = probes(&srcs, udp as u32, tcp as u32, g.rng());
    let s = g.probe(&p, &before)?;
    let n = p.len() as u64;
    c.eq("stats xdp_mode", s.xdp_mode.as_str(), "native");
    c.eq("stats mode", s.mode.as_str(), "drop");
    c.eq("drop: matched", delta(&s.totals, &before.totals, "matched"), n);
    c.eq("drop: dropped", delta(&s.totals, &before.totals, "dropped"), n);
    let bytes: u64 = srcs
        .iter()
        .map(|a| {
            udp * traffic::frame_len(a.is_ipv6(), Proto::Udp)
                + tcp * traffic::frame_len(a.is_ipv6(), Proto::TcpSyn)
        })
        .sum();
    c.eq("drop: dropped_bytes", delta(&s.totals, &before.totals, "dropped_bytes"), bytes);
    c.eq("drop: sources tracked", s.sources_tracked, 4);
    for a in srcs {
        check_source(c, &s, a, udp, tcp, "probing");
    }
    let mut tcp_ok = 0;
    for v6 in [false, true] {
        tcp_ok += traffic::ordinary(&g.lab, v6, super::scenario::ORDINARY, 20, 5)?;
    }
    c.eq("ordinary TCP connections completed", tcp_ok, 10);
    let counts1 = g.settled_counts(
        &counts0,
        &[("udp8080_v4", 20), ("udp8080_v6", 20), ("tcp8080_v4", 5), ("tcp8080_v6", 5)],
    )?;
    for k in ["udp2745_v4", "udp2745_v6", "tcp2745_v4", "tcp2745_v6"] {
        c.eq(&format!("drop: {k} delivered"), delta(&counts1, &counts0, k), 0);
    }
    for (k, want) in [("udp8080_v4", 20), ("udp8080_v6", 20), ("tcp8080_v4", 5), ("tcp8080_v6", 5)]
    {
        c.eq(&format!("{k} delivered"), delta(&counts1, &counts0, k), want);
    }
    c.eq("8080 traffic is not tracked", g.stats()?.sources_tracked, 4);

    // 3. Count mode (set): counted, delivered, nothing dropped.
    g.vm.ok("portguard set --mode count")?;
    let st = g.status()?.context("status lost the NIC")?;
    c.eq("set --mode count", st["mode"].as_str().unwrap_or(""), "count");
    let before = g.stats()?;
    let csrcs = [traffic::source(false, 13), traffic::source(true, 0x13)];
    let p = probes(&csrcs, 20, 10, g.rng());
    let s = g.probe(&p, &before)?;
    c.eq("count: matched", delta(&s.totals, &before.totals, "matched"), p.len() as u64);
    c.eq("count: dropped", delta(&s.totals, &before.totals, "dropped"), 0);
    for a in csrcs {
        check_source(c, &s, a, 20, 10, "probing");
    }
    let counts2 = g.settled_counts(&counts1, &[("udp2745_v4", 20), ("udp2745_v6", 20)])?;
    c.eq("count: udp2745_v4 delivered", delta(&counts2, &counts1, "udp2745_v4"), 20);
    c.eq("count: udp2745_v6 delivered", delta(&counts2, &counts1, "udp2745_v6"), 20);
    g.vm.ok("portguard set --mode drop")?;
    let st = g.status()?.context("status lost the NIC")?;
    c.eq("set --mode drop", st["mode"].as_str().unwrap_or(""), "drop");

    // 4. --persist restarts under a steady stream to 2745: nothing gets through, every packet
    // is dropped and counted once.
    let before = g.stats()?;
    let counts3 = g.vm.counts()?;
    let src = traffic::source(false, 14);
    let (_, tapdrop0) = g.lab.tap_tx()?;
    let stream =
        Stream::start(g.tap.clone(), src, super::scenario::GUARDED, 100, Duration::from_secs(600));
    let mut pid = pid;
    let restarts = 3;
    let t = Instant::now();
    for _ in 0..restarts {
        std::thread::sleep(Duration::from_millis(500));
        g.stop_daemon(pid)?;
        pid = g.start_daemon("--persist")?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = stream.stop()?;
    c.value("restart_s", format!("{:.1}", t.elapsed().as_secs_f64() / f64::from(restarts)));
    let mut s = Stats::default();
    wait_for("the stream to be counted", Duration::from_secs(60), || {
        s = g.stats()?;
        Ok(delta(&s.totals, &before.totals, "matched") >= sent)
    })
    .ok();
    let (_, tapdrop1) = g.lab.tap_tx()?;
    c.eq("restart: host tap drops", tapdrop1 - tapdrop0, 0);
    c.value("restart_stream_packets", sent);
    c.eq("restart: dropped", delta(&s.totals, &before.totals, "dropped"), sent);
    check_source(c, &s, src, sent, 0, "probing");
    let counts4 = g.vm.counts()?;
    c.eq("restart: udp2745 delivered", delta(&counts4, &counts3, "udp2745_v4"), 0);

    // 5. Detach: the daemon leaves the guard in place (--persist); detach --all removes it,
    // the pins go, and probes are delivered again.
    g.stop_daemon(pid)?;
    c.that("the guard outlives its daemon", g.status()?.is_some(), "status lost the NIC");
    g.vm.ok("portguard detach --all")?;
    c.that("detach: status lists nothing", g.status()?.is_none(), "the NIC is still listed");
    let left = g.vm.sh(&format!("ls {pin_dir} 2>/dev/null"), Duration::from_secs(10))?;
    c.that("detach: pins removed", left.stdout().trim().is_empty(), left.stdout());
    if run.tools {
        let link = g.vm.ok(&format!("/usr/sbin/ip -d link show dev {nic}"))?;
        c.that("detach: no XDP program on the NIC", !link.contains("prog/xdp"), &link);
    }
    let p = probes(&[traffic::source(false, 15)], 10, 0, g.rng());
    let frames = traffic::frames(&p, g.rng());
    g.tap.send_paced(&frames, 10, Duration::from_millis(10))?;
    let counts5 = g.settled_counts(&counts4, &[("udp2745_v4", 10)])?;
    c.eq("detach: udp2745 delivered", delta(&counts5, &counts4, "udp2745_v4"), 10);

    g.save_log()?;
    g.vm.end(0)?;
    c.value("scenario_s", format!("{:.0}", t0.elapsed().as_secs_f64()));
    Ok(())
}
