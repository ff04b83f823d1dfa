//! `cargo xtask test`: the whole suite, as CI runs it.

use anyhow::Result;

use crate::util::{cargo, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Skip clippy.
    #[arg(long)]
    no_lint: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    crate::setup::run()?;
    if !args.no_lint {
        crate::lint::run()?;
    }
    let mut cmd = cargo();
    // The tests load XDP programs and make network namespaces: they need root (CI is root).
    cmd.args(["test", "--workspace", "--exclude", "portguard-ebpf", "--"]).args(&args.rest);
    sh(&mut cmd)
}
