//! What the router VM lab needs on a fresh machine, installed only when missing: QEMU for both
//! architectures, qemu-user for the aarch64 binary's non-BPF verbs, a static busybox, ethtool
//! (per-queue counters in the guest), the aarch64 cross linker, and the musl targets.

use std::process::Command;

use anyhow::Result;

use crate::util::{output, sh};

/// qemu-system-x86 and qemu-system-arm (the guests, TCG), qemu-user-static (`qemu-aarch64-static`),
/// busybox-static (the guest's userland), ethtool and iproute2 (copied into the x86_64 guest with
/// their libraries), gcc-aarch64-linux-gnu (the linker of the aarch64 musl build), xz-utils (6.12
/// ships its modules as .ko.xz).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "qemu-user-static",
    "busybox-static",
    "ethtool",
    "iproute2",
    "gcc-aarch64-linux-gnu",
    "xz-utils",
];

/// Static userspace for the guests: portguard and the guest runner.
pub const TARGETS: &[&str] = &["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

pub fn run() -> Result<()> {
    crate::setup::install_packages(PACKAGES, " (router VM lab)")?;
    // The toolchain that builds portguard: the one `cargo xtask` runs under (stable).
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let targets: Vec<&str> =
        TARGETS.iter().copied().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
    if !targets.is_empty() {
        sh(Command::new("rustup").args(["target", "add"]).args(&targets))?;
    }
    Ok(())
}
