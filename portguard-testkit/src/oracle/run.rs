//! The three phases and the check.
//!
//! - Phase A, no portguard: every case is sent; the cases the kernel delivered to a socket on a
//!   guarded port (a datagram read, a SYN answered) are the set D.
//! - Phase B, portguard attached in drop mode (`Owner::acquire` in the gateway namespace, pins
//!   under a root of the run's own): nothing may reach a guarded port. Control-port deliveries
//!   of phase A that are missing now are collateral.
//! - Phase C, the same guard switched to count mode: cases are sent one at a time and TOTALS
//!   read after each, so that portguard's `matched` and `fragments_followed` are known per
//!   case. Agreement: a case (one datagram, however many fragments) that the kernel delivered
//!   to a guarded port must have `matched >= 1` (its unfragmented frame, or its first fragment,
//!   matched; the fragments that followed it are counted in `fragments_followed` and are part of
//!   the same delivery). A case the kernel delivered and portguard did not match is a *miss*
//!   (the same blind spot as a drop-mode violation); a matched case the kernel did not deliver
//!   is an *over-count* (portguard counts probes the stack then discards, e.g. with a broken
//!   checksum: reported, not a failure); `matched >= 2` for one datagram (duplicate first
//!   fragments) is reported too.
//!
//! Every phase sends the same cases from its own sources (`netlab::source`), so replies and
//! reassembly state never cross phases. Each phase ends with a sentinel (a UDP datagram and a
//! SYN to the control port): frames are processed in order on one CPU (the sending thread is
//! pinned), so once the sentinel's datagram and SYN-ACK are back, so is everything before it.
//!
//! Then, per violation class, the smallest reproducer is replayed alone without portguard
//! (phase 3) with the gateway's SNMP counters read around it: what the kernel did with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use portguard::{
    counters,
    guard::{Acquired, AttachMode, Loaded, Owner, detach_pinned},
    lab::{self, GW_IF},
    pins::Pins,
    settings::{Mode, Settings},
};
use portguard_common::{CHANGE_SET, DEFAULT_SOURCE_CAPACITY, Totals};

use super::{
    cases::{Case, Generator},
    netlab::{OracleLab, Ports, drain_udp},
    observe::{Obs, Observations},
    packet::{Datagram, L4, Net, Proto},
};
use crate::{
    fixture::unique,
    reference::{Outcome, Reading, Reference, Why},
};

pub const PHASE_A: u8 = 0;
pub const PHASE_B: u8 = 1;
pub const PHASE_C: u8 = 2;
pub const PHASE_EXPLAIN: u8 = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Frames to generate (at least; whole cases).
    pub frames: u64,
    pub seed: u64,
    /// Guarded ports (the first gets most cases) and the control port.
    pub guarded: Vec<u16>,
    pub control: u16,
    /// Cases sent between two reads of the sockets.
    pub batch: usize,
    /// The whole run must end within this.
    pub time_limit: Duration,
    /// Emulate VLAN sub-interfaces (see `vlan`).
    pub emulate_vlans: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frames: 4_000,
            seed: 0x2745_0dac_1e00_0001,
            guarded: vec![2745, 3127],
            control: 8080,
            batch: 256,
            time_limit: Duration::from_secs(600),
            emulate_vlans: true,
        }
    }
}

/// How one phase went.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseStats {
    pub frames: u64,
    /// Frames the AF_PACKET socket refused (too short or too long for the device).
    pub refused: u64,
    pub elapsed: Duration,
    /// Phase C: cases whose frames portguard had not all seen within a second.
    pub unsynced: u64,
    /// Frames veth dropped between the two ends (they never reached the gateway).
    pub link_drops: u64,
    /// The most memory the gateway's reassembly queues held, IPv4 and IPv6, sampled after
    /// every batch.
    pub reassembly_peak: (u64, u64),
}

impl PhaseStats {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// portguard's counters for one case in count mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counted {
    pub matched: u64,
    pub followed: u64,
}

/// A class of cases that share what went wrong, with its smallest member.
#[derive(Clone, Debug, Default)]
pub struct Class {
    pub key: String,
    pub cases: u64,
    pub links: BTreeSet<String>,
    pub mutations: BTreeSet<String>,
    /// The smallest member: case id, labels, frames (hex), and what was learnt about it.
    pub example_id: u32,
    pub example_bytes: usize,
    pub example_detail: String,
    pub example_frames: Vec<String>,
    /// What the kernel did with the reproducer alone (phase 3), when replayed.
    pub kernel: String,
}

/// A row of the table: cases of one kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Row {
    pub cases: u64,
    pub frames: u64,
    /// Cases the kernel delivered to a guarded port without portguard.
    pub kernel: u64,
    /// Cases delivered to a guarded port with portguard in drop mode (must be 0).
    pub through: u64,
    /// Control-port deliveries lost to portguard.
    pub collateral: u64,
    /// Count mode: delivered but not matched / matched but not delivered.
    pub missed: u64,
    pub over: u64,
}

impl Row {
    fn add(&mut self, o: &Row) {
        self.cases += o.cases;
        self.frames += o.frames;
        self.kernel += o.kernel;
        self.through += o.through;
        self.collateral += o.collateral;
        self.missed += o.missed;
        self.over += o.over;
    }
}

/// What happened to one case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaseResult {
    /// Delivered to a guarded port without portguard (phase A).
    pub kernel: bool,
    /// Delivered to a guarded port with portguard in drop mode (phase B).
    pub through: bool,
    /// Delivered to the control port without portguard, not with it.
    pub collateral: bool,
    /// Delivered to a guarded port in count mode (phase C), and portguard's counts for it.
    pub count_delivered: bool,
    pub matched: u64,
    pub followed: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Per case, in case order.
    pub results: Vec<CaseResult>,
    pub seed: u64,
    pub guarded: Vec<u16>,
    pub control: u16,
    pub cases: u64,
    pub phases: [PhaseStats; 3],
    pub total: Row,
    pub by_shape: BTreeMap<String, Row>,
    pub by_link: BTreeMap<String, Row>,
    pub by_mutation: BTreeMap<String, Row>,
    /// Unmutated, unfragmented cases to a guarded port, by what their headers contain (an
    /// IPv6 extension-header kind, an IPv4 option): which ones the kernel ever delivers.
    pub by_element: BTreeMap<String, Row>,
    /// Delivered to a guarded port through portguard in drop mode.
    pub violations: Vec<Class>,
    /// Count mode: delivered but not matched.
    pub missed: Vec<Class>,
    /// Count mode: matched but not delivered, by class (counts only).
    pub over: BTreeMap<String, u64>,
    /// Count mode: one datagram matched more than once.
    pub double: u64,
    /// Control-port deliveries lost in drop mode.
    pub collateral: Vec<Class>,
    /// Cases drop mode let through but count mode matched, or the other way round.
    pub inconsistent: Vec<Class>,
    /// Cases whose deliveries differ between phase A and count mode (must be 0: count mode
    /// drops nothing), and their classes.
    pub count_mode_changed: u64,
    pub changed: Vec<Class>,
    /// Where the reference's reading disagrees with the kernel.
    pub reference: Vec<Class>,
    /// Totals of the count phase.
    pub count_totals: Totals,
    /// Observer health: all must be 0 for the run to mean anything.
    pub capture_drops: u64,
    pub udp_rcvbuf_errors: u64,
    pub unattributed: u64,
    pub elapsed: Duration,
}

/// A bpffs root of the run's own; whatever is guarded there is detached and the directory
/// removed when it is dropped, however the run ends. Pins are kept per network namespace, so
/// the detach happens from inside the gateway's.
struct PinDir {
    root: PathBuf,
    netns: String,
}

impl PinDir {
    fn new(netns: &str) -> PinDir {
        let root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("pgor")));
        PinDir { root, netns: netns.to_string() }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let pins = Pins::new(&self.root);
        let _ = lab::in_netns(&self.netns, move || detach_pinned(&pins, GW_IF));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Pins the calling thread to the CPU it is on (see the module doc); restored when dropped.
struct CpuPin(Option<libc::cpu_set_t>);

impl CpuPin {
    fn here() -> CpuPin {
        // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity(0) act on this thread.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return CpuPin(None);
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return CpuPin(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
                return CpuPin(None);
            }
            CpuPin(Some(old))
        }
    }
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restoring the mask read before.
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), old) };
        }
    }
}

/// The settings of the guard under test.
fn settings(cfg: &Config, mode: Mode) -> Settings {
    Settings { mode, ports: cfg.guarded.clone(), ..Settings::default() }
}

fn attach(lab: &OracleLab, pins: &PinDir, s: Settings) -> Result<Owner> {
    let pins = Pins::new(&pins.root);
    let acquired = lab::in_netns(&lab.lab.gw, move || {
        Owner::acquire(&pins, GW_IF, Some(&s), DEFAULT_SOURCE_CAPACITY, AttachMode::Native)
    })??;
    match acquired {
        Acquired::Attached(o) => Ok(o),
        _ => bail!("the oracle's interface was already guarded"),
    }
}

fn drain(lab: &OracleLab, obs: &mut Observations, buf: &mut [u8]) {
    let mut got = Vec::new();
    drain_udp(&lab.listeners, &mut got);
    for r in got {
        obs.udp(r);
    }
    for _ in 0..super::netlab::MAX_DRAIN {
        let Some(n) = lab.capture.recv(buf) else {
            break;
        };
        obs.captured(&buf[..n]);
    }
}

/// Ids of the sentinels (never a case's: cases count up from 0).
const SENTINEL: u32 = 0xffff_0000;

/// Sends a UDP datagram and a SYN to the control port and waits for both to come back.
fn sentinel(
    lab: &OracleLab,
    phase: u8,
    k: u32,
    control: u16,
    obs: &mut Observations,
) -> Result<()> {
    let id = SENTINEL | k;
    let w = lab.wire(phase, id);
    for proto in [Proto::Udp, Proto::Tcp] {
        let d = Datagram {
            net: Net::V4 { options: vec![] },
            l4: L4 {
                proto,
                sport: 65_000 + (k % 500) as u16,
                dport: control,
                seq: id,
                flags: 0x02,
                tcp_options: vec![],
                udp_no_checksum: false,
            },
            id,
            filler: 0,
            pieces: None,
            tags: vec![],
        };
        for (f, _) in d.build(&w) {
            lab.inject.send(&f).context("sending the sentinel")?;
        }
    }
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        drain(lab, obs, &mut buf);
        if let Some(o) = obs.get(phase, id)
            && o.udp.contains(&control)
            && o.synack.contains(&control)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the sentinel of phase {phase} did not come back: the lab loses frames");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Belt and braces: anything processed on another CPU has had time to land.
    std::thread::sleep(Duration::from_millis(20));
    drain(lab, obs, &mut buf);
    Ok(())
}

fn send_phase(
    lab: &OracleLab,
    cfg: &Config,
    cases: &[Case],
    phase: u8,
    mut count: Option<(&Owner, &mut Vec<Counted>)>,
    obs: &mut Observations,
    deadline: Instant,
) -> Result<PhaseStats> {
    let start = Instant::now();
    let mut st = PhaseStats::default();
    let mut buf = vec![0u8; 65536];
    let drops0 = lab.link_drops()?;
    let mut last = match &count {
        Some((o, _)) => Some(o.view().totals()?),
        None => None,
    };
    for (b, chunk) in cases.chunks(cfg.batch.max(1)).enumerate() {
        for c in chunk {
            let frames = c.frames(&lab.wire(phase, c.id));
            let mut sent = 0;
            for f in &frames {
                let r = lab.inject.send(f);
                // The gateway end processes frames in softirq context on this CPU (the thread
                // is pinned). When softirqs are deferred to ksoftirqd, a sender that never
                // yields fills veth's ring and frames are dropped before the gateway sees
                // them: let ksoftirqd run.
                std::thread::yield_now();
                match r {
                    Ok(()) => sent += 1,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::EINVAL)) => {
                        st.refused += 1
                    }
                    Err(e) => return Err(e).context("injecting a frame"),
                }
            }
            st.frames += sent;
            if let (Some((owner, counted)), Some(before)) = (&mut count, &mut last) {
                // Only the oracle sends on this link (see netlab), so `seen` moving by the
                // frames sent means portguard has judged them all.
                let until = Instant::now() + Duration::from_secs(1);
                let after = loop {
                    let t = owner.view().totals()?;
                    if t.seen.wrapping_sub(before.seen) >= sent || Instant::now() > until {
                        if t.seen.wrapping_sub(before.seen) < sent {
                            st.unsynced += 1;
                        }
                        break t;
                    }
                    std::hint::spin_loop();
                };
                let d = counters::since(&after, before);
                // An unjudged frame is what portguard counts of a case it cannot read: it
                // stands for the case as a match does.
                counted[c.id as usize] =
                    Counted { matched: d.matched + d.unjudged, followed: d.fragments_followed };
                *before = after;
            }
        }
        drain(lab, obs, &mut buf);
        let (m4, m6) = lab.reassembly_memory()?;
        st.reassembly_peak = (st.reassembly_peak.0.max(m4), st.reassembly_peak.1.max(m6));
        if Instant::now() > deadline {
            bail!("time limit reached in phase {phase} after {} batches", b + 1);
        }
    }
    sentinel(lab, phase, 0, cfg.control, obs)?;
    let drops1 = lab.link_drops()?;
    st.link_drops = drops1.0.saturating_sub(drops0.0);
    st.elapsed = start.elapsed();
    Ok(st)
}

pub fn hex(f: &[u8]) -> String {
    f.iter().fold(String::with_capacity(f.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn reading(r: &Reading) -> String {
    match r {
        Reading::NotIp => "NotIp".into(),
        Reading::NoPorts { .. } => "NoPorts".into(),
        Reading::Ports(p) => {
            format!(
                "Ports({:?} {}{})",
                p.protocol,
                p.dport,
                if p.first_fragment.is_some() { " first-frag" } else { "" }
            )
        }
        Reading::Fragment(_) => "Fragment".into(),
        Reading::Malformed(m) => format!("Malformed({m:?})"),
        Reading::Unjudged(u) => format!(
            "Unjudged({}{})",
            u.protocol.map_or("tcp/udp".into(), |p| format!("{p:?}")),
            if u.first_fragment.is_some() { " first-frag" } else { "" }
        ),
    }
}

/// Adds `case` to the class `key` in `classes`, keeping the smallest member as the example.
fn classify(
    classes: &mut BTreeMap<String, Class>,
    key: String,
    case: &Case,
    frames: &[Vec<u8>],
    detail: String,
) {
    let c = classes.entry(key.clone()).or_insert_with(|| Class { key, ..Class::default() });
    c.cases += 1;
    c.links.insert(case.labels.link.clone());
    c.mutations.insert(case.labels.mutation.clone());
    let bytes: usize = frames.iter().map(Vec::len).sum();
    // Prefer unmutated reproducers, then the kernel alone (no emulated VLANs), then untagged,
    // then the shortest.
    let mutated = case.labels.mutation != "none";
    let emulated = case.labels.link.contains("emulated");
    let tagged = case.labels.link != "untagged";
    let score =
        (mutated as usize) << 22 | (emulated as usize) << 21 | (tagged as usize) << 20 | bytes;
    if c.example_frames.is_empty() || score < c.example_bytes {
        c.example_id = case.id;
        c.example_bytes = score;
        c.example_detail = format!(
            "{} | {} | {} | {} | {detail}",
            case.labels.shape, case.labels.link, case.labels.mutation, case.labels.detail
        );
        c.example_frames = frames.iter().map(|f| hex(f)).collect();
    }
}

/// What a case's headers are made of, by kind: IPv6 extension headers (a hop-by-hop header
/// anywhere but first is its own kind) and IPv4 options.
fn elements(c: &Case) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match &c.dgram.net {
        Net::V6 { exts, .. } => {
            for (i, e) in exts.iter().enumerate() {
                let name = e.name();
                let name = if i > 0 && name.starts_with("hbh") {
                    format!("{name} not first")
                } else {
                    name
                };
                out.insert(format!("v6 ext {name}"));
            }
            if exts.len() > 8 {
                out.insert("v6 chain deeper than 8".into());
            }
        }
        Net::V4 { options } => {
            for o in options {
                let name = format!("{o:?}");
                let name = name.split([' ', '{']).next().unwrap_or("").to_string();
                out.insert(format!("v4 option {name}"));
            }
        }
    }
    out
}

/// Why a frame is misread, in the reference's words: the distinct malformed readings among a
/// case's frames ("Ports" and "Fragment" readings say nothing about the cause).
fn cause(documented: &[(String, Outcome)]) -> String {
    let m: BTreeSet<&str> =
        documented.iter().map(|(r, _)| r.as_str()).filter(|r| r.starts_with("Malformed")).collect();
    if m.is_empty() {
        "no malformed reading".into()
    } else {
        m.into_iter().collect::<Vec<_>>().join("+")
    }
}

/// The distinct values, sorted, joined: a class is what went wrong, not in which order.
fn distinct(v: Vec<String>) -> String {
    v.into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(",")
}

/// portguard's outcome for each frame of a case, through BPF_PROG_TEST_RUN (drop mode).
fn program_outcomes(g: &mut Loaded, frames: &[Vec<u8>]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in frames {
        let before = g.totals()?;
        let r = g.program()?.test_run(TestRunOptions { data_in: Some(f), ..Default::default() })?;
        let d = counters::since(&g.totals()?, &before);
        out.push(match Outcome::observed(r.return_value, &d, f.len() as u64) {
            Some(o) => format!("{o:?}"),
            None => format!("verdict {} {d:?}", r.return_value),
        });
    }
    Ok(out)
}

/// Replays one case alone without portguard and says what the kernel did: deliveries,
/// replies, and the SNMP counters that moved.
fn explain(
    lab: &OracleLab,
    case: &Case,
    control: u16,
    obs: &mut Observations,
    k: u32,
) -> Result<String> {
    let before = lab.snmp()?;
    for f in case.frames(&lab.wire(PHASE_EXPLAIN, case.id)) {
        let _ = lab.inject.send(&f);
    }
    sentinel(lab, PHASE_EXPLAIN, k, control, obs)?;
    let after = lab.snmp()?;
    // The sentinel's own traffic (a UDP datagram and a SYN answered, over IPv4).
    let sentinel: BTreeMap<&str, u64> = [
        ("Ip.InReceives", 2),
        ("Ip.InDelivers", 2),
        ("Ip.OutRequests", 1),
        ("Ip.OutTransmits", 1),
        ("Udp.InDatagrams", 1),
        ("Tcp.InSegs", 1),
        ("Tcp.OutSegs", 1),
        ("Tcp.PassiveOpens", 0),
        ("TcpExt.TCPReqQFullDoCookies", 0),
    ]
    .into_iter()
    .collect();
    let mut moved = Vec::new();
    for (k, v) in &after {
        let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
        let d = d.saturating_sub(*sentinel.get(k.as_str()).unwrap_or(&0));
        if d > 0 && !k.contains("Octets") && !k.starts_with("IpExt.") {
            moved.push(format!("{k}+{d}"));
        }
    }
    let o = obs.get(PHASE_EXPLAIN, case.id).cloned().unwrap_or_default();
    Ok(format!(
        "udp to {:?}, syn-ack from {:?}, rst from {:?}, icmp {:?}; counters: {}",
        o.udp,
        o.synack,
        o.rst,
        o.icmp,
        if moved.is_empty() { "none".into() } else { moved.join(" ") }
    ))
}

/// Generates `cfg.frames` frames' worth of cases and checks them.
pub fn run(cfg: &Config) -> Result<Report> {
    let mut generator = Generator::new(cfg.seed, &cfg.guarded, cfg.control);
    let mut cases = Vec::new();
    let mut planned = 0u64;
    while planned < cfg.frames {
        let c = generator.case();
        planned += c.dgram.pieces.as_ref().map_or(1, Vec::len) as u64;
        cases.push(c);
    }
    check(cfg, &cases)
}

/// Runs the three phases over `cases` (their ids must be 0, 1, 2, ... in order) and checks
/// the invariant.
pub fn check(cfg: &Config, cases: &[Case]) -> Result<Report> {
    let start = Instant::now();
    let deadline = start + cfg.time_limit;
    for (i, c) in cases.iter().enumerate() {
        if c.id as usize != i {
            bail!("case ids must count up from 0: case #{i} has id {}", c.id);
        }
    }
    let ports = Ports { guarded: &cfg.guarded, control: &[cfg.control] };
    let lab = OracleLab::create(&unique("pgor"), &ports, cfg.emulate_vlans)?;
    let _cpu = CpuPin::here();
    let snmp0 = lab.snmp()?;
    let mut obs = Observations::default();
    let mut report = Report {
        seed: cfg.seed,
        guarded: cfg.guarded.clone(),
        control: cfg.control,
        cases: cases.len() as u64,
        ..Report::default()
    };

    report.phases[0] = send_phase(&lab, cfg, cases, PHASE_A, None, &mut obs, deadline)?;
    let pins = PinDir::new(&lab.lab.gw);
    let mut owner = attach(&lab, &pins, settings(cfg, Mode::Drop))?;
    report.phases[1] = send_phase(&lab, cfg, cases, PHASE_B, None, &mut obs, deadline)?;
    // A change in place, as `portguard set --mode count` makes it: same program, same maps.
    owner.view_mut().update(CHANGE_SET, |s| {
        s.mode = Mode::Count;
        Ok(())
    })?;
    let mut counted = vec![Counted::default(); cases.len()];
    let t0 = owner.view().totals()?;
    report.phases[2] =
        send_phase(&lab, cfg, cases, PHASE_C, Some((&owner, &mut counted)), &mut obs, deadline)?;
    report.count_totals = counters::since(&owner.view().totals()?, &t0);
    owner.release(false)?;
    drop(pins);

    // Analysis.
    let guarded = &cfg.guarded[..];
    let control = [cfg.control];
    let mut g = Loaded::with_defaults(&settings(cfg, Mode::Drop))?;
    let mut reference = Reference::new(&settings(cfg, Mode::Drop));
    let (mut violations, mut missed, mut collateral, mut refclasses) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut inconsistent = BTreeMap::new();
    let mut changed = BTreeMap::new();
    let none = Obs::default();
    for c in cases {
        let a = obs.get(PHASE_A, c.id).unwrap_or(&none);
        let b = obs.get(PHASE_B, c.id).unwrap_or(&none);
        let cc = obs.get(PHASE_C, c.id).unwrap_or(&none);
        let n = c.dgram.pieces.as_ref().map_or(1, Vec::len) as u64;
        let counted = counted[c.id as usize];
        let mut row = Row { cases: 1, frames: n, ..Row::default() };
        row.kernel = a.delivered_to(guarded) as u64;
        row.through = b.delivered_to(guarded) as u64;
        row.collateral = (a.delivered_to(&control) && !b.delivered_to(&control)) as u64;
        let delivered_c = cc.delivered_to(guarded);
        row.missed = (delivered_c && counted.matched == 0) as u64;
        row.over = (!delivered_c && counted.matched > 0) as u64;
        if counted.matched > 1 {
            report.double += 1;
        }
        report.results.push(CaseResult {
            kernel: row.kernel == 1,
            through: row.through == 1,
            collateral: row.collateral == 1,
            count_delivered: delivered_c,
            matched: counted.matched,
            followed: counted.followed,
        });
        // Count mode drops nothing: every case is delivered as without portguard.
        if a.udp != cc.udp || a.synack != cc.synack {
            report.count_mode_changed += 1;
            let frames_c = c.frames(&lab.wire(PHASE_C, c.id));
            let key = format!("{} | {}", c.labels.shape, c.labels.link);
            let detail = format!("without portguard: {a:?}; in count mode: {cc:?}");
            classify(&mut changed, key, c, &frames_c, detail);
        }
        // The reference's documented reading of phase A's frames, in order.
        let frames_a = c.frames(&lab.wire(PHASE_A, c.id));
        let mut documented = Vec::new();
        let mut doubts = BTreeSet::new();
        for f in &frames_a {
            let (parsed, js) = reference.expect(f);
            for (_, why) in &parsed.alternatives {
                if let Why::Ambiguous(d) = why {
                    doubts.insert(format!("{d:?}"));
                }
            }
            documented.push((reading(&parsed.reading), js[0].outcome));
            reference.commit(&js[0]);
        }
        let ref_drops =
            documented.iter().any(|(_, o)| matches!(o, Outcome::Dropped | Outcome::FollowedDrop));
        let readings = distinct(documented.iter().map(|(r, _)| r.clone()).collect());
        let why = cause(&documented);
        if row.kernel == 1 && !ref_drops {
            let key =
                format!("reference passes what the kernel delivers: {why} | {}", c.labels.shape);
            classify(&mut refclasses, key, c, &frames_a, format!("readings {readings}"));
        }
        // A doubt is refuted only where the doubtful frame was needed: not when another copy
        // of its bytes (a duplicate, an overlapping rewrite) could have completed the datagram.
        let sole = !c.labels.detail.contains('+');
        if row.kernel == 1 && !doubts.is_empty() && sole {
            let key = format!(
                "reference says the stack discards it ({}) but the kernel delivers: {}",
                doubts.iter().cloned().collect::<Vec<_>>().join(","),
                c.labels.shape
            );
            classify(&mut refclasses, key, c, &frames_a, format!("readings {readings}"));
        }
        if row.through == 1 || row.missed == 1 {
            let frames_b = c.frames(&lab.wire(PHASE_B, c.id));
            let outcomes = distinct(program_outcomes(&mut g, &frames_b)?);
            let key = format!("{why} | {}", c.labels.shape);
            let detail = format!(
                "portguard (BPF_PROG_TEST_RUN): {outcomes}; reference: {readings}; kernel (phase A): {a:?}; through portguard: {b:?}"
            );
            if row.through == 1 {
                classify(&mut violations, key.clone(), c, &frames_b, detail.clone());
            }
            if row.missed == 1 {
                classify(&mut missed, key, c, &frames_b, format!("{detail}; counted {counted:?}"));
            }
        }
        if row.collateral == 1 {
            let frames_b = c.frames(&lab.wire(PHASE_B, c.id));
            // The fragment plan's extras (+rewrite-ports, +duplicate, ...) are what matter.
            let extras: Vec<&str> =
                c.labels.detail.split(' ').filter(|w| w.contains('+')).collect();
            let key = format!("{} | {}", c.labels.shape, extras.join(" "));
            classify(
                &mut collateral,
                key,
                c,
                &frames_b,
                format!("kernel: {a:?}; with portguard: {b:?}"),
            );
        }
        // Drop and count mode must see the same frames the same way: a case that got through
        // in drop mode is one count mode did not match, and the other way round.
        if row.through != row.missed {
            let frames_b = c.frames(&lab.wire(PHASE_B, c.id));
            let key = format!("{} | {}", c.labels.shape, c.labels.link);
            let detail = format!("drop mode: {b:?}; count mode: {cc:?}, counted {counted:?}");
            classify(&mut inconsistent, key, c, &frames_b, detail);
        }
        if row.over == 1 {
            *report
                .over
                .entry(format!("{} | {}", c.labels.shape, c.labels.mutation))
                .or_default() += 1;
        }
        report.total.add(&row);
        report.by_shape.entry(c.labels.shape.clone()).or_default().add(&row);
        report.by_link.entry(c.labels.link.clone()).or_default().add(&row);
        let m = c.labels.mutation.split(" (").next().unwrap_or("").to_string();
        report.by_mutation.entry(m).or_default().add(&row);
        if c.mutation.is_none()
            && c.labels.mutation == "none"
            && c.dgram.pieces.is_none()
            && guarded.contains(&c.dgram.l4.dport)
        {
            for e in elements(c) {
                report.by_element.entry(e).or_default().add(&row);
            }
        }
    }
    // What the kernel does with each reproducer, alone (once per case: a replay of the same
    // frames from the same source would meet the first replay's reassembly state).
    let mut explained = BTreeMap::<u32, String>::new();
    if !(violations.is_empty() && missed.is_empty() && refclasses.is_empty()) {
        // The phases' incomplete datagrams time out (5 s) with ICMP errors and counters of
        // their own: let them, so that a replay's counters are its own.
        let until = Instant::now() + Duration::from_secs(12);
        while lab.reassembly_queues()? > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for classes in [&mut violations, &mut missed, &mut refclasses] {
        for class in classes.values_mut() {
            if Instant::now() > deadline || explained.len() >= 200 {
                break;
            }
            let id = class.example_id;
            if !explained.contains_key(&id)
                && let Some(c) = cases.get(id as usize)
            {
                let k = explained.len() as u32 + 1;
                explained.insert(id, explain(&lab, c, cfg.control, &mut obs, k)?);
            }
            class.kernel = explained.get(&id).cloned().unwrap_or_default();
        }
    }
    report.violations = violations.into_values().collect();
    report.missed = missed.into_values().collect();
    report.collateral = collateral.into_values().collect();
    report.inconsistent = inconsistent.into_values().collect();
    report.changed = changed.into_values().collect();
    report.reference = refclasses.into_values().collect();
    let snmp1 = lab.snmp()?;
    let delta = |k: &str| snmp1.get(k).unwrap_or(&0).saturating_sub(*snmp0.get(k).unwrap_or(&0));
    report.udp_rcvbuf_errors = delta("Udp.RcvbufErrors") + delta("Udp6RcvbufErrors");
    report.capture_drops = lab.capture.drops() as u64;
    report.unattributed = obs.unattributed;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Rebuilds case `id` of a run with `seed` (the generator is deterministic).
pub fn case(seed: u64, guarded: &[u16], control: u16, id: u32) -> Case {
    let mut g = Generator::new(seed, guarded, control);
    loop {
        let c = g.case();
        if c.id == id {
            return c;
        }
    }
}

impl Report {
    /// The run found nothing wrong with portguard, and its observers lost nothing.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
            && self.missed.is_empty()
            && self.count_mode_changed == 0
            && self.healthy()
    }

    pub fn healthy(&self) -> bool {
        let limit = super::netlab::REASSEMBLY_LIMIT * 9 / 10;
        self.capture_drops == 0
            && self.udp_rcvbuf_errors == 0
            && self.unattributed == 0
            && self.phases[2].unsynced == 0
            && self.phases.iter().all(|p| {
                p.link_drops == 0 && p.reassembly_peak.0 < limit && p.reassembly_peak.1 < limit
            })
    }

    /// Columns: cases, their frames, cases the kernel delivered to a guarded port, delivered
    /// through portguard (drop), control-port deliveries lost (drop), count-mode misses and
    /// over-counts.
    fn table(out: &mut String, title: &str, rows: &BTreeMap<String, Row>) {
        let w = rows.keys().map(String::len).chain([title.len()]).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {title:<w$} {:>7} {:>7} {:>7} {:>7} {:>10} {:>6} {:>6}",
            "cases", "frames", "kernel", "through", "collateral", "missed", "over"
        );
        for (k, r) in rows {
            let _ = writeln!(
                out,
                "  {k:<w$} {:>7} {:>7} {:>7} {:>7} {:>10} {:>6} {:>6}",
                r.cases, r.frames, r.kernel, r.through, r.collateral, r.missed, r.over
            );
        }
    }

    fn classes(out: &mut String, title: &str, classes: &[Class]) {
        if classes.is_empty() {
            return;
        }
        let _ = writeln!(out, "{title} ({} classes):", classes.len());
        for c in classes {
            let _ = writeln!(
                out,
                "- {} [{} cases; links: {}; mutations: {}]",
                c.key,
                c.cases,
                c.links.iter().cloned().collect::<Vec<_>>().join(", "),
                c.mutations.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            let _ = writeln!(out, "  reproducer: case #{} ({})", c.example_id, c.example_detail);
            for (i, f) in c.example_frames.iter().enumerate() {
                let _ = writeln!(out, "    frame {i}: {f}");
            }
            if !c.kernel.is_empty() {
                let _ = writeln!(out, "  kernel alone: {}", c.kernel);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let t = &self.total;
        let _ = writeln!(
            out,
            "kernel oracle: seed {:#x}, {} cases, guarded ports {:?}, control port {}, {:.1?} in all",
            self.seed, self.cases, self.guarded, self.control, self.elapsed
        );
        for (name, p) in ["A (no portguard)", "B (drop)", "C (count, one case at a time)"]
            .iter()
            .zip(&self.phases)
        {
            let _ = writeln!(
                out,
                "  phase {name}: {} frames in {:.2?} ({:.0} frames/s), veth drops {}, reassembly memory peak {} / {} KB (v4/v6){}{}",
                p.frames,
                p.elapsed,
                p.rate(),
                p.link_drops,
                p.reassembly_peak.0 >> 10,
                p.reassembly_peak.1 >> 10,
                if p.refused > 0 {
                    format!(", {} refused by AF_PACKET", p.refused)
                } else {
                    String::new()
                },
                if p.unsynced > 0 {
                    format!(", {} cases unsynced", p.unsynced)
                } else {
                    String::new()
                },
            );
        }
        let _ = writeln!(
            out,
            "frames tried: {}; kernel-delivered to a guarded port: {} cases; through portguard: {} (must be 0); collateral: {}",
            self.phases[0].frames, t.kernel, t.through, t.collateral
        );
        let _ = writeln!(
            out,
            "count mode: {} delivered cases missed (must be 0), {} matched cases not delivered (over-count), {} datagrams matched twice; matched {} + fragments_followed {}; deliveries changed by count mode: {} (must be 0)",
            t.missed,
            t.over,
            self.double,
            self.count_totals.matched,
            self.count_totals.fragments_followed,
            self.count_mode_changed
        );
        let _ = writeln!(
            out,
            "observers: capture drops {}, UDP receive-buffer errors {}, unattributed {}",
            self.capture_drops, self.udp_rcvbuf_errors, self.unattributed
        );
        Report::table(&mut out, "shape", &self.by_shape);
        Report::table(&mut out, "link layer", &self.by_link);
        Report::table(&mut out, "mutation", &self.by_mutation);
        Report::table(&mut out, "element (plain cases to a guarded port)", &self.by_element);
        Report::classes(
            &mut out,
            "VIOLATIONS: delivered to a guarded port through portguard (drop mode)",
            &self.violations,
        );
        Report::classes(&mut out, "COUNT-MODE MISSES: delivered, not matched", &self.missed);
        Report::classes(
            &mut out,
            "collateral: control-port deliveries lost in drop mode",
            &self.collateral,
        );
        Report::classes(
            &mut out,
            "COUNT MODE CHANGED DELIVERIES (it must drop nothing)",
            &self.changed,
        );
        Report::classes(
            &mut out,
            "drop and count mode disagree (through in one, matched in the other)",
            &self.inconsistent,
        );
        Report::classes(&mut out, "reference disagreements with the kernel", &self.reference);
        if !self.over.is_empty() {
            let _ = writeln!(
                out,
                "count-mode over-counts (matched, the kernel discarded them), by class:"
            );
            let mut v: Vec<_> = self.over.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1));
            for (k, n) in v.iter().take(15) {
                let _ = writeln!(out, "  {n:>6}  {k}");
            }
        }
        out
    }
}
