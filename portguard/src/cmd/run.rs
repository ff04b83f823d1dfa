//! `portguard run`: attach to interfaces and show live counters until SIGINT or SIGTERM.

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use portguard::{
    counters,
    guard::{AttachMode, Guard},
    privileges,
    report::{self, View},
    settings::{Cidr, Direction, Mode, Protocol, Settings},
};
use portguard_common::{DEFAULT_PORT, DEFAULT_SOURCE_CAPACITY, Totals};
use tokio::signal::unix::{SignalKind, signal};

/// Attach to one or more interfaces and print live counters until interrupted.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Interface to guard (repeat for several). A firewall attaches where it is told: there is
    /// no default.
    #[arg(long = "iface", short = 'i', required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// What to do with matched packets.
    #[arg(long, value_enum, default_value = "drop")]
    pub mode: Mode,
    /// Guarded port (repeat for several).
    #[arg(long = "port", short = 'p', value_name = "N", default_values_t = [DEFAULT_PORT],
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Which port of a packet is compared: dst (probes), src (hosts answering from the port),
    /// or both.
    #[arg(long, value_enum, default_value = "dst")]
    pub direction: Direction,
    /// Guarded protocol (repeat for both).
    #[arg(long = "protocol", value_enum, default_values_t = [Protocol::Tcp, Protocol::Udp])]
    pub protocols: Vec<Protocol>,
    /// Source prefix that is counted but never dropped, e.g. 198.18.0.0/15 (repeatable).
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// XDP attach mode.
    #[arg(long = "xdp-mode", value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,
    /// Capacity of the per-source table.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SOURCE_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub sources: u32,
    /// New sources admitted into the table per CPU per 67 ms slice (default: paced so that a
    /// flood turns the table over no faster than once in 8 s).
    #[arg(long, value_name = "N", hide = true)]
    pub admit_per_slice: Option<u32>,
    /// Seconds between counter updates.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,
    /// Sources shown per interface.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Stop by itself after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

impl Args {
    pub fn settings(&self) -> Settings {
        let mut ports = self.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let mut protocols = self.protocols.clone();
        protocols.dedup();
        Settings {
            mode: self.mode,
            ports,
            protocols,
            direction: self.direction,
            allow: self.allow.clone(),
            admit_per_slice: self.admit_per_slice,
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    if !(args.interval >= 0.05 && args.interval <= 3600.0) {
        bail!("--interval must be between 0.05 and 3600 seconds");
    }
    privileges::require_attach()?;
    for iface in &args.ifaces {
        portguard::guard::ifindex(iface)?;
    }
    let settings = args.settings();
    // Attach everywhere or nowhere: an error drops the guards already attached, detaching them.
    let mut guards = Vec::new();
    for iface in &args.ifaces {
        let mut g = Guard::load(&settings, args.sources)?;
        let mode = g.attach(iface, args.xdp_mode)?;
        log::info!("guarding {iface} ({} XDP): {}", mode.as_str(), settings.summary());
        guards.push(g);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(watch(&mut guards, &args))?;
    drop(guards);
    log::info!("detached from {}", args.ifaces.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Prints counters every interval until a signal (or `--duration`) ends it.
pub async fn watch(guards: &mut [Guard], args: &Args) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval));
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let tty = std::io::stdout().is_terminal();
    let mut prev: Vec<(Totals, Instant)> =
        guards.iter().map(|_| (Totals::default(), Instant::now())).collect();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {}
        }
        let mut views = Vec::new();
        for (g, (p, at)) in guards.iter_mut().zip(prev.iter_mut()) {
            let totals = g.totals()?;
            let now = Instant::now();
            let rates = counters::rates(p, &totals, now - *at);
            *p = totals;
            *at = now;
            views.push(View {
                iface: g.iface.clone().unwrap_or_default(),
                attached: g.attached.map_or("-", |a| a.as_str()),
                summary: g.settings().summary(),
                totals,
                rates,
                sources: g.sources()?,
            });
        }
        let mut out = std::io::stdout().lock();
        if tty {
            // Redraw in place: home, clear screen.
            let _ = write!(out, "\x1b[H\x1b[2J{}", report::table(&views, args.top));
        } else {
            for v in &views {
                let _ = writeln!(out, "{}", report::line(v, args.top));
            }
        }
        let _ = out.flush();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok(())
}
