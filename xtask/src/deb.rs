//! `cargo xtask deb [--target x86_64|aarch64]`: a Debian package for Debian-based routers, with
//! cargo-deb (installed from crates.io on first use). The binary is the static musl build
//! (crate::cross), so one package installs on any Debian release of its architecture whatever
//! its libc, and it is the binary the router VM lab boots. The files come from `cargo xtask
//! install --destdir`, so the package holds exactly what an install does; for another
//! architecture the man pages and completions are printed by that binary under qemu-user.

use std::process::Command;

use anyhow::Result;

use crate::{
    cross::{self, Arch},
    util::{root, sh, succeeds},
};

#[derive(clap::Args)]
pub struct Args {
    /// The package's architecture: x86_64 (amd64) or aarch64 (arm64). Default: this machine's.
    #[arg(long, value_enum)]
    target: Option<Arch>,
}

pub fn run(args: Args) -> Result<()> {
    let arch = args.target.unwrap_or_else(Arch::host);
    crate::setup::run()?;
    if !succeeds(Command::new("cargo").args(["deb", "--version"])) {
        sh(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    let binary = cross::portguard(arch)?;
    // cargo-deb reads `target/release/deb-stage/...` (portguard/Cargo.toml) from the target's
    // own directory, target/<triple>/release/deb-stage.
    let stage = binary.with_file_name("deb-stage");
    let _ = std::fs::remove_dir_all(&stage);
    crate::install::install(&binary, arch, std::path::Path::new("/usr"), &stage)?;
    // Both architectures' packages side by side, named portguard_<version>_<arch>.deb.
    sh(Command::new("cargo")
        .args(["deb", "--package", "portguard", "--no-build", "--no-strip", "--target"])
        .arg(arch.rust_target())
        .arg("--output")
        .arg(root().join("target/debian")))
}
