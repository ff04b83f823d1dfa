//! `cargo xtask deb [--target x86_64|aarch64]`: a Debian package for Debian-based routers, with
//! cargo-deb (installed from crates.io on first use). The binary is the static musl build
//! (crate::cross), so one package installs on any Debian release of its architecture whatever
//! its libc, and it is the binary the router VM lab boots. The files come from `cargo xtask
//! install --destdir`, so the package holds exactly what an install does; for another
//! architecture the man pages and completions are printed by that binary under qemu-user.

use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cross::{self, Arch},
    util::{output, root, sh, succeeds},
};

#[derive(clap::Args)]
pub struct Args {
    /// The package's architecture: x86_64 (amd64) or aarch64 (arm64). Default: this machine's.
    #[arg(long, value_enum)]
    #[arg(long, conflicts_with = "check")]
    target: Option<Arch>,
    /// Build both architectures' packages and check them (what `cargo xtask test` does).
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> Result<()> {
    crate::setup::run()?;
    if args.check {
        return check();
    }
    build(args.target.unwrap_or_else(Arch::host)).map(|_| ())
}

/// Builds the package for `arch`; returns its path.
fn build(arch: Arch) -> Result<std::path::PathBuf> {
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
    let out = output(
        Command::new("cargo")
            .args(["deb", "--package", "portguard", "--no-build", "--no-strip", "--target"])
            .arg(arch.rust_target())
            .arg("--output")
            .arg(root().join("target/debian")),
    )?;
    // cargo-deb prints the package's path last.
    let path = out.lines().last().context("cargo deb printed no path")?.trim().into();
    Ok(path)
}

/// What `cargo xtask test` checks of the packages: both architectures build, each says its
/// architecture and ships a binary for it (ELF e_machine), they hold the same files, and the
/// packaged binary runs (the arm64 one under qemu-user).
pub fn check() -> Result<()> {
    let mut lists = Vec::new();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let deb = build(arch)?;
        let field = output(Command::new("dpkg-deb").arg("--field").arg(&deb).arg("Architecture"))?;
        ensure!(field.trim() == arch.deb(), "{}: Architecture {field:?}", deb.display());
        let files = output(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
        let mut names: Vec<String> =
            files.lines().filter_map(|l| l.split_whitespace().nth(5)).map(str::to_owned).collect();
        names.sort();
        let dir = root().join("target/debian").join(format!("unpacked-{}", arch.deb()));
        let _ = std::fs::remove_dir_all(&dir);
        sh(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&dir))?;
        let binary = dir.join("usr/bin/portguard");
        let elf = std::fs::read(&binary).with_context(|| format!("{}", binary.display()))?;
        // e_machine, little-endian at offset 18: 62 is x86-64, 183 is AArch64.
        let machine = u16::from_le_bytes([elf[18], elf[19]]);
        let want = match arch {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        };
        ensure!(machine == want, "{}: ELF machine {machine}, want {want}", deb.display());
        let version = output(arch.command(&binary).arg("--version"))?;
        ensure!(version.starts_with("portguard "), "{} --version: {version:?}", binary.display());
        eprintln!(
            "deb: {} ({}, {} paths): {}",
            deb.display(),
            arch.deb(),
            names.len(),
            version.trim()
        );
        lists.push(names);
    }
    if lists[0] != lists[1] {
        bail!("the amd64 and arm64 packages hold different files:\n{:?}\n{:?}", lists[0], lists[1]);
    }
    Ok(())
}
