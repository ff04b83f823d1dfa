//! Developer and CI tasks, one module per subcommand: `cargo xtask <task>`.

mod audit;
mod cross;
mod deb;
mod demo;
mod fuzz;
mod install;
mod lint;
mod oracle;
mod setup;
mod test;
mod util;
mod vm_section;
mod vmlab;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "portguard's developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): Debian packages, nightly rust-src,
    /// bpf-linker built against the nightly toolchain's own LLVM, a mounted bpffs.
    Setup,
    /// Set up, build, and run portguard in its built-in namespace lab.
    Demo(demo::Args),
    /// Set up, lint both sides, and run the whole test suite.
    Test(test::Args),
    /// Clippy for the userspace crates and, separately, the eBPF crate.
    Lint,
    /// Install the binary, systemd unit, default config, man page and completions.
    Install(install::Args),
    /// Build a Debian package, amd64 or arm64 (cargo-deb; installed on first use).
    Deb(deb::Args),
    /// Dependency audit with cargo-deny (installed on first use): licenses, bans, sources, and
    /// advisories when a RustSec database is on disk.
    Audit,
    /// Benchmarks against xdp-filter and the floor; writes BENCHMARKS.md. Arguments go to the
    /// benchmark binary (`cargo xtask bench -- --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Differential fuzzing: the XDP program against the reference classifier, at length;
    /// with --kernel, against the kernel itself.
    Fuzz(fuzz::Args),
    /// The router VM lab: portguard on Debian kernels in QEMU guests (x86_64, aarch64).
    Vmlab(vmlab::Args),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version and a bare `cargo xtask` print as usual.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("xtask: {}", one_line(&e));
            return std::process::ExitCode::from(2);
        }
    };
    let r = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo(a) => demo::run(a),
        Task::Test(a) => test::run(a),
        Task::Lint => lint::run(),
        Task::Install(a) => install::run(a),
        Task::Deb(args) => deb::run(args),
        Task::Audit => audit::run(),
        Task::Bench { args } => bench(&args),
        Task::Fuzz(a) => fuzz::run(a),
        Task::Vmlab(a) => vmlab::run(a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// clap's errors span several lines (message, possible values, usage); one is enough.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("{} (see 'cargo xtask help')", parts.join(" "))
}

/// The benchmarks link portguard itself, so they are a binary of their own behind the `bench`
/// feature, built in release mode.
fn bench(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    util::sh(
        util::cargo()
            .args([
                "run",
                "--release",
                "--package",
                "xtask",
                "--features",
                "bench",
                "--bin",
                "xtask-bench",
                "--",
            ])
            .args(args),
    )
}
