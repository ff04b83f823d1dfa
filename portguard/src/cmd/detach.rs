//! `portguard detach`: remove programs, links and pins.

use std::process::ExitCode;

use anyhow::{Result, bail};
use portguard::{guard, pins::Pins};

/// Stop guarding: detach the program and remove its pinned state (counters are lost).
#[derive(clap::Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct Args {
    /// The interface to stop guarding (repeatable).
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Every guarded interface.
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins = Pins::default();
    let targets = super::args::targets(&pins, if args.all { &[] } else { &args.ifaces })?;
    if targets.is_empty() {
        println!("nothing is guarded");
        return Ok(ExitCode::SUCCESS);
    }
    // Check every one first: either all named interfaces are detached or none.
    for iface in &targets {
        if !pins.dir(iface)?.join(portguard_common::map_names::META).exists() {
            bail!("{iface} is not guarded by portguard");
        }
    }
    for iface in &targets {
        guard::detach_pinned(&pins, iface)?;
        println!("detached {iface}");
    }
    Ok(ExitCode::SUCCESS)
}
