//! End to end on a veth pair: trafgen on one CPU floods UDP to 198.18.0.1:2745 from the lab's
//! outside namespace, and each dropping tool in turn sits on the gateway's end of the pair
//! (`pg-wan`): portguard in native and generic XDP, nftables at netdev ingress with and without
//! a dynamic per-source set, iptables in raw PREROUTING. For each: packets per second, and the
//! CPU time per packet from /proc/stat (softirq, and all busy time).
//!
//! Everything lives in namespaces of our own (`pgbench-ve<pid>-gw`/`-out`) and a pin root of
//! our own: no program, table or rule ever touches the root namespace. trafgen, each tool, the
//! pins and the namespaces are removed on every exit path (RAII), and whatever a killed run
//! left is removed at the next start.

use std::{
    fs::File,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard::{
    guard::Attached,
    lab::{self, GW_IF, Lab},
};

use super::userspace::{self, Daemon, PinRoot};
use crate::util::output;

pub const LAB_PREFIX: &str = "pgbench-ve";
const OUT_IF: &str = "pg-peer";
const PORT: u16 = 2745;
/// trafgen runs this long before the window opens, so that the window sees the steady state
/// (the per-source tables already full of the random sources, the caches warm).
const WARMUP: Duration = Duration::from_secs(1);
/// The source of the fixed-source flood: the lab's first outside address.
pub const FIXED_SOURCE: &str = "198.18.0.2";
/// The random sources: 198.19.x.y with x.y drawn per packet.
pub const RANDOM_SOURCES: &str = "198.19.0.0/16";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    PgNative,
    PgGeneric,
    NftSet,
    NftPlain,
    Iptables,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::PgNative => "portguard, native XDP",
            Tool::PgGeneric => "portguard, generic XDP",
            Tool::NftSet => "nftables + per-source set",
            Tool::NftPlain => "nftables, plain drop",
            Tool::Iptables => "iptables raw PREROUTING",
        }
    }
}

/// Interleaved in this order in every round. The per-source tools also get the random-source
/// flood, where every packet may be a new entry; for the others the source changes nothing.
const CASES: [(Tool, bool); 8] = [
    (Tool::PgNative, false),
    (Tool::PgGeneric, false),
    (Tool::NftSet, false),
    (Tool::NftPlain, false),
    (Tool::Iptables, false),
    (Tool::PgNative, true),
    (Tool::PgGeneric, true),
    (Tool::NftSet, true),
];

/// One tool and source pattern: medians over the rounds.
pub struct Row {
    pub tool: Tool,
    pub random: bool,
    pub pps: f64,
    pub softirq_ns: f64,
    pub busy_ns: f64,
    /// The lowest and highest softirq ns/packet over the rounds: the noise.
    pub softirq_min: f64,
    pub softirq_max: f64,
    /// The tool's own drop counter ÷ frames sent, from before trafgen starts to after it
    /// stops; the lowest over the rounds.
    pub counted: f64,
}

pub struct Veth {
    pub seconds: u64,
    pub rounds: usize,
    /// Measurements repeated because trafgen stopped early.
    pub retries: usize,
    /// USER_HZ: /proc/stat counts in 1/this s.
    pub clock_tick_hz: u64,
    pub cores: usize,
    pub nft: String,
    pub iptables: String,
    pub rows: Vec<Row>,
}

struct Sample {
    pps: f64,
    softirq_ns: f64,
    busy_ns: f64,
    counted: f64,
}

pub fn measure(seconds: u64, rounds: usize) -> Result<Veth> {
    let bin = userspace::build_portguard()?;
    let pid = std::process::id();
    userspace::remove_stale(LAB_PREFIX);
    TempFile::remove_stale();
    let lab = Lab::create(&format!("{LAB_PREFIX}{pid}")).context("creating the lab namespaces")?;
    let listener = Listener::bind(&lab.gw)?;
    listener.check_reachable(&lab)?;
    let mac = gw_mac(&lab.gw)?;
    let fixed = TempFile::write("fixed.cfg", &trafgen_conf(&mac, false))?;
    let random = TempFile::write("random.cfg", &trafgen_conf(&mac, true))?;
    let hz = userspace::clock_ticks()?;

    let window = Duration::from_secs(seconds);
    let mut retries = 0;
    let mut samples: Vec<Vec<Sample>> = CASES.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (k, &(tool, rnd)) in CASES.iter().enumerate() {
            let what = format!("{} ({} source)", tool.name(), if rnd { "random" } else { "fixed" });
            eprintln!("bench: veth round {}/{rounds}: {what}, {seconds} s", round + 1);
            let conf = if rnd { &random } else { &fixed };
            let s = loop {
                match one(&lab, &bin, pid, tool, &conf.path, window, hz, &listener) {
                    Err(e) if e.is::<TrafgenExited>() && retries < MAX_RETRIES => {
                        retries += 1;
                        eprintln!("bench: warning: {e:#}; measuring {what} again");
                    }
                    r => break r.with_context(|| format!("measuring {what} on veth"))?,
                }
            };
            samples[k].push(s);
        }
    }
    drop(lab);

    let rows = CASES
        .iter()
        .zip(samples)
        .map(|(&(tool, random), s)| {
            let soft: Vec<f64> = s.iter().map(|x| x.softirq_ns).collect();
            Row {
                tool,
                random,
                pps: super::cost::median(s.iter().map(|x| x.pps).collect()),
                softirq_ns: super::cost::median(soft.clone()),
                busy_ns: super::cost::median(s.iter().map(|x| x.busy_ns).collect()),
                softirq_min: soft.iter().copied().fold(f64::INFINITY, f64::min),
                softirq_max: soft.iter().copied().fold(0.0, f64::max),
                counted: s.iter().map(|x| x.counted).fold(f64::INFINITY, f64::min),
            }
        })
        .collect();
    let version = |c: &mut Command| {
        output(c).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
    };
    Ok(Veth {
        seconds,
        rounds,
        retries,
        clock_tick_hz: hz,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        nft: version(Command::new("nft").arg("--version")),
        iptables: version(Command::new("iptables").arg("-V")),
        rows,
    })
}

/// One measurement: the tool installed, trafgen started, `window` measured after `WARMUP`,
/// trafgen stopped, the drop checked, the tool removed.
#[allow(clippy::too_many_arguments)]
fn one(
    lab: &Lab,
    bin: &Path,
    pid: u32,
    tool: Tool,
    conf: &Path,
    window: Duration,
    hz: u64,
    listener: &Listener,
) -> Result<Sample> {
    let mut installed = Installed::install(lab, bin, pid, tool)?;
    // Nothing is sent yet: whatever is queued is not this measurement's.
    listener.drain()?;
    // The tool's counter is compared with the frames sent from before trafgen starts to after
    // it stops: read during the flood, a listing of nft's 65,536 element counters is not one
    // instant, and reading it is not the receiver's work either.
    let c0 = installed.counter()?;
    let sent0 = tx_packets(&lab.out)?;
    let mut tg = Trafgen::start(&lab.out, conf, window + WARMUP)?;
    thread::sleep(WARMUP);
    tg.check_running()?;

    let tx0 = tx_packets(&lab.out)?;
    let cpu0 = CpuStat::read()?;
    let start = Instant::now();
    thread::sleep(window);
    let cpu1 = CpuStat::read()?;
    let elapsed = start.elapsed().as_secs_f64();
    let tx1 = tx_packets(&lab.out)?;
    // trafgen must have sent for the whole window.
    tg.check_running()?;
    tg.stop()?;
    // The last frames in the veth ring are counted a moment later.
    thread::sleep(Duration::from_millis(200));
    let sent1 = tx_packets(&lab.out)?;
    let c1 = installed.counter()?;
    let received = listener.drain()?;
    installed.remove()?;

    let frames = tx1.saturating_sub(tx0);
    if frames == 0 {
        bail!("trafgen sent nothing through {OUT_IF} in the window");
    }
    if received > 0 {
        bail!("the listener on 198.18.0.1:{PORT} received {received} datagrams: not all dropped");
    }
    // The kernel sends the odd frame of its own (ARP, IPv6 neighbour discovery) beside the
    // flood: close to 100%, not exactly.
    let sent = sent1.saturating_sub(sent0);
    let counted = c1.saturating_sub(c0) as f64 / sent.max(1) as f64;
    if counted < 0.99 {
        bail!("{} counted {} drops for {sent} frames sent", tool.name(), c1.saturating_sub(c0));
    }
    let ns = |ticks: u64| ticks as f64 * 1e9 / hz as f64 / frames as f64;
    Ok(Sample {
        pps: frames as f64 / elapsed,
        softirq_ns: ns(cpu1.softirq.saturating_sub(cpu0.softirq)),
        busy_ns: ns(cpu1.busy.saturating_sub(cpu0.busy)),
        counted,
    })
}

/// `prog args…` inside network namespace `ns` (nsenter enters only the network namespace).
fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(prog);
    c
}

/// One dropping tool, in place on the gateway's `pg-wan`. Dropping it removes the tool
/// (best effort); `remove` does the same and checks that it worked.
struct Installed {
    tool: Tool,
    ns: String,
    /// portguard only: the daemon, dropped (stopped) before its pin root.
    daemon: Option<Daemon>,
    root: Option<PinRoot>,
    removed: bool,
}

impl Installed {
    fn install(lab: &Lab, bin: &Path, pid: u32, tool: Tool) -> Result<Installed> {
        let mut me =
            Installed { tool, ns: lab.gw.clone(), daemon: None, root: None, removed: false };
        match tool {
            Tool::PgNative | Tool::PgGeneric => {
                let (mode, want) = if tool == Tool::PgNative {
                    ("native", Attached::Native)
                } else {
                    ("generic", Attached::Generic)
                };
                let root = PinRoot::new(pid, &format!("veth-{mode}"), &lab.gw);
                let mut d = Daemon::spawn(bin, &lab.gw, &root, mode, &["--xdp-mode", mode])?;
                userspace::wait_adopted(&mut d, &root)?;
                let got = root.view()?.attached();
                me.daemon = Some(d);
                me.root = Some(root);
                if got != Some(want) {
                    bail!("portguard attached {got:?}, not {mode}");
                }
            }
            Tool::NftSet | Tool::NftPlain => {
                let rule = if tool == Tool::NftSet {
                    "udp dport 2745 add @probers { ip saddr counter } drop"
                } else {
                    "udp dport 2745 counter drop"
                };
                // Dynamic, with a counter per element: the nearest nftables has to portguard's
                // per-source table. 65,536 entries hold every random source of the flood.
                let ruleset = format!(
                    "table netdev pg {{\n  set probers {{ type ipv4_addr; flags dynamic; size \
                     65536; counter; }}\n  chain c {{\n    type filter hook ingress device \
                     \"{GW_IF}\" priority -500;\n    {rule}\n  }}\n}}\n"
                );
                let file = TempFile::write("ruleset.nft", &ruleset)?;
                output(in_ns(&lab.gw, "nft").arg("-f").arg(&file.path))
                    .context("loading the nftables ruleset")?;
            }
            Tool::Iptables => {
                output(in_ns(&lab.gw, "iptables").args([
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "udp",
                    "--dport",
                    "2745",
                    "-j",
                    "DROP",
                ]))
                .context("adding the iptables rule")?;
            }
        }
        Ok(me)
    }

    /// Packets the tool itself counts as dropped.
    fn counter(&self) -> Result<u64> {
        match self.tool {
            Tool::PgNative | Tool::PgGeneric => {
                let root = self.root.as_ref().context("portguard has no pin root")?;
                Ok(root.view()?.totals()?.dropped)
            }
            // The set's element counters for the per-source case (the rule has none).
            Tool::NftSet => Ok(sum_after(
                &output(in_ns(&self.ns, "nft").args(["list", "set", "netdev", "pg", "probers"]))?,
                "packets",
            )),
            Tool::NftPlain => Ok(sum_after(
                &output(in_ns(&self.ns, "nft").args(["list", "chain", "netdev", "pg", "c"]))?,
                "packets",
            )),
            Tool::Iptables => {
                let text = output(in_ns(&self.ns, "iptables").args([
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ]))?;
                // `pkts bytes target …`: the first column of the DROP rule.
                Ok(text
                    .lines()
                    .filter(|l| l.split_whitespace().nth(2) == Some("DROP"))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum())
            }
        }
    }

    /// Removes the tool and checks it is gone, so that the next one measures alone.
    fn remove(&mut self) -> Result<()> {
        self.removed = true;
        match self.tool {
            Tool::PgNative | Tool::PgGeneric => {
                let mut d = self.daemon.take().context("portguard has no daemon")?;
                // SIGINT: the daemon detaches and removes its pins (no --persist).
                let status = d.signal(libc::SIGINT)?;
                if !status.success() {
                    bail!("portguard run exited with {status} on SIGINT: {}", d.log_tail());
                }
                let root = self.root.take().context("portguard has no pin root")?;
                if root.view().is_ok() {
                    bail!("portguard is still guarding {GW_IF} after SIGINT");
                }
            }
            Tool::NftSet | Tool::NftPlain => {
                output(in_ns(&self.ns, "nft").args(["delete", "table", "netdev", "pg"]))
                    .context("deleting the nftables table")?;
            }
            Tool::Iptables => {
                output(in_ns(&self.ns, "iptables").args(["-t", "raw", "-F"]))
                    .context("flushing iptables' raw table")?;
            }
        }
        Ok(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // The daemon and the pin root clean up after themselves when dropped.
        let _ = match self.tool {
            Tool::PgNative | Tool::PgGeneric => return,
            Tool::NftSet | Tool::NftPlain => {
                in_ns(&self.ns, "nft").args(["delete", "table", "netdev", "pg"]).output()
            }
            Tool::Iptables => in_ns(&self.ns, "iptables").args(["-t", "raw", "-F"]).output(),
        };
    }
}

/// The sum of the numbers that follow `word` in `text` (`counter packets 3 bytes 180`).
fn sum_after(text: &str, word: &str) -> u64 {
    let t: Vec<&str> = text.split(|c: char| c.is_whitespace() || c == ',').collect();
    t.windows(2).filter(|w| w[0] == word).filter_map(|w| w[1].parse::<u64>().ok()).sum()
}

/// trafgen on CPU 0 in the outside namespace, bounded by `timeout` whatever happens to us.
/// Dropping it stops it.
struct Trafgen {
    child: Child,
    log: TempFile,
}

impl Trafgen {
    fn start(ns: &str, conf: &Path, run: Duration) -> Result<Trafgen> {
        let log = TempFile::write("trafgen.log", "")?;
        let stderr = File::create(&log.path).context("creating trafgen's log")?;
        // A few seconds beyond the window: we stop it ourselves, this is only the bound.
        let bound = (run + Duration::from_secs(5)).as_secs().to_string();
        let mut cmd = in_ns(ns, "timeout");
        // SAFETY: prctl is async-signal-safe and touches only the child. nsenter execs
        // `timeout`, which keeps the flag: if we die, it gets SIGINT and passes it on.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // trafgen leaves the machine's socket memory limits and IRQ affinities alone. With the
        // default send buffer, a flush of its default TX ring can fail with EAGAIN, which
        // trafgen treats as fatal: a ring of 64 frames keeps a flush within the buffer.
        let child = cmd
            .args(["-s", "INT", "-k", "2", &bound, "taskset", "-c", "0", "trafgen"])
            .args([
                "--dev",
                OUT_IF,
                "--cpus",
                "1",
                "--no-sock-mem",
                "--notouch-irq",
                "--ring-size",
                "128KiB",
                "--conf",
            ])
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning trafgen")?;
        Ok(Trafgen { child, log })
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling trafgen")? {
            let log = std::fs::read_to_string(&self.log.path).unwrap_or_default();
            let why = format!("trafgen exited early ({status}): {}", log.trim());
            return Err(TrafgenExited(why).into());
        }
        Ok(())
    }

    /// SIGINT to `timeout`, which passes it on to trafgen; it is sent SIGKILL 2 s later if it
    /// lingers.
    fn stop(&mut self) -> Result<()> {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().context("waiting for trafgen")?.is_none() {
            if Instant::now() > deadline {
                bail!("trafgen did not stop within 5 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.stop().is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// trafgen stopped before the window closed (it dies on the odd EAGAIN from its TX ring):
/// the measurement is repeated.
#[derive(Debug)]
struct TrafgenExited(String);

impl std::fmt::Display for TrafgenExited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrafgenExited {}

/// Measurements repeated at most this many times in a run, in case trafgen stops early.
const MAX_RETRIES: usize = 3;

/// A UDP socket on 198.18.0.1:2745 in the gateway namespace: what no tool let through.
struct Listener {
    sock: UdpSocket,
}

impl Listener {
    fn bind(ns: &str) -> Result<Listener> {
        let addr = SocketAddr::new(lab::gw_v4(), PORT);
        let sock = lab::in_netns(ns, move || UdpSocket::bind(addr))?
            .context("binding the listener on 198.18.0.1:2745")?;
        sock.set_nonblocking(true).context("making the listener non-blocking")?;
        Ok(Listener { sock })
    }

    /// Datagrams queued since the last call.
    fn drain(&self) -> Result<u64> {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(n),
                Err(e) => return Err(e).context("reading the listener"),
            }
        }
    }

    /// With no tool in place, datagrams to the port arrive: an empty listener later means a
    /// drop, not a listener that hears nothing.
    fn check_reachable(&self, lab: &Lab) -> Result<()> {
        let dst = SocketAddr::new(lab::gw_v4(), PORT);
        lab::udp_send(&lab.out, lab::outside(false, 0), dst, 3, 18)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.drain()? > 0 {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("the listener on 198.18.0.1:{PORT} receives nothing even with no tool in place")
    }
}

/// A file under the temp dir, named for this run, removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    const PREFIX: &str = "pgbench-veth-";

    fn write(name: &str, text: &str) -> Result<TempFile> {
        let path =
            std::env::temp_dir().join(format!("{}{}-{name}", Self::PREFIX, std::process::id()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(TempFile { path })
    }
}

impl TempFile {
    /// Those of runs killed before they could remove them (their pid is gone).
    fn remove_stale() {
        let dir = std::env::temp_dir();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(Self::PREFIX) else { continue };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `pg-wan`'s MAC as trafgen bytes (`0x02, 0x5e, …`): frames must be addressed to it.
fn gw_mac(ns: &str) -> Result<String> {
    let text = output(Command::new("ip").args(["-n", ns, "-o", "link", "show", GW_IF]))?;
    let mut t = text.split_whitespace();
    t.find(|w| *w == "link/ether").context("no link/ether in `ip link show pg-wan`")?;
    let mac = t.next().context("no MAC after link/ether")?;
    Ok(mac.split(':').map(|b| format!("0x{b}")).collect::<Vec<_>>().join(", "))
}

/// 60-byte UDP frames to 198.18.0.1:2745, the IPv4 id random and the checksum recomputed per
/// packet in both variants, so that the two differ only in the source.
fn trafgen_conf(mac: &str, random: bool) -> String {
    let src = if random { "198, 19, drnd(2)" } else { "198, 18, 0, 2" };
    format!(
        "{{ {mac}, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,\n  0x45, 0x00, const16(46), \
         drnd(2), 0x40, 0x00, 64, 17, csumip(14, 33),\n  {src}, 198, 18, 0, 1,\n  \
         const16(40000), const16({PORT}), const16(26), const16(0), fill(0x41, 18) }}\n"
    )
}

/// `pg-peer`'s tx_packets, read in its namespace (/proc/thread-self/net is the reading
/// thread's namespace; /sys/class/net would be ours).
fn tx_packets(ns: &str) -> Result<u64> {
    let text = lab::in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/dev"))?
        .context("reading /proc/thread-self/net/dev")?;
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{OUT_IF}:")))
        .with_context(|| format!("no {OUT_IF} in /proc/net/dev of {ns}"))?;
    // 8 receive columns, then transmit bytes and packets.
    line.split_whitespace()
        .nth(9)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("parsing {OUT_IF}'s tx_packets"))
}

/// /proc/stat's first line, summed over all CPUs, in USER_HZ ticks.
struct CpuStat {
    softirq: u64,
    /// user + nice + system + irq + softirq: not idle, iowait or steal (time the hypervisor
    /// gave elsewhere); guest time is already inside user and nice.
    busy: u64,
}

impl CpuStat {
    fn read() -> Result<CpuStat> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text.lines().next().context("/proc/stat is empty")?;
        let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
        if v.len() < 8 {
            bail!("/proc/stat's cpu line has {} fields", v.len());
        }
        // user nice system idle iowait irq softirq steal
        Ok(CpuStat { softirq: v[6], busy: v[0] + v[1] + v[2] + v[5] + v[6] })
    }
}
