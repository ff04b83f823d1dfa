//! Checked before anything is loaded, so that a missing privilege is one clear line instead of
//! an EPERM from deep inside a syscall.

use anyhow::{Result, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
fn effective() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// Loading and attaching XDP needs CAP_NET_ADMIN plus CAP_BPF and CAP_PERFMON (or the older
/// catch-all CAP_SYS_ADMIN).
pub fn require_attach() -> Result<()> {
    let caps = effective()?;
    let has = |c: u32| caps & (1 << c) != 0;
    let bpf = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if !has(CAP_NET_ADMIN) || !bpf {
        bail!(
            "portguard needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, to load and attach \
             XDP programs: run it with sudo"
        );
    }
    Ok(())
}
