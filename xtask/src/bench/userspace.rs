//! The userspace side: what reading a full source table costs a user (`portguard stats` and
//! `status`, run as the binary, and the library call under them), and what the daemon costs
//! while it watches a table of a few hundred sources and of 65,536.
//!
//! Everything runs on a lab veth (`pg-wan`) inside namespaces of our own, with pins under a
//! bpffs root of our own: the table is filled through BPF_PROG_TEST_RUN on the attached
//! guard's program, which uses the same maps as the attachment, so no packet crosses any
//! interface. Namespaces, pins and the daemon are removed on every exit path (RAII).

use std::{
    fs::File,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard::{
    guard::{Acquired, AttachMode, Owner, View},
    lab::{self, GW_IF, Lab},
    pins::{Pins, ROOT_ENV},
    settings::Settings,
};
use portguard_common::DEFAULT_SOURCE_CAPACITY;
use portguard_testkit::frames::Frame;

use super::{bpf, cases::GUARDED};
use crate::util::{cargo, root, sh};

/// Timed runs of each command (after one untimed run that warms the page cache).
pub const RUNS: usize = 5;
/// A full default-size table.
pub const FULL: usize = DEFAULT_SOURCE_CAPACITY as usize;
/// "A few hundred sources": a quiet gateway.
pub const FEW: usize = 300;
/// The daemon runs this long before it is measured: startup (loading and verifying the
/// program, adopting the guard) is not its running cost.
pub const WARMUP: Duration = Duration::from_secs(3);
/// How often VmRSS is sampled during the window.
const RSS_EVERY: Duration = Duration::from_millis(250);
/// Bounds on waiting for the daemon.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Wall-clock times of one thing, in ms.
pub struct Timing {
    /// Markdown.
    pub what: String,
    pub runs: usize,
    pub median_ms: f64,
    pub max_ms: f64,
    /// Whether the 150 ms target applies (the commands a user runs; not the library call).
    pub user_facing: bool,
}

pub struct DaemonCost {
    pub scenario: &'static str,
    pub capacity: u32,
    /// Sources in the table at the start and at the end of the window.
    pub sources_before: usize,
    pub sources_after: usize,
    pub window_s: f64,
    /// utime + stime over the window, in clock ticks.
    pub cpu_ticks: u64,
    /// `cpu_ticks` ÷ the window's wall time, in % of one core.
    pub cpu_percent: f64,
    /// The largest VmRSS sampled during the window, 10^6 bytes.
    pub peak_rss_mb: f64,
    /// VmHWM at the end of the window: the kernel's high-water mark since exec, startup
    /// included (updated lazily, so it may read a little below a sampled VmRSS).
    pub hwm_mb: f64,
    /// Whether the targets (< 1% of a core, < 30 MB) apply.
    pub targeted: bool,
}

pub struct Userspace {
    pub sources: usize,
    /// USER_HZ: the CPU figures count in 1/this s.
    pub clock_tick_hz: u64,
    pub timings: Vec<Timing>,
    pub daemon: Vec<DaemonCost>,
}

pub fn measure(window: Duration) -> Result<Userspace> {
    let bin = build_portguard()?;
    // The pid keeps our namespaces and pin roots apart from anyone else's run on this machine:
    // Lab::create removes leftovers of the same name, which must only ever be our own.
    let pid = std::process::id();
    remove_stale(LAB_PREFIX);
    let lab = Lab::create(&format!("{LAB_PREFIX}{pid}")).context("creating the lab namespaces")?;

    eprintln!("bench: userspace: filling a table with {FULL} sources");
    let (sources, timings) = time_reads(&lab, &bin, pid).context("timing reads of a full table")?;

    let mut daemon = Vec::new();
    // Capacity 2× for the full case: the daemon makes room in a table fuller than 90 % at its
    // first read (down to 75 %), so a full default-size table would be measured at 49,152
    // sources. Twice the room keeps all 65,536 there for the whole window.
    for (scenario, n, capacity, targeted, tag) in [
        ("a few hundred sources", FEW, DEFAULT_SOURCE_CAPACITY, true, "few"),
        ("65,536 sources", FULL, 2 * DEFAULT_SOURCE_CAPACITY, false, "full"),
    ] {
        eprintln!("bench: userspace: the daemon with {n} sources, {} s", window.as_secs());
        let cost = daemon_cost(&lab, &bin, pid, tag, n, capacity, window)
            .with_context(|| format!("measuring the daemon with {n} sources"))?;
        daemon.push(DaemonCost { scenario, targeted, ..cost });
    }
    drop(lab);
    Ok(Userspace { sources, clock_tick_hz: clock_ticks()?, timings, daemon })
}

/// The release binary, built the way `cargo xtask demo` builds it (a no-op when up to date).
pub(super) fn build_portguard() -> Result<PathBuf> {
    sh(cargo().args(["build", "--release", "--package", "portguard"]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = target.join("release/portguard");
    if !bin.is_file() {
        bail!("{} is missing after building it", bin.display());
    }
    Ok(bin)
}

/// Our namespaces are `<LAB_PREFIX><pid>-gw`/`-out`, our pin roots `<PIN_PREFIX><pid>-<tag>`.
pub(super) const LAB_PREFIX: &str = "pgbench-us";
const PIN_PREFIX: &str = "/sys/fs/bpf/pgbench-user-";

/// What a run killed before its cleanup could run (SIGKILL, Ctrl-C) left: namespaces named
/// `<lab_prefix><pid>-…` and pin roots whose pid is gone. Those of live runs are left alone.
pub(super) fn remove_stale(lab_prefix: &str) {
    let dead = |rest: &str| {
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix(lab_prefix).is_some_and(dead) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
    let (dir, prefix) = PIN_PREFIX.rsplit_once('/').unwrap_or(("/sys/fs/bpf", PIN_PREFIX));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix(prefix).is_some_and(dead) {
            portguard_testkit::fixture::remove_root(&entry.path());
        }
    }
}

/// A bpffs root of our own. Dropping it detaches whatever is still pinned under it and
/// removes it, whatever went wrong before.
pub(super) struct PinRoot {
    pub(super) pins: Pins,
    /// The lab namespace its guard is in.
    ns: String,
}

impl PinRoot {
    /// A root for a guard in lab namespace `ns`.
    pub(super) fn new(pid: u32, tag: &str, ns: &str) -> PinRoot {
        let root =
            PinRoot { pins: Pins::new(format!("{PIN_PREFIX}{pid}-{tag}")), ns: ns.to_string() };
        root.clean();
        root
    }

    /// The guard of the lab's gateway, seen from its namespace.
    pub(super) fn view(&self) -> Result<View> {
        let pins = self.pins.clone();
        lab::in_netns(&self.ns, move || View::open(&pins, GW_IF))?
    }

    /// The binary acting on this root's guards, in the lab's namespace.
    pub(super) fn cmd(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.args(["--netns", &self.ns]).env(ROOT_ENV, self.path());
        c
    }

    pub(super) fn path(&self) -> &Path {
        &self.pins.root
    }

    fn clean(&self) {
        portguard_testkit::fixture::remove_root(&self.pins.root);
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Guards `pg-wan` in the lab with pins under `root`, admission unlimited (so that every new
/// source is admitted at once), and fills its table with `n` distinct sources.
fn filled_guard(lab: &Lab, root: &PinRoot, n: usize, capacity: u32) -> Result<Owner> {
    let pins = root.pins.clone();
    // The attachment resolves the interface in the calling thread's namespace.
    let acquired = lab::in_netns(&lab.gw, move || {
        let settings = Settings { admit_per_slice: Some(u32::MAX), ..Settings::default() };
        Owner::acquire(&pins, GW_IF, Some(&settings), capacity, AttachMode::Auto)
    })?
    .context("guarding pg-wan in the lab")?;
    let Acquired::Attached(mut g) = acquired else {
        bail!("pg-wan in the lab was guarded already")
    };
    let fd = program_fd(&mut g)?;
    fill(fd.as_fd(), n)?;
    let got = g.view().sources()?.len();
    if got != n {
        bail!("the table holds {got} sources after {n} distinct ones were sent");
    }
    Ok(g)
}

/// An fd of our own for the guard's program, so that the guard stays free to read its maps.
fn program_fd(g: &mut Owner) -> Result<OwnedFd> {
    let prog = g.program()?;
    let fd = prog.fd().context("portguard's program has no fd")?;
    fd.as_fd().try_clone_to_owned().context("duplicating portguard's program fd")
}

/// One UDP frame to the guarded port from each of `n` addresses of 198.18.0.0/15, repeat 1:
/// the program sees `n` new sources, exactly as if they had arrived on the link.
fn fill(prog: BorrowedFd<'_>, n: usize) -> Result<()> {
    const V4_SOURCES: usize = 1 << 17;
    if n > V4_SOURCES {
        bail!("198.18.0.0/15 has only {V4_SOURCES} addresses");
    }
    for k in 0..n {
        let src = ((198u32 << 24 | 18 << 16) + k as u32).to_be_bytes();
        let frame = Frame::udp4(src, [198, 18, 0, 1], 40000, GUARDED).build();
        let r = bpf::test_run(prog, &frame, 1).context("BPF_PROG_TEST_RUN filling the table")?;
        if r.verdict != bpf::XDP_DROP {
            bail!("a probe of port {GUARDED} got {}", bpf::verdict_name(r.verdict));
        }
    }
    Ok(())
}

/// Times `stats --json`, `stats`, `status --json` and `View::sources()` on a full table.
fn time_reads(lab: &Lab, bin: &Path, pid: u32) -> Result<(usize, Vec<Timing>)> {
    let root = PinRoot::new(pid, "stats", &lab.gw);
    let g = filled_guard(lab, &root, FULL, DEFAULT_SOURCE_CAPACITY)?;
    let mut timings = Vec::new();
    for args in [&["stats", "--json"][..], &["stats"], &["status", "--json"]] {
        let what = format!("`portguard {}`", args.join(" "));
        let run = || -> Result<Duration> {
            let mut c = root.cmd(bin);
            c.args(args);
            let start = Instant::now();
            let out = c.output().with_context(|| format!("spawning {what}"))?;
            let took = start.elapsed();
            if !out.status.success() {
                bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            // Reading a table other than the one filled would time nothing useful.
            let text = String::from_utf8_lossy(&out.stdout);
            let compact: String = text.split_whitespace().collect();
            if args[0] == "status" && !compact.contains(&format!("\"sources_tracked\":{FULL}")) {
                bail!("{what} does not report {FULL} sources tracked: {}", text.trim());
            }
            Ok(took)
        };
        timings.push(timing(&what, true, run)?);
    }
    // The two halves of what each command does: open the pinned state (which reads the
    // settings back), then read the table.
    // In the lab's namespace, as the verbs run (pins are per namespace); the switch is not timed.
    let pins = root.pins.clone();
    timings.push(timing("`View::open()`, the library call alone", false, || {
        let pins = pins.clone();
        lab::in_netns(&lab.gw, move || -> Result<Duration> {
            let start = Instant::now();
            let opened = View::open(&pins, GW_IF)?;
            let took = start.elapsed();
            drop(opened);
            Ok(took)
        })?
    })?);
    timings.push(timing("`View::sources()`, the library call alone", false, || {
        let start = Instant::now();
        let n = g.view().sources()?.len();
        let took = start.elapsed();
        if n != FULL {
            bail!("View::sources() returned {n} sources, not {FULL}");
        }
        Ok(took)
    })?);
    lab::in_netns(&lab.gw, move || g.release(false))?.context("detaching the guard")?;
    Ok((FULL, timings))
}

/// One untimed run, then `RUNS` timed ones: median and max.
fn timing(
    what: &str,
    user_facing: bool,
    mut f: impl FnMut() -> Result<Duration>,
) -> Result<Timing> {
    f()?;
    let mut ms = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        ms.push(f()?.as_secs_f64() * 1e3);
    }
    let max_ms = ms.iter().copied().fold(0.0, f64::max);
    Ok(Timing {
        what: what.to_string(),
        runs: RUNS,
        median_ms: super::cost::median(ms),
        max_ms,
        user_facing,
    })
}

/// `portguard run` in the lab's gateway namespace. Dropping it stops it (SIGTERM, then
/// SIGKILL if it lingers) and removes its log.
pub(super) struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// `portguard run --iface pg-wan --no-metrics` and then `args`.
    pub(super) fn spawn(
        bin: &Path,
        ns: &str,
        root: &PinRoot,
        tag: &str,
        args: &[&str],
    ) -> Result<Daemon> {
        let log =
            std::env::temp_dir().join(format!("pgbench-user-{}-{tag}.log", std::process::id()));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // nsenter enters only the network namespace (`ip netns exec` would remount /sys and
        // hide bpffs) and then execs portguard: the pid is the daemon's. Its live counters go
        // to /dev/null, as they would to a journal nobody reads; they are still formatted.
        let mut cmd = Command::new("nsenter");
        // SAFETY: prctl is async-signal-safe and touches only the child. If the benchmark dies
        // without running its cleanup, the daemon gets SIGTERM instead of running on forever
        // (the flag survives nsenter's exec of portguard).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(bin)
            .args(["run", "--iface", GW_IF, "--no-metrics"])
            .args(args)
            .env(ROOT_ENV, root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning nsenter portguard run")?;
        Ok(Daemon { child, log })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Fails if it has exited: whatever it measured afterwards would not be the daemon.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling the daemon")? {
            bail!("portguard run exited early ({status}): {}", self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, and its exit status within `STOP_TIMEOUT`.
    pub(super) fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)
    }

    /// `sig`, and its exit status within `STOP_TIMEOUT`.
    pub(super) fn signal(&mut self, sig: libc::c_int) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.pid() as i32, sig) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the daemon")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "portguard run did not stop within {} s of signal {sig}",
                    STOP_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.stop().is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The daemon adopting a guard of `n` sources left pinned, measured over `window` after
/// `WARMUP`; then stopped with SIGTERM (it leaves the guard, --persist) and detached.
fn daemon_cost(
    lab: &Lab,
    bin: &Path,
    pid: u32,
    tag: &str,
    n: usize,
    capacity: u32,
    window: Duration,
) -> Result<DaemonCost> {
    let root = PinRoot::new(pid, tag, &lab.gw);
    let g = filled_guard(lab, &root, n, capacity)?;
    // Left in place, owner cleared: the daemon adopts it (program replaced, maps kept).
    lab::in_netns(&lab.gw, move || g.release(true))?.context("leaving the guard in place")?;

    let mut d = Daemon::spawn(bin, &lab.gw, &root, tag, &["--persist", "--interval", "1"])?;
    wait_adopted(&mut d, &root)?;
    thread::sleep(WARMUP);
    d.check_alive()?;
    let before = root.view()?.sources()?.len();

    let ticks = clock_ticks()?;
    let cpu0 = cpu_ticks(d.pid())?;
    let start = Instant::now();
    let mut peak_kb = 0;
    while start.elapsed() < window {
        peak_kb = peak_kb.max(status_kb(d.pid(), "VmRSS:")?);
        thread::sleep(RSS_EVERY.min(window.saturating_sub(start.elapsed())));
    }
    let cpu1 = cpu_ticks(d.pid())?;
    let elapsed = start.elapsed().as_secs_f64();
    peak_kb = peak_kb.max(status_kb(d.pid(), "VmRSS:")?);
    let hwm_kb = status_kb(d.pid(), "VmHWM:")?;
    d.check_alive()?;
    let after = root.view()?.sources()?.len();

    let status = d.stop()?;
    if !status.success() {
        bail!("portguard run exited with {status} on SIGTERM: {}", d.log_tail());
    }
    let out = root
        .cmd(bin)
        .args(["detach", "--all"])
        .output()
        .context("spawning portguard detach --all")?;
    if !out.status.success() {
        bail!("portguard detach --all failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mb = |kb: u64| kb as f64 * 1024.0 / 1e6;
    Ok(DaemonCost {
        scenario: "",
        capacity,
        sources_before: before,
        sources_after: after,
        window_s: elapsed,
        cpu_ticks: cpu1.saturating_sub(cpu0),
        cpu_percent: 100.0 * cpu1.saturating_sub(cpu0) as f64 / ticks as f64 / elapsed,
        peak_rss_mb: mb(peak_kb),
        hwm_mb: mb(hwm_kb),
        targeted: false,
    })
}

/// Until the daemon owns the guard (META's owner is its pid), or it dies, or the time is up.
pub(super) fn wait_adopted(d: &mut Daemon, root: &PinRoot) -> Result<()> {
    let deadline = Instant::now() + ADOPT_TIMEOUT;
    loop {
        d.check_alive()?;
        let owner = root.view().and_then(|g| g.meta()).map(|m| m.owner_pid);
        if owner.is_ok_and(|o| o == d.pid()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "portguard run did not adopt the guard within {} s: {}",
                ADOPT_TIMEOUT.as_secs(),
                d.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn clock_ticks() -> Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(t as u64)
}

/// utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime and stime are its 12th and 13th.
    let field = |i: usize| -> Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).with_context(|| format!("parsing {path}"))
    };
    Ok(field(11)? + field(12)?)
}

/// A `kB` line of /proc/PID/status (VmRSS, VmHWM).
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}
