//! The aarch64 portguard's non-BPF verbs under qemu-aarch64-static (user-mode emulation, no
//! guest kernel): help, version, a malformed command line, a malformed config file, status over
//! an empty pin root, completions, the man page, and `check` against a socket of this process.
//!
//! QEMU's user mode refuses netlink protocols other than ROUTE, KOBJECT_UEVENT and AUDIT, so
//! `check` (NETLINK_SOCK_DIAG) cannot find sockets there: it must then fail cleanly with that
//! error; the aarch64 guest of the basic scenario runs `check` on a real arm64 kernel.

use std::{
    net::{TcpListener, UdpSocket},
    process::Output,
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::{Arch, artifacts, report::Checks};

fn portguard(bin: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut c = Arch::Aarch64.command(bin);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().with_context(|| format!("running the aarch64 portguard {}", args.join(" ")))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let bin = crate::cross::portguard(Arch::Aarch64)?;
    let mut c = Checks::new("user aarch64 qemu-aarch64-static");
    let elf = std::fs::read(&bin)?;
    // e_machine 183: EM_AARCH64.
    c.eq("the binary is aarch64", u16::from_le_bytes([elf[18], elf[19]]), 183);
    let t = Instant::now();
    let help = portguard(&bin, &["--help"], &[])?;
    c.value("help_ms", t.elapsed().as_millis());
    c.eq("--help exits 0", help.status.code(), Some(0));
    c.that(
        "--help prints the usage",
        text(&help.stdout).contains("Usage: portguard "),
        text(&help.stdout),
    );
    let v = portguard(&bin, &["--version"], &[])?;
    c.eq(
        "--version",
        text(&v.stdout).trim(),
        format!("portguard {}", env!("CARGO_PKG_VERSION")).as_str(),
    );

    let bad = portguard(&bin, &["run", "--iface", "eth9", "--mode", "sideways"], &[])?;
    let err = text(&bad.stderr);
    c.eq("malformed command line exits 2", bad.status.code(), Some(2));
    c.that(
        "malformed command line: one line naming the value",
        err.lines().count() == 1 && err.contains("invalid value 'sideways'"),
        &err,
    );

    let dir = std::env::temp_dir().join(format!("pgvm-user-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("pins"))?;
    let _cleanup = Cleanup(dir.clone());
    let conf = dir.join("bad.toml");
    std::fs::write(&conf, "interfaces = [\"eth9\"]\n\nmode = \"sideways\"\n")?;
    let bad = portguard(&bin, &["run", "--config", &conf.to_string_lossy()], &[])?;
    let err = text(&bad.stderr);
    c.eq("malformed config exits 1", bad.status.code(), Some(1));
    c.that(
        "malformed config: one line naming line 3",
        err.lines().count() == 1 && err.contains("line 3") && err.contains("sideways"),
        &err,
    );

    let pins = dir.join("pins");
    let st =
        portguard(&bin, &["status", "--json"], &[("PORTGUARD_PIN_ROOT", &pins.to_string_lossy())])?;
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
    c.eq("status over an empty pin root exits 0", st.status.code(), Some(0));
    c.that(
        "status lists no interface",
        v["interfaces"].as_array().is_some_and(|a| a.is_empty()),
        text(&st.stdout),
    );

    let comp = portguard(&bin, &["completions", "bash"], &[])?;
    c.that(
        "completions bash",
        comp.status.success() && comp.stdout.len() > 1000,
        text(&comp.stderr),
    );
    let man = portguard(&bin, &["man"], &[])?;
    c.that(
        "man page",
        man.status.success() && text(&man.stdout).contains("\n.TH portguard 1"),
        text(&man.stderr),
    );

    // A socket of this process for `check` to find (no traffic: it only listens).
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    let port = tcp.local_addr()?.port();
    let _udp = UdpSocket::bind(("127.0.0.1", port));
    let chk = portguard(&bin, &["check", "--port", &port.to_string(), "--json"], &[])?;
    let err = text(&chk.stderr);
    if chk.status.code() == Some(1) {
        let v: serde_json::Value = serde_json::from_slice(&chk.stdout).unwrap_or_default();
        let found = v["sockets"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["local_port"] == port && s["state"] == "listen"));
        c.that("check finds the listening socket", found, text(&chk.stdout));
        c.value("check_under_qemu_user", "found");
    } else {
        // QEMU's user mode: socket(AF_NETLINK, ..., NETLINK_SOCK_DIAG) is EPROTONOSUPPORT.
        c.eq("check under qemu-user exits 2 (an error)", chk.status.code(), Some(2));
        c.that(
            "check under qemu-user: one line, the sock_diag socket refused",
            err.lines().count() == 1
                && err.contains("NETLINK_SOCK_DIAG")
                && err.contains("os error 93"),
            &err,
        );
        c.value("check_under_qemu_user", "sock_diag-unsupported");
    }
    c.value("wall_s", format!("{:.1}", start.elapsed().as_secs_f64()));
    c.write(&artifacts::lab_dir().join("results.txt"))?;
    c.verdict()
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
