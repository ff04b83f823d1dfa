//! What fingerprints and captures cost in the kernel: the matched drop of a known source's SYN
//! (`IPv4 TCP :2745`), through BPF_PROG_TEST_RUN, with nobody reading the ring buffers (the
//! drop of the first table), with a reader asking for them while the source is past its first
//! packets (the cost every later packet pays: a test of CONFIG and of the source's count), and
//! with every packet copied out (the cost a source's first SYNs pay: the tail call, the record,
//! the copy of its options; or, for a capture, the whole frame).
//!
//! The ring buffers hold a few thousand records: each call copies at most `PER_CALL` and they
//! are read out between calls, so that every packet measured found room (none is lost). The
//! records read out are counted: a row that copied other than it says (every packet, or none)
//! fails the bench rather than print a figure for something else. The figure is the median of
//! the calls' per-packet times over all rounds, the variants interleaved in every round.

use std::os::fd::{AsFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail};
use portguard::{guard::Loaded, settings::Settings, wire::Consumers};
use portguard_common::{
    CFG_CAPTURE_ALL, CFG_CAPTURE_NEW, CFG_FEATURES, FEATURE_FIRST, Totals, map_names,
};

use super::{bpf, cost::median};

/// Packets per call: fewer than either ring buffer holds (FEATURES about 2,300 records,
/// CAPTURE about 3,400).
pub const PER_CALL: u32 = 1_000;
/// Calls per variant per round.
pub const CALLS: usize = 20;
/// Packets sent before the rounds: more than the sources' first packets (FEATURE_FIRST SYNs,
/// a capture's first 10 packets), so that the "past" rows are past them.
const WARM_UP: u32 = 100;

pub struct Row {
    pub name: &'static str,
    /// Median ns per packet.
    pub ns: f64,
}

pub struct CopyOut {
    pub rows: Vec<Row>,
    pub rounds: usize,
    /// Records lost (ring full) or paced during the measurement: 0, or the figures lie.
    pub lost: u64,
}

struct Variant {
    name: &'static str,
    ring: Option<&'static str>,
    /// Whether every packet measured is copied (else none is).
    every: bool,
    guard: Loaded,
    fd: OwnedFd,
    /// SYNs the source sent since its SOURCES entry was made (see `renew`).
    syns: u64,
}

pub const OFF: &str = "nobody reads (the matched drop)";
pub const FEATURES_PAST: &str = "fingerprints on, source past its first SYNs";
pub const FEATURES_EVERY: &str = "fingerprints: every SYN copied (a source's first SYNs)";
pub const CAPTURE_PAST: &str = "capture on, source past its first packets";
pub const CAPTURE_EVERY: &str = "capture: every packet copied (a new source's, or --all)";

pub fn measure(frame: &[u8], rounds: usize) -> Result<CopyOut> {
    let all_syns = u16::MAX;
    let specs: [(&'static str, Consumers, Option<&'static str>, bool); 5] = [
        (OFF, Consumers::default(), None, false),
        (
            FEATURES_PAST,
            Consumers { flags: CFG_FEATURES, feature_first: FEATURE_FIRST, ..Consumers::default() },
            Some(map_names::FEATURES),
            false,
        ),
        (
            FEATURES_EVERY,
            Consumers { flags: CFG_FEATURES, feature_first: all_syns, ..Consumers::default() },
            Some(map_names::FEATURES),
            true,
        ),
        (
            CAPTURE_PAST,
            Consumers {
                flags: CFG_CAPTURE_NEW,
                capture_first: 10,
                capture_per_slice: u32::MAX,
                ..Consumers::default()
            },
            Some(map_names::CAPTURE),
            false,
        ),
        (
            CAPTURE_EVERY,
            Consumers {
                flags: CFG_CAPTURE_ALL,
                capture_per_slice: u32::MAX,
                ..Consumers::default()
            },
            Some(map_names::CAPTURE),
            true,
        ),
    ];
    let mut variants = Vec::new();
    for (name, consumers, ring, every) in specs {
        let mut guard = Loaded::with_defaults(&Settings::default())?;
        guard.set_consumers(consumers)?;
        let fd = guard
            .program()?
            .fd()
            .context("portguard's program has no fd")?
            .as_fd()
            .try_clone_to_owned()?;
        variants.push(Variant { name, ring, every, guard, fd, syns: 0 });
    }
    let start: Vec<Totals> = variants.iter().map(|v| v.guard.totals()).collect::<Result<_>>()?;
    // Warm-up, which also takes the source past its first packets where that is the point.
    for v in &mut variants {
        bpf::test_run(v.fd.as_fd(), frame, WARM_UP)?;
        v.syns += u64::from(WARM_UP);
        drain(v)?;
    }
    let mut samples = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let v = &mut variants[i];
            for _ in 0..CALLS {
                renew(v)?;
                let r = bpf::test_run(v.fd.as_fd(), frame, PER_CALL)?;
                v.syns += u64::from(PER_CALL);
                if r.verdict != bpf::XDP_DROP {
                    bail!("{}: verdict {} for a matched SYN", v.name, bpf::verdict_name(r.verdict));
                }
                samples[i].push(r.ns as f64);
                let copied = drain(v)?;
                let want = if v.every { PER_CALL as usize } else { 0 };
                if copied != want {
                    bail!("{}: {copied} records for {PER_CALL} packets, not {want}", v.name);
                }
            }
        }
        eprint!("\rbench: copy-out round {}/{rounds}", round + 1);
    }
    eprintln!();
    let mut lost = 0;
    let mut rows = Vec::new();
    for ((v, s), t0) in variants.iter().zip(samples).zip(&start) {
        let d = portguard::counters::since(&v.guard.totals()?, t0);
        lost += d.features_lost + d.captures_lost + d.captures_paced;
        rows.push(Row { name: v.name, ns: median(s) });
    }
    Ok(CopyOut { rows, rounds, lost })
}

/// Reads out the variant's ring buffer (not measured: BPF_PROG_TEST_RUN times the kernel);
/// returns how many records it held.
fn drain(v: &mut Variant) -> Result<usize> {
    let Some(name) = v.ring else { return Ok(0) };
    let mut ring = v.guard.maps().ring(name)?;
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    Ok(n)
}

/// "Every SYN copied" means the source is within its first `feature_first` SYNs, at most
/// u16::MAX of them, fewer than the rounds send: before the call that would take it past them,
/// its SOURCES entry is removed, so that the call's first packet makes a new one (1 packet in
/// about 65,000 pays for an admission). The other rows never need it.
fn renew(v: &mut Variant) -> Result<()> {
    if !v.every || v.syns + u64::from(PER_CALL) <= u64::from(u16::MAX) {
        return Ok(());
    }
    let sources = v.guard.sources()?;
    for s in &sources {
        v.guard.maps().remove_source(&portguard::wire::source_key(s.addr));
    }
    v.syns = 0;
    Ok(())
}
