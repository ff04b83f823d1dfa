//! The queues scenario: many vCPUs and queue pairs.

use anyhow::{Result, bail};

use super::Run;

pub fn run(_run: &Run) -> Result<()> {
    bail!("not yet")
}
