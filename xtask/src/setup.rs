//! `cargo xtask setup`: everything a fresh machine lacks, installed only when missing.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, sh, succeeds};

/// Debian packages: iproute2 (the namespace lab), xdp-tools (the peer the benchmarks measure),
/// netsniff-ng (trafgen), nftables and iptables (peers), bpftool (inspection), tmux (terminal
/// tests), fonts-dejavu-core (the text in the benchmark plot), systemd (systemd-analyze for the
/// unit file checks), util-linux (nsenter, setpriv), python3 (a real child process in the
/// `check` tests); for the fingerprint and capture tests: the real scanners (nmap, masscan,
/// zmap, hping3), curl and netcat-openbsd (Linux's own connect()), python3-scapy (crafted Mirai-, Windows- and
/// unicornscan-like SYNs), p0f (its verdicts and its database, /etc/p0f/p0f.fp), tcpdump and
/// tshark (captures, and reading back portguard's pcapng), ethtool (checksums in software on
/// the lab's veth); python3-jsonschema (every `--json` output validated against docs/schema/);
/// man-db and groff-base (every man page rendered by `man -l`); libxdp1 (libxdp's dispatcher
/// object, which `--attach multiprog` loads, and the sharing tests with it).
const PACKAGES: &[&str] = &[
    "iproute2",
    "xdp-tools",
    "netsniff-ng",
    "nftables",
    "iptables",
    "bpftool",
    "tmux",
    "fonts-dejavu-core",
    "systemd",
    "util-linux",
    "python3",
    "nmap",
    "masscan",
    "zmap",
    "hping3",
    "curl",
    "netcat-openbsd",
    "python3-scapy",
    "p0f",
    "tcpdump",
    "tshark",
    "ethtool",
    "python3-jsonschema",
    "man-db",
    "groff-base",
    "libxdp1",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

pub fn run() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    promtool()?;
    crate::vmlab::setup::run()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn packages() -> Result<()> {
    install_packages(PACKAGES, "")
}

/// Installs those of `packages` that dpkg does not have; `why` is added to the line saying so.
pub fn install_packages(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}{why}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-qq"))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .context("the nightly toolchain is needed to build the XDP program (rustup toolchain install nightly)")?;
    Ok(PathBuf::from(s.trim()))
}

fn rust_src() -> Result<()> {
    // clippy lints both sides (`cargo xtask lint`); rustup's default profile has it, a minimal
    // one does not.
    for toolchain in ["stable", NIGHTLY] {
        if !succeeds(Command::new("cargo").args([&format!("+{toolchain}"), "clippy", "--version"]))
        {
            sh(Command::new("rustup").args([
                "component",
                "add",
                "clippy",
                "--toolchain",
                toolchain,
            ]))?;
        }
    }
    if nightly_sysroot()?.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// bpf-linker, built against the nightly toolchain's own libLLVM: the same LLVM that emits
/// the bitcode, so there is no version skew, and nothing to download but crates.
fn bpf_linker() -> Result<()> {
    let works = output(Command::new("bpf-linker").arg("--version"))
        .map(|v| v.contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the nightly toolchain ships no libLLVM.so.*")?;
    let name = lib.file_name().unwrap().to_owned();
    // bpf-linker's build script wants $LLVM_PREFIX/lib/libLLVM.so; the binary then looks for
    // the versioned name through its RUNPATH ($LLVM_PREFIX/lib). Both links live here.
    let home = std::env::var("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/portguard/llvm");
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    for link in [libdir.join("libLLVM.so"), libdir.join(&name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let major = name.to_string_lossy().split('.').nth(2).unwrap_or("").to_string();
    sh(Command::new("cargo")
        .arg(format!("+{NIGHTLY}"))
        .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix))?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// Pins live in bpffs, which is not mounted at boot here.
fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")) {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf")?;
    sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Where promtool is unpacked: the metrics tests validate portguard's exposition with it.
pub const PROMTOOL: &str = ".cache/portguard/prometheus/usr/bin/promtool";

/// promtool, unpacked from Debian's prometheus package without installing it (installing
/// would start a Prometheus server).
fn promtool() -> Result<()> {
    let home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
    if home.join(PROMTOOL).exists() {
        return Ok(());
    }
    let cache = home.join(".cache/portguard");
    let debs = cache.join("deb");
    std::fs::create_dir_all(&debs)?;
    eprintln!("setup: unpacking promtool from Debian's prometheus package");
    // Not `sh`: it runs in the workspace root, and the download lands in the current directory.
    let st =
        Command::new("apt-get").args(["download", "prometheus"]).current_dir(&debs).status()?;
    if !st.success() {
        sh(Command::new("apt-get").arg("update").arg("-qq"))?;
        let st =
            Command::new("apt-get").args(["download", "prometheus"]).current_dir(&debs).status()?;
        if !st.success() {
            bail!("apt-get download prometheus failed: {st}");
        }
    }
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("prometheus_"))
        })
        .context("apt-get download prometheus left no .deb")?;
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(cache.join("prometheus")))
}
