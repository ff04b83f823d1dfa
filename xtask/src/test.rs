//! `cargo xtask test`: the whole suite, as CI runs it.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, describe, root};

#[derive(clap::Args)]
pub struct Args {
    /// Skip clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the router VM lab's kernel matrix (`cargo xtask vmlab`).
    #[arg(long)]
    no_vm: bool,
    /// Extra arguments for the test binaries (e.g. a test name filter).
    #[arg(last = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    crate::setup::run()?;
    if !args.no_lint {
        crate::lint::run()?;
    }
    let mut cmd = cargo();
    // Most tests load XDP programs and make network namespaces: they need root (CI is root).
    // As another user they skip with a one-line reason; here a skip would hide them, so it
    // fails instead.
    cmd.args(["test", "--workspace", "--exclude", "portguard-ebpf", "--no-fail-fast", "--"])
        .args(&args.rest)
        .env("PORTGUARD_REQUIRE_ROOT", "1");
    let (passed, failed, ok) = counted(cmd)?;
    // The minute-long flood saturates a core: alone, after the rest.
    let (fp, ff, fok) = if args.rest.is_empty() {
        let mut flood = cargo();
        flood
            .args(["test", "--package", "portguard", "--test", "flood", "--", "--ignored"])
            .env("PORTGUARD_REQUIRE_ROOT", "1");
        counted(flood)?
    } else {
        (0, 0, true)
    };
    // One closing line for the whole workspace: cargo prints one per test binary.
    println!("tests: {} passed, {} failed", passed + fp, failed + ff);
    // The kernel matrix in QEMU guests, after the rest (it prints its own wall time).
    let vm = args.rest.is_empty() && !args.no_vm;
    let vok = !vm || crate::vmlab::ci().inspect_err(|e| eprintln!("xtask: {e:#}")).is_ok();
    // The packages for both architectures (the static builds the lab just booted).
    let dok = !vm || crate::deb::check().inspect_err(|e| eprintln!("xtask: deb: {e:#}")).is_ok();
    if !ok || !fok || !vok || !dok {
        bail!("cargo test failed");
    }
    Ok(())
}

/// Runs a `cargo test`, echoing its output, and sums the passed and failed tests it reports.
fn counted(mut cmd: std::process::Command) -> Result<(u64, u64, bool)> {
    eprintln!("+ {}", describe(&cmd));
    let mut child =
        cmd.current_dir(root()).stdout(Stdio::piped()).spawn().context("spawning cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line?;
        println!("{line}");
        // "test result: ok. 15 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(kind), Some(n)) = (w.next(), w.next()) else { continue };
                let n: u64 = n.parse().unwrap_or(0);
                match kind {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    Ok((passed, failed, status.success()))
}
