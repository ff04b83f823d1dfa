//! The daemon: the guards `portguard run` (and `portguard lab`) holds, kept up.
//!
//! [`Daemon::start`] acquires every interface of a [`Plan`] (all or nothing). Every second,
//! [`Daemon::upkeep`] keeps each owned guard attached (`Owner::upkeep`: pins, interfaces that go
//! away and come back, detach requests), takes over a guard whose owner died, and logs settings
//! changed by other processes; a guard that cannot be kept ends the daemon with an error.
//! Every interval, [`Daemon::tick`] reads the counters, makes room in the source tables, and
//! returns what it read as a [`Tick`], with what the kernel says of each guard. Every 100 ms,
//! [`Daemon::drain`] reads what the programs copied out: each owned guard's feature records
//! (fingerprints, published for every portguard process to show) and, with `[capture]`, the
//! packets of its rotating capture. [`serve`] runs the loop: signals, upkeep, drains, ticks,
//! output, systemd notifications and the metrics endpoint. Rendering is `report.rs`'s.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard_common::{
    CFG_FEATURES, CHANGE_ADOPT, CHANGE_ATTACH, CHANGE_RELOAD, CHANGE_SET, CHANGE_TOP,
    FEATURE_FIRST, STATE_DETACHING, Totals,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    capture::{self, Session},
    check, clock,
    config::{Flags, P0f, Plan},
    counters::{self, Source, SourceAddr},
    fingerprint::{Feed, Fingerprinter, Label},
    guard::{Acquired, Changed, Health, Owner, Reason, Share, Upkeep, View},
    metrics::{self, IfaceMetrics, LocalSocket},
    notices,
    notify::Notifier,
    pins::Pins,
    report::{self, Snapshot, SortBy},
    wire,
};

/// Local sockets on guarded ports, every this many intervals (a netlink dump and a /proc walk).
const SOCKET_SCAN_EVERY: u64 = 10;
/// How often owners check their guards, whatever the output interval.
const UPKEEP: Duration = Duration::from_secs(1);
/// How often the ring buffers are read: at the admission budget's peak (about 8,200 new
/// sources a second with the default table) a tenth of a second of feature records is 90 KB,
/// a third of FEATURES.
const DRAIN: Duration = Duration::from_millis(100);
/// How long a guard may stay lost (another program on its interface, say) before the daemon
/// gives up with an error, so that the service manager restarts it (and says so).
const LOST_GRACE: Duration = Duration::from_secs(5);
/// The exit status of a daemon whose every guard was detached on request (`portguard detach`):
/// not a failure, and not to be restarted (see packaging/portguard.service).
pub const EXIT_DETACHED: u8 = 3;

/// How this process holds one guard.
enum Held {
    /// It attached the program and keeps it there.
    Owner(Box<Owner>),
    /// Another live portguard owns it: this one only reads, and takes over if the owner dies.
    Watcher(Box<View>),
}

impl Held {
    fn view(&self) -> &View {
        match self {
            Held::Owner(o) => o.view(),
            Held::Watcher(v) => v,
        }
    }

    fn view_mut(&mut self) -> &mut View {
        match self {
            Held::Owner(o) => o.view_mut(),
            Held::Watcher(v) => v,
        }
    }

    /// What the kernel says of the guard now.
    fn health(&self) -> Health {
        match self {
            Held::Owner(o) => o.health(),
            Held::Watcher(v) => v.health(),
        }
    }
}

/// One interface of the plan.
struct Guarded {
    held: Held,
    iface: String,
    prev: Totals,
    prev_at: Instant,
    /// The full table has been reported (see `tick`); cleared when it has room again.
    full_warned: bool,
    /// Packets per source at the previous tick: rates, and which sources are new.
    prev_packets: HashMap<SourceAddr, u64>,
    /// The last upkeep's finding, so that each change is logged once.
    last: Upkeep,
    /// Since when the guard has been lost (not guarding, and not coming back by itself).
    lost_since: Option<Instant>,
    /// A `portguard detach` ended it.
    detached: bool,
    /// Left in place when the daemon ends (`persist`, or adopted).
    keep: bool,
    /// Adopted, and so left in place whatever `persist` says (unless --detach-on-exit): what
    /// `keep` falls back to when a reload turns `persist` off.
    keep_adopted: bool,
    /// The owner reads FEATURES and publishes fingerprints; None for a watcher.
    feed: Option<Feed>,
}

impl Guarded {
    /// `fresh`: this process just attached it, so every source in the table is news, even one
    /// that arrived between the attachment and this call. Otherwise (adopted, watched) the
    /// sources already there are not.
    fn new(held: Held, fresh: bool) -> Result<Guarded> {
        let v = held.view();
        let known = if fresh { HashMap::new() } else { packets(&v.sources()?) };
        Ok(Guarded {
            iface: v.iface().to_string(),
            prev: if fresh { Totals::default() } else { v.totals()? },
            prev_at: Instant::now(),
            full_warned: false,
            prev_packets: known,
            held,
            last: Upkeep::Guarding,
            lost_since: None,
            detached: false,
            keep: false,
            keep_adopted: false,
            feed: None,
        })
    }

    /// As the owner: asks the program for its sources' first SYNs (FEATURES) and reads them.
    /// A guard without fingerprints still guards: a failure here is a warning.
    fn read_features(&mut self) {
        let Held::Owner(o) = &mut self.held else { return };
        if !o.copies() {
            // Said once when the program was loaded.
            return;
        }
        let started = o
            .view_mut()
            .set_consumers(|c| {
                c.flags |= CFG_FEATURES;
                c.feature_first = FEATURE_FIRST;
            })
            .and_then(|()| Feed::new(&o.view().maps));
        match started {
            Ok(f) => self.feed = Some(f),
            Err(e) => log::warn!("{}: no fingerprints: {e:#}", self.iface),
        }
    }

    /// Stops asking for feature records (nobody will read them).
    fn stop_features(&mut self) {
        if self.feed.take().is_none() {
            return;
        }
        if let Held::Owner(o) = &mut self.held
            && let Err(e) = o.view_mut().set_consumers(|c| c.flags &= !CFG_FEATURES)
        {
            log::debug!("{}: {e:#}", self.iface);
        }
    }

    /// One upkeep: an owner's duty (`Owner::upkeep`), logged when its finding changes; a
    /// watcher takes over when the owner is gone; settings changed by others are logged. Err:
    /// the guard has been lost for longer than LOST_GRACE.
    fn upkeep(&mut self, pins: &Pins, plan: &Plan) -> Result<()> {
        if let Held::Watcher(v) = &self.held {
            if v.meta().is_ok_and(|m| m.state == STATE_DETACHING) {
                log::warn!("{}: detached by `portguard detach`: no longer watching it", self.iface);
                self.detached = true;
                return Ok(());
            }
            if v.still_pinned() && !v.owned() {
                self.take_over(pins, plan);
            }
        }
        if let Held::Owner(o) = &mut self.held {
            let now = o.upkeep();
            if now == Upkeep::Guarding
                && capture::session::clear_stale(o.view_mut()).unwrap_or(false)
            {
                log::info!(
                    "{}: a capture ended without saying so: stopped copying for it",
                    self.iface
                );
            }
            self.report(&now);
            match &now {
                Upkeep::Detached { .. } => self.detached = true,
                Upkeep::Lost(why) => {
                    let since = *self.lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= LOST_GRACE {
                        bail!(
                            "{}: NOT GUARDED for {} s ({why}) and it could not be guarded again",
                            self.iface,
                            since.elapsed().as_secs()
                        );
                    }
                }
                _ => self.lost_since = None,
            }
            self.last = now;
        }
        if !self.detached
            && let Some(c) = self.held.view_mut().follow_changes()?
        {
            log_change(&self.iface, &c);
        }
        Ok(())
    }

    /// Logs an upkeep finding that differs from the previous one.
    fn report(&self, now: &Upkeep) {
        if *now == self.last {
            return;
        }
        let iface = &self.iface;
        let mode = || self.held.health().mode().map_or("?", |m| m.as_str());
        // While it is not guarded, the live view says so above the table; once it is guarded
        // again, that notice goes.
        let lost = upkeep_notice(iface);
        if matches!(now, Upkeep::Guarding | Upkeep::Repinned(_) | Upkeep::Reattached { .. }) {
            notices::clear(&lost);
        }
        match now {
            Upkeep::Guarding => {
                if matches!(self.last, Upkeep::Lost(_) | Upkeep::Unpinned(_)) {
                    log::info!("{iface}: guarded again ({} XDP)", mode());
                }
            }
            Upkeep::Repinned(n) => {
                log::warn!("{iface}: {n} of its pins were removed under it: pinned them again")
            }
            Upkeep::Unpinned(e) => log::error!(
                target: &lost,
                "{iface}: its pins are gone and cannot be put back ({e}); it stays guarded while \
                 this process runs"
            ),
            Upkeep::Gone => log::warn!(
                target: &lost,
                "{iface} went away (deleted or replaced): its counters are kept; it is guarded \
                 again as soon as it returns"
            ),
            Upkeep::Reattached { ifindex, after: Reason::Renamed { to } } => log::warn!(
                "{iface}: the guarded device was renamed to {to}; guarding the new {iface} \
                 (ifindex {ifindex}, {} XDP) instead, counters kept; {to} is no longer guarded",
                mode()
            ),
            Upkeep::Reattached { after: Reason::LinkDetached | Reason::NoProgram, .. } => {
                log::warn!(
                    "{iface}: its XDP link was detached by someone else: attached again ({} XDP), \
                     counters kept",
                    mode()
                )
            }
            Upkeep::Reattached { after: Reason::NotInDispatcher { id, .. }, .. } => {
                log::warn!(
                    "{iface}: libxdp's dispatcher (program {id}) was rebuilt without portguard: \
                     joined it again ({} XDP), counters kept",
                    mode()
                )
            }
            Upkeep::Reattached { .. } => {
                log::info!("{iface} is back: guarding it again ({} XDP), counters kept", mode())
            }
            Upkeep::Detached { by } => {
                log::warn!(
                    "{iface}: detached by `portguard detach` (pid {by}): no longer guarding it"
                )
            }
            Upkeep::Lost(why) => {
                log::error!(target: &lost, "{iface}: NOT GUARDED: {why}; trying again")
            }
            Upkeep::Unknown(e) => {
                log::warn!(target: &lost, "{iface}: cannot ask the kernel now ({e})")
            }
        }
    }

    /// The owner died: this process adopts the guard (its program replaced in place, counters
    /// kept), with the settings the guard holds.
    fn take_over(&mut self, pins: &Pins, plan: &Plan) {
        let was = self.held.view().meta().map_or(0, |m| m.owner_pid);
        // The guard keeps its settings, and, shared, its priority.
        let share = Share { priority: None, ..plan.share };
        match Owner::acquire_shared(pins, &self.iface, None, plan.sources, plan.xdp_mode, &share) {
            Ok(Acquired::Adopted(o) | Acquired::Attached(o)) => {
                log::warn!(
                    "{}: its owner (pid {was}) is gone: this process guards it now ({}), \
                     counters kept",
                    self.iface,
                    o.describe()
                );
                self.held = Held::Owner(Box::new(o));
                self.last = Upkeep::Guarding;
                self.read_features();
            }
            Ok(Acquired::Watching(v, _)) => self.held = Held::Watcher(Box::new(v)),
            Err(e) => log::warn!("{}: could not take over: {e:#}", self.iface),
        }
    }

    /// Releases what this process owns: detached, or left in place with `persist`. Returns
    /// whether it owned anything (and Err if a persistent guard could not be left in place).
    fn finish(mut self, persist: bool) -> Result<bool> {
        if !self.detached {
            self.stop_features();
        }
        let Held::Owner(o) = self.held else { return Ok(false) };
        if self.detached {
            return Ok(false);
        }
        (*o).release(persist).with_context(|| self.iface.clone())?;
        Ok(true)
    }
}

/// The rule table (the shipped one, then the plan's files) and p0f's database, as the plan
/// says. A rule file that does not parse is an error naming its line.
fn fingerprinter(plan: &Plan) -> Result<Fingerprinter> {
    let rules: Vec<&std::path::Path> = plan.rules.iter().map(|p| p.as_path()).collect();
    let f = match &plan.p0f {
        P0f::Auto => Fingerprinter::load(&rules, None),
        P0f::File(p) => Fingerprinter::load(&rules, Some(p)),
        P0f::Off => Fingerprinter::load_rules(&rules),
    };
    f.map_err(|e| anyhow::anyhow!("fingerprints: {e}"))
}

/// The notice of an interface that is not guarded (gone, lost, unpinned): it stays on the live
/// view until it is guarded again.
fn upkeep_notice(iface: &str) -> String {
    format!("{}upkeep:{iface}", notices::TARGET_PREFIX)
}

/// Logs a change of the settings another process (or this one's reload) made: who, and what.
fn log_change(iface: &str, c: &Changed) {
    let diff = c.old.diff(&c.new);
    if diff.is_empty() {
        return;
    }
    let who = match c.how {
        CHANGE_SET => "`portguard set`",
        CHANGE_RELOAD => "a reload",
        CHANGE_TOP => "`portguard top`",
        CHANGE_ADOPT => "an adopting portguard",
        CHANGE_ATTACH => "an attaching portguard",
        _ => "another process",
    };
    log::info!("{iface}: settings changed by {who} (pid {}): {}", c.by, diff.join("; "));
}

fn packets(sources: &[Source]) -> HashMap<SourceAddr, u64> {
    sources.iter().map(|s| (s.addr, s.stats.packets)).collect()
}

/// A source that appeared since the previous tick, with its fingerprint if it has one already.
pub type NewSource = (Source, Option<Label>);

/// What one tick read.
pub struct Tick {
    pub snaps: Vec<Snapshot>,
    /// Per interface, the sources that appeared since the previous tick, with their
    /// fingerprints when they have one already.
    pub news: Vec<(String, Vec<NewSource>)>,
    /// Per interface, the top sources by packets for the metrics.
    pub tops: Vec<Vec<Source>>,
    /// Per interface, how many tracked sources carry each tool label (see
    /// `report::tools`), for the metrics.
    pub tools: Vec<Vec<(String, u64)>>,
}

pub struct Daemon {
    guards: Vec<Guarded>,
    plan: Plan,
    /// The rule table and p0f's database, given to every guard's feed.
    fingerprinter: Fingerprinter,
    /// The rotating capture (`[capture]`), while it runs.
    capture: Option<Session>,
    flags: Flags,
    pins: Pins,
    ticks: u64,
    /// Sockets on guarded ports at the last scan; None before the first or when it failed.
    sockets: Option<Vec<LocalSocket>>,
    /// The sockets a process holds, as warned about; None before the first scan.
    held_sockets: Option<Vec<String>>,
}

/// Why `serve` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT, SIGTERM, or the end of `--duration`.
    Asked,
    /// Every guard was detached by `portguard detach`.
    Detached,
}

impl Daemon {
    /// Acquires every interface of `plan`, or none: what this call attached is undone when a
    /// later interface fails.
    pub fn start(plan: Plan, flags: Flags, pins: Pins) -> Result<Daemon> {
        let fingerprinter = fingerprinter(&plan)?;
        let mut guards: Vec<Guarded> = Vec::new();
        for iface in &plan.ifaces {
            let acquired = Owner::acquire_shared(
                &pins,
                iface,
                Some(&plan.settings),
                plan.sources,
                plan.xdp_mode,
                &plan.share,
            );
            let fresh = matches!(acquired, Ok(Acquired::Attached(_)));
            let mut keep = plan.persist;
            let held = match acquired {
                Ok(Acquired::Attached(o)) => {
                    log::info!(
                        "guarding {iface} ({}): {}",
                        o.describe(),
                        o.view().settings().summary()
                    );
                    Held::Owner(Box::new(o))
                }
                Ok(Acquired::Adopted(o)) => {
                    // It was left in place (a persistent run, a service stopped, a kill -9):
                    // it stays in place when this run ends, unless told otherwise.
                    keep |= !plan.detach_on_exit;
                    log::warn!(
                        "adopted the guard left on {iface} ({}), counters kept: {}; {}",
                        o.describe(),
                        o.view().settings().summary(),
                        if keep {
                            "it stays in place when this run ends (`portguard detach` removes it)"
                        } else {
                            "it is detached when this run ends (--detach-on-exit)"
                        }
                    );
                    Held::Owner(Box::new(o))
                }
                Ok(Acquired::Watching(v, pid)) => {
                    log::warn!(
                        "{iface} is already guarded by a running portguard (pid {pid}): watching \
                         it; its settings are unchanged (use `portguard set` to change them)"
                    );
                    Held::Watcher(Box::new(v))
                }
                Err(e) => {
                    // All or nothing: undo what this run attached (and leave what it adopted).
                    for g in guards {
                        let keep = g.keep;
                        let _ = g.finish(keep);
                    }
                    return Err(e);
                }
            };
            let mut g = Guarded::new(held, fresh)?;
            g.keep = keep;
            g.keep_adopted = keep && !plan.persist;
            g.read_features();
            guards.push(g);
        }
        let mut d = Daemon {
            guards,
            plan,
            fingerprinter,
            capture: None,
            flags,
            pins,
            ticks: 0,
            sockets: None,
            held_sockets: None,
        };
        d.start_capture();
        Ok(d)
    }

    /// `[capture]`: a rotating capture of the guards this process owns. One that cannot start
    /// (another capture holds a guard, the directory is unusable) is a warning: guarding
    /// comes first.
    fn start_capture(&mut self) {
        let Some(c) = self.plan.capture.clone() else { return };
        let mut views: Vec<&mut View> = self
            .guards
            .iter_mut()
            .filter_map(|g| match &mut g.held {
                Held::Owner(o) => Some(o.view_mut()),
                Held::Watcher(_) => None,
            })
            .collect();
        if views.is_empty() {
            return;
        }
        let opts = capture::Options {
            count: None,
            per_source: (!c.all).then_some(c.per_source),
            all: c.all,
            rate: c.rate,
            snaplen: c.snaplen,
        };
        let ro: Vec<&View> = views.iter().map(|v| &**v).collect();
        let started =
            capture::session::rotating(&c.directory, &ro, c.snaplen, c.max_bytes, c.files)
                .and_then(|sink| Session::start(&mut views, sink, opts));
        match started {
            Ok(s) => {
                log::info!(
                    "capturing {} to {} ({}, at most {} packets/s, rotated at {} MiB, {} old files kept)",
                    if c.all {
                        "every matched packet".to_string()
                    } else {
                        format!("the first {} packets of each new source", c.per_source)
                    },
                    c.directory.join("portguard.pcapng").display(),
                    self.guards.iter().map(|g| g.iface.as_str()).collect::<Vec<_>>().join(", "),
                    c.rate,
                    c.max_bytes >> 20,
                    c.files
                );
                self.capture = Some(s);
            }
            Err(e) => log::warn!("not capturing ([capture]): {e:#}"),
        }
    }

    /// Reads what the programs copied out: feature records into fingerprints, and packets
    /// into the capture.
    pub fn drain(&mut self) {
        for g in &mut self.guards {
            if let (Held::Owner(o), Some(feed)) = (&mut g.held, &mut g.feed) {
                feed.drain(&self.fingerprinter, &mut o.view_mut().maps);
            }
        }
        if let Some(c) = &mut self.capture
            && let Err(e) = c.drain(false)
        {
            log::error!("the capture stopped: {e:#}");
            if let Some(c) = self.capture.take() {
                let _ = c.finish();
            }
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Every guard's upkeep (see `Guarded::upkeep`). Err when one was lost for good; Ok(false)
    /// when none is left (all detached on request).
    pub fn upkeep(&mut self) -> Result<bool> {
        for g in &mut self.guards {
            g.upkeep(&self.pins, &self.plan)?;
        }
        self.guards.retain(|g| !g.detached);
        Ok(!self.guards.is_empty())
    }

    /// Reads what each guard counted since the previous tick, makes room in the source tables,
    /// and says what the kernel says of each guard.
    pub fn tick(&mut self) -> Result<Tick> {
        self.ticks += 1;
        let mut tick =
            Tick { snaps: Vec::new(), news: Vec::new(), tops: Vec::new(), tools: Vec::new() };
        // Feature records first: a source counted below has its first SYN's fingerprint by
        // then (the program copies it out right after counting it).
        self.drain();
        for g in &mut self.guards {
            let v = g.held.view();
            let totals = v.totals()?;
            let sources = v.sources()?;
            if let (Held::Owner(o), Some(feed)) = (&mut g.held, &mut g.feed) {
                feed.drain(&self.fingerprinter, &mut o.view_mut().maps);
            }
            let v = g.held.view();
            let labels = v.fingerprints().unwrap_or_default();
            if let (Held::Owner(o), Some(feed)) = (&mut g.held, &mut g.feed) {
                let present = sources.iter().map(|s| wire::source_key(s.addr)).collect();
                let published: Vec<_> = labels.keys().map(|a| wire::source_key(*a)).collect();
                feed.retain(&mut o.view_mut().maps, &present, &published);
            }
            if let Held::Owner(o) = &mut g.held {
                let removed = o.make_room(&sources);
                if removed > 0 {
                    log::info!(
                        "{}: source table nearly full: forgot the {} seen least recently",
                        g.iface,
                        crate::text::plural(removed as u64, "source")
                    );
                }
            }
            let v = g.held.view();
            // New sources turned away by a full table (the program only counts them): said
            // once each time the table fills, not on every tick it stays full.
            let full = sources.len() as u64 >= u64::from(v.capacity());
            if !full {
                g.full_warned = false;
            } else if !g.full_warned && totals.untracked > g.prev.untracked {
                log::warn!(
                    "{}: source table full ({} sources): new sources are counted as untracked",
                    g.iface,
                    v.capacity()
                );
                g.full_warned = true;
            }
            let now = Instant::now();
            let dt = now - g.prev_at;
            let ranked = report::rank(
                &sources,
                Some((&g.prev_packets, dt)),
                clock::monotonic_ns(),
                SortBy::Packets,
                self.plan.top,
                &labels,
            );
            // Only the table's current contents are remembered, so memory stays bounded by its
            // capacity whatever a flood does.
            let fresh = sources
                .iter()
                .filter(|s| !g.prev_packets.contains_key(&s.addr))
                .map(|s| (*s, labels.get(&s.addr).cloned()))
                .collect();
            tick.news.push((g.iface.clone(), fresh));
            tick.tools.push(report::tools(&sources, &labels));
            let mut top = sources.clone();
            top.sort_by_key(|s| std::cmp::Reverse(s.stats.packets));
            top.truncate(self.plan.metrics_top);
            tick.tops.push(top);
            let health = g.held.health();
            tick.snaps.push(Snapshot {
                iface: g.iface.clone(),
                netns: self.plan.netns.clone(),
                attached: health.mode(),
                health,
                settings: v.settings().clone(),
                totals,
                rates: Some(counters::rates(&g.prev, &totals, dt)),
                tracked: sources.len(),
                capacity: v.capacity(),
                sources: ranked,
            });
            g.prev = totals;
            g.prev_at = now;
            g.prev_packets = packets(&sources);
        }
        Ok(tick)
    }

    /// Scans this host's sockets on the guarded ports every SOCKET_SCAN_EVERY ticks (the first
    /// tick included): all of them for the metrics; those a process holds for the warnings,
    /// which name the process and stay on the live view until the sockets are gone. A TIME-WAIT
    /// socket left by a closed connection belongs to no process and goes away by itself: it is
    /// counted, not warned about.
    fn scan_sockets(&mut self) {
        if !(self.ticks - 1).is_multiple_of(SOCKET_SCAN_EVERY) {
            return;
        }
        let ports = &self.plan.settings.ports;
        let Ok(report) = check::scan(ports, None) else {
            self.sockets = None;
            return;
        };
        self.sockets = Some(local_sockets(&report, ports));
        let held = held_sockets(&report);
        if self.held_sockets.as_ref() == Some(&held) {
            return;
        }
        if held.is_empty() {
            if self.held_sockets.is_some() {
                log::info!("no process on this host uses a guarded port any more");
            }
            notices::clear(SOCKETS_NOTICE);
        } else if self.held_sockets.is_none() {
            log::warn!(
                target: SOCKETS_NOTICE,
                "this host uses a guarded port: {} (see `portguard check`)",
                held.join(", ")
            );
        } else {
            log::warn!(
                target: SOCKETS_NOTICE,
                "sockets on guarded ports on this host changed: {} (see `portguard check`)",
                held.join(", ")
            );
        }
        self.held_sockets = Some(held);
    }

    /// SIGHUP: re-reads the config file and applies every key that can change in place: the
    /// guard's settings (to the interfaces this process owns), the output keys, `persist`,
    /// `[metrics] top_sources` and `[fingerprint]`. Keys that take a restart (`interfaces`,
    /// `sources`, `xdp_mode`, `[metrics] listen`, `[capture]`) keep their running value and are
    /// named. A broken file leaves the running configuration as it is. The rule files are read
    /// again even when the config file is not there or names the same ones: editing a rule file
    /// and sending SIGHUP is how rules are added.
    pub fn reload(&mut self) {
        if self.flags.config.is_none() {
            log::info!("SIGHUP: no --config file to re-read");
            let plan = self.plan.clone();
            self.reread_rules(&plan);
            return;
        }
        let new = match Plan::load(&self.flags) {
            Ok(p) => p,
            Err(e) => {
                log::error!("SIGHUP: keeping the running configuration: {e:#}");
                return;
            }
        };
        let old = &self.plan;
        let restart: Vec<&str> = [
            ("interfaces", new.ifaces != old.ifaces),
            ("sources", new.sources != old.sources),
            ("xdp_mode", new.xdp_mode != old.xdp_mode),
            ("attach", new.share.attach != old.share.attach),
            ("priority", new.share.priority != old.share.priority),
            ("[metrics] listen", new.metrics != old.metrics),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !restart.is_empty() {
            log::warn!(
                "SIGHUP: {} changed, which takes a restart (`systemctl restart portguard`): still \
                 running with the old value; the other keys are applied",
                restart.join(", ")
            );
        }
        let applied: Vec<String> = [
            ("[output] interval", new.interval != old.interval, format!("{}", new.interval)),
            ("[output] top", new.top != old.top, new.top.to_string()),
            ("[output] json", new.json != old.json, new.json.to_string()),
            ("persist", new.persist != old.persist, new.persist.to_string()),
            (
                "[metrics] top_sources",
                new.metrics_top != old.metrics_top,
                new.metrics_top.to_string(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed, v)| changed.then(|| format!("{key} = {v}")))
        .collect();
        if !applied.is_empty() {
            log::info!("SIGHUP: applied {}", applied.join(", "));
        }
        if new.capture != old.capture {
            log::warn!(
                "SIGHUP: [capture] changed, which takes a restart: still running with the old value"
            );
        }
        for g in &mut self.guards {
            // Whether it is left in place on exit follows `persist` from now on (an adopted
            // guard stays in place regardless, as at startup).
            g.keep = new.persist || g.keep_adopted;
            let Held::Owner(o) = &mut g.held else { continue };
            let settings = new.settings.clone();
            let applied = o.view_mut().update(CHANGE_RELOAD, |s| {
                *s = settings;
                Ok(())
            });
            match applied.context("applying the new settings") {
                Ok(_) => log::info!("{}: reloaded: {}", g.iface, new.settings.summary()),
                Err(e) => log::error!("{}: {e:#}", g.iface),
            }
        }
        self.reread_rules(&new);
        // What takes a restart keeps its running value, so that the plan says what runs.
        self.plan = Plan {
            ifaces: self.plan.ifaces.clone(),
            netns: self.plan.netns.clone(),
            sources: self.plan.sources,
            xdp_mode: self.plan.xdp_mode,
            share: self.plan.share,
            metrics: self.plan.metrics,
            metrics_chosen: self.plan.metrics_chosen,
            capture: self.plan.capture.clone(),
            ..new
        };
    }

    /// The rule table and p0f's database, read again from the plan's files; one that does not
    /// parse keeps the running ones.
    fn reread_rules(&mut self, plan: &Plan) {
        match fingerprinter(plan) {
            Ok(f) => {
                self.fingerprinter = f;
                log::info!("SIGHUP: fingerprint rules reloaded");
            }
            Err(e) => log::error!("SIGHUP: keeping the running fingerprint rules: {e:#}"),
        }
    }

    /// The totals of every guard, added up.
    pub fn totals(&self) -> Result<Totals> {
        let all = self.guards.iter().map(|g| g.held.view().totals()).collect::<Result<Vec<_>>>()?;
        Ok(counters::sum(all))
    }

    /// systemd's one-line STATUS, read fresh from the maps and the kernel.
    pub fn status_now(&self) -> String {
        let rows: Vec<(String, Health, crate::settings::Mode, u64)> = self
            .guards
            .iter()
            .map(|g| {
                let v = g.held.view();
                let dropped = v.totals().map_or(0, |t| t.dropped);
                (g.iface.clone(), g.held.health(), v.settings().mode, dropped)
            })
            .collect();
        status_line(rows.iter().map(|(i, h, m, d)| (i.as_str(), h, *m, *d)))
    }

    /// Releases what this process owns: detached, or left in place (`persist`, or a guard it
    /// adopted). Err when a guard that was to stay could not be left in place.
    pub fn finish(mut self) -> Result<()> {
        if let Some(c) = self.capture.take() {
            match c.finish() {
                Ok(w) => log::info!(
                    "capture closed: {} written",
                    crate::text::plural(w.packets, "packet")
                ),
                Err(e) => log::error!("closing the capture: {e:#}"),
            }
        }
        let (mut kept, mut detached, mut failed) = (Vec::new(), Vec::new(), None);
        for g in self.guards {
            let (iface, keep) = (g.iface.clone(), g.keep);
            match g.finish(keep) {
                Ok(true) if keep => kept.push(iface),
                Ok(true) => detached.push(iface),
                Ok(false) => {}
                Err(e) => {
                    log::error!("{e:#}");
                    failed.get_or_insert(e);
                }
            }
        }
        if !kept.is_empty() {
            log::info!("left {} guarded: `portguard detach` removes it", kept.join(", "));
        }
        if !detached.is_empty() {
            log::info!("detached from {}", detached.join(", "));
        }
        failed.map_or(Ok(()), Err)
    }
}

/// systemd's one-line STATUS: each interface's name, what the kernel says of it, action and
/// drops. "guarding eth1 (native, drop): 1234 dropped", or "eth1 NOT GUARDED (interface gone),
/// drop: 12 dropped".
fn status_line<'a>(
    items: impl Iterator<Item = (&'a str, &'a Health, crate::settings::Mode, u64)>,
) -> String {
    let parts: Vec<String> = items
        .map(|(iface, health, mode, dropped)| match health {
            Health::Guarded { mode: m, .. } => {
                format!("guarding {iface} ({}, {}): {dropped} dropped", m.as_str(), mode.as_str())
            }
            Health::NotGuarded(why) => {
                format!("{iface} NOT GUARDED ({why}), {}: {dropped} dropped", mode.as_str())
            }
        })
        .collect();
    parts.join("; ")
}

/// The notice (and log target) of the sockets warnings: cleared when they are gone.
const SOCKETS_NOTICE: &str = "notice:sockets";

/// Sockets on this host using a guarded port, as metrics see them.
fn local_sockets(report: &check::Report, ports: &[u16]) -> Vec<LocalSocket> {
    let mut v: Vec<_> = report
        .sockets
        .iter()
        .map(|k| {
            let port = if ports.contains(&k.local_port) { k.local_port } else { k.remote_port };
            LocalSocket { port, protocol: k.protocol.as_str().to_string(), state: k.state.clone() }
        })
        .collect();
    v.sort();
    v
}

/// The sockets a process holds, each as "tcp 8081 listen by nc (pid 4242)", sorted.
fn held_sockets(report: &check::Report) -> Vec<String> {
    let mut v: Vec<String> = report
        .sockets
        .iter()
        .filter(|k| k.inode != 0)
        .map(|k| {
            let port =
                if report.ports.contains(&k.local_port) { k.local_port } else { k.remote_port };
            let owner = match k.processes.first() {
                Some(p) => format!("by {} (pid {})", p.name, p.pid),
                None => "by a process not visible here".to_string(),
            };
            format!("{} {port} {} {owner}", k.protocol, k.state)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What the daemon tells the outside world besides its output: systemd and Prometheus.
pub struct Service<'a> {
    pub notifier: &'a Notifier,
    pub metrics: Option<metrics::Shared>,
}

/// Runs `daemon` until SIGINT, SIGTERM, `duration`, or nothing left to watch: a tick every
/// interval, its output on stdout, SIGHUP reloads, systemd and metrics kept informed.
/// The signals the daemon handles. Taken before anything is attached: from then on a SIGTERM
/// or SIGHUP that arrives while the guards are being acquired waits for the loop, instead of
/// killing the process half-way (their default action).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime that will run `serve`.
    pub fn take() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

pub async fn serve(
    daemon: &mut Daemon,
    signals: Signals,
    duration: Option<f64>,
    service: Service<'_>,
) -> Result<Stopped> {
    let Signals { int: mut sigint, term: mut sigterm, hup: mut sighup } = signals;
    let mut period = Duration::from_secs_f64(daemon.plan.interval);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut upkeep = tokio::time::interval(UPKEEP.min(period));
    let mut drain = tokio::time::interval(DRAIN);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let terminal = std::io::stdout().is_terminal();
    // Without a watchdog the timer is parked far away.
    let wd_period = service.notifier.watchdog_period().unwrap_or(Duration::from_secs(86_400));
    let mut watchdog = tokio::time::interval(wd_period);
    service.notifier.ready(&daemon.status_now());
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(Stopped::Asked),
            _ = sigterm.recv() => return Ok(Stopped::Asked),
            _ = sighup.recv() => {
                service.notifier.reloading();
                daemon.reload();
                // A new interval takes effect from now.
                let new = Duration::from_secs_f64(daemon.plan.interval);
                if new != period {
                    period = new;
                    interval =
                        tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    upkeep = tokio::time::interval(UPKEEP.min(period));
                }
                service.notifier.ready(&daemon.status_now());
                continue;
            }
            _ = watchdog.tick() => {
                if service.notifier.watchdog_period().is_some() {
                    service.notifier.watchdog();
                }
                continue;
            }
            _ = drain.tick() => {
                daemon.drain();
                continue;
            }
            _ = upkeep.tick() => {
                if !daemon.upkeep()? {
                    log::info!("every guard was detached on request: stopping");
                    return Ok(Stopped::Detached);
                }
                continue;
            }
            _ = interval.tick() => {}
        }
        let tick = daemon.tick()?;
        service.notifier.status(&status_line(
            tick.snaps
                .iter()
                .map(|v| (v.iface.as_str(), &v.health, v.settings.mode, v.totals.dropped)),
        ));
        if let Some(shared) = &service.metrics {
            daemon.scan_sockets();
            let ifaces = tick
                .snaps
                .iter()
                .zip(&tick.tops)
                .zip(&tick.tools)
                .zip(&daemon.guards)
                .map(|(((v, top), tools), g)| IfaceMetrics {
                    iface: v.iface.clone(),
                    xdp_mode: v.attached.map_or("unknown", |a| a.as_str()).into(),
                    mode: v.settings.mode.as_str().into(),
                    attach: g.held.view().kind().as_str().into(),
                    guarded: v.health.is_guarded(),
                    totals: v.totals,
                    tracked: v.tracked,
                    capacity: v.capacity,
                    top: top.clone(),
                    tools: tools.clone(),
                })
                .collect();
            if let Ok(mut s) = shared.lock() {
                s.ifaces = ifaces;
                s.sockets = daemon.sockets.clone();
                s.socket_ports = daemon.plan.settings.ports.clone();
            }
        }
        let mut out = std::io::stdout().lock();
        let tty = terminal && !daemon.plan.json;
        if let Err(e) = report::print_tick(&mut out, &tick, tty, daemon.plan.json) {
            if !tty {
                return Err(e);
            }
            // Its terminal went away (SIGHUP means reload here, so the hang-up alone does not
            // end it): stop as if asked, rather than guard on unseen with nobody to stop it.
            log::warn!("the terminal went away ({e:#}): stopping");
            return Ok(Stopped::Asked);
        }
        let _ = out.flush();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Stopped::Asked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Family, Process, Protocol, Report, Socket};

    fn socket(state: &str, inode: u64, processes: Vec<Process>) -> Socket {
        Socket {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            state: state.into(),
            local_address: "198.18.0.1".parse().unwrap(),
            local_port: 40_000,
            remote_address: "198.18.0.2".parse().unwrap(),
            remote_port: 8081,
            inode,
            uid: 0,
            user: "root".into(),
            owner_visible: !processes.is_empty(),
            processes,
            owner_note: None,
        }
    }

    /// The warnings name the process; a TIME-WAIT socket left by a closed connection (no inode:
    /// the kernel holds it) is counted for the metrics but not warned about.
    #[test]
    fn socket_warnings_name_the_process_and_skip_time_wait() {
        let nc = Process { pid: 4242, name: "nc".into(), cmdline: "nc 198.18.0.2 8081".into() };
        let report = Report {
            ports: vec![8081],
            netns: None,
            clean: false,
            sockets: vec![socket("established", 77, vec![nc]), socket("time-wait", 0, vec![])],
        };
        assert_eq!(held_sockets(&report), ["tcp 8081 established by nc (pid 4242)"]);
        assert_eq!(local_sockets(&report, &[8081]).len(), 2);
        let only_time_wait = Report { sockets: vec![socket("time-wait", 0, vec![])], ..report };
        assert!(held_sockets(&only_time_wait).is_empty());
    }
}
