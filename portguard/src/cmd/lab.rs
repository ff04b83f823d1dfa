//! `portguard lab`: portguard guarding a gateway in two throwaway network namespaces, with a
//! bounded mix of probes to 2745 and ordinary traffic, so a new user sees it work without
//! touching a real interface.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use portguard::{
    config::{Flags, Plan},
    daemon::{self, Daemon, Service, Signals},
    guard::AttachMode,
    lab::{self, GW_IF, Lab, Listeners, OUTSIDE_HOSTS},
    notify::Notifier,
    pins::Pins,
    privileges,
    settings::{Mode, Settings},
    text::plural,
};
use portguard_common::{DEFAULT_PORT, DEFAULT_SOURCE_CAPACITY};

/// Run portguard in a built-in lab (two network namespaces joined by a veth pair).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// How long the traffic runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// What to do with matched packets.
    #[arg(long, value_enum, default_value = "drop")]
    pub mode: Mode,
}

/// The port of the ordinary service beside the guarded one.
const SERVICE_PORT: u16 = 8080;

pub fn run(args: Args) -> Result<ExitCode> {
    privileges::require_attach()?;
    // On a terminal the counters are a table redrawn in place: warnings are held above it (see
    // `portguard run`).
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        portguard::notices::capture();
    }
    let result = lab(args);
    for n in portguard::notices::finish() {
        log::warn!("{n}");
    }
    result
}

fn lab(args: Args) -> Result<ExitCode> {
    let lab = Lab::create(&format!("pglab{}", std::process::id()))?;
    let guarded = Listeners::start(&lab.gw, DEFAULT_PORT)?;
    let service = Listeners::start(&lab.gw, SERVICE_PORT)?;
    let settings = Settings { mode: args.mode, ..Settings::default() };
    let plan = Plan {
        ifaces: vec![GW_IF.into()],
        settings: settings.clone(),
        xdp_mode: AttachMode::Auto,
        share: Default::default(),
        sources: DEFAULT_SOURCE_CAPACITY,
        sources_chosen: false,
        interval: 1.0,
        top: 10,
        json: false,
        persist: false,
        detach_on_exit: true,
        metrics: None,
        metrics_chosen: false,
        metrics_top: 10,
        netns: Some(lab.gw.clone()),
        rules: Vec::new(),
        p0f: portguard::config::P0f::Auto,
        capture: None,
    };
    // The lab's guard is pinned apart from any real one, and removed with the lab.
    let pins = Pins::new(format!("/sys/fs/bpf/portguard-lab-{}", std::process::id()));
    let root = pins.root.clone();
    println!(
        "lab: gateway {} / {} guarded on {GW_IF}: {}; {} outside hosts probe {DEFAULT_PORT} and use \
         port {SERVICE_PORT} for {} s",
        lab::gw_v4(),
        lab::gw_v6(),
        settings.summary(),
        OUTSIDE_HOSTS * 2,
        args.seconds
    );
    let out = lab.out.clone();
    let seconds = args.seconds;
    // The daemon runs in the gateway's namespace, as `portguard run` would on the router.
    let result = lab::in_netns(&lab.gw, move || -> Result<(u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let signals = rt.block_on(async { Signals::take() })?;
        let mut daemon = Daemon::start(plan, Flags::default(), pins)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let traffic = {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || traffic(&out, &stop, &sent))
        };
        let notifier = Notifier::from_env();
        let quiet = Service { notifier: &notifier, metrics: None };
        let served = rt.block_on(daemon::serve(&mut daemon, signals, Some(seconds as f64), quiet));
        stop.store(true, Ordering::Relaxed);
        let traffic =
            traffic.join().map_err(|_| anyhow::anyhow!("traffic thread panicked")).and_then(|r| r);
        let dropped = daemon.totals().map(|t| t.dropped);
        let finished = daemon.finish();
        served?;
        finished?;
        traffic.context("traffic")?;
        Ok((sent.load(Ordering::Relaxed), dropped?))
    });
    // Detaching leaves each namespace's (empty) lock directory; the lab's root is its own.
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(entry.path());
    }
    let _ = std::fs::remove_dir(&root);
    let (sent, dropped) = result??;

    println!();
    println!(
        "port {DEFAULT_PORT}: {} sent, {} and {} got through ({dropped} dropped by portguard)",
        plural(sent, "probe"),
        plural(guarded.tcp(), "TCP connection"),
        plural(guarded.udp(), "UDP datagram"),
    );
    println!(
        "port {SERVICE_PORT}: {} and {} delivered (ordinary traffic passes)",
        plural(service.tcp(), "TCP connection"),
        plural(service.udp(), "UDP datagram")
    );
    drop(lab);
    println!("lab removed: namespaces deleted, nothing left attached");
    Ok(ExitCode::SUCCESS)
}

/// Each round, every outside host tries TCP and UDP to the guarded port and to the service,
/// over IPv4 and IPv6. Bounded by `stop` (set after --seconds) and by a round cap.
fn traffic(out: &str, stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    for _round in 0..600 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for v6 in [false, true] {
            let gw = if v6 { lab::gw_v6() } else { lab::gw_v4() };
            for n in 0..OUTSIDE_HOSTS {
                let src = lab::outside(v6, n);
                // Host n probes n+1 times per round, so the table has an order to show.
                for _ in 0..=n {
                    lab::tcp_connect(
                        out,
                        src,
                        SocketAddr::new(gw, DEFAULT_PORT),
                        Duration::from_millis(20),
                    )?;
                    lab::udp_send(out, src, SocketAddr::new(gw, DEFAULT_PORT), 1, 64)?;
                    sent.fetch_add(2, Ordering::Relaxed);
                }
                lab::tcp_connect(
                    out,
                    src,
                    SocketAddr::new(gw, SERVICE_PORT),
                    Duration::from_millis(500),
                )?;
                lab::udp_send(out, src, SocketAddr::new(gw, SERVICE_PORT), 1, 64)?;
            }
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}
