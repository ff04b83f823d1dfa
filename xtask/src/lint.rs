//! Clippy twice: the userspace crates, then the eBPF crate alone (feature unification would
//! otherwise drag aya's userspace features into the eBPF build).

use anyhow::Result;

use crate::util::{cargo, sh};

pub fn run() -> Result<()> {
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "portguard-ebpf",
        "--all-targets",
        // The benchmark binary too.
        "--features",
        "xtask/bench",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(std::process::Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "portguard-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("CARGO")
        .env_remove("RUSTC"))
}
