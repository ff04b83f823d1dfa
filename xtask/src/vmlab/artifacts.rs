//! What the guests run, built for their architecture: portguard as a static musl binary
//! (crate::cross, the build the Debian packages ship) and the runner (agent.rs, std only,
//! built with rustc alone).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use super::Arch;
use crate::util::{root, sh};

/// Where the lab keeps what it builds and writes.
pub fn lab_dir() -> PathBuf {
    root().join("target/vmlab")
}

/// Builds the guest runner for `arch` with rustc (a single std-only file), unless the binary
/// is newer than its source.
pub fn agent(arch: Arch) -> Result<PathBuf> {
    let src = root().join("xtask/src/vmlab/agent.rs");
    let out = lab_dir().join(format!("agent-{}", arch.name()));
    std::fs::create_dir_all(lab_dir())?;
    let fresh = |p: &PathBuf| p.metadata().and_then(|m| m.modified()).ok();
    if let (Some(o), Some(s)) = (fresh(&out), fresh(&src))
        && o > s
    {
        return Ok(out);
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut c = Command::new(rustc);
    c.args(["--edition", "2024", "-C", "opt-level=2", "-C", "strip=symbols", "--crate-name"])
        .args(["pgvm_agent", "--target", arch.rust_target(), "-o"])
        .arg(&out)
        .arg(&src);
    if let Some(linker) = arch.linker() {
        c.arg("-C").arg(format!("linker={linker}"));
    }
    sh(&mut c).context("building the guest runner")?;
    Ok(out)
}

/// Today's date and time (UTC), for generated reports.
pub fn date() -> String {
    crate::util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The commit the lab runs (with "+" when the tree has changes), for generated reports.
pub fn commit() -> String {
    let head = crate::util::output(
        Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(root()),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "?".into());
    let dirty = !crate::util::succeeds(
        Command::new("git").args(["diff", "--quiet", "HEAD"]).current_dir(root()),
    );
    if dirty { format!("{head}+") } else { head }
}
