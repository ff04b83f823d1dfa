//! `cargo xtask demo`: from a fresh machine to portguard dropping probes in the lab.

use anyhow::Result;

use crate::util::{cargo, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of lab traffic.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
}

pub fn run(args: Args) -> Result<()> {
    crate::setup::run()?;
    sh(cargo().args(["build", "--release", "--package", "portguard"]))?;
    sh(std::process::Command::new(crate::util::root().join("target/release/portguard")).args([
        "lab",
        "--seconds",
        &args.seconds.to_string(),
    ]))
}
