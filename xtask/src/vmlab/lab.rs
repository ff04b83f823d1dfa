//! The host side of the lab: a network namespace of its own (`pgvm<pid>-<n>`) holding a
//! multi-queue tap (`pgvm0`) that QEMU attaches to. Nothing is created outside that namespace;
//! dropping the [`Lab`] kills what still runs in it (QEMU) and deletes it, which deletes the tap.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, bail};

use crate::util::output;

pub const TAP: &str = "pgvm0";
pub const HOST_V4: &str = "198.18.77.1";
pub const HOST_V6: &str = "2001:db8:77::1";
/// The host side's MAC (locally administered) and the guest NIC's (QEMU's OUI).
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x4d, 0x01];
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xc6, 0x12, 0x02];

pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub name: String,
    ns: File,
}

fn ip(args: &[&str]) -> Result<String> {
    output(Command::new("ip").args(args))
}

impl Lab {
    /// The namespace and its tap, addressed, with permanent neighbour entries for the guest
    /// (so no frame of the host's waits for ARP or neighbour discovery).
    pub fn create() -> Result<Lab> {
        remove_stale();
        let name = format!("pgvm{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let ns = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).context("opening the lab namespace");
            }
        };
        let lab = Lab { name, ns };
        let n = lab.name.as_str();
        let guest = crate::vmlab::initramfs::GUEST_V4;
        let guest6 = crate::vmlab::initramfs::GUEST_V6;
        let gmac = mac_str(&GUEST_MAC);
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", "dev", TAP, "mode", "tap", "multi_queue"])?;
        // No router solicitations or DAD from the host side: fewer stray frames in the guest.
        lab.sysctl(&format!("net/ipv6/conf/{TAP}/router_solicitations"), "0")?;
        lab.sysctl(&format!("net/ipv6/conf/{TAP}/accept_dad"), "0")?;
        ip(&["-n", n, "link", "set", TAP, "address", &mac_str(&HOST_MAC), "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{HOST_V4}/24"), "dev", TAP])?;
        ip(&["-n", n, "addr", "add", &format!("{HOST_V6}/64"), "dev", TAP, "nodad"])?;
        for a in [guest, guest6] {
            ip(&["-n", n, "neigh", "replace", a, "lladdr", &gmac, "dev", TAP, "nud", "permanent"])?;
        }
        Ok(lab)
    }

    /// Runs `f` on a thread inside the lab's namespace: sockets it opens stay there.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                self.enter_this_thread()?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a lab thread panicked"))?
        })
    }

    /// Moves the calling thread into the lab's namespace (for threads of the caller's own).
    pub fn enter_this_thread(&self) -> Result<()> {
        // SAFETY: setns on a file descriptor we own; it changes only this thread's namespace.
        if unsafe { libc::setns(self.ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The raw descriptor of the namespace, for a child's pre_exec.
    pub fn ns_fd(&self) -> i32 {
        self.ns.as_raw_fd()
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let key = key.to_string();
        let value = value.to_string();
        self.run_in(move || std::fs::write(format!("/proc/sys/{key}"), value))?
            .context("writing a sysctl in the lab namespace")
    }

    /// The tap's transmit counters (frames towards the guest): (packets, dropped).
    pub fn tap_tx(&self) -> Result<(u64, u64)> {
        let dev = self.run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
        parse_net_dev(&dev, TAP).with_context(|| format!("{TAP} is not in /proc/net/dev"))
    }
}

/// (tx packets, tx dropped) of `iface` from /proc/net/dev.
fn parse_net_dev(text: &str, iface: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{iface}:")))?;
    let f: Vec<u64> =
        line.split_once(':')?.1.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop
    Some((*f.get(9)?, *f.get(11)?))
}

impl Drop for Lab {
    fn drop(&mut self) {
        kill_inside(&self.name);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("vmlab: could not delete namespace {}: {e:#}", self.name);
        }
    }
}

/// Kills every process in the namespace: only the lab's own QEMU can be there.
fn kill_inside(name: &str) {
    for _ in 0..50 {
        let pids = ip(&["netns", "pids", name]).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            let _ = Command::new("kill").args(["-9", p]).status();
        }
        thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Namespaces of lab runs whose process is gone (killed before it could clean up).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pgvm").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("vmlab: removing namespace {name} left by an earlier run");
            kill_inside(&name);
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn net_dev_line() {
        let t = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n pgvm0: 100 2 0 0 0 0 0 0 5000 70 0 3 0 0 0 0\n";
        assert_eq!(super::parse_net_dev(t, "pgvm0"), Some((70, 3)));
        assert_eq!(super::parse_net_dev(t, "pgvm1"), None);
    }
}
