//! `cargo xtask bench`: see BENCHMARKS.md.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    bail!("not written yet")
}
