use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Runs a command in the workspace root, echoing it; fails on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status =
        cmd.current_dir(root()).status().with_context(|| format!("spawning {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns whether it succeeded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Stdout of a command that must succeed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("spawning {}", describe(cmd)))?;
    if !o.status.success() {
        bail!("{} failed: {}", describe(cmd), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `cargo` as invoked by the user (the stable toolchain, not the nightly the eBPF build uses).
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
