//! `cargo xtask vmtest`: the tests whose subject this machine's kernel may refuse, run for real
//! in a stock Debian kernel under QEMU: `tests/multiprog.rs` (portguard in libxdp's
//! multi-program dispatcher, which needs freplace programs; some kernels refuse every
//! trampoline-based program even to root, and there those tests can only skip).
//!
//! `portguard/tests/vm/run-in-vm.sh` boots Debian's 6.1 kernel (downloaded with apt, cached in
//! ~/.cache/portguard/vm) with this machine's root read-only over 9p, runs the test binary as
//! root inside, and exits with its status. In the guest a refusal is a failure
//! (PORTGUARD_REQUIRE_SHARING), never a skip.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, root};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for the test binary (e.g. a test name filter).
    #[arg(last = true)]
    pub rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    crate::setup::run()?;
    let (passed, failed, ok) = run_tests(&args.rest)?;
    println!("vmtest: {passed} passed, {failed} failed");
    if !ok {
        bail!("the sharing tests failed in the VM");
    }
    Ok(())
}

/// Builds the test binary (and portguard, which it runs), boots the guest and runs it there;
/// returns the passed and failed counts and whether it all succeeded.
pub fn run_tests(rest: &[String]) -> Result<(u64, u64, bool)> {
    let exe = build()?;
    let script = root().join("portguard/tests/vm/run-in-vm.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(["env", "PORTGUARD_REQUIRE_SHARING=1", "PORTGUARD_REQUIRE_ROOT=1"])
        .arg(exe)
        .args(["--test-threads=1", "--color=never"])
        .args(rest);
    crate::test::counted(cmd)
}

/// `cargo test --no-run` for tests/multiprog.rs; the path of the test binary.
fn build() -> Result<String> {
    let mut c = cargo();
    c.args(["test", "--package", "portguard", "--test", "multiprog", "--no-run"])
        .current_dir(root());
    eprintln!("+ {}", crate::util::describe(&c));
    let out = c.output().context("running cargo test --no-run")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building the multiprog tests failed:\n{err}");
    }
    // "  Executable tests/multiprog.rs (target/debug/deps/multiprog-0123abcd)"
    err.lines()
        .filter_map(|l| l.trim().strip_prefix("Executable tests/multiprog.rs ("))
        .filter_map(|l| l.strip_suffix(')'))
        .next_back()
        .map(|p| root().join(p).display().to_string())
        .context("cargo test --no-run named no multiprog test binary")
}
