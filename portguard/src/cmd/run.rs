//! `portguard run`: guard interfaces and show live counters until SIGINT or SIGTERM; SIGHUP
//! re-reads the config file.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Result;
use portguard::{
    config::{Flags, Plan},
    daemon::{self, Daemon, Service, Signals, Stopped},
    guard::AttachMode,
    metrics,
    multiprog::Attach,
    notices,
    notify::Notifier,
    pins::Pins,
    privileges, ranges,
};

use super::args::SettingsArgs;

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
    /// Guarded port (repeat for several) [default: 2745].
    #[arg(long = "port", short = 'p', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// XDP attach mode [default: auto].
    #[arg(long = "xdp-mode", value_enum)]
    pub xdp_mode: Option<AttachMode>,
    /// Take the interface's XDP hook alone, or share it with other XDP programs (xdp-filter,
    /// xdp-loader, ...) through libxdp's dispatcher [default: auto: share when a libxdp
    /// dispatcher is attached, alone otherwise].
    #[arg(long, value_enum)]
    pub attach: Option<Attach>,
    /// Run priority among the dispatcher's programs, lower first [default: 5, before
    /// xdp-filter's 10 and libxdp's default 50; a guard left in place keeps its own].
    #[arg(long, value_name = "N")]
    pub priority: Option<u32>,
    /// Capacity of the per-source table, 256 to 1048576 [default: 65536].
    #[arg(long, value_name = "N", value_parser = ranges::parse::sources)]
    pub sources: Option<u32>,
    /// New sources admitted into the table per CPU per 67 ms slice [default: paced so that a
    /// flood turns the table over no faster than once in 8 s].
    #[arg(long, value_name = "N", hide = true)]
    pub admit_per_slice: Option<u32>,
    /// Seconds between counter updates, 0.05 to 3600 [default: 1].
    #[arg(long, value_name = "SECONDS", value_parser = ranges::parse::interval)]
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
    /// Detach on exit even a guard this run adopted (one left in place by an earlier run or a
    /// stopped service, which otherwise stays in place).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Stop by itself after this many seconds, more than 0 and at most a year (default: run
    /// until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS", value_parser = ranges::parse::duration)]
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
    /// A fingerprint rule file read after the shipped table (repeat for several; format in
    /// /etc/portguard/portguard.fp).
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,
    /// p0f's database for OS labels: a file, `auto` (Debian's /etc/p0f/p0f.fp when installed)
    /// or `off` [default: auto].
    #[arg(long = "p0f", value_name = "FILE|auto|off")]
    pub p0f: Option<String>,
}

impl Args {
    pub fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            ifaces: self.ifaces.clone(),
            mode: self.settings.mode,
            ports: self.ports.clone(),
            direction: self.settings.direction,
            protocols: self.settings.protocols.clone(),
            allow: self.settings.allow.clone(),
            xdp_mode: self.xdp_mode,
            attach: self.attach,
            priority: self.priority,
            sources: self.sources,
            admit_per_slice: self.admit_per_slice,
            unjudged: self.settings.unjudged,
            v4_prefix: self.settings.v4_prefix,
            v6_prefix: self.settings.v6_prefix,
            interval: self.interval,
            top: self.top,
            json: self.json,
            persist: self.persist,
            detach_on_exit: self.detach_on_exit,
            metrics: self.metrics,
            no_metrics: self.no_metrics,
            metrics_top: self.metrics_top,
            rules: self.rules.clone(),
            p0f: self.p0f.clone(),
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    args.settings.check_allow()?;
    let flags = args.flags();
    let plan = Plan::load(&flags)?;
    // On a terminal the live table is redrawn every interval: warnings from here on are held
    // and drawn above it rather than written where the next redraw would wipe them.
    if std::io::stdout().is_terminal() && !plan.json {
        notices::capture();
    }
    let result = setup_and_guard(plan, flags, args.duration);
    // Whatever was never drawn (a failure before the first frame) is written out now.
    for n in notices::finish() {
        log::warn!("{n}");
    }
    result
}

fn setup_and_guard(plan: Plan, flags: Flags, duration: Option<f64>) -> Result<ExitCode> {
    super::args::warn_everything_allowed(&plan.settings.allow);
    privileges::require_attach()?;
    for iface in &plan.ifaces {
        portguard::guard::ifindex(iface)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let signals = rt.block_on(async { Signals::take() })?;
    // Bound before anything is attached: a taken port is an early error with nothing to undo.
    let listener = match plan.metrics {
        Some(addr) => match rt.block_on(metrics::bind(addr)) {
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
    guard(&rt, plan, flags, listener, signals, duration)
}

/// Attaches, serves until told to stop, and releases.
fn guard(
    rt: &tokio::runtime::Runtime,
    plan: Plan,
    flags: Flags,
    listener: Option<tokio::net::TcpListener>,
    signals: Signals,
    duration: Option<f64>,
) -> Result<ExitCode> {
    let ifaces = plan.ifaces.clone();
    let sources = plan.sources_chosen.then_some(plan.sources);
    let pins = Pins::default();
    let mut daemon = Daemon::start(plan, flags, pins.clone())?;
    for iface in &ifaces {
        warn_if_quiet(iface);
        if let Some(asked) = sources {
            warn_if_other_capacity(&pins, iface, asked);
        }
    }
    let notifier = Notifier::from_env();
    let shared = metrics::Shared::default();
    let server = listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            log::info!("metrics on http://{a}/metrics");
        }
        rt.spawn(metrics::serve(l, shared.clone()))
    });
    let service = Service { notifier: &notifier, metrics: Some(shared) };
    let result = rt.block_on(daemon::serve(&mut daemon, signals, duration, service));
    notifier.stopping();
    if let Some(s) = server {
        s.abort();
    }
    // Whatever ended the loop, what this process owns is released (or left in place) first.
    let finished = daemon.finish();
    match result? {
        Stopped::Asked => finished.map(|()| ExitCode::SUCCESS),
        Stopped::Detached => finished.map(|()| ExitCode::from(daemon::EXIT_DETACHED)),
    }
}

/// A guard that was already there (adopted, or another portguard's) keeps its source table:
/// its size cannot change without losing the counters, so a different --sources is not
/// applied, and says so, as a different --xdp-mode does.
fn warn_if_other_capacity(pins: &Pins, iface: &str, asked: u32) {
    let Ok(v) = portguard::guard::View::open(pins, iface) else { return };
    if v.capacity() != asked {
        log::warn!(
            "{iface}: kept its table of {} sources (--sources {asked} is not applied to a guard \
             already in place; `portguard detach` first, which loses its counters)",
            v.capacity()
        );
    }
}

/// An interface that is down, or the loopback, is guarded as asked, but nothing from outside
/// reaches it: say so rather than let an admin wonder why nothing is ever counted.
fn warn_if_quiet(iface: &str) {
    let Some(flags) = link_flags(iface) else { return };
    if flags & libc::IFF_LOOPBACK != 0 {
        log::warn!("{iface} is the loopback interface: it carries only this host's own traffic");
    } else if flags & libc::IFF_UP == 0 {
        log::warn!("{iface} is down: nothing reaches it until it is up (`ip link set {iface} up`)");
    }
}

/// The interface's flags (IFF_UP, IFF_LOOPBACK, ...) in this network namespace, from
/// SIOCGIFFLAGS; None if they cannot be read.
fn link_flags(iface: &str) -> Option<i32> {
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a datagram socket only used for the ioctl below, closed before returning.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a zeroed ifreq is valid; the name fits with its NUL (checked above).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of this ifreq. (`as _`: the
    // request is an unsigned long with glibc, an int with musl.)
    let ok = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) } == 0;
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    // SAFETY: the kernel filled in the flags member of the union.
    ok.then(|| i32::from(unsafe { req.ifr_ifru.ifru_flags }))
}
