//! The guest's initramfs: a newc cpio archive written here (no cpio tool needed) holding a
//! static busybox (init, shell, mount, insmod, ip), the kernel's virtio modules in load order,
//! the static portguard, the guest runner (agent.rs), and on x86_64 a few host tools with their
//! shared libraries (iproute2's ip for `ip -d link`, ethtool for per-queue counters, nft and
//! bpftool for the benchmarks).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{Arch, kernel::Module};

/// Addresses of the lab link: the guest's side (the host's are in lab.rs).
pub const GUEST_V4: &str = "198.18.77.2";
pub const GUEST_V6: &str = "2001:db8:77::2";
pub const PREFIX_V4: u8 = 24;
pub const PREFIX_V6: u8 = 64;

/// What goes into one initramfs.
pub struct Contents<'a> {
    pub arch: Arch,
    pub busybox: &'a Path,
    pub agent: &'a Path,
    pub portguard: &'a Path,
    pub modules: &'a [Module],
    /// Host binaries copied with their libraries (x86_64 guests only).
    pub host_tools: &'a [&'a str],
    /// Extra files: (path in the guest, contents, mode).
    pub extra: Vec<(String, Vec<u8>, u32)>,
}

pub fn build(c: &Contents, out: &Path) -> Result<u64> {
    let mut a = Cpio::default();
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "pgvm/modules"] {
        a.dir(d);
    }
    a.chardev("dev/console", 5, 1);
    a.chardev("dev/null", 1, 3);
    a.file("bin/busybox", &read(c.busybox)?, 0o755);
    for l in ["init", "bin/sh"] {
        a.symlink(l, "/bin/busybox");
    }
    a.file("etc/inittab", INITTAB.as_bytes(), 0o644);
    a.file("etc/pgvm/rc", rc(c).as_bytes(), 0o755);
    a.file("pgvm/agent", &read(c.agent)?, 0o755);
    a.file("bin/portguard", &read(c.portguard)?, 0o755);
    let mut order = String::new();
    for m in c.modules {
        a.file(&format!("pgvm/modules/{}.ko", m.name), &m.data, 0o644);
        order.push_str(&m.name);
        order.push('\n');
    }
    a.file("pgvm/modules.order", order.as_bytes(), 0o644);
    if !c.host_tools.is_empty() {
        if c.arch != Arch::host() {
            bail!("host tools can only be copied into a {} guest", Arch::host().name());
        }
        let mut libs = BTreeSet::new();
        for t in c.host_tools {
            a.file(t.trim_start_matches('/'), &read(Path::new(t))?, 0o755);
            libs.extend(shared_libraries(t)?);
        }
        for l in libs {
            a.file(l.to_string_lossy().trim_start_matches('/'), &read(&l)?, 0o755);
        }
    }
    for (p, data, mode) in &c.extra {
        a.file(p, data, *mode);
    }
    let bytes = a.finish();
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(bytes.len() as u64)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// The libraries a dynamically linked host binary loads, and its loader (from ldd).
fn shared_libraries(bin: &str) -> Result<Vec<PathBuf>> {
    let o = Command::new("ldd").arg(bin).output().context("spawning ldd")?;
    let text = String::from_utf8_lossy(&o.stdout);
    let mut out = Vec::new();
    for l in text.lines() {
        // "libelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match l.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            out.push(PathBuf::from(p));
        }
    }
    Ok(out)
}

/// busybox init: the rc script once, then the runner on the console. init reaps orphans
/// (a daemon left behind by a shell), which the runner could not do without libc.
const INITTAB: &str = "::sysinit:/etc/pgvm/rc\n::once:/pgvm/agent\n";

/// The guest's startup: filesystems, modules in order, the lab link. Failures are reported as
/// `PGVM rc-error` lines for the host to show; the runner starts regardless.
fn rc(c: &Contents) -> String {
    let host_ip = if c.host_tools.contains(&"/usr/sbin/ip") { "/usr/sbin/ip" } else { "ip" };
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf || echo "PGVM rc-error bpffs"
while read m; do
  [ -n "$m" ] || continue
  insmod /pgvm/modules/$m.ko || echo "PGVM rc-error insmod $m"
done < /pgvm/modules.order
ip link set lo up
i=0
while [ $i -lt 200 ] && [ -z "$(ls /sys/class/net | grep -v '^lo$')" ]; do sleep 0.05; i=$((i+1)); done
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
[ -n "$nic" ] || echo "PGVM rc-error no network interface"
echo "$nic" > /run/pgvm-nic
echo 0 > /proc/sys/net/ipv6/conf/$nic/accept_dad
echo 0 > /proc/sys/net/ipv6/conf/$nic/router_solicitations
{host_ip} link set $nic up
{host_ip} addr add {GUEST_V4}/{PREFIX_V4} dev $nic
{host_ip} addr add {GUEST_V6}/{PREFIX_V6} dev $nic
"#
    )
}

/// A newc ("070701") cpio archive, as the kernel unpacks into its rootfs.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    pub fn dir(&mut self, path: &str) {
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040755, &[], (0, 0));
    }

    pub fn file(&mut self, path: &str, data: &[u8], perm: u32) {
        self.parents(path);
        self.entry(path, 0o100000 | perm, data, (0, 0));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    pub fn chardev(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, 0o020600, &[], (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut a = Cpio::default();
        a.file("a/b", b"hello", 0o644);
        let buf = a.finish();
        // The parent directory comes first, every header starts on a 4-byte boundary.
        assert!(buf.starts_with(b"070701"));
        assert_eq!(&buf[110..112], b"a\0");
        let second = buf.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
        assert_eq!(second % 4, 0);
        assert_eq!(&buf[second + 110..second + 114], b"a/b\0");
        assert!(buf.windows(5).any(|w| w == b"hello"));
        assert!(buf.ends_with(&[0; 4]) || buf.len().is_multiple_of(4));
        assert!(buf.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
