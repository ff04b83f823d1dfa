//! `cargo xtask fuzz --kernel`: the kernel as the oracle, at length. Generated frames go
//! through a real veth into a namespace with sockets on the guarded ports, without portguard,
//! then with it in drop mode, then in count mode; it prints the frames tried, how many cases
//! the kernel delivered to a guarded port, how many got through portguard (must be 0), and
//! the collateral. The bounded run of the same check is part of `cargo xtask test`.
//!
//! As for the differential run, xtask does not link portguard: the run is the ignored
//! `long_run` test in portguard/tests/oracle.rs, configured through the environment.

use anyhow::Result;

use crate::util::{cargo, sh};

/// Frames when `--frames` is not given (about a minute per 300,000 here).
pub const DEFAULT_FRAMES: u64 = 1_000_000;

pub fn run(frames: Option<u64>, seed: Option<&str>) -> Result<()> {
    crate::setup::run()?;
    let mut cmd = cargo();
    // Release: generating and building a million cases is not free in a debug build.
    cmd.args(["test", "--release", "--package", "portguard", "--test", "oracle"])
        .args(["--", "--ignored", "--exact", "long_run", "--nocapture"])
        .env("PORTGUARD_ORACLE_FRAMES", frames.unwrap_or(DEFAULT_FRAMES).to_string());
    if let Some(s) = seed {
        cmd.env("PORTGUARD_FUZZ_SEED", s);
    }
    sh(&mut cmd)
}
