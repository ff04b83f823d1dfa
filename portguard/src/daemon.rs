//! The daemon: the guards `portguard run` (and `portguard lab`) holds, kept up.
//!
//! [`Daemon::start`] acquires every interface of a [`Plan`] (all or nothing). Every second,
//! [`Daemon::upkeep`] keeps each owned guard attached (`Owner::upkeep`: pins, interfaces that go
//! away and come back, detach requests), takes over a guard whose owner died, and logs settings
//! changed by other processes; a guard that cannot be kept ends the daemon with an error.
//! Every interval, [`Daemon::tick`] reads the counters, makes room in the source tables, and
//! returns what it read as a [`Tick`], with what the kernel says of each guard. [`serve`] runs
//! the loop: signals, upkeep, ticks, output, systemd notifications and the metrics endpoint.
//! Rendering is `report.rs`'s.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard_common::{
    CHANGE_ADOPT, CHANGE_ATTACH, CHANGE_RELOAD, CHANGE_SET, CHANGE_TOP, STATE_DETACHING, Totals,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    check, clock,
    config::{Flags, Plan},
    counters::{self, Source},
    guard::{Acquired, Changed, Health, Owner, Reason, Upkeep, View},
    metrics::{self, IfaceMetrics, LocalSocket},
    notify::Notifier,
    pins::Pins,
    report::{self, Snapshot, SortBy},
};

/// Local sockets on guarded ports, every this many intervals (a netlink dump and a /proc walk).
const SOCKET_SCAN_EVERY: u64 = 10;
/// How often owners check their guards, whatever the output interval.
const UPKEEP: Duration = Duration::from_secs(1);
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
    /// Packets per source at the previous tick: rates, and which sources are new.
    prev_packets: HashMap<IpAddr, u64>,
    /// The last upkeep's finding, so that each change is logged once.
    last: Upkeep,
    /// Since when the guard has been lost (not guarding, and not coming back by itself).
    lost_since: Option<Instant>,
    /// A `portguard detach` ended it.
    detached: bool,
    /// Left in place when the daemon ends (`persist`, or adopted).
    keep: bool,
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
            prev_packets: known,
            held,
            last: Upkeep::Guarding,
            lost_since: None,
            detached: false,
            keep: false,
        })
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
                "{iface}: its pins are gone and cannot be put back ({e}); it stays guarded while \
                 this process runs"
            ),
            Upkeep::Gone => log::warn!(
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
            Upkeep::Reattached { .. } => {
                log::info!("{iface} is back: guarding it again ({} XDP), counters kept", mode())
            }
            Upkeep::Detached { by } => {
                log::warn!(
                    "{iface}: detached by `portguard detach` (pid {by}): no longer guarding it"
                )
            }
            Upkeep::Lost(why) => log::error!("{iface}: NOT GUARDED: {why}; trying again"),
            Upkeep::Unknown(e) => log::warn!("{iface}: cannot ask the kernel now ({e})"),
        }
    }

    /// The owner died: this process adopts the guard (its program replaced in place, counters
    /// kept), with the settings the guard holds.
    fn take_over(&mut self, pins: &Pins, plan: &Plan) {
        let was = self.held.view().meta().map_or(0, |m| m.owner_pid);
        match Owner::acquire(pins, &self.iface, None, plan.sources, plan.xdp_mode) {
            Ok(Acquired::Adopted(o) | Acquired::Attached(o)) => {
                log::warn!(
                    "{}: its owner (pid {was}) is gone: this process guards it now ({} XDP), \
                     counters kept",
                    self.iface,
                    o.attached().as_str()
                );
                self.held = Held::Owner(Box::new(o));
                self.last = Upkeep::Guarding;
            }
            Ok(Acquired::Watching(v, _)) => self.held = Held::Watcher(Box::new(v)),
            Err(e) => log::warn!("{}: could not take over: {e:#}", self.iface),
        }
    }

    /// Releases what this process owns: detached, or left in place with `persist`. Returns
    /// whether it owned anything (and Err if a persistent guard could not be left in place).
    fn finish(self, persist: bool) -> Result<bool> {
        let Held::Owner(o) = self.held else { return Ok(false) };
        if self.detached {
            return Ok(false);
        }
        (*o).release(persist).with_context(|| self.iface.clone())?;
        Ok(true)
    }
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

fn packets(sources: &[Source]) -> HashMap<IpAddr, u64> {
    sources.iter().map(|s| (s.addr, s.stats.packets)).collect()
}

/// What one tick read.
pub struct Tick {
    pub snaps: Vec<Snapshot>,
    /// Per interface, the sources that appeared since the previous tick.
    pub news: Vec<(String, Vec<Source>)>,
    /// Per interface, the top sources by packets for the metrics.
    pub tops: Vec<Vec<Source>>,
}

pub struct Daemon {
    guards: Vec<Guarded>,
    plan: Plan,
    flags: Flags,
    pins: Pins,
    ticks: u64,
    /// Sockets on guarded ports at the last scan; None before the first or when it failed.
    sockets: Option<Vec<LocalSocket>>,
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
        let mut guards: Vec<Guarded> = Vec::new();
        for iface in &plan.ifaces {
            let acquired =
                Owner::acquire(&pins, iface, Some(&plan.settings), plan.sources, plan.xdp_mode);
            let fresh = matches!(acquired, Ok(Acquired::Attached(_)));
            let mut keep = plan.persist;
            let held = match acquired {
                Ok(Acquired::Attached(o)) => {
                    log::info!(
                        "guarding {iface} ({} XDP): {}",
                        o.attached().as_str(),
                        o.view().settings().summary()
                    );
                    Held::Owner(Box::new(o))
                }
                Ok(Acquired::Adopted(o)) => {
                    // It was left in place (a persistent run, a service stopped, a kill -9):
                    // it stays in place when this run ends, unless told otherwise.
                    keep |= !plan.detach_on_exit;
                    log::warn!(
                        "adopted the guard left on {iface} ({} XDP), counters kept: {}; {}",
                        o.attached().as_str(),
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
            guards.push(g);
        }
        Ok(Daemon { guards, plan, flags, pins, ticks: 0, sockets: None })
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
        let mut tick = Tick { snaps: Vec::new(), news: Vec::new(), tops: Vec::new() };
        for g in &mut self.guards {
            if let Held::Owner(o) = &mut g.held {
                o.flush_log();
            }
            let v = g.held.view();
            let totals = v.totals()?;
            let sources = v.sources()?;
            if let Held::Owner(o) = &mut g.held {
                let removed = o.make_room(&sources);
                if removed > 0 {
                    log::info!(
                        "{}: source table nearly full: forgot the {removed} sources seen least recently",
                        g.iface
                    );
                }
            }
            let v = g.held.view();
            let now = Instant::now();
            let dt = now - g.prev_at;
            let ranked = report::rank(
                &sources,
                Some((&g.prev_packets, dt)),
                clock::monotonic_ns(),
                SortBy::Packets,
                self.plan.top,
            );
            // Only the table's current contents are remembered, so memory stays bounded by its
            // capacity whatever a flood does.
            let fresh =
                sources.iter().filter(|s| !g.prev_packets.contains_key(&s.addr)).copied().collect();
            tick.news.push((g.iface.clone(), fresh));
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
                rates: counters::rates(&g.prev, &totals, dt),
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
    /// tick included), and logs what changed.
    fn scan_sockets(&mut self) {
        if !(self.ticks - 1).is_multiple_of(SOCKET_SCAN_EVERY) {
            return;
        }
        let sockets = local_sockets(&self.plan.settings.ports);
        if self.sockets.is_some() && sockets != self.sockets {
            log::warn!(
                "sockets on guarded ports on this host changed: {}",
                describe_sockets(&sockets)
            );
        } else if self.sockets.is_none() && sockets.as_ref().is_some_and(|s| !s.is_empty()) {
            log::warn!(
                "this host uses a guarded port: {} (see `portguard check`)",
                describe_sockets(&sockets)
            );
        }
        self.sockets = sockets;
    }

    /// SIGHUP: re-reads the config file and applies it to the interfaces this process owns. A
    /// broken file leaves the running configuration as it is.
    pub fn reload(&mut self) {
        if self.flags.config.is_none() {
            log::info!("SIGHUP: no --config file to re-read");
            return;
        }
        let new = match Plan::load(&self.flags) {
            Ok(p) => p,
            Err(e) => {
                log::error!("SIGHUP: keeping the running configuration: {e:#}");
                return;
            }
        };
        if new.ifaces != self.plan.ifaces {
            log::warn!(
                "SIGHUP: a change of interfaces takes a restart; applying the other settings"
            );
        }
        for g in &mut self.guards {
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
        self.plan =
            Plan { ifaces: self.plan.ifaces.clone(), netns: self.plan.netns.clone(), ..new };
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
    pub fn finish(self) -> Result<()> {
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

/// Sockets on this host using a guarded port, as metrics see them; None if the scan failed.
fn local_sockets(ports: &[u16]) -> Option<Vec<LocalSocket>> {
    let report = check::scan(ports, None).ok()?;
    let mut v: Vec<_> = report
        .sockets
        .iter()
        .map(|k| {
            let port = if ports.contains(&k.local_port) { k.local_port } else { k.remote_port };
            LocalSocket { port, protocol: k.protocol.as_str().to_string(), state: k.state.clone() }
        })
        .collect();
    v.sort();
    Some(v)
}

fn describe_sockets(s: &Option<Vec<LocalSocket>>) -> String {
    match s {
        None => "unknown (scan failed)".into(),
        Some(v) if v.is_empty() => "none".into(),
        Some(v) => v
            .iter()
            .map(|k| format!("{} {} {}", k.protocol, k.port, k.state))
            .collect::<Vec<_>>()
            .join(", "),
    }
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
    let period = Duration::from_secs_f64(daemon.plan.interval);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut upkeep = tokio::time::interval(UPKEEP.min(period));
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let tty = std::io::stdout().is_terminal() && !daemon.plan.json;
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
                service.notifier.ready(&daemon.status_now());
                continue;
            }
            _ = watchdog.tick() => {
                if service.notifier.watchdog_period().is_some() {
                    service.notifier.watchdog();
                }
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
                .map(|(v, top)| IfaceMetrics {
                    iface: v.iface.clone(),
                    xdp_mode: v.attached.map_or("unknown", |a| a.as_str()).into(),
                    mode: v.settings.mode.as_str().into(),
                    guarded: v.health.is_guarded(),
                    totals: v.totals,
                    tracked: v.tracked,
                    capacity: v.capacity,
                    top: top.clone(),
                })
                .collect();
            if let Ok(mut s) = shared.lock() {
                s.ifaces = ifaces;
                s.sockets = daemon.sockets.clone();
            }
        }
        let mut out = std::io::stdout().lock();
        report::print_tick(&mut out, &tick, tty, daemon.plan.json)?;
        let _ = out.flush();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Stopped::Asked);
        }
    }
}
