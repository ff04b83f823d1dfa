//! `cargo xtask audit`: the dependency audit with cargo-deny (installed on first use): licenses,
//! bans and sources always; security advisories when a RustSec database is on disk (this
//! network cannot fetch one).

use std::process::Command;

use anyhow::Result;

use crate::util::{sh, succeeds};

pub fn run() -> Result<()> {
    if !succeeds(Command::new("cargo").args(["deny", "--version"])) {
        sh(Command::new("cargo").args(["install", "cargo-deny", "--locked"]))?;
    }
    // cargo-deny reads the metadata of every platform's dependencies: fetch them first (from
    // crates.io), so that the check itself runs offline.
    sh(Command::new("cargo").arg("fetch"))?;
    let home = std::env::var("HOME").unwrap_or_default();
    let db = std::path::Path::new(&home).join(".cargo/advisory-db");
    let mut checks = vec!["licenses", "bans", "sources"];
    if db.is_dir() {
        checks.push("advisories");
    } else {
        eprintln!("audit: no RustSec database in {}: advisories not checked", db.display());
    }
    sh(Command::new("cargo").args(["deny", "--offline", "check"]).args(&checks))
}
