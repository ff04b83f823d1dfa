//! `cargo xtask deb`: a Debian package for Debian-based routers, with cargo-deb (installed
//! from crates.io on first use). The files come from `cargo xtask install --destdir`, so the
//! package holds exactly what an install does.

use std::process::Command;

use anyhow::Result;

use crate::util::{cargo, root, sh, succeeds};

pub fn run() -> Result<()> {
    crate::setup::run()?;
    if !succeeds(Command::new("cargo").args(["deb", "--version"])) {
        sh(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    sh(cargo().args(["build", "--release", "--package", "portguard"]))?;
    let stage = root().join("target/deb-stage");
    let _ = std::fs::remove_dir_all(&stage);
    crate::install::install(
        &root().join("target/release/portguard"),
        std::path::Path::new("/usr"),
        &stage,
    )?;
    sh(Command::new("cargo").args(["deb", "--package", "portguard", "--no-build", "--no-strip"]))
}
