//! A capture in progress: one or more guards' CAPTURE ring buffers read into one pcapng file
//! (or a rotating set), each packet on its guard's interface, with a comment carrying the
//! verdict and the source's label. `portguard capture` runs one; so does the daemon when
//! `[capture]` names a directory.
//!
//! A ring buffer has one reader position, so one capture at a time reads a guard: a session
//! holds the guard's capture lock (`pins::CAPTURE_LOCK`) from `start` to `finish`, and sets the
//! program's CFG_CAPTURE_* flags only while it holds it. If it dies without clearing them, the
//! owner's upkeep does (`clear_stale`).
//!
//! Packets are held back `LABEL_WAIT` before they are written, so that the owner has read the
//! same packet's features and published the source's label by then: a new source's first SYN
//! goes to the file with its label, not with "none yet".

use std::{
    collections::{HashMap, VecDeque},
    io::{BufWriter, Write},
    path::Path,
    time::Duration,
};

use anyhow::{Result, bail};
use aya::maps::{MapData, RingBuf};
use portguard_common::{
    CAPTURED_ALLOWED, CAPTURED_UNJUDGED, CFG_CAPTURE, CFG_CAPTURE_ALL, CFG_CAPTURE_NEW,
    CaptureEvent, SourceKey, Totals, map_names,
};

use super::pcapng::{Budget, Interface, Rotating, Writer, comment};
use crate::{
    clock, counters,
    fingerprint::{Fingerprinter, RuleSet},
    guard::{View, view::change_consumers},
    maps::Maps,
    pins::{self, Lock},
    settings::Mode,
    wire,
};

/// How long a packet waits before it is written (see the module comment).
pub const LABEL_WAIT: Duration = Duration::from_millis(300);
/// Records one drain reads at most per guard; the rest wait in the ring buffer.
const MAX_PER_DRAIN: usize = 4_096;

/// What a capture takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Packets in all (`--count`); None: until stopped.
    pub count: Option<u64>,
    /// Packets of each source (`--per-source`); with `all`, None.
    pub per_source: Option<u16>,
    /// Every matched packet, not only each new source's first ones.
    pub all: bool,
    /// Packets per second at most, over all CPUs.
    pub rate: u32,
    /// Bytes kept of each packet.
    pub snaplen: u32,
}

/// Where the packets go.
pub enum Sink {
    File(Writer<BufWriter<Box<dyn Write + Send>>>),
    Rotating(Rotating),
}

impl Sink {
    fn write(
        &mut self,
        iface: u32,
        ts: std::time::SystemTime,
        data: &[u8],
        len: u32,
        c: &str,
    ) -> Result<()> {
        match self {
            Sink::File(w) => w.write(iface, ts, data, len, c),
            Sink::Rotating(r) => r.write(iface, ts, data, len, c),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            Sink::File(w) => w.flush(),
            Sink::Rotating(r) => r.flush(),
        }
    }
}

/// One guard being captured.
struct Tap {
    iface: String,
    maps: Maps,
    ns_dir: std::path::PathBuf,
    ring: RingBuf<MapData>,
    mode: Mode,
    /// TOTALS when the capture started, for what it lost.
    start: Totals,
    _lock: Lock,
}

/// A packet read, waiting to be written.
struct Held {
    tap: usize,
    ev: Box<CaptureEvent>,
    read_at: u64,
}

/// What a finished capture wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub packets: u64,
    pub sources: usize,
}

pub struct Session {
    taps: Vec<Tap>,
    sink: Sink,
    budget: Budget,
    opts: Options,
    held: VecDeque<Held>,
    /// The shipped rule table, for a packet whose source has no published label (no owner
    /// reads its features): the packet is then classified on its own.
    fallback: Fingerprinter,
    /// Packets written, and the sources they came from (`finish` says them).
    written: u64,
    sources: HashMap<SourceKey, ()>,
}

/// The interfaces of a capture's file: one per guard, described by its settings.
pub fn interfaces(views: &[&View]) -> Vec<Interface> {
    views
        .iter()
        .map(|v| Interface {
            name: v.iface().to_string(),
            description: Some(format!("portguard: {}", v.settings().summary())),
        })
        .collect()
}

impl Session {
    /// Starts capturing `views` into `sink`: takes each guard's capture lock and tells its
    /// program what to copy. All or nothing: a guard another capture holds is an error, and
    /// what was started is undone.
    pub fn start(views: &mut [&mut View], sink: Sink, opts: Options) -> Result<Session> {
        let mut taps: Vec<Tap> = Vec::new();
        let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?.len().max(1) as u64;
        // The rate as the program paces it: per CPU per admission slice (2^26 ns), at least 1.
        let slice_ns = 1u64 << portguard_common::ADMISSION_SLICE_SHIFT;
        let per_slice = (opts.rate as u64 * slice_ns / 1_000_000_000 / cpus).max(1) as u32;
        for v in views.iter_mut() {
            let started = (|| -> Result<Tap> {
                let Some(lock) = pins::try_lock_capture(v.dir())? else {
                    bail!(
                        "{}: another capture is reading it (`portguard capture`, or the daemon's \
                         [capture]); one at a time",
                        v.iface()
                    );
                };
                let maps = v.maps_again()?;
                let ring = maps.ring(map_names::CAPTURE)?;
                let mut tap = Tap {
                    iface: v.iface().to_string(),
                    ns_dir: v.dir().parent().unwrap_or(v.dir()).to_path_buf(),
                    ring,
                    mode: v.settings().mode,
                    start: v.totals()?,
                    maps,
                    _lock: lock,
                };
                // Whatever an earlier capture left unread is not this one's.
                while tap.ring.next().is_some() {}
                change_consumers(&mut tap.maps, &tap.ns_dir, |c| {
                    c.flags &= !CFG_CAPTURE;
                    c.flags |= if opts.all { CFG_CAPTURE_ALL } else { CFG_CAPTURE_NEW };
                    c.capture_first = opts.per_source.unwrap_or(0);
                    c.capture_per_slice = per_slice;
                })?;
                Ok(tap)
            })();
            match started {
                Ok(t) => taps.push(t),
                Err(e) => {
                    for mut t in taps {
                        t.stop();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Session {
            taps,
            sink,
            budget: Budget::new(opts.count, opts.per_source.map(u32::from)),
            opts,
            held: VecDeque::new(),
            fallback: Fingerprinter::new(RuleSet::builtin(), None),
            written: 0,
            sources: HashMap::new(),
        })
    }

    /// Reads what the ring buffers hold, and writes what has waited LABEL_WAIT (all of it with
    /// `flush_all`). Returns whether the capture is complete (`--count` reached).
    pub fn drain(&mut self, flush_all: bool) -> Result<bool> {
        let now = clock::monotonic_ns();
        for (i, t) in self.taps.iter_mut().enumerate() {
            for _ in 0..MAX_PER_DRAIN {
                let Some(item) = t.ring.next() else { break };
                if item.len() < size_of::<CaptureEvent>() {
                    continue;
                }
                // SAFETY: CaptureEvent is plain integers; the record holds one.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const CaptureEvent) };
                self.held.push_back(Held { tap: i, ev: Box::new(ev), read_at: now });
            }
        }
        let wait = LABEL_WAIT.as_nanos() as u64;
        while let Some(h) = self.held.front() {
            if !flush_all && now.saturating_sub(h.read_at) < wait {
                break;
            }
            let h = self.held.pop_front().expect("a front element");
            self.write(&h)?;
            if self.budget.done() {
                self.held.clear();
                self.sink.flush()?;
                return Ok(true);
            }
        }
        self.sink.flush()?;
        Ok(false)
    }

    fn write(&mut self, h: &Held) -> Result<()> {
        let t = &self.taps[h.tap];
        let ev = &h.ev;
        let src = wire::source_addr(&ev.key);
        if !self.budget.admit(src.ip) {
            return Ok(());
        }
        let caplen = (ev.caplen as usize).min(ev.data.len()).min(self.opts.snaplen as usize);
        let data = &ev.data[..caplen];
        let verdict = verdict(ev.verdict, ev.why, t.mode);
        let (label, evidence) = match t.maps.fingerprint(&ev.key).map(|f| wire::label(&f)) {
            Some(l) => (format!("{} ({})", l.tool(), l.agreement()), l.evidence),
            None => self.alone(data),
        };
        let ts = clock::wall(ev.ts_ns, clock::monotonic_ns());
        self.sink.write(h.tap as u32, ts, data, ev.len, &comment(&verdict, &label, &evidence))?;
        self.written += 1;
        self.sources.insert(ev.key, ());
        Ok(())
    }

    /// A packet whose source has no published label, classified on its own with the shipped
    /// rules.
    fn alone(&self, frame: &[u8]) -> (String, String) {
        match crate::fingerprint::Features::from_frame(frame) {
            Ok(f) if f.is_syn() || f.transport == crate::fingerprint::Transport::Udp => {
                let v = self.fallback.classify(&f);
                (format!("{} (this packet alone)", v.display_label()), v.evidence)
            }
            _ => ("none yet".to_string(), String::new()),
        }
    }

    /// Per interface: packets the program could not hand over (ring buffer full) and those
    /// past the rate, since the capture started.
    pub fn losses(&self) -> Vec<(String, u64, u64)> {
        self.taps
            .iter()
            .map(|t| {
                let now = wire::read_totals(&t.maps).unwrap_or(t.start);
                let d = counters::since(&now, &t.start);
                (t.iface.clone(), d.captures_lost, d.captures_paced)
            })
            .collect()
    }

    /// Tells the programs to stop copying, writes what they copied until then (what was held
    /// back for its label too), and lets go of the guards. Returns the packets written and
    /// the sources they came from, these last ones included: a summary taken before would miss
    /// up to LABEL_WAIT's worth.
    pub fn finish(mut self) -> Result<Written> {
        for t in &mut self.taps {
            t.stop();
        }
        self.drain(true)?;
        Ok(Written { packets: self.written, sources: self.sources.len() })
    }
}

impl Tap {
    fn stop(&mut self) {
        if let Err(e) = change_consumers(&mut self.maps, &self.ns_dir, |c| {
            c.flags &= !CFG_CAPTURE;
            c.capture_first = 0;
            c.capture_per_slice = 0;
        }) {
            log::warn!("{}: could not tell the program to stop capturing: {e:#}", self.iface);
        }
    }
}

/// The verdict as the comment says it.
fn verdict(action: u8, why: u8, mode: Mode) -> String {
    /// The XDP action the program returns for a drop.
    const XDP_DROP: u8 = 1;
    let dropped = action == XDP_DROP;
    let base = if dropped { "drop" } else { "pass" };
    match (why, dropped) {
        (CAPTURED_ALLOWED, _) => "pass (allowlisted)".into(),
        (CAPTURED_UNJUDGED, _) => format!("{base} (ports unreadable: unjudged)"),
        (_, false) if mode == Mode::Count => "pass (count mode)".into(),
        _ => base.into(),
    }
}

/// Clears CFG_CAPTURE_* left by a capture that died (its lock free, its flags still set), so
/// that the program stops copying packets nobody reads. The owner calls it in its upkeep.
pub fn clear_stale(view: &mut View) -> Result<bool> {
    if view.consumers()?.flags & CFG_CAPTURE == 0 || pins::capturing(view.dir()) {
        return Ok(false);
    }
    // Asked again under the namespace's lock, which a capture takes (after its own lock) to
    // set the flags: a capture that started since the question above keeps them.
    let dir = view.dir().to_path_buf();
    let mut cleared = false;
    view.set_consumers(|c| {
        if c.flags & CFG_CAPTURE != 0 && !pins::capturing(&dir) {
            c.flags &= !CFG_CAPTURE;
            c.capture_first = 0;
            c.capture_per_slice = 0;
            cleared = true;
        }
    })?;
    Ok(cleared)
}

/// The daemon's rotating capture file in `dir`.
pub fn rotating(
    dir: &Path,
    views: &[&View],
    snaplen: u32,
    max_bytes: u64,
    files: usize,
) -> Result<Sink> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Root's and private, as the pins are: the file says who probed you.
    pins::secure_dir(dir)?;
    let path = dir.join("portguard.pcapng");
    Ok(Sink::Rotating(Rotating::create(&path, &interfaces(views), snaplen, max_bytes, files)?))
}
