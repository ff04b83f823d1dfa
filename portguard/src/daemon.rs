//! The daemon: the guards `portguard run` (and `portguard lab`) holds, kept up every interval.
//!
//! [`Daemon::start`] acquires every interface of a [`Plan`] (all or nothing). [`Daemon::tick`]
//! does the housekeeping — follows interfaces that go away and come back, picks up settings
//! changed by other processes, makes room in the source tables, scans for local sockets on
//! guarded ports — and returns what it read as a [`Tick`]. [`serve`] runs the loop: signals,
//! ticks, output, systemd notifications and the metrics endpoint. Rendering is `report.rs`'s.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use portguard_common::Totals;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    check, clock,
    config::{Flags, Plan},
    counters::{self, Source},
    guard::{Acquired, Attached, Owner, View},
    metrics::{self, IfaceMetrics, LocalSocket},
    notices,
    notify::Notifier,
    pins::Pins,
    report::{self, Snapshot, SortBy},
};

/// Local sockets on guarded ports, every this many intervals (a netlink dump and a /proc walk).
const SOCKET_SCAN_EVERY: u64 = 10;

/// How this process holds one guard.
enum Held {
    /// It attached the program and keeps it there.
    Owner(Box<Owner>),
    /// Another live portguard owns it: this one only reads.
    Watcher(View),
    /// It owned it, and the interface went away: the counters are kept, and it is acquired
    /// again when the interface returns.
    Gone(View),
}

impl Held {
    fn view(&self) -> &View {
        match self {
            Held::Owner(o) => o.view(),
            Held::Watcher(v) | Held::Gone(v) => v,
        }
    }

    fn view_mut(&mut self) -> &mut View {
        match self {
            Held::Owner(o) => o.view_mut(),
            Held::Watcher(v) | Held::Gone(v) => v,
        }
    }

    fn attached(&self) -> Option<Attached> {
        match self {
            Held::Owner(o) => Some(o.attached()),
            Held::Watcher(v) | Held::Gone(v) => v.attached(),
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
        })
    }

    /// An owner notices its interface going away (deleted, replaced: the XDP link dies with
    /// it) and guards it again, with the same maps and counters, once it is back.
    fn follow_interface(mut self, pins: &Pins, plan: &Plan) -> Guarded {
        self.held = match self.held {
            Held::Owner(o) if !o.view().link_alive() => {
                log::warn!(
                    target: &gone_notice(&self.iface),
                    "{} went away (deleted or replaced): its counters are kept; it is guarded \
                     again as soon as it returns",
                    self.iface
                );
                Held::Gone((*o).into_view())
            }
            held => held,
        };
        let Held::Gone(v) = &self.held else { return self };
        if crate::guard::ifindex(&self.iface).is_err() {
            return self;
        }
        let (settings, capacity) = (v.settings().clone(), v.capacity());
        match Owner::acquire(pins, &self.iface, Some(&settings), capacity, plan.xdp_mode) {
            Ok(Acquired::Attached(o) | Acquired::Adopted(o)) => {
                notices::clear(&gone_notice(&self.iface));
                log::info!(
                    "{} is back: guarding it again ({} XDP), counters kept",
                    self.iface,
                    o.attached().as_str()
                );
                self.held = Held::Owner(Box::new(o));
            }
            Ok(Acquired::Watching(v, pid)) => {
                log::warn!("{}: another portguard (pid {pid}) guards it now: watching", self.iface);
                self.held = Held::Watcher(v);
            }
            Err(e) => log::warn!("{}: not guarded again yet: {e:#}", self.iface),
        }
        self
    }

    /// Releases what this process owns: detached, or left in place with `persist`. Returns
    /// whether it owned anything.
    fn finish(self, persist: bool) -> bool {
        let Held::Owner(o) = self.held else { return false };
        if let Err(e) = (*o).release(persist) {
            log::error!("{}: {e:#}", self.iface);
        }
        true
    }
}

/// The notice of an interface that went away: it stays on the live view until it is back.
fn gone_notice(iface: &str) -> String {
    format!("{}gone:{iface}", notices::TARGET_PREFIX)
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
    /// The sockets a process holds, as warned about; None before the first scan.
    held_sockets: Option<Vec<String>>,
}

impl Daemon {
    /// Acquires every interface of `plan`, or none: what this call attached is undone when a
    /// later interface fails.
    pub fn start(plan: Plan, flags: Flags, pins: Pins) -> Result<Daemon> {
        let mut guards = Vec::new();
        for iface in &plan.ifaces {
            let acquired =
                Owner::acquire(&pins, iface, Some(&plan.settings), plan.sources, plan.xdp_mode);
            let fresh = matches!(acquired, Ok(Acquired::Attached(_)));
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
                    log::info!(
                        "adopted the guard left on {iface} ({} XDP), counters kept: {}",
                        o.attached().as_str(),
                        o.view().settings().summary()
                    );
                    Held::Owner(Box::new(o))
                }
                Ok(Acquired::Watching(v, pid)) => {
                    log::warn!(
                        "{iface} is already guarded by a running portguard (pid {pid}): watching \
                         it; its settings are unchanged (use `portguard set` to change them)"
                    );
                    Held::Watcher(v)
                }
                Err(e) => {
                    // All or nothing: undo what this run attached.
                    for g in guards {
                        Guarded::finish(g, false);
                    }
                    return Err(e);
                }
            };
            guards.push(Guarded::new(held, fresh)?);
        }
        Ok(Daemon { guards, plan, flags, pins, ticks: 0, sockets: None, held_sockets: None })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The housekeeping of one interval, and what it read. None when nothing is left to watch
    /// (every guard was detached by another process).
    pub fn tick(&mut self) -> Result<Option<Tick>> {
        self.ticks += 1;
        self.guards.retain(|g| {
            let there = g.held.view().still_pinned();
            if !there {
                log::warn!("{} was detached by another process: no longer watching it", g.iface);
            }
            there
        });
        if self.guards.is_empty() {
            log::info!("nothing left to watch");
            return Ok(None);
        }
        let (pins, plan) = (&self.pins, &self.plan);
        self.guards = self.guards.drain(..).map(|g| g.follow_interface(pins, plan)).collect();
        let mut tick = Tick { snaps: Vec::new(), news: Vec::new(), tops: Vec::new() };
        for g in &mut self.guards {
            g.held.view_mut().follow_changes()?;
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
                        "{}: source table nearly full: forgot the {} seen least recently",
                        g.iface,
                        crate::text::plural(removed as u64, "source")
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
            tick.snaps.push(Snapshot {
                iface: g.iface.clone(),
                netns: self.plan.netns.clone(),
                attached: g.held.attached(),
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
        Ok(Some(tick))
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
    /// guard's settings (to the interfaces this process owns), the output keys, `persist` and
    /// `[metrics] top_sources`. Keys that take a restart (`interfaces`, `sources`, `xdp_mode`,
    /// `[metrics] listen`) keep their running value and are named. A broken file leaves the
    /// running configuration as it is.
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
        let old = &self.plan;
        let restart: Vec<&str> = [
            ("interfaces", new.ifaces != old.ifaces),
            ("sources", new.sources != old.sources),
            ("xdp_mode", new.xdp_mode != old.xdp_mode),
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
        for g in &mut self.guards {
            let Held::Owner(o) = &mut g.held else { continue };
            match o.view_mut().apply(&new.settings).context("applying the new settings") {
                Ok(()) => log::info!("{}: reloaded: {}", g.iface, new.settings.summary()),
                Err(e) => log::error!("{}: {e:#}", g.iface),
            }
        }
        // What takes a restart keeps its running value, so that the plan says what runs.
        self.plan = Plan {
            ifaces: self.plan.ifaces.clone(),
            netns: self.plan.netns.clone(),
            sources: self.plan.sources,
            xdp_mode: self.plan.xdp_mode,
            metrics: self.plan.metrics,
            metrics_chosen: self.plan.metrics_chosen,
            ..new
        };
    }

    /// The totals of every guard, added up.
    pub fn totals(&self) -> Result<Totals> {
        let all = self.guards.iter().map(|g| g.held.view().totals()).collect::<Result<Vec<_>>>()?;
        Ok(counters::sum(all))
    }

    /// systemd's one-line STATUS, read fresh from the maps.
    pub fn status_now(&self) -> String {
        status_line(self.guards.iter().map(|g| {
            let v = g.held.view();
            let dropped = v.totals().map_or(0, |t| t.dropped);
            (g.iface.as_str(), g.held.attached(), v.settings().mode, dropped)
        }))
    }

    /// Releases what this process owns: detached, or left in place with `persist`.
    pub fn finish(self) {
        let persist = self.plan.persist;
        let mut names = Vec::new();
        for g in self.guards {
            let iface = g.iface.clone();
            if g.finish(persist) {
                names.push(iface);
            }
        }
        if names.is_empty() {
            return;
        }
        if persist {
            log::info!(
                "left {} guarded (persist): `portguard detach` removes it",
                names.join(", ")
            );
        } else {
            log::info!("detached from {}", names.join(", "));
        }
    }
}

/// systemd's one-line STATUS, from each interface's name, XDP mode, action and drops.
fn status_line<'a>(
    items: impl Iterator<Item = (&'a str, Option<Attached>, crate::settings::Mode, u64)>,
) -> String {
    let parts: Vec<String> = items
        .map(|(iface, attached, mode, dropped)| {
            format!(
                "{iface} ({}, {}): {dropped} dropped",
                attached.map_or("?", |a| a.as_str()),
                mode.as_str()
            )
        })
        .collect();
    format!("guarding {}", parts.join("; "))
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
pub async fn serve(daemon: &mut Daemon, duration: Option<f64>, service: Service<'_>) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut period = Duration::from_secs_f64(daemon.plan.interval);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let terminal = std::io::stdout().is_terminal();
    // Without a watchdog the timer is parked far away.
    let wd_period = service.notifier.watchdog_period().unwrap_or(Duration::from_secs(86_400));
    let mut watchdog = tokio::time::interval(wd_period);
    service.notifier.ready(&daemon.status_now());
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                service.notifier.reloading();
                daemon.reload();
                // A new interval takes effect from now.
                let new = Duration::from_secs_f64(daemon.plan.interval);
                if new != period {
                    period = new;
                    interval =
                        tokio::time::interval_at(tokio::time::Instant::now() + period, period);
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
            _ = interval.tick() => {}
        }
        let Some(tick) = daemon.tick()? else { break };
        service.notifier.status(&status_line(
            tick.snaps
                .iter()
                .map(|v| (v.iface.as_str(), v.attached, v.settings.mode, v.totals.dropped)),
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
                    totals: v.totals,
                    tracked: v.tracked,
                    capacity: v.capacity,
                    top: top.clone(),
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
        report::print_tick(&mut out, &tick, tty, daemon.plan.json)?;
        let _ = out.flush();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok(())
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
