//! What `top` knows about each guarded interface. Everything comes from the pinned maps through
//! `Guard::open`; a refresh reads TOTALS and META of every interface, and the source table of
//! the one on screen only (the table is the expensive read: once per tick, and only where it is
//! shown).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portguard_common::{Meta, Totals, map_names};

use crate::{
    clock,
    counters::{SourceAddr, SourceStats},
    guard::View,
    pins::Pins,
    settings::{Mode, Settings},
};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Samples kept for the sparklines: two minutes at the default 1 s interval.
pub const HISTORY: usize = 120;

/// Every tick reads only META's generation, one lookup, and the full settings again when it
/// moved (another portguard changed them); this often they are read regardless, in case a map
/// was edited by hand.
const SETTINGS_EVERY: Duration = Duration::from_secs(60);

/// The share of a core that reading and merging the source table may take. A full table
/// (65,536 sources) costs several ms of CPU per read, kernel copy included: when one read costs
/// more than this share of the interval, the table is read every few ticks instead (the counters
/// above it still every tick), and the view says how often.
const SOURCES_BUDGET: f64 = 0.01;
/// However costly the table, it is read at least this often (in ticks).
const SOURCES_MAX_SPACING: u32 = 30;

/// One source as shown.
#[derive(Clone, Debug)]
pub struct Row {
    pub addr: SourceAddr,
    pub stats: SourceStats,
    /// Packets per second since the previous refresh; None on the first one.
    pub rate: Option<f64>,
    /// First seen since `top` started, or absent from the previous refresh.
    pub new: bool,
    /// Its fingerprint's label ("masscan", "OS stack (Linux)"), once the owner published one.
    pub tool: Option<String>,
}

/// Rates of one counter over the last `HISTORY` refreshes.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: VecDeque<f64>,
}

impl History {
    fn push(&mut self, v: f64) {
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    /// The newest rate.
    pub fn last(&self) -> Option<f64> {
        self.samples.back().copied()
    }

    /// The newest `n` samples, oldest first, rounded up so that a trickle still shows a bar.
    pub fn tail(&self, n: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(n);
        self.samples.iter().skip(skip).map(|v| v.ceil() as u64).collect()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// One guarded interface.
pub struct Iface {
    pub name: String,
    guard: Option<View>,
    /// The inode of the pinned META: a guard detached and attached again between two refreshes
    /// has new maps, and the old handles would show frozen counters.
    pin_ino: u64,
    /// Why the maps cannot be read, when they cannot.
    pub error: Option<String>,
    pub settings: Option<Settings>,
    settings_at: Option<Instant>,
    pub meta: Option<Meta>,
    pub attached: Option<&'static str>,
    pub totals: Totals,
    prev_totals: Option<(Totals, Instant)>,
    pub drops: History,
    pub passes: History,
    /// The sources at the last refresh where this interface was on screen, unsorted.
    pub rows: Vec<Row>,
    /// Changes whenever `rows` is replaced, so the view knows when to select again.
    pub generation: u64,
    /// Packets per source at the previous read, keyed by the address as 128 bits (cheaper to
    /// hash than an `IpAddr`; still SipHash, since the addresses are chosen by whoever probes).
    prev_packets: Option<(HashMap<AddrBits, u64>, Instant)>,
    /// Ticks between reads of the source table (1 unless it is costly, see `SOURCES_BUDGET`).
    pub sources_every: u32,
    /// Ticks to go before the next read.
    sources_wait: u32,
}

impl Iface {
    fn new(name: String) -> Iface {
        Iface {
            name,
            guard: None,
            pin_ino: 0,
            error: None,
            settings: None,
            settings_at: None,
            meta: None,
            attached: None,
            totals: Totals::default(),
            prev_totals: None,
            drops: History::default(),
            passes: History::default(),
            rows: Vec::new(),
            generation: 0,
            prev_packets: None,
            sources_every: 1,
            sources_wait: 0,
        }
    }

    /// Opens the pinned maps when not open yet (or replaced since).
    fn open(&mut self, pins: &Pins) {
        let Ok(dir) = pins.dir(&self.name) else { return };
        let ino = std::fs::metadata(dir.join(map_names::META)).map(|m| m.ino()).unwrap_or(0);
        if self.guard.is_some() && ino == self.pin_ino {
            return;
        }
        if self.guard.is_some() {
            // New maps: the old counters say nothing about the new ones.
            *self = Iface::new(std::mem::take(&mut self.name));
        }
        match View::open(pins, &self.name) {
            Ok(g) => {
                self.attached = g.attached().map(|a| a.as_str());
                self.settings = Some(g.settings().clone());
                self.settings_at = Some(Instant::now());
                self.guard = Some(g);
                self.pin_ino = ino;
                self.error = None;
            }
            Err(e) => self.error = Some(one_line(&e)),
        }
    }

    /// Reads the counters; the source table only when `with_sources` (and when due).
    fn refresh(&mut self, started_ns: u64, with_sources: bool, interval: Duration) {
        let Some(g) = self.guard.as_mut() else { return };
        let at = Instant::now();
        let changed = g.follow_changes().map_or(true, |c| c.is_some());
        if changed || self.settings_at.is_none_or(|t| at.duration_since(t) >= SETTINGS_EVERY) {
            match g.refresh_settings() {
                Ok(s) => self.settings = Some(s.clone()),
                Err(e) => self.error = Some(one_line(&e)),
            }
            self.settings_at = Some(at);
        }
        self.meta = g.meta().ok();
        match g.totals() {
            Ok(t) => {
                if let Some((prev, when)) = self.prev_totals {
                    let dt = at.duration_since(when).as_secs_f64().max(1e-3);
                    let passed = |t: &Totals| t.seen.saturating_sub(t.dropped);
                    self.drops.push(t.dropped.saturating_sub(prev.dropped) as f64 / dt);
                    self.passes.push(passed(&t).saturating_sub(passed(&prev)) as f64 / dt);
                }
                self.totals = t;
                self.prev_totals = Some((t, at));
                self.error = None;
            }
            Err(e) => self.error = Some(one_line(&e)),
        }
        if !with_sources {
            // Off screen: per-source rates would span more than one interval when it comes
            // back, so start over then.
            self.prev_packets = None;
            self.sources_wait = 0;
            return;
        }
        if self.sources_wait > 0 {
            self.sources_wait -= 1;
            return;
        }
        let cpu = thread_cpu();
        // Fingerprints are few (a source's first SYNs make one) and read with the table.
        let labels = g.fingerprints().unwrap_or_default();
        match g.sources() {
            Ok(sources) => {
                let prev = self.prev_packets.take();
                let dt = prev.as_ref().map(|(_, when)| at.duration_since(*when).as_secs_f64());
                let mut packets = HashMap::with_capacity(sources.len());
                self.rows = sources
                    .into_iter()
                    .map(|s| {
                        let k = addr_bits(s.addr);
                        packets.insert(k, s.stats.packets);
                        let before = prev.as_ref().map(|(p, _)| p.get(&k).copied());
                        let rate = match (before, dt) {
                            (Some(b), Some(dt)) => Some(
                                s.stats.packets.saturating_sub(b.unwrap_or(0)) as f64
                                    / dt.max(1e-3),
                            ),
                            _ => None,
                        };
                        // New since `top` started, or since the previous refresh (a source
                        // evicted and seen again, or one whose jiffy-coarse first stamp fell
                        // just before the start).
                        let new =
                            s.stats.first_seen_ns >= started_ns || matches!(before, Some(None));
                        let tool = labels.get(&s.addr).map(|l| l.tool());
                        Row { addr: s.addr, stats: s.stats, rate, new, tool }
                    })
                    .collect();
                self.prev_packets = Some((packets, at));
                // Unique across interfaces and their re-openings, so that no two row sets
                // ever share one.
                self.generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
            }
            Err(e) => self.error = Some(one_line(&e)),
        }
        let cost = thread_cpu().saturating_sub(cpu).as_secs_f64();
        let spacing = (cost / (SOURCES_BUDGET * interval.as_secs_f64())).ceil();
        self.sources_every = (spacing as u32).clamp(1, SOURCES_MAX_SPACING);
        self.sources_wait = self.sources_every - 1;
    }

    /// Switches between drop and count in place, from the settings the maps hold now (another
    /// portguard may have changed ports or the allowlist since they were last read).
    pub fn set_mode(&mut self, mode: Mode) -> Result<bool> {
        let Some(g) = self.guard.as_mut() else { bail!("{} cannot be read", self.name) };
        let c = g.update(portguard_common::CHANGE_TOP, |s| {
            s.mode = mode;
            Ok(())
        })?;
        self.settings = Some(c.new.clone());
        self.settings_at = Some(Instant::now());
        Ok(c.old.mode != mode)
    }
}

/// A source as 128 bits plus its prefix and family, cheaper to hash than the address (still
/// SipHash: the addresses are chosen by whoever probes).
type AddrBits = (u128, u8, bool);

fn addr_bits(a: SourceAddr) -> AddrBits {
    match a.ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().to_bits(), a.prefix, false),
        IpAddr::V6(v6) => (v6.to_bits(), a.prefix, true),
    }
}

/// CPU time of this thread, user and kernel: what a read of the source table really costs.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Every guarded interface under one pin root.
pub struct Model {
    pub pins: Pins,
    pub ifaces: Vec<Iface>,
    /// Why the pin root could not be listed, when it could not.
    pub error: Option<String>,
    /// CLOCK_MONOTONIC when `top` started: sources first seen after it are new.
    pub started_ns: u64,
}

impl Model {
    pub fn new(pins: Pins) -> Model {
        Model { pins, ifaces: Vec::new(), error: None, started_ns: clock::monotonic_ns() }
    }

    /// Re-lists the guarded interfaces (guards come and go while `top` runs) and reads their
    /// counters; `shown` is the interface on screen, whose sources are read.
    pub fn refresh(&mut self, shown: Option<&str>, interval: Duration) {
        match self.pins.guarded() {
            Ok(names) => {
                self.error = None;
                let mut old: HashMap<String, Iface> =
                    self.ifaces.drain(..).map(|i| (i.name.clone(), i)).collect();
                self.ifaces = names
                    .into_iter()
                    .map(|n| old.remove(&n).unwrap_or_else(|| Iface::new(n)))
                    .collect();
            }
            Err(e) => self.error = Some(one_line(&e)),
        }
        let shown = shown.or_else(|| self.ifaces.first().map(|i| i.name.as_str()));
        let shown = shown.map(str::to_owned);
        for i in &mut self.ifaces {
            i.open(&self.pins);
            let on_screen = shown.as_deref() == Some(i.name.as_str());
            i.refresh(self.started_ns, on_screen, interval);
        }
    }

    pub fn get(&self, name: &str) -> Option<&Iface> {
        self.ifaces.iter().find(|i| i.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Iface> {
        self.ifaces.iter_mut().find(|i| i.name == name)
    }
}

/// The outermost context and the root cause, on one line (the footer has one line).
pub fn one_line(e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
    match (chain.first(), chain.last()) {
        (Some(first), Some(last)) if chain.len() > 1 && !first.contains(last.as_str()) => {
            format!("{first}: {last}")
        }
        (Some(first), _) => first.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_newest_samples() {
        let mut h = History::default();
        for v in 0..(HISTORY + 5) {
            h.push(v as f64 + 0.2);
        }
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h.tail(3), vec![123, 124, 125]);
        assert_eq!(h.last(), Some(HISTORY as f64 + 4.2));
        assert_eq!(h.tail(1000).len(), HISTORY);
    }
}
