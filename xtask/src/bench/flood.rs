//! A spoofed-source flood, in the kernel: BPF_PROG_TEST_RUN with repeat 1 over a sequence of
//! frames whose sources are all distinct, so that every packet is a source the program has not
//! seen (a large repeat of one frame would only ever measure a known source). Each call carries
//! the syscall's own fixed cost, so the figure means something only next to a peer measured
//! the same way: we report both the wall time of the loop and the sum the kernel reports.

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, BorrowedFd},
    time::Instant,
};

use anyhow::{Context as _, Result};
use portguard_testkit::frames::{Frame, v6};

use super::{bpf, cases::GUARDED};

/// Interleaved every `STEADY_EVERY` frames, starting with the first: a prober the table knew
/// before the flood began, whose count must come out exact.
pub const STEADY_EVERY: usize = 1_000;
pub const STEADY: [u8; 16] = v6([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2]);
/// A prober that first appears a quarter of the way into the flood and then sends one frame in
/// every `NEWCOMER_EVERY` (halfway between the steady source's): admitted on evidence, at its
/// second frame, it is counted exactly from then on.
pub const NEWCOMER_EVERY: usize = 1_000;
pub const NEWCOMER: [u8; 16] = v6([0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 2]);
/// 198.18.0.0/15: the IPv4 benchmark range, used up before IPv6 sources take over.
const V4_SOURCES: usize = 1 << 17;

/// The frames back to back in one buffer (a million small Vecs would only add allocator noise).
pub struct Sequence {
    data: Vec<u8>,
    spans: Vec<(usize, usize)>,
    pub steady_frames: u64,
    pub newcomer_frames: u64,
}

impl Sequence {
    pub fn new(frames: usize) -> Sequence {
        let mut s = Sequence {
            data: Vec::new(),
            spans: Vec::with_capacity(frames),
            steady_frames: 0,
            newcomer_frames: 0,
        };
        let dst4 = [198, 18, 0, 1];
        let dst6 = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
        let mut next = 0usize;
        for i in 0..frames {
            let frame = if i % STEADY_EVERY == 0 {
                s.steady_frames += 1;
                Frame::udp6(STEADY, dst6, 40000, GUARDED)
            } else if i >= frames / 4 && i % NEWCOMER_EVERY == NEWCOMER_EVERY / 2 {
                s.newcomer_frames += 1;
                Frame::tcp6(NEWCOMER, dst6, 40000, GUARDED).syn()
            } else {
                let k = next;
                next += 1;
                if k < V4_SOURCES {
                    let a = (198u32 << 24 | 18 << 16) + k as u32;
                    Frame::udp4(a.to_be_bytes(), dst4, 40000, GUARDED)
                } else {
                    // A /64 each (sources are counted per /64), numbered from 2001:db8:1::/64:
                    // distinct from the probers' and from the gateway's.
                    let j = (k - V4_SOURCES) as u32;
                    let src = v6([0x2001, 0xdb8, 1 + (j >> 16) as u16, j as u16, 0, 0, 0, 2]);
                    Frame::udp6(src, dst6, 40000, GUARDED)
                }
            }
            .build();
            let start = s.data.len();
            s.data.extend_from_slice(&frame);
            s.spans.push((start, frame.len()));
        }
        s
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Distinct sources in the sequence (the flood's plus the two probers).
    pub fn distinct_sources(&self) -> u64 {
        self.len() as u64 - self.steady_frames - self.newcomer_frames
            + u64::from(self.steady_frames > 0)
            + u64::from(self.newcomer_frames > 0)
    }

    fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(o, n)| &self.data[o..o + n])
    }
}

pub fn steady_addr() -> IpAddr {
    IpAddr::from(STEADY)
}

pub fn newcomer_addr() -> IpAddr {
    IpAddr::from(NEWCOMER)
}

/// One pass of one tool over the whole sequence.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pass {
    /// Wall time of the loop / frames: includes each syscall's fixed cost.
    pub wall_ns: f64,
    /// The kernel's per-call durations summed, / frames.
    pub kernel_ns: f64,
    pub dropped: u64,
    pub passed: u64,
    pub other: u64,
}

pub fn pass(fd: BorrowedFd<'_>, seq: &Sequence) -> Result<Pass> {
    let mut p = Pass::default();
    let mut kernel: u64 = 0;
    let start = Instant::now();
    for frame in seq.frames() {
        let r = bpf::test_run(fd, frame, 1).context("BPF_PROG_TEST_RUN during the flood")?;
        kernel += u64::from(r.ns);
        match r.verdict {
            bpf::XDP_DROP => p.dropped += 1,
            bpf::XDP_PASS => p.passed += 1,
            _ => p.other += 1,
        }
    }
    let n = seq.len().max(1) as f64;
    p.wall_ns = start.elapsed().as_nanos() as f64 / n;
    p.kernel_ns = kernel as f64 / n;
    Ok(p)
}

/// The table under a flood that fills it, with its owner making room as the daemon does: what
/// happens to a slow prober the table knew before the flood, and to a prober that starts
/// during it.
pub struct Evidence {
    pub frames: u64,
    pub capacity: u32,
    pub admit: u32,
    pub rooms_made: u64,
    pub forgotten: u64,
    pub slow_sent: u64,
    pub slow_counted: u64,
    pub newcomer_sent: u64,
    pub newcomer_counted: u64,
    pub admitted_evidence: u64,
}

/// One frame in `SLOW_EVERY` is the slow prober's; it sent `SLOW_BEFORE` before the flood.
pub const SLOW_EVERY: u64 = 100_000;
pub const SLOW_BEFORE: u64 = 2;
pub const SLOW: [u8; 16] = v6([0x2001, 0xdb8, 0xfffd, 0, 0, 0, 0, 2]);
/// The owner makes room every this many frames: about as often, relative to how fast the
/// budget fills this small table, as the daemon does (once a second) for the default table,
/// which the budgets (first sight and evidence) can fill by a quarter in a second.
pub const ROOM_EVERY: u64 = 20_000;

/// `frames` one-frame sources through a table of `capacity`, admitting `admit` new sources per
/// CPU and slice so that it fills, with the probers interleaved and room made as the daemon
/// does.
pub fn evidence(capacity: u32, admit: u32, frames: u64) -> Result<Evidence> {
    use portguard::{guard::Loaded, settings::Settings};
    let mut g =
        Loaded::new(&Settings { admit_per_slice: Some(admit), ..Settings::default() }, capacity)?;
    let fd = g.program()?.fd().context("no program fd")?.as_fd().try_clone_to_owned()?;
    let dst6 = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
    let run = |f: &[u8]| -> Result<()> {
        bpf::test_run(fd.as_fd(), f, 1).context("BPF_PROG_TEST_RUN")?;
        Ok(())
    };
    let slow = Frame::tcp6(SLOW, dst6, 40000, GUARDED).syn().build();
    let newcomer = Frame::tcp6(NEWCOMER, dst6, 40000, GUARDED).syn().build();
    for _ in 0..SLOW_BEFORE {
        run(&slow)?;
    }
    let mut e = Evidence {
        frames,
        capacity,
        admit,
        rooms_made: 0,
        forgotten: 0,
        slow_sent: SLOW_BEFORE,
        slow_counted: 0,
        newcomer_sent: 0,
        newcomer_counted: 0,
        admitted_evidence: 0,
    };
    for i in 1..=frames {
        if i % SLOW_EVERY == 0 {
            run(&slow)?;
            e.slow_sent += 1;
        } else if i >= frames / 4 && i % NEWCOMER_EVERY as u64 == NEWCOMER_EVERY as u64 / 2 {
            run(&newcomer)?;
            e.newcomer_sent += 1;
        } else {
            // A /64 each, from 2001:db8:1::/64 up.
            let src = v6([0x2001, 0xdb8, 1 + (i >> 16) as u16, i as u16, 0, 0, 0, 2]);
            run(&Frame::udp6(src, dst6, 40000, GUARDED).build())?;
        }
        if i % ROOM_EVERY == 0 {
            let sources = g.sources()?;
            let n = g.make_room(&sources);
            e.rooms_made += u64::from(n > 0);
            e.forgotten += n as u64;
        }
    }
    let sources = g.sources()?;
    let count =
        |ip: IpAddr| sources.iter().find(|s| s.addr.contains(ip)).map_or(0, |s| s.stats.packets);
    e.slow_counted = count(IpAddr::from(SLOW));
    e.newcomer_counted = count(newcomer_addr());
    e.admitted_evidence = g.totals()?.admitted_evidence;
    Ok(e)
}
