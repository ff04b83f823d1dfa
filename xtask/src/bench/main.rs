//! `cargo xtask bench`: portguard's in-kernel cost beside xdp-filter and the floor, a
//! spoofed-source flood, map memory, and what it all means against line rate. Writes
//! BENCHMARKS.md (and bench/cost.png) at the repo root and prints the same tables.
//!
//! - `bpf`: raw bpf(2): the floor program, fds by id, BPF_PROG_TEST_RUN for every tool.
//! - `peers`: xdp-filter in a namespace of its own, and the floor.
//! - `cases`: the frames; `cost`: ns/packet by case and tool.
//! - `copyout`: what fingerprints and captures add (the copy-out path).
//! - `probes`: one-primitive programs (clock, map lookups), to explain the cost.
//! - `flood`: distinct sources, repeat 1; `memory`: map memory.
//! - `userspace`: `portguard stats`/`status` on a full table, and the daemon's CPU and memory.
//! - `veth`: end to end, trafgen through a veth pair into portguard, nftables and iptables.
//! - `report`: the Markdown; `plot`: the PNG.
//! - `dispatcher`: what sharing the hook through libxdp's dispatcher costs (`--dispatcher`,
//!   alone: writes bench/dispatcher.md).

// The shared helpers of xtask (this binary is built only for `cargo xtask bench`, with the
// `bench` feature, so that plain `cargo xtask` never builds portguard: on a fresh machine it
// must run before bpf-linker exists).
#[path = "../util.rs"]
#[allow(dead_code)]
mod util;
#[path = "../vm_section.rs"]
mod vm_section;

mod bpf;
mod cases;
mod contended;
mod copyout;
mod cost;
mod dispatcher;
mod flood;
mod memory;
mod peers;
mod plot;
mod probes;
mod report;
mod userspace;
mod veth;

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use portguard::{
    guard::Loaded,
    settings::{Mode, Settings},
};

use crate::util::root;

/// portguard's benchmarks (run through `cargo xtask bench`).
#[derive(clap::Parser)]
#[command(name = "cargo xtask bench")]
pub struct Args {
    /// BPF_PROG_TEST_RUN repeat for each cost measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Rounds of every cost measurement (tools interleaved); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Frames in the spoofed-source flood, each from a distinct source.
    #[arg(long, default_value_t = 1_000_000)]
    flood_frames: usize,
    /// Passes of each tool over the flood (interleaved); the median is reported.
    #[arg(long, default_value_t = 3)]
    flood_rounds: usize,
    /// Skip the userspace section (`portguard stats` timings, the daemon's CPU and memory).
    #[arg(long)]
    skip_userspace: bool,
    /// Seconds the daemon is measured for in each userspace scenario (after a 3 s warm-up).
    #[arg(long, default_value_t = 20)]
    daemon_seconds: u64,
    /// Skip the end-to-end section (trafgen through a veth pair into each dropping tool).
    #[arg(long)]
    skip_veth: bool,
    /// Seconds of each end-to-end measurement (after a 1 s warm-up).
    #[arg(long, default_value_t = 8)]
    veth_seconds: u64,
    /// Rounds of the end-to-end measurements (tools interleaved); the median is reported.
    #[arg(long, default_value_t = 2)]
    veth_rounds: usize,
    /// Where to write the report (default: BENCHMARKS.md at the repo root; the plot goes to
    /// bench/cost.png beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure only what sharing the interface through libxdp's dispatcher costs, and write
    /// that fragment (default bench/dispatcher.md; --out overrides); BENCHMARKS.md is left
    /// alone.
    #[arg(long)]
    dispatcher: bool,
}

pub const PG_DROP: &str = "portguard drop";
pub const PG_COUNT: &str = "portguard count";
/// Drop mode with an admission budget of 0: no source ever gets a SOURCES entry, so a matched
/// packet takes the lookup-miss path. Not a configuration anyone runs; it tells how much of a
/// matched drop is the per-source hit-and-update.
pub const PG_UNTRACKED: &str = "portguard untracked";
pub const XDP_FILTER: &str = "xdp-filter";
pub const FLOOR: &str = "floor";

/// What the flood left in portguard's maps (the last pass) and whether every pass dropped
/// every frame.
pub struct Accounting {
    pub seen: u64,
    pub dropped: u64,
    pub admitted: u64,
    pub untracked: u64,
    pub tracked: usize,
    pub steady_expected: u64,
    pub steady_counted: u64,
    pub newcomer_sent: u64,
    pub newcomer_counted: u64,
    pub admitted_evidence: u64,
    pub every_pass_dropped_all: bool,
}

pub struct FloodTool {
    pub name: &'static str,
    /// Medians over the passes, ns per packet.
    pub wall_ns: f64,
    pub kernel_ns: f64,
    /// Frames dropped in the last pass.
    pub dropped: u64,
}

pub struct FloodResult {
    pub evidence: flood::Evidence,
    pub frames: usize,
    pub distinct: u64,
    pub rounds: usize,
    pub tools: Vec<FloodTool>,
    pub accounting: Accounting,
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load XDP programs and make a network namespace: run as root");
    }
    if args.rounds == 0
        || args.flood_rounds == 0
        || args.repeat == 0
        || args.daemon_seconds == 0
        || args.veth_seconds == 0
        || args.veth_rounds == 0
    {
        bail!(
            "--repeat, --rounds, --flood-rounds, --daemon-seconds, --veth-seconds and \
             --veth-rounds must be at least 1"
        );
    }
    if args.dispatcher {
        let out = args.out.clone().unwrap_or_else(|| root().join("bench/dispatcher.md"));
        return dispatcher::run(args.repeat, args.rounds, &out);
    }
    let started = Instant::now();
    let machine = report::Machine::probe();

    let mut drop_guard = Loaded::with_defaults(&Settings::default())?;
    let mut count_guard =
        Loaded::with_defaults(&Settings { mode: Mode::Count, ..Settings::default() })?;
    let mut untracked_guard =
        Loaded::with_defaults(&Settings { admit_per_slice: Some(0), ..Settings::default() })?;
    let drop_fd = dup(&mut drop_guard)?;
    let count_fd = dup(&mut count_guard)?;
    let untracked_fd = dup(&mut untracked_guard)?;
    let xf = peers::XdpFilter::start(cases::GUARDED)?;
    let xf_fd = xf.fd.as_ref().context("xdp-filter has no program fd")?;
    let floor_fd = peers::floor()?;

    let tools = [
        cost::Tool { name: PG_DROP, fd: drop_fd.as_fd() },
        cost::Tool { name: PG_COUNT, fd: count_fd.as_fd() },
        cost::Tool { name: PG_UNTRACKED, fd: untracked_fd.as_fd() },
        cost::Tool { name: XDP_FILTER, fd: xf_fd.as_fd() },
        cost::Tool { name: FLOOR, fd: floor_fd.as_fd() },
    ];
    eprintln!(
        "bench: {} cases x {} tools, repeat {}, {} rounds",
        cases::all().len(),
        tools.len(),
        args.repeat,
        args.rounds
    );
    let table = cost::measure(&tools, cases::all(), args.repeat, args.rounds)?;
    check_verdicts(&table)?;
    let first = table.cases.first().context("no cases")?;
    let probes = probes::measure(first, args.repeat, args.rounds)?;
    let contended = contended::measure(drop_fd.as_fd(), args.repeat, args.rounds)?;
    let copyout = copyout::measure(&first.frame, args.rounds)?;
    // The dispatcher's fragment, written beside BENCHMARKS.md and copied into it, when this run
    // writes BENCHMARKS.md itself.
    if args.out.is_none() {
        dispatcher::run(args.repeat, args.rounds, &root().join("bench/dispatcher.md"))?;
    }

    let pg_maps = memory::of_portguard(&drop_guard.program()?.info()?)?;
    let xf_maps = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == xf.id)
        .map(|p| memory::of_program(&p))
        .transpose()?
        .unwrap_or_default();

    let flood = run_flood(&args, xf_fd.as_fd(), floor_fd.as_fd())?;
    let xf_label = format!("{} {} (program {})", XDP_FILTER, xf.version, xf.name);
    drop(xf);
    // After xdp-filter is gone: the fewer programs and namespaces about, the quieter.
    let userspace = if args.skip_userspace {
        None
    } else {
        Some(userspace::measure(std::time::Duration::from_secs(args.daemon_seconds))?)
    };
    let veth = if args.skip_veth {
        None
    } else {
        Some(veth::measure(args.veth_seconds, args.veth_rounds)?)
    };

    let elapsed = started.elapsed();
    let out = args.out.clone().unwrap_or_else(|| root().join("BENCHMARKS.md"));
    let png =
        out.parent().map(|p| p.join("bench/cost.png")).context("report path has no parent")?;
    let plotted = plot::draw(&table, &png);
    if let Err(e) = &plotted {
        eprintln!("bench: warning: no plot: {e:#}");
    }
    let md = report::render(&report::Inputs {
        machine: &machine,
        xdp_filter: &xf_label,
        table: &table,
        probes: &probes,
        contended: &contended,
        copyout: &copyout,
        flood: &flood,
        pg_maps: &pg_maps,
        xf_maps: &xf_maps,
        userspace: userspace.as_ref(),
        veth: veth.as_ref(),
        plot: plotted.is_ok().then_some("bench/cost.png"),
        elapsed,
        args: &args,
    });
    // The Router VM section is measured by the VM lab, not by this run: copied as it is.
    let md = vm_section::with_dispatcher(&md, &root());
    let md = vm_section::with_router_vm(&md, &root());
    println!("{md}");
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {} in {:.0} s", out.display(), elapsed.as_secs_f64());
    Ok(())
}

/// An fd of our own for a guard's program, so that the guard stays free to read its maps.
fn dup(guard: &mut Loaded) -> Result<OwnedFd> {
    let prog = guard.program()?;
    let fd = prog.fd().context("portguard's program has no fd")?;
    fd.as_fd().try_clone_to_owned().context("duplicating portguard's program fd")
}

/// Numbers from a program that does not do what it should are not worth printing.
fn check_verdicts(t: &cost::CostTable) -> Result<()> {
    for (i, case) in t.cases.iter().enumerate() {
        let drop = if case.matched { bpf::XDP_DROP } else { bpf::XDP_PASS };
        let expect = [
            (PG_DROP, drop),
            (PG_UNTRACKED, drop),
            (PG_COUNT, bpf::XDP_PASS),
            (FLOOR, bpf::XDP_PASS),
        ];
        for (tool, want) in expect {
            let got = t.cell(i, tool).map(|c| c.verdict).context("missing cell")?;
            peers::check_verdict(tool, got, want, &case.name)?;
        }
        if case.plain {
            let want = if case.matched { bpf::XDP_DROP } else { bpf::XDP_PASS };
            let got = t.cell(i, XDP_FILTER).map(|c| c.verdict).context("missing cell")?;
            peers::check_verdict(XDP_FILTER, got, want, &case.name)?;
        }
    }
    Ok(())
}

fn run_flood(
    args: &Args,
    xf: std::os::fd::BorrowedFd<'_>,
    floor: std::os::fd::BorrowedFd<'_>,
) -> Result<FloodResult> {
    eprintln!("bench: building {} flood frames", args.flood_frames);
    let seq = flood::Sequence::new(args.flood_frames);
    let names = [PG_DROP, XDP_FILTER, FLOOR];
    let mut wall = vec![Vec::new(); names.len()];
    let mut kernel = vec![Vec::new(); names.len()];
    let mut dropped = vec![0; names.len()];
    let mut acct = None;
    let mut all_dropped = true;
    for round in 0..args.flood_rounds {
        for k in 0..names.len() {
            let t = (k + round) % names.len();
            let p = if names[t] == PG_DROP {
                // A fresh program each pass: the flood must find an empty table.
                let mut g = Loaded::with_defaults(&Settings::default())?;
                let fd = dup(&mut g)?;
                let p = flood::pass(fd.as_fd(), &seq)?;
                let a = accounting(&g, &seq)?;
                all_dropped &= a.dropped == seq.len() as u64 && p.dropped == seq.len() as u64;
                acct = Some(a);
                p
            } else {
                flood::pass(if names[t] == XDP_FILTER { xf } else { floor }, &seq)?
            };
            wall[t].push(p.wall_ns);
            dropped[t] = p.dropped;
            kernel[t].push(p.kernel_ns);
        }
        eprintln!("bench: flood round {}/{}", round + 1, args.flood_rounds);
    }
    let mut accounting = acct.context("the flood ran no portguard pass")?;
    accounting.every_pass_dropped_all = all_dropped;
    eprintln!("bench: the flood with a small table, room made as the daemon does");
    let evidence = flood::evidence(1024, 256, args.flood_frames as u64)?;
    Ok(FloodResult {
        evidence,
        frames: seq.len(),
        distinct: seq.distinct_sources(),
        rounds: args.flood_rounds,
        tools: names
            .iter()
            .zip(wall.into_iter().zip(kernel))
            .zip(dropped)
            .map(|((n, (w, k)), d)| FloodTool {
                name: n,
                wall_ns: cost::median(w),
                kernel_ns: cost::median(k),
                dropped: d,
            })
            .collect(),
        accounting,
    })
}

fn accounting(g: &Loaded, seq: &flood::Sequence) -> Result<Accounting> {
    let totals = g.totals()?;
    let sources = g.sources()?;
    let count = |ip| sources.iter().find(|s| s.addr.contains(ip)).map_or(0, |s| s.stats.packets);
    Ok(Accounting {
        seen: totals.seen,
        dropped: totals.dropped,
        admitted: totals.admitted,
        untracked: totals.untracked,
        tracked: sources.len(),
        steady_expected: seq.steady_frames,
        steady_counted: count(flood::steady_addr()),
        newcomer_sent: seq.newcomer_frames,
        newcomer_counted: count(flood::newcomer_addr()),
        admitted_evidence: totals.admitted_evidence,
        every_pass_dropped_all: true,
    })
}
