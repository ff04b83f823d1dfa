//! `cargo xtask vmlab`: portguard on real Debian kernels in QEMU guests, a router in a VM.
//!
//! The host builds a static portguard and a small runner for the guest's architecture, fetches
//! the kernel package (cached under ~/.cache/portguard/kernels), writes an initramfs, and boots
//! the kernel under QEMU (TCG) with a multi-queue virtio-net NIC on a tap inside a network
//! namespace of the lab's own. The guest runs `portguard run --iface eth0` on that NIC; the
//! host sends frames through the tap and asks the runner, over the serial console, for
//! portguard's JSON and for what the guest's listeners received, and checks exact counts.

// Built for the guest by artifacts::agent; compiled here too for clippy and its unit tests.
#[allow(dead_code)]
mod agent;
mod artifacts;
mod bench;
mod initramfs;
mod kernel;
mod lab;
mod multiprog;
mod qemu;
mod queues;
mod report;
mod scenario;
pub mod setup;
mod traffic;
mod user;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use crate::cross::Arch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Load, attach natively, drop and count IPv4/IPv6 probes exactly, ordinary traffic
    /// passes, set, stats --json, pins, a --persist restart under a steady stream, detach.
    Basic,
    /// Many vCPUs and queue pairs: traffic over every RX queue counted exactly once, one
    /// source over many queues one row (default 16 and 64 vCPUs).
    Queues,
    /// Map memory and `stats` time by CPU count; XDP drop rate of portguard against a minimal
    /// XDP_DROP program and an nftables ingress drop in the same guest (writes bench/vm.md).
    Bench,
    /// The aarch64 binary's non-BPF verbs under qemu-aarch64-static (no guest).
    User,
    /// portguard beside xdp-filter in libxdp's multi-program dispatcher: tests/multiprog.rs
    /// run for real in the guest, whose kernel runs the freplace programs that the host's may
    /// refuse (x86_64; the test binary runs from the host's root, mounted read-only over 9p).
    Multiprog,
}

#[derive(clap::Args)]
pub struct Args {
    /// Guest kernel series (repeatable): 5.10 (bullseye), 6.1 (bookworm), 6.12
    /// (bookworm-backports), the newest build of each (security updates included);
    /// SERIES@SUITE picks a suite, e.g. 6.1@bookworm for the point release. Default: 6.1 and
    /// 6.12.
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// vCPUs of the guest (repeatable). Default: 2 (basic, bench), 16 and 64 (queues).
    #[arg(long = "cpus", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: Vec<u32>,
    /// Queue pairs of the guest's NIC. Default: 2 x vCPUs (what XDP needs to transmit
    /// without locking), at least 2.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=128))]
    queues: Option<u32>,
    /// The guest's architecture.
    #[arg(long, value_enum, default_value = "x86_64")]
    arch: Arch,
    #[arg(long, value_enum, default_value = "basic")]
    scenario: Scenario,
    /// Ask apt again for the newest build of each kernel series.
    #[arg(long)]
    refresh: bool,
    /// Run the matrix `cargo xtask test` runs (CI_RUNS: basic on 5.10, 6.1@bookworm, 6.1 and
    /// 6.12 on x86_64, on 6.1 and 6.12 on aarch64, multiprog on 6.1, and the user scenario).
    #[arg(long, conflicts_with_all = ["kernels", "cpus", "queues", "arch", "scenario"])]
    ci: bool,
}

/// One guest to boot: what the scenarios get.
pub struct Run<'a> {
    pub arch: Arch,
    pub kernel: &'a kernel::Kernel,
    pub cpus: u32,
    pub queues: u32,
    pub initrd: &'a Path,
    pub dir: PathBuf,
    /// Host tools (ip, ethtool, nft, bpftool) are in the guest.
    pub tools: bool,
}

impl Run<'_> {
    pub fn label(&self) -> String {
        format!("{} {} {}cpu", self.kernel.series, self.arch.name(), self.cpus)
    }
}

pub fn run(args: Args) -> Result<()> {
    validate(&args)?;
    crate::setup::run()?;
    if args.ci {
        return ci();
    }
    run_checked(args)
}

/// `run` after validation and setup.
fn run_checked(args: Args) -> Result<()> {
    let start = Instant::now();
    if args.scenario == Scenario::User {
        return user::run();
    }
    let kernels = if args.kernels.is_empty() {
        vec!["6.1".into(), "6.12".into()]
    } else {
        args.kernels.clone()
    };
    let cpus = if !args.cpus.is_empty() {
        args.cpus.clone()
    } else if args.scenario == Scenario::Queues {
        vec![16, 64]
    } else {
        vec![2]
    };
    let mut failures = Vec::new();
    let mut bench_rows = Vec::new();
    for series in &kernels {
        let guests = prepare(args.arch, series, args.scenario, args.refresh)?;
        for &n in &cpus {
            let queues = args.queues.unwrap_or((2 * n).max(2));
            let run = Run {
                arch: args.arch,
                kernel: &guests.kernel,
                cpus: n,
                queues,
                initrd: &guests.initrd,
                dir: artifacts::lab_dir().join(format!(
                    "{}-{}-{}-{n}cpu",
                    series,
                    args.arch.name(),
                    scenario_name(args.scenario)
                )),
                tools: args.arch == Arch::host(),
            };
            let t = Instant::now();
            let r = match args.scenario {
                Scenario::Basic => scenario::basic(&run),
                Scenario::Queues => queues::run(&run),
                Scenario::Bench => bench::run(&run).map(|row| bench_rows.push(row)),
                Scenario::Multiprog => multiprog::run(&run),
                Scenario::User => unreachable!(),
            };
            eprintln!("vmlab: [{}] {:.0} s", run.label(), t.elapsed().as_secs_f64());
            if let Err(e) = r {
                eprintln!("vmlab: [{}] FAILED: {e:#}", run.label());
                failures.push(run.label());
            }
        }
    }
    if !bench_rows.is_empty() {
        bench::write(&bench_rows)?;
    }
    eprintln!("vmlab: wall time {:.0} s", start.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("vmlab failed on {}", failures.join(", "));
    }
    Ok(())
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Basic => "basic",
        Scenario::Queues => "queues",
        Scenario::Bench => "bench",
        Scenario::User => "user",
        Scenario::Multiprog => "multiprog",
    }
}

/// Bad combinations, as one-line errors, before anything is built or downloaded.
fn validate(args: &Args) -> Result<()> {
    for k in &args.kernels {
        kernel::suites(k)?;
    }
    if args.arch == Arch::Aarch64 && matches!(args.scenario, Scenario::Queues | Scenario::Bench) {
        bail!(
            "--scenario queues and bench run on x86_64 guests only (aarch64 runs basic and user)"
        );
    }
    if args.arch != Arch::host() && args.scenario == Scenario::Multiprog {
        bail!(
            "--scenario multiprog runs on {} guests only (the guest runs the host's test binary)",
            Arch::host().name()
        );
    }
    if args.arch == Arch::Aarch64 && args.cpus.iter().any(|&c| c > 8) {
        bail!("--cpus above 8 needs GICv3 on aarch64 guests; the lab boots at most 8 there");
    }
    if let Some(q) = args.queues
        && q < 2
    {
        bail!("--queues must be at least 2 (the lab's tap is multi-queue)");
    }
    Ok(())
}

/// A kernel and the initramfs for it.
struct Guests {
    kernel: kernel::Kernel,
    initrd: PathBuf,
}

fn prepare(arch: Arch, series: &str, scenario: Scenario, refresh: bool) -> Result<Guests> {
    let portguard = crate::cross::portguard(arch)?;
    let agent = artifacts::agent(arch)?;
    let kernel = kernel::fetch(series, arch, refresh)?;
    eprintln!("vmlab: kernel {} ({} {})", kernel.release, kernel.package, kernel.version);
    // tcp_diag and udp_diag answer `portguard check` (sock_diag); a real system loads them on
    // demand through modprobe, which the initramfs does not have.
    let mut wanted = vec!["virtio_pci", "virtio_net", "tcp_diag", "udp_diag"];
    let mut tools = vec!["/usr/sbin/ip", "/usr/sbin/ethtool"];
    if scenario == Scenario::Bench || scenario == Scenario::Queues {
        tools.push("/usr/sbin/bpftool");
    }
    if scenario == Scenario::Multiprog {
        // The host's root over 9p, and the lab's veth pairs of the tests.
        wanted.extend(["9pnet_virtio", "9p", "veth"]);
    }
    if scenario == Scenario::Bench {
        // libcrc32c (an nf_tables dependency) needs a crc32c implementation: a soft
        // dependency modinfo does not spell out as `depends`.
        wanted.extend(["?crc32c_generic", "nf_tables"]);
        tools.push("/usr/sbin/nft");
    }
    let modules = kernel.modules(&wanted)?;
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    eprintln!(
        "vmlab: modules to load: {}",
        if names.is_empty() { "none".into() } else { names.join(" ") }
    );
    let busybox = busybox(arch)?;
    let mut extra = Vec::new();
    if scenario == Scenario::Bench {
        extra.push(("pgvm/xdp_drop.o".to_string(), bench::xdp_drop_object(), 0o644));
    }
    let host_tools: Vec<&str> = if arch == Arch::host() { tools } else { Vec::new() };
    let contents = initramfs::Contents {
        arch,
        busybox: &busybox,
        agent: &agent,
        portguard: &portguard,
        modules: &modules,
        host_tools: &host_tools,
        extra,
    };
    let dir = artifacts::lab_dir();
    std::fs::create_dir_all(&dir)?;
    let initrd =
        dir.join(format!("initrd-{}-{}-{}.cpio", series, arch.name(), scenario_name(scenario)));
    let size = initramfs::build(&contents, &initrd)?;
    eprintln!("vmlab: initramfs {} ({:.1} MiB)", initrd.display(), size as f64 / 1048576.0);
    Ok(Guests { kernel, initrd })
}

/// A static busybox for the guest: the host's (busybox-static) on x86_64, Debian's arm64
/// build unpacked from its package otherwise.
fn busybox(arch: Arch) -> Result<PathBuf> {
    if arch == Arch::host() {
        let p = PathBuf::from("/bin/busybox");
        if !p.exists() {
            bail!("/bin/busybox is missing (cargo xtask setup installs busybox-static)");
        }
        return Ok(p);
    }
    let cache = kernel::cache_dir()?.join("userland");
    let marker = cache.join(format!("busybox-{}", arch.deb()));
    if marker.exists() {
        return Ok(marker);
    }
    let apt = kernel::Apt::new(&kernel::cache_dir()?.join("apt"))?;
    let root = match apt.unpack("busybox-static", arch, "bookworm", &cache) {
        Ok(r) => r,
        Err(_) => {
            apt.update()?;
            apt.unpack("busybox-static", arch, "bookworm", &cache)?
        }
    };
    std::fs::copy(root.join("bin/busybox"), &marker).context("copying busybox")?;
    Ok(marker)
}

/// The kernel matrix `cargo xtask test` runs after the cargo tests: the basic scenario at 2
/// vCPUs on 6.1 and 6.12, x86_64 and aarch64 guests; on x86_64 also 5.10 (the oldest kernel
/// supported, the only one where the program runs on its fallback clock) and 6.1@bookworm
/// (Debian 12's point-release kernel, whose verifier is older than 6.1's security updates);
/// the sharing tests (tests/multiprog.rs) on 6.1 x86_64, which the host's kernel may skip
/// (it may refuse freplace); and the aarch64 binary under qemu-user. About half a minute per kernel here.
pub const CI_RUNS: [(&str, Arch, Scenario); 8] = [
    ("5.10", Arch::X86_64, Scenario::Basic),
    ("6.1@bookworm", Arch::X86_64, Scenario::Basic),
    ("6.1", Arch::X86_64, Scenario::Basic),
    ("6.1", Arch::X86_64, Scenario::Multiprog),
    ("6.12", Arch::X86_64, Scenario::Basic),
    ("6.1", Arch::Aarch64, Scenario::Basic),
    ("6.12", Arch::Aarch64, Scenario::Basic),
    ("", Arch::Aarch64, Scenario::User),
];

/// Runs CI_RUNS, all of them even when one fails.
pub fn ci() -> Result<()> {
    let start = Instant::now();
    let mut failed = Vec::new();
    for (series, arch, scenario) in CI_RUNS {
        let t = Instant::now();
        let args = Args {
            kernels: if series.is_empty() { vec![] } else { vec![series.into()] },
            cpus: vec![2],
            queues: None,
            arch,
            scenario,
            refresh: false,
            ci: false,
        };
        let what = format!("{} {} {}", scenario_name(scenario), series, arch.name());
        if let Err(e) = run_checked(args) {
            eprintln!("vmlab: {what}: {e:#}");
            failed.push(what.clone());
        }
        println!("vmlab: {what}: {:.0} s", t.elapsed().as_secs_f64());
    }
    println!("vmlab: kernel matrix wall time {:.0} s", start.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("vmlab failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Polls `cond` every 200 ms until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
