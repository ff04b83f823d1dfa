//! `portguard capture`: matched packets, dropped ones included, written to a pcapng file as the
//! program saw them, each on its guard's interface with the verdict and the source's label.

use std::{
    io::{BufWriter, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard::{
    capture::{self, Options, Session, Sink, Writer, Written},
    error::usage,
    guard::View,
    pins::Pins,
    ranges, text,
};
use tokio::signal::unix::{SignalKind, signal};

use super::args::targets;

/// Write matched packets (dropped ones included) to a pcapng file, as the program saw them: by
/// default the first packets of each new source, at a bounded rate.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Interface to capture on (repeat for several; default: every guarded one). Each is an
    /// interface of its own in the file.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// The pcapng file to write; `-` is standard output (the default when it is not a
    /// terminal: `portguard capture | tshark -r -`).
    #[arg(long = "write", short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after this many packets.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Packets kept of each new source [default: 10].
    #[arg(long, value_name = "K", value_parser = ranges::parse::per_source, conflicts_with = "all")]
    pub per_source: Option<u16>,
    /// Every matched packet (up to --rate), not only each new source's first ones.
    #[arg(long)]
    pub all: bool,
    /// Packets per second at most, 1 to 100000 [default: 1000]: a flood cannot swamp the disk.
    #[arg(long, value_name = "PPS", value_parser = ranges::parse::capture_rate)]
    pub rate: Option<u32>,
    /// Bytes kept of each packet, 14 to 256 [default: 256].
    #[arg(long, value_name = "BYTES", value_parser = ranges::parse::snaplen)]
    pub snaplen: Option<u32>,
    /// Stop after this many seconds (default: at --count, or on SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS", value_parser = ranges::parse::duration)]
    pub duration: Option<f64>,
}

/// How often the ring buffers are read.
const POLL: Duration = Duration::from_millis(50);

pub fn run(args: Args) -> Result<ExitCode> {
    let to_stdout = match &args.write {
        Some(p) => p.as_os_str() == "-",
        None if std::io::stdout().is_terminal() => {
            return Err(usage(
                "a pcapng capture is binary: give -w FILE, or pipe it (`| tshark -r -`)",
            ));
        }
        None => true,
    };
    let pins = Pins::default();
    let names = targets(&pins, &args.ifaces)?;
    if names.is_empty() {
        bail!("nothing is guarded in this network namespace: nothing to capture");
    }
    let mut views: Vec<View> = names.iter().map(|i| View::open(&pins, i)).collect::<Result<_>>()?;
    // The copy-out program is reached through a program array that only the process holding
    // the programs keeps filled: on a guard left in place with no `portguard run` for it,
    // nothing would ever be copied, and the capture would wait on an empty file.
    if let Some(v) = views.iter().find(|v| !v.owned()) {
        bail!(
            "{}: no portguard runs for it (left in place), and packets are copied out only while \
             one does: start `portguard run` (it adopts the guard), then capture",
            v.iface()
        );
    }
    for v in &views {
        if !v.copies()? {
            bail!(
                "{}: the kernel runs no copy-out program for it (Linux 5.18 or later has the \
                 helper it needs; `portguard run` said so when it started): nothing to capture",
                v.iface()
            );
        }
    }
    let snaplen = args.snaplen.unwrap_or(capture::MAX_SNAPLEN);
    let out: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        let path = args.write.as_ref().expect("a path unless stdout");
        Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )
    };
    let ro: Vec<&View> = views.iter().collect();
    let writer = Writer::new(BufWriter::new(out), &capture::session::interfaces(&ro), snaplen)?;
    let opts = Options {
        count: args.count,
        per_source: (!args.all).then(|| args.per_source.unwrap_or(capture::DEFAULT_PER_SOURCE)),
        all: args.all,
        rate: args.rate.unwrap_or(capture::DEFAULT_RATE),
        snaplen,
    };
    let mut refs: Vec<&mut View> = views.iter_mut().collect();
    let session = Session::start(&mut refs, Sink::File(writer), opts)?;
    let what = match opts.per_source {
        Some(k) => format!("the first {} of each new source", text::plural(k, "packet")),
        None => "every matched packet".to_string(),
    };
    let dest = if to_stdout {
        "standard output".to_string()
    } else {
        args.write.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    };
    eprintln!(
        "capturing {what} on {}, at most {}/s, to {dest}; Ctrl-C stops",
        names.join(", "),
        opts.rate
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (session, looped) = rt.block_on(capture_loop(session, args.duration));
    let losses = session.losses();
    let finished = session.finish();
    let written = finished.as_ref().map_or(Written { packets: 0, sources: 0 }, |w| *w);
    let mut line = format!(
        "captured {} from {} to {dest}",
        text::plural(written.packets, "packet"),
        text::plural(written.sources as u64, "source")
    );
    for (iface, lost, paced) in losses {
        if lost + paced > 0 {
            line.push_str(&format!(
                "; {iface}: {lost} lost (ring buffer full), {paced} over the rate"
            ));
        }
    }
    eprintln!("{line}");
    looped?;
    finished?;
    Ok(ExitCode::SUCCESS)
}

/// Reads and writes until the count is reached, the duration ends, or a signal asks to stop.
/// Returns the session (to be finished) and how the loop ended.
async fn capture_loop(mut s: Session, duration: Option<f64>) -> (Session, Result<()>) {
    let signals = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    let (Ok(mut int), Ok(mut term)) = signals else {
        return (s, Err(anyhow::anyhow!("cannot handle SIGINT and SIGTERM")));
    };
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        match s.drain(false) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return (s, Err(e).context("writing the capture")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    (s, Ok(()))
}
