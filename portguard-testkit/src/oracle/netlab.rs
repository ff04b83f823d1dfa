//! The oracle's lab: portguard's namespace lab (`portguard::lab::Lab`, a gateway and an
//! outside namespace joined by a veth pair), set up so that the kernel's answer to every frame
//! can be read back and attributed:
//!
//! - Frames come from off-link sources (198.19.P.H, 2001:db8:ff:P::H, P the phase) routed on
//!   the gateway via a next hop whose neighbour entry is a MAC nobody has. Replies (SYN-ACKs,
//!   RSTs, ICMP errors) therefore leave the gateway, are captured on the outside veth end by an
//!   AF_PACKET socket, and are never answered: the outside kernel sees a frame for another host
//!   and drops it, so no RST comes back to a guarded port to be counted by portguard.
//! - The outside end has IPv6 disabled, so it sends no neighbour discovery, MLD or router
//!   solicitations: every frame portguard sees on the gateway is one the oracle sent (phase C
//!   attributes counter changes to cases on that basis).
//! - The gateway has UDP sockets and TCP listeners on every guarded and control port, IPv4 and
//!   IPv6 (wildcard addresses, so a datagram to any local address counts).
//! - Sysctls on the gateway, and why: reassembly timeouts of 5 s (so that incomplete datagrams
//!   do not pile up over a long run; every case's fragments arrive within milliseconds) and a
//!   256 MB reassembly memory limit (so that the limit never decides a case); no SYN-ACK
//!   retransmissions (replies to the off-link sources would only repeat); no ICMP rate limits
//!   (ICMP errors are evidence of what the kernel did); reverse-path filtering off.
//!
//! Everything is in the two namespaces, removed when the `Lab` is dropped; the tcx link and
//! sockets are file descriptors closed before that.

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use portguard::lab::{self, GW_IF, Lab};

use super::packet::Wire;

/// The outside veth end (the lab's name for it).
pub const OUT_IF: &str = "pg-peer";
/// The next hop that stands for the outside world, and the MAC nobody has.
const NEXT_HOP4: &str = "198.18.0.254";
const NEXT_HOP6: &str = "2001:db8::fe";
const NOBODY_MAC: &str = "02:00:00:00:fe:fe";
pub const GW4: [u8; 4] = [198, 18, 0, 1];
pub const GW6: [u8; 16] = crate::frames::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);

/// Reassembly memory allowed per family in the gateway namespace (the default is 4 MB).
pub const REASSEMBLY_LIMIT: u64 = 256 << 20;

/// The source of a case in a phase: one of 250 hosts per phase, changing every 50,000 ids so
/// that TCP 4-tuples and IPv4 (source, identification) pairs are not reused within a run.
pub fn source(phase: u8, id: u32) -> ([u8; 4], [u8; 16]) {
    let h = 1 + (id / 50_000) % 250;
    let v4 = [198, 19, phase, h as u8];
    let v6 = crate::frames::v6([0x2001, 0xdb8, 0xff, phase as u16, 0, 0, 0, h as u16]);
    (v4, v6)
}

/// The phase a reply's destination (a case's source) belongs to.
pub fn phase_of(v6: bool, addr: &[u8]) -> Option<u8> {
    if v6 {
        (addr.len() == 16 && addr[..6] == [0x20, 0x01, 0x0d, 0xb8, 0x00, 0xff]).then(|| addr[7])
    } else {
        (addr.len() == 4 && addr[..2] == [198, 19]).then(|| addr[2])
    }
}

/// TCP/UDP source port of a case: distinct for 50,000 consecutive ids.
pub fn sport(id: u32) -> u16 {
    1024 + (id % 50_000) as u16
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Writes a sysctl in namespace `ns` (from a thread in it: /proc/sys/net is per namespace).
fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = value.to_string();
    lab::in_netns(ns, move || std::fs::write(&path, v))?
        .with_context(|| format!("sysctl {key}={value} in {ns}"))
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, v: T) -> io::Result<()> {
    // SAFETY: v is a plain value of the size passed.
    let r = unsafe {
        libc::setsockopt(fd, level, name, &v as *const T as *const _, size_of::<T>() as u32)
    };
    check(r, "setsockopt").map(|_| ())
}

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) }, "socket")?;
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The MAC address and ifindex of `dev` in namespace `ns`.
fn link_info(ns: &str, dev: &str) -> Result<([u8; 6], u32)> {
    let dev = dev.to_string();
    lab::in_netns(ns, move || -> io::Result<([u8; 6], u32)> {
        let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        // SAFETY: ifreq is plain data; the name fits (IFNAMSIZ).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq passed.
        check(
            unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) },
            "SIOCGIFHWADDR",
        )?;
        // SAFETY: the union member the ioctl filled.
        let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *m = *b as u8;
        }
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if idx == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((mac, idx))
    })?
    .map_err(Into::into)
}

/// A socket on the gateway on one port: TCP listener or UDP, IPv4 or IPv6.
pub struct Listener {
    pub fd: OwnedFd,
    pub port: u16,
    pub udp: bool,
    pub v6: bool,
}

fn listener(port: u16, udp: bool, v6: bool) -> io::Result<Listener> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let ty = if udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    let fd = socket(domain, ty | libc::SOCK_NONBLOCK, 0)?;
    let raw = fd.as_raw_fd();
    setsockopt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
    // Big enough that a batch never overflows it (overflows are checked anyway).
    setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16i32 << 20)?;
    let r = if v6 {
        setsockopt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1i32)?;
        // SAFETY: zeroed sockaddr_in6 is the wildcard address.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_port = port.to_be();
        // SAFETY: a valid sockaddr_in6 of the size given.
        unsafe {
            libc::bind(raw, &sa as *const _ as *const _, size_of::<libc::sockaddr_in6>() as u32)
        }
    } else {
        // SAFETY: zeroed sockaddr_in is 0.0.0.0.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        // SAFETY: as above.
        unsafe {
            libc::bind(raw, &sa as *const _ as *const _, size_of::<libc::sockaddr_in>() as u32)
        }
    };
    check(r, "bind")?;
    if !udp {
        // SAFETY: plain listen(2). Connections never complete (no one ACKs the SYN-ACKs).
        check(unsafe { libc::listen(raw, 65_535) }, "listen")?;
    }
    Ok(Listener { fd, port, udp, v6 })
}

/// An AF_PACKET socket on the outside end: `send` injects frames; the capture socket reads
/// what the gateway sends back.
pub struct Packet {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const PACKET_STATISTICS: i32 = 6;

fn packet_socket(ifindex: u32, capture: bool) -> io::Result<Packet> {
    // A sender binds protocol 0: it receives nothing.
    let proto = if capture { ETH_P_ALL.to_be() } else { 0 };
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto as i32)?;
    let raw = fd.as_raw_fd();
    if capture {
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64i32 << 20)?;
        // Our own injected frames are not replies.
        setsockopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1i32)?;
    } else {
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16i32 << 20)?;
    }
    // SAFETY: zeroed sockaddr_ll, then the fields bind uses.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(raw, &sa as *const _ as *const _, size_of::<libc::sockaddr_ll>() as u32)
    };
    check(r, "bind AF_PACKET")?;
    Ok(Packet { fd })
}

impl Packet {
    /// Sends one raw frame. The socket is non-blocking: a full queue is waited out briefly.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        for _ in 0..1000 {
            // SAFETY: frame is a valid buffer of its length.
            let r = unsafe {
                libc::send(self.fd.as_raw_fd(), frame.as_ptr() as *const _, frame.len(), 0)
            };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "the send queue stayed full"))
    }

    /// The next captured frame, if one is queued.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: buf is writable for its length.
        let r =
            unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        (r >= 0).then_some(r as usize)
    }

    /// Frames the kernel dropped for this socket since the last call (a full buffer).
    pub fn drops(&self) -> u32 {
        let mut st = [0u32; 2];
        let mut len = size_of::<[u32; 2]>() as u32;
        // SAFETY: tpacket_stats is two u32s.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                st.as_mut_ptr() as *mut _,
                &mut len,
            )
        };
        if r < 0 { 0 } else { st[1] }
    }
}

/// The oracle's lab. Fields drop in order: sockets and the VLAN program first, the namespaces
/// (and with them everything in them) last.
pub struct OracleLab {
    pub listeners: Vec<Listener>,
    pub inject: Packet,
    pub capture: Packet,
    /// The tcx link of the VLAN emulation (None: not attached).
    pub vlan_link: Option<OwnedFd>,
    pub gw_mac: [u8; 6],
    pub peer_mac: [u8; 6],
    pub gw_ifindex: u32,
    pub lab: Lab,
}

/// Ports the gateway listens on.
pub struct Ports<'a> {
    pub guarded: &'a [u16],
    pub control: &'a [u16],
}

impl OracleLab {
    pub fn create(name: &str, ports: &Ports, emulate_vlans: bool) -> Result<OracleLab> {
        let lab = Lab::create(name)?;
        let (gw, out) = (lab.gw.clone(), lab.out.clone());
        let limit = REASSEMBLY_LIMIT.to_string();
        for (k, v) in [
            ("net.ipv4.ipfrag_time", "5"),
            ("net.ipv6.ip6frag_time", "5"),
            ("net.ipv4.ipfrag_high_thresh", limit.as_str()),
            ("net.ipv6.ip6frag_high_thresh", limit.as_str()),
            ("net.ipv4.tcp_synack_retries", "0"),
            ("net.ipv4.tcp_max_syn_backlog", "65536"),
            ("net.core.somaxconn", "65536"),
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.pg-wan.rp_filter", "0"),
        ] {
            sysctl(&gw, k, v)?;
        }
        // Global on some kernels, per namespace on others: best effort.
        let _ = sysctl(&gw, "net.ipv4.icmp_msgs_per_sec", "1000000");
        let _ = sysctl(&gw, "net.ipv4.icmp_msgs_burst", "1000000");
        sysctl(&out, &format!("net.ipv6.conf.{OUT_IF}.disable_ipv6"), "1")?;
        ip(&[
            "-n",
            &gw,
            "neigh",
            "replace",
            NEXT_HOP4,
            "lladdr",
            NOBODY_MAC,
            "dev",
            GW_IF,
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            &gw,
            "neigh",
            "replace",
            NEXT_HOP6,
            "lladdr",
            NOBODY_MAC,
            "dev",
            GW_IF,
            "nud",
            "permanent",
        ])?;
        ip(&["-n", &gw, "route", "add", "198.19.0.0/16", "via", NEXT_HOP4, "dev", GW_IF])?;
        ip(&["-n", &gw, "-6", "route", "add", "2001:db8:ff::/48", "via", NEXT_HOP6, "dev", GW_IF])?;
        let (gw_mac, gw_ifindex) = link_info(&gw, GW_IF)?;
        let (peer_mac, peer_ifindex) = link_info(&out, OUT_IF)?;
        let vlan_link = if emulate_vlans {
            Some(lab::in_netns(&gw, move || super::vlan::attach(gw_ifindex))??)
        } else {
            None
        };
        let mut listeners = Vec::new();
        for &port in ports.guarded.iter().chain(ports.control) {
            for udp in [false, true] {
                for v6 in [false, true] {
                    listeners.push(
                        lab::in_netns(&gw, move || listener(port, udp, v6))?
                            .with_context(|| format!("listening on {port}"))?,
                    );
                }
            }
        }
        let inject = lab::in_netns(&out, move || packet_socket(peer_ifindex, false))??;
        let capture = lab::in_netns(&out, move || packet_socket(peer_ifindex, true))??;
        Ok(OracleLab { listeners, inject, capture, vlan_link, gw_mac, peer_mac, gw_ifindex, lab })
    }

    /// The addresses of case `id` in `phase`.
    pub fn wire(&self, phase: u8, id: u32) -> Wire {
        let (src4, src6) = source(phase, id);
        Wire { dst_mac: self.gw_mac, src_mac: self.peer_mac, src4, dst4: GW4, src6, dst6: GW6 }
    }

    /// Reads the gateway namespace's SNMP counters (/proc/net/snmp and snmp6) as
    /// "Group.Name" → value.
    pub fn snmp(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        lab::in_netns(&self.lab.gw, || -> io::Result<_> {
            let mut m = std::collections::BTreeMap::new();
            let v4 = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
            let lines: Vec<&str> = v4.lines().collect();
            for pair in lines.chunks(2) {
                if let [names, values] = pair {
                    let (group, names) = names.split_once(':').unwrap_or(("", names));
                    let values = values.split_once(':').map_or(*values, |v| v.1);
                    for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                        if let Ok(v) = v.parse::<i64>() {
                            m.insert(format!("{group}.{n}"), v.max(0) as u64);
                        }
                    }
                }
            }
            for l in std::fs::read_to_string("/proc/thread-self/net/snmp6")?.lines() {
                let mut w = l.split_whitespace();
                if let (Some(n), Some(v)) = (w.next(), w.next()) {
                    m.insert(n.to_string(), v.parse().unwrap_or(0));
                }
            }
            Ok(m)
        })?
        .map_err(Into::into)
    }

    /// The veth pair's drop counters (`ip -s link`): (outside end tx dropped, gateway end rx
    /// dropped). veth counts a frame it could not hand to the other end (a full NAPI ring with
    /// XDP attached, a full backlog without) as dropped on the sending end; such a frame never
    /// reached the gateway and says nothing about it.
    pub fn link_drops(&self) -> Result<(u64, u64)> {
        let stat = |ns: &str, dev: &str, dir: &str| -> Result<u64> {
            let out = Command::new("ip")
                .args(["-n", ns, "-s", "-j", "link", "show", "dev", dev])
                .output()
                .context("running ip")?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("ip -s -j link show {dev}"))?;
            Ok(v[0]["stats64"][dir]["dropped"].as_u64().unwrap_or(0))
        };
        Ok((stat(&self.lab.out, OUT_IF, "tx")?, stat(&self.lab.gw, GW_IF, "rx")?))
    }

    /// Memory held by reassembly queues in the gateway namespace, IPv4 and IPv6 (bytes, from
    /// /proc/net/sockstat{,6}). Past `REASSEMBLY_LIMIT` the kernel drops new fragments.
    pub fn reassembly_memory(&self) -> Result<(u64, u64)> {
        lab::in_netns(&self.lab.gw, || -> io::Result<(u64, u64)> {
            let mut m = [0u64; 2];
            for (i, f) in ["/proc/thread-self/net/sockstat", "/proc/thread-self/net/sockstat6"]
                .iter()
                .enumerate()
            {
                for l in std::fs::read_to_string(f)?.lines() {
                    if let Some(rest) = l.strip_prefix("FRAG") {
                        let mut w = rest.split_whitespace();
                        while let Some(k) = w.next() {
                            if k == "memory" {
                                m[i] = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                            }
                        }
                    }
                }
            }
            Ok((m[0], m[1]))
        })?
        .map_err(Into::into)
    }

    /// Reassembly queues in the gateway namespace (IPv4 + IPv6), from /proc/net/sockstat{,6}.
    pub fn reassembly_queues(&self) -> Result<u64> {
        lab::in_netns(&self.lab.gw, || -> io::Result<u64> {
            let mut n = 0;
            for f in ["/proc/thread-self/net/sockstat", "/proc/thread-self/net/sockstat6"] {
                for l in std::fs::read_to_string(f)?.lines() {
                    if let Some(rest) = l.strip_prefix("FRAG") {
                        let mut w = rest.split_whitespace();
                        while let Some(k) = w.next() {
                            if k == "inuse" {
                                n += w.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                            }
                        }
                    }
                }
            }
            Ok(n)
        })?
        .map_err(Into::into)
    }
}

/// Reads per socket per drain, at most.
pub const MAX_DRAIN: usize = 1 << 20;

/// A datagram read from a gateway socket.
pub struct Received {
    pub port: u16,
    pub v6: bool,
    pub source: Vec<u8>,
    pub source_port: u16,
    pub payload: Vec<u8>,
}

/// Reads every datagram queued on the UDP listeners.
pub fn drain_udp(listeners: &[Listener], out: &mut Vec<Received>) {
    let mut buf = vec![0u8; 65536];
    for l in listeners.iter().filter(|l| l.udp) {
        // Bounded: a receive buffer holds far fewer datagrams than this.
        for _ in 0..MAX_DRAIN {
            // SAFETY: zeroed storage for any address family.
            let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_storage>() as u32;
            // SAFETY: buffers valid for their lengths.
            let r = unsafe {
                libc::recvfrom(
                    l.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                    0,
                    &mut sa as *mut _ as *mut _,
                    &mut len,
                )
            };
            if r < 0 {
                break;
            }
            let (source, source_port) = if l.v6 {
                // SAFETY: an AF_INET6 socket fills a sockaddr_in6.
                let a = unsafe { *(&sa as *const _ as *const libc::sockaddr_in6) };
                (a.sin6_addr.s6_addr.to_vec(), u16::from_be(a.sin6_port))
            } else {
                // SAFETY: an AF_INET socket fills a sockaddr_in.
                let a = unsafe { *(&sa as *const _ as *const libc::sockaddr_in) };
                (a.sin_addr.s_addr.to_ne_bytes().to_vec(), u16::from_be(a.sin_port))
            };
            out.push(Received {
                port: l.port,
                v6: l.v6,
                source,
                source_port,
                payload: buf[..r as usize].to_vec(),
            });
        }
    }
}

/// Formats an address of either family (for messages).
pub fn addr(a: &[u8]) -> String {
    match a.len() {
        4 => Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(a).unwrap()).to_string(),
        _ => format!("{a:02x?}"),
    }
}
