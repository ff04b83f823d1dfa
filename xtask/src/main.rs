//! Developer and CI tasks, one module per subcommand: `cargo xtask <task>`.

mod bench;
mod demo;
mod fuzz;
mod lint;
mod setup;
mod test;
mod util;

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
    /// Benchmarks against xdp-filter and the floor; writes BENCHMARKS.md.
    Bench(bench::Args),
    /// Differential fuzzing: the XDP program against the reference classifier, at length.
    Fuzz(fuzz::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.task {
        Task::Setup => setup::run(),
        Task::Demo(a) => demo::run(a),
        Task::Test(a) => test::run(a),
        Task::Lint => lint::run(),
        Task::Bench(a) => bench::run(a),
        Task::Fuzz(a) => fuzz::run(a),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
