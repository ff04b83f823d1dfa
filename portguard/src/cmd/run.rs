//! `portguard run`: guard interfaces and show live counters until SIGINT or SIGTERM; SIGHUP
//! re-reads the config file.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard::notify::Notifier;
use portguard::{
    clock,
    config::FileConfig,
    counters,
    guard::{Acquired, AttachMode, Attached, Guard},
    pins::Pins,
    privileges,
    report::{self, InterfaceJson, SortBy},
    settings::{Cidr, Direction, Mode, Protocol, Settings},
};
use portguard_common::{DEFAULT_PORT, DEFAULT_SOURCE_CAPACITY, Totals};
use tokio::signal::unix::{SignalKind, signal};

/// New-source lines printed per interface per interval; the rest are summed up in one line.
const NEW_SOURCE_LINES: usize = 10;

/// Guard interfaces and print live counters until interrupted. Flags override the config file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
    /// TOML configuration file (see packaging/portguard.toml); flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to guard (repeat for several). A firewall attaches where it is told: there is
    /// no default.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// What to do with matched packets [default: drop].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Guarded port (repeat for several) [default: 2745].
    #[arg(long = "port", short = 'p', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Which port of a packet is compared: dst (probes), src (hosts answering from the port),
    /// or both [default: dst].
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Guarded protocol (repeat for both) [default: tcp and udp].
    #[arg(long = "protocol", value_enum)]
    pub protocols: Vec<Protocol>,
    /// Source prefix that is counted but never dropped, e.g. 198.18.0.0/15 (repeatable).
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// XDP attach mode [default: auto].
    #[arg(long = "xdp-mode", value_enum)]
    pub xdp_mode: Option<AttachMode>,
    /// Capacity of the per-source table [default: 65536].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub sources: Option<u32>,
    /// New sources admitted into the table per CPU per 67 ms slice [default: paced so that a
    /// flood turns the table over no faster than once in 8 s].
    #[arg(long, value_name = "N", hide = true)]
    pub admit_per_slice: Option<u32>,
    /// Seconds between counter updates [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<f64>,
    /// Sources shown per interface [default: 10].
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Leave the guard attached (and pinned) when portguard exits, for the next start to adopt:
    /// restarts and upgrades without a gap. `portguard detach` removes it.
    #[arg(long)]
    pub persist: bool,
    /// Stop by itself after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Serve Prometheus metrics on this address [default: 127.0.0.1:9745].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_metrics")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve no metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Per-source series are exported for this many top sources only [default: 10].
    #[arg(long, value_name = "N")]
    pub metrics_top: Option<usize>,
}

/// Flags and config file merged, validated.
#[derive(Clone, Debug)]
pub struct Plan {
    pub ifaces: Vec<String>,
    pub settings: Settings,
    pub xdp_mode: AttachMode,
    pub sources: u32,
    pub interval: f64,
    pub top: usize,
    pub json: bool,
    pub persist: bool,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// The address was given (flag or file), not the default.
    pub metrics_chosen: bool,
    pub metrics_top: usize,
}

impl Args {
    /// Merges the flags over `file`.
    pub fn plan(&self, file: &FileConfig) -> Result<Plan> {
        fn pick<T: Clone>(flag: &[T], file: &Option<Vec<T>>, default: Vec<T>) -> Vec<T> {
            if !flag.is_empty() { flag.to_vec() } else { file.clone().unwrap_or(default) }
        }
        let ifaces = pick(&self.ifaces, &file.interfaces, Vec::new());
        if ifaces.is_empty() {
            bail!("no interface to guard: give --iface IFACE (or `interfaces` in the config file)");
        }
        let mut ports = pick(&self.ports, &file.ports, vec![DEFAULT_PORT]);
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            bail!("no port to guard");
        }
        let mut protocols =
            pick(&self.protocols, &file.protocols, vec![Protocol::Tcp, Protocol::Udp]);
        protocols.sort_by_key(|p| *p as u8);
        protocols.dedup();
        if protocols.is_empty() {
            bail!("no protocol to guard");
        }
        let mut allow = pick(&self.allow, &file.allow, Vec::new());
        allow.dedup();
        let interval = self.interval.or(file.output.interval).unwrap_or(1.0);
        if !(0.05..=3600.0).contains(&interval) {
            bail!("--interval must be between 0.05 and 3600 seconds");
        }
        Ok(Plan {
            ifaces,
            settings: Settings {
                mode: self.mode.or(file.mode).unwrap_or(Mode::Drop),
                ports,
                protocols,
                direction: self.direction.or(file.direction).unwrap_or(Direction::Dst),
                allow,
                admit_per_slice: self.admit_per_slice,
            },
            xdp_mode: self.xdp_mode.or(file.xdp_mode).unwrap_or(AttachMode::Auto),
            sources: self.sources.or(file.sources).unwrap_or(DEFAULT_SOURCE_CAPACITY),
            interval,
            top: self.top.or(file.output.top).unwrap_or(10),
            json: self.json || file.output.json.unwrap_or(false),
            persist: self.persist || file.persist.unwrap_or(false),
            metrics: if self.no_metrics {
                None
            } else if let Some(a) = self.metrics {
                Some(a)
            } else {
                match file.metrics.listen.as_deref() {
                    Some("off") => None,
                    Some(a) => Some(a.parse().map_err(|_| {
                        anyhow::anyhow!("metrics.listen: '{a}' is not an address like 127.0.0.1:9745 (or \"off\")")
                    })?),
                    None => Some(portguard::metrics::DEFAULT_LISTEN.parse()?),
                }
            },
            metrics_chosen: self.metrics.is_some() || file.metrics.listen.is_some(),
            metrics_top: self.metrics_top.or(file.metrics.top_sources).unwrap_or(10),
        })
    }

    fn file(&self) -> Result<FileConfig> {
        match &self.config {
            Some(p) => FileConfig::load(p),
            None => Ok(FileConfig::default()),
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let plan = args.plan(&args.file()?)?;
    privileges::require_attach()?;
    for iface in &plan.ifaces {
        portguard::guard::ifindex(iface)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Bound before anything is attached: a taken port is an early error with nothing to undo.
    let listener = match plan.metrics {
        Some(addr) => match rt.block_on(portguard::metrics::bind(addr)) {
            Ok(l) => Some(l),
            // The default endpoint taken (another portguard watching, say) is not worth failing
            // for; an address the admin chose is.
            Err(e) if !plan.metrics_chosen => {
                log::warn!("serving no metrics: {:#}", e);
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let pins = Pins::default();
    let mut watched = Vec::new();
    for iface in &plan.ifaces {
        match Guard::acquire(&pins, iface, Some(&plan.settings), plan.sources, plan.xdp_mode) {
            Ok((g, how)) => {
                let mode = g.attached.map_or("unknown", |a| a.as_str());
                match how {
                    Acquired::Attached => {
                        log::info!("guarding {iface} ({mode} XDP): {}", g.settings().summary())
                    }
                    Acquired::Adopted => log::info!(
                        "adopted the guard left on {iface} ({mode} XDP), counters kept: {}",
                        g.settings().summary()
                    ),
                    Acquired::Watching(pid) => log::warn!(
                        "{iface} is already guarded by a running portguard (pid {pid}): watching \
                         it; its settings are unchanged (use `portguard set` to change them)"
                    ),
                }
                watched.push(Watched::new(g, !matches!(how, Acquired::Watching(_)))?);
            }
            Err(e) => {
                // All or nothing: undo what this run attached.
                for w in watched {
                    w.finish(false);
                }
                return Err(e);
            }
        }
    }
    let notifier = Notifier::from_env();
    notifier.ready(&status_now(&watched));
    let shared = portguard::metrics::Shared::default();
    let server = listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            log::info!("metrics on http://{a}/metrics");
        }
        rt.spawn(portguard::metrics::serve(l, shared.clone()))
    });
    let result = rt.block_on(watch(
        &mut watched,
        &args,
        plan.clone(),
        Service { notifier: &notifier, metrics: Some(shared) },
    ));
    notifier.stopping();
    if let Some(s) = server {
        s.abort();
    }
    let persist = plan.persist;
    let names: Vec<String> = watched.iter().filter(|w| w.owner).map(|w| w.iface.clone()).collect();
    for w in watched {
        w.finish(persist);
    }
    if !names.is_empty() {
        if persist {
            log::info!(
                "left {} guarded (persist): `portguard detach` removes it",
                names.join(", ")
            );
        } else {
            log::info!("detached from {}", names.join(", "));
        }
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// One interface being shown.
pub struct Watched {
    pub guard: Guard,
    /// This process owns the attachment (else another portguard does).
    pub owner: bool,
    pub iface: String,
    prev: Totals,
    prev_at: Instant,
    /// Packets per source at the previous tick: rates, and which sources are new.
    prev_packets: HashMap<IpAddr, u64>,
    /// The interface went away; it is guarded again when it comes back.
    gone: bool,
}

impl Watched {
    pub fn new(guard: Guard, owner: bool) -> Result<Watched> {
        let iface = guard.iface.clone().unwrap_or_default();
        // Sources already there (an adopted guard) are not news.
        let sources = guard.sources()?;
        Ok(Watched {
            prev: guard.totals()?,
            prev_at: Instant::now(),
            prev_packets: sources.iter().map(|s| (s.addr, s.stats.packets)).collect(),
            guard,
            owner,
            iface,
            gone: false,
        })
    }

    /// An owner notices its interface going away (deleted, replaced: the XDP link dies with
    /// it) and guards it again, with the same maps and counters, once it is back.
    fn follow_interface(&mut self, pins: &Pins, mode: AttachMode) {
        if !self.owner || !self.guard.still_pinned() {
            return;
        }
        if !self.gone {
            if self.guard.link_alive() {
                return;
            }
            self.gone = true;
            log::warn!(
                "{} went away (deleted or replaced): its counters are kept; it is guarded again \
                 as soon as it returns",
                self.iface
            );
        }
        if portguard::guard::ifindex(&self.iface).is_err() {
            return;
        }
        let settings = self.guard.settings().clone();
        let capacity = self.guard.capacity();
        self.guard.unlock();
        match Guard::acquire(pins, &self.iface, Some(&settings), capacity, mode) {
            Ok((g, how)) => {
                self.owner = !matches!(how, Acquired::Watching(_));
                self.guard = g;
                self.gone = false;
                log::info!(
                    "{} is back: guarding it again ({} XDP), counters kept",
                    self.iface,
                    self.guard.attached.map_or("unknown", |a| a.as_str())
                );
            }
            Err(e) => log::warn!("{}: not guarded again yet: {e:#}", self.iface),
        }
    }

    /// Releases what this process owns: detached, or left in place with `persist`.
    pub fn finish(self, persist: bool) {
        if !self.owner {
            return;
        }
        if let Err(e) = self.guard.release(persist) {
            log::error!("{}: {e:#}", self.iface);
        }
    }
}

/// What the daemon tells the outside world besides its output: systemd and Prometheus.
pub struct Service<'a> {
    pub notifier: &'a Notifier,
    pub metrics: Option<portguard::metrics::Shared>,
}

/// systemd's one-line STATUS, from each interface's name, XDP mode, action and drops.
fn status_line<'a>(items: impl Iterator<Item = (&'a str, Option<Attached>, Mode, u64)>) -> String {
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

/// The status line read fresh from the maps (at start and reload; each interval uses its
/// snapshot instead).
fn status_now(watched: &[Watched]) -> String {
    status_line(watched.iter().map(|w| {
        let dropped = w.guard.totals().map_or(0, |t| t.dropped);
        (w.iface.as_str(), w.guard.attached, w.guard.settings().mode, dropped)
    }))
}

/// Local sockets on guarded ports, every this many intervals (a netlink dump and a /proc walk).
const SOCKET_SCAN_EVERY: u64 = 10;

/// Prints counters every interval until a signal (or `--duration`) ends it.
pub async fn watch(
    watched: &mut Vec<Watched>,
    args: &Args,
    mut plan: Plan,
    service: Service<'_>,
) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let period = Duration::from_secs_f64(plan.interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let tty = std::io::stdout().is_terminal() && !plan.json;
    // Without a watchdog the timer is parked far away.
    let wd_period = service.notifier.watchdog_period().unwrap_or(Duration::from_secs(86_400));
    let mut watchdog = tokio::time::interval(wd_period);
    let mut ticks: u64 = 0;
    let mut last_sockets: Option<Vec<portguard::metrics::LocalSocket>> = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                service.notifier.reloading();
                reload(watched, args, &mut plan);
                service.notifier.ready(&status_now(watched));
                continue;
            }
            _ = watchdog.tick() => {
                if service.notifier.watchdog_period().is_some() {
                    service.notifier.watchdog();
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        ticks += 1;
        watched.retain(|w| {
            let there = w.guard.still_pinned();
            if !there {
                log::warn!("{} was detached by another process: no longer watching it", w.iface);
            }
            there
        });
        if watched.is_empty() {
            log::info!("nothing left to watch");
            break;
        }
        let pins = Pins::default();
        for w in watched.iter_mut() {
            w.follow_interface(&pins, plan.xdp_mode);
        }
        let mut snaps = Vec::new();
        let mut news = Vec::new();
        // The top sources by packets, for the metrics, from the same read of the table.
        let mut tops = Vec::new();
        for w in watched.iter_mut() {
            w.guard.follow_changes()?;
            w.guard.flush_log();
            let totals = w.guard.totals()?;
            let sources = w.guard.sources()?;
            if w.owner {
                let removed = w.guard.make_room(&sources)?;
                if removed > 0 {
                    log::info!(
                        "{}: source table nearly full: forgot the {removed} sources seen least recently",
                        w.iface
                    );
                }
            }
            let now = Instant::now();
            let dt = now - w.prev_at;
            let rates = counters::rates(&w.prev, &totals, dt);
            let ranked = report::rank(
                &sources,
                Some((&w.prev_packets, dt)),
                clock::monotonic_ns(),
                SortBy::Packets,
                plan.top,
            );
            // Only the table's current contents are remembered, so memory stays bounded by its
            // capacity whatever a flood does.
            let fresh: Vec<_> =
                sources.iter().filter(|s| !w.prev_packets.contains_key(&s.addr)).copied().collect();
            news.push((w.iface.clone(), fresh));
            w.prev = totals;
            w.prev_at = now;
            w.prev_packets = sources.iter().map(|s| (s.addr, s.stats.packets)).collect();
            if service.metrics.is_some() {
                let mut top = sources.clone();
                top.sort_by_key(|s| std::cmp::Reverse(s.stats.packets));
                top.truncate(plan.metrics_top);
                tops.push(top);
            }
            snaps.push(report::Snapshot {
                iface: w.iface.clone(),
                attached: w.guard.attached,
                settings: w.guard.settings().clone(),
                totals,
                rates,
                tracked: sources.len(),
                sources: ranked,
            });
        }
        service.notifier.status(&status_line(
            snaps.iter().map(|v| (v.iface.as_str(), v.attached, v.settings.mode, v.totals.dropped)),
        ));
        if let Some(shared) = &service.metrics {
            let mut ifaces = Vec::new();
            for ((w, v), top) in watched.iter().zip(&snaps).zip(tops) {
                ifaces.push(portguard::metrics::IfaceMetrics {
                    iface: w.iface.clone(),
                    xdp_mode: w.guard.attached.map_or("unknown", |a| a.as_str()).into(),
                    mode: v.settings.mode.as_str().into(),
                    totals: v.totals,
                    tracked: v.tracked,
                    capacity: w.guard.meta().map(|m| m.capacity).unwrap_or(0),
                    top,
                });
            }
            if (ticks - 1).is_multiple_of(SOCKET_SCAN_EVERY) {
                let sockets = local_sockets(&plan.settings.ports);
                if last_sockets.is_some() && sockets != last_sockets {
                    log::warn!(
                        "sockets on guarded ports on this host changed: {}",
                        describe_sockets(&sockets)
                    );
                } else if last_sockets.is_none() && sockets.as_ref().is_some_and(|s| !s.is_empty())
                {
                    log::warn!(
                        "this host uses a guarded port: {} (see `portguard check`)",
                        describe_sockets(&sockets)
                    );
                }
                last_sockets = sockets;
            }
            if let Ok(mut s) = shared.lock() {
                s.ifaces = ifaces;
                s.sockets = last_sockets.clone();
            }
        }
        let mut out = std::io::stdout().lock();
        if tty {
            // Redraw in place: home, clear screen.
            let _ = write!(out, "\x1b[H\x1b[2J{}", report::table(&snaps));
        } else {
            for (iface, fresh) in &news {
                print_new_sources(&mut out, iface, fresh, plan.json);
            }
            for v in &snaps {
                let line = if plan.json {
                    let mut j = serde_json::to_value(InterfaceJson::new(v))?;
                    j["event"] = "interval".into();
                    j.to_string()
                } else {
                    report::line(v)
                };
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok(())
}

fn print_new_sources(
    out: &mut impl std::io::Write,
    iface: &str,
    fresh: &[portguard::guard::Source],
    json: bool,
) {
    let now = clock::monotonic_ns();
    for s in fresh.iter().take(NEW_SOURCE_LINES) {
        let line = if json {
            let r = report::Ranked { source: *s, rate: 0.0 };
            let mut j = serde_json::to_value(report::SourceJson::new(&r, now)).unwrap_or_default();
            j["event"] = "new_source".into();
            j["iface"] = iface.into();
            j.to_string()
        } else {
            report::new_source_line(iface, s)
        };
        let _ = writeln!(out, "{line}");
    }
    if fresh.len() > NEW_SOURCE_LINES {
        let more = fresh.len() - NEW_SOURCE_LINES;
        let line = if json {
            serde_json::json!({"event": "new_sources_suppressed", "iface": iface, "count": more})
                .to_string()
        } else {
            format!("... and {more} more new sources on {iface}")
        };
        let _ = writeln!(out, "{line}");
    }
}

/// SIGHUP: re-read the config file and apply it to the interfaces this process owns. A broken
/// file leaves the running configuration as it is.
fn reload(watched: &mut [Watched], args: &Args, plan: &mut Plan) {
    if args.config.is_none() {
        log::info!("SIGHUP: no --config file to re-read");
        return;
    }
    let new = match args.file().and_then(|f| args.plan(&f)) {
        Ok(p) => p,
        Err(e) => {
            log::error!("SIGHUP: keeping the running configuration: {e:#}");
            return;
        }
    };
    if new.ifaces != plan.ifaces {
        log::warn!("SIGHUP: a change of interfaces takes a restart; applying the other settings");
    }
    for w in watched.iter_mut().filter(|w| w.owner) {
        match w.guard.apply(&new.settings).context("applying the new settings") {
            Ok(()) => log::info!("{}: reloaded: {}", w.iface, new.settings.summary()),
            Err(e) => log::error!("{}: {e:#}", w.iface),
        }
    }
    *plan = Plan { ifaces: plan.ifaces.clone(), ..new };
}

/// Sockets on this host using a guarded port, as metrics see them; None if the scan failed.
fn local_sockets(ports: &[u16]) -> Option<Vec<portguard::metrics::LocalSocket>> {
    let report = portguard::check::scan(ports, None).ok()?;
    let mut v: Vec<_> = report
        .sockets
        .iter()
        .map(|k| {
            let port = if ports.contains(&k.local_port) { k.local_port } else { k.remote_port };
            let protocol = k.protocol.as_str().to_string();
            portguard::metrics::LocalSocket { port, protocol, state: k.state.clone() }
        })
        .collect();
    v.sort();
    Some(v)
}

fn describe_sockets(s: &Option<Vec<portguard::metrics::LocalSocket>>) -> String {
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
