//! `cargo xtask fuzz`: the long differential run. The XDP program (through BPF_PROG_TEST_RUN)
//! against the reference classifier on generated frames, under every settings variant; the
//! bounded run of the same test is part of `cargo xtask test`.
//!
//! xtask does not depend on the portguard crate (it builds before bpf-linker exists on a fresh
//! machine), so the run is the ignored `long_run` test in portguard/tests/differential.rs,
//! configured through the environment.

use anyhow::{Result, bail};

use crate::util::{cargo, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Frames in all, shared among the settings variants (default 2,000,000; with --kernel,
    /// 1,000,000).
    #[arg(long)]
    frames: Option<u64>,
    /// The kernel as the oracle instead of the reference: real veth, real sockets, real
    /// program (see portguard/tests/oracle.rs).
    #[arg(long)]
    kernel: bool,
    /// Seed of the frame generator, decimal or 0x-hex (default: the test's fixed seed). A
    /// failure prints the seed that reproduces it.
    #[arg(long)]
    seed: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(s) = &args.seed {
        let ok = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).is_ok(),
            None => s.parse::<u64>().is_ok(),
        };
        if !ok {
            bail!("invalid seed '{s}': a decimal or 0x-hex 64-bit number");
        }
    }
    if args.kernel {
        return crate::oracle::run(args.frames, args.seed.as_deref());
    }
    crate::setup::run()?;
    let mut cmd = cargo();
    // Release: the generator and the reference run on every frame beside the two syscalls.
    cmd.args(["test", "--release", "--package", "portguard", "--test", "differential"])
        .args(["--", "--ignored", "--exact", "long_run", "--nocapture"])
        .env("PORTGUARD_FUZZ_FRAMES", args.frames.unwrap_or(2_000_000).to_string());
    if let Some(s) = &args.seed {
        cmd.env("PORTGUARD_FUZZ_SEED", s);
    }
    sh(&mut cmd)
}
