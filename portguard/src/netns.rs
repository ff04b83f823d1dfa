//! Network namespaces: a guard's identity is (namespace, interface), never a name alone, since
//! routers with VRFs in namespaces, containers and test labs all reuse interface names.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// Where `ip netns add` keeps named namespaces.
pub const NAMED: &str = "/run/netns";

/// SOL_SOCKET option: the namespace's cookie (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A network namespace as portguard keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Netns {
    /// SO_NETNS_COOKIE: unique for the boot and never reused. On kernels without cookies, the
    /// inode (which can be reused once the namespace is gone).
    pub cookie: u64,
    /// The inode of /proc/thread-self/ns/net, as `ip netns identify` and `lsns` show it.
    pub inode: u64,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        let inode = std::fs::metadata("/proc/thread-self/ns/net")
            .context("reading /proc/thread-self/ns/net")?
            .ino();
        Ok(Netns { cookie: cookie().unwrap_or(inode), inode })
    }

    /// The name of the pin directory holding this namespace's guards.
    pub fn key(&self) -> String {
        format!("netns-{}", self.cookie)
    }

    /// The namespace as people know it: "root" for the host's own, its `ip netns` name when it
    /// has one, else `netns:[inode]`.
    pub fn name(&self) -> String {
        name_of(self.inode)
    }
}

fn cookie() -> Option<u64> {
    // SAFETY: a plain socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut c: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: an 8-byte buffer for an 8-byte option, on our socket.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut c as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    (r == 0 && len as usize == size_of::<u64>()).then_some(c)
}

/// The name of the namespace with inode `inode`.
pub fn name_of(inode: u64) -> String {
    if std::fs::metadata("/proc/1/ns/net").is_ok_and(|m| m.ino() == inode) {
        return "root".into();
    }
    if let Ok(entries) = std::fs::read_dir(NAMED) {
        for e in entries.flatten() {
            if std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode) {
                return e.file_name().to_string_lossy().into_owned();
            }
        }
    }
    format!("netns:[{inode}]")
}

/// Moves the calling thread into the named namespace (`ip netns add NAME`). Only the network
/// namespace: `ip netns exec` would also remount /sys and hide bpffs. Call it before any
/// other thread starts, so that they all inherit it.
pub fn enter(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("invalid network namespace name '{name}'");
    }
    let path = Path::new(NAMED).join(name);
    let f = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("no network namespace '{name}' (see `ip netns list`)")
        }
        _ => anyhow::anyhow!("opening {}: {e}", path.display()),
    })?;
    // SAFETY: setns on an open namespace file changes only this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace '{name}'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_namespace_has_a_key_and_a_name() {
        let ns = Netns::current().unwrap();
        assert!(ns.key().starts_with("netns-"));
        assert!(ns.inode > 0);
        // Whatever namespace the tests run in, it has some name.
        assert!(!ns.name().is_empty());
        assert!(enter("../etc").is_err());
    }
}
