//! What the guests run, built for their architecture: portguard as a static musl binary (the
//! XDP object inside it is the same BPF bytecode on every architecture; portguard/build.rs
//! embeds it) and the runner (agent.rs, std only, built with rustc alone).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use super::Arch;
use crate::util::{cargo, root, sh};

/// The cross linker for aarch64 (Debian's gcc-aarch64-linux-gnu); musl's start files and libc
/// come with Rust's target (self-contained linking).
const AARCH64_LINKER: &str = "aarch64-linux-gnu-gcc";

/// Where the lab keeps what it builds and writes.
pub fn lab_dir() -> PathBuf {
    root().join("target/vmlab")
}

/// Builds the static portguard for `arch` (cargo skips the work when nothing changed).
pub fn portguard(arch: Arch) -> Result<PathBuf> {
    let target = arch.rust_target();
    let mut c = cargo();
    c.args(["build", "--release", "--quiet", "--package", "portguard", "--target", target]);
    if arch == Arch::Aarch64 {
        c.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", AARCH64_LINKER);
    }
    sh(&mut c)?;
    let bin = root().join(format!("target/{target}/release/portguard"));
    if !bin.exists() {
        bail!("the build left no {}", bin.display());
    }
    Ok(bin)
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
    if arch == Arch::Aarch64 {
        c.arg("-C").arg(format!("linker={AARCH64_LINKER}"));
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
