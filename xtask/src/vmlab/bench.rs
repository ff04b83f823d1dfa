//! The bench scenario.

use anyhow::{Result, bail};

use super::Run;

pub struct Row;

pub fn run(_run: &Run) -> Result<Row> {
    bail!("not yet")
}

pub fn write(_rows: &[Row]) -> Result<()> {
    Ok(())
}

pub fn xdp_drop_object() -> Vec<u8> {
    Vec::new()
}
