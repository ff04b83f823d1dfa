//! portguard for a target architecture: static musl builds for x86_64 and aarch64 (what the
//! Debian packages ship and the router VM lab boots), and how to run such a binary on this
//! machine. The XDP object inside is the same BPF bytecode on every architecture
//! (portguard/build.rs embeds it).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::util::{cargo, root, sh};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// Debian's architecture name.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    /// The kernel flavour: linux-image-<flavour>.
    pub fn flavour(self) -> &'static str {
        self.deb()
    }
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") { Arch::Aarch64 } else { Arch::X86_64 }
    }
    /// The cross linker, when this is not the host: Debian's gcc-<arch>-linux-gnu (musl's
    /// start files and libc come with Rust's target: self-contained linking).
    pub fn linker(self) -> Option<&'static str> {
        match self {
            _ if self == Arch::host() => None,
            Arch::X86_64 => Some("x86_64-linux-gnu-gcc"),
            Arch::Aarch64 => Some("aarch64-linux-gnu-gcc"),
        }
    }
    /// A command that runs `binary` (built for this architecture) here: directly on the host's
    /// own architecture, under QEMU's user mode (qemu-user-static) otherwise.
    pub fn command(self, binary: &Path) -> Command {
        if self == Arch::host() {
            return Command::new(binary);
        }
        let mut c = Command::new(format!("qemu-{}-static", self.name()));
        c.arg(binary);
        c
    }
}

/// Builds the static portguard for `arch` (cargo skips the work when nothing changed).
pub fn portguard(arch: Arch) -> Result<PathBuf> {
    let target = arch.rust_target();
    let mut c = cargo();
    c.args(["build", "--release", "--quiet", "--package", "portguard", "--target", target]);
    if let Some(linker) = arch.linker() {
        let var = format!("CARGO_TARGET_{}_LINKER", target.to_uppercase().replace('-', "_"));
        c.env(var, linker);
    }
    sh(&mut c)?;
    let bin = root().join(format!("target/{target}/release/portguard"));
    if !bin.exists() {
        bail!("the build left no {}", bin.display());
    }
    Ok(bin)
}
