//! A gateway and its outside world in two network namespaces joined by a veth pair: the
//! built-in lab (`portguard lab`) and the end-to-end tests run here, never on a real uplink.
//!
//! Addresses come only from the ranges reserved for such tests: the gateway is 198.18.0.1 and
//! 2001:db8::1; the outside has `OUTSIDE_HOSTS` hosts, host n at 198.18.0.n and 2001:db8:0:n::2
//! (n from 2), each IPv6 host in a /64 of its own as real hosts are (portguard counts IPv6
//! sources per /64 by default). Everything the lab creates is removed when the `Lab` is dropped.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

/// Outside addresses per family.
pub const OUTSIDE_HOSTS: u8 = 5;
/// The interface portguard guards, inside the gateway namespace.
pub const GW_IF: &str = "pg-wan";
const OUT_IF: &str = "pg-peer";

pub struct Lab {
    pub gw: String,
    pub out: String,
}

pub fn gw_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))
}
pub fn gw_v6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
}
/// The `n`th outside address (0-based) of a family.
pub fn outside(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2 + n as u16, 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2 + n))
    }
}

/// How the `n`th outside host appears among the sources with the default prefixes: its IPv4
/// address, or its IPv6 /64 ("2001:db8:0:2::/64").
pub fn outside_source(v6: bool, n: u8) -> String {
    if v6 { format!("2001:db8:0:{:x}::/64", 2 + n as u16) } else { outside(false, n).to_string() }
}

/// The prefix length of the lab's IPv6 link: the gateway's /64 and the hosts' /64s all on it.
const V6_LINK_PREFIX: u8 = 48;

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2 is needed: apt-get install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Lab {
    /// Creates the two namespaces, named `<name>-gw` and `<name>-out`, and the veth pair.
    pub fn create(name: &str) -> Result<Lab> {
        let lab = Lab { gw: format!("{name}-gw"), out: format!("{name}-out") };
        // Leftovers of a run that was killed: remove them first.
        lab.remove();
        lab.build().inspect_err(|_| lab.remove())?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        ip(&["netns", "add", &self.gw])?;
        ip(&["netns", "add", &self.out])?;
        self.plug()
    }

    /// Removes the veth pair, as when a router's WAN interface goes away (PPP hang-up, driver
    /// reset, hot-unplug).
    pub fn unplug(&self) -> Result<()> {
        ip(&["-n", &self.gw, "link", "del", GW_IF])
    }

    /// Creates the veth pair with its addresses (again, after `unplug`).
    pub fn plug(&self) -> Result<()> {
        ip(&[
            "link", "add", GW_IF, "netns", &self.gw, "type", "veth", "peer", "name", OUT_IF,
            "netns", &self.out,
        ])?;
        for (ns, dev, v4, v6) in [
            (&self.gw, GW_IF, vec![gw_v4()], vec![gw_v6()]),
            (
                &self.out,
                OUT_IF,
                (0..OUTSIDE_HOSTS).map(|n| outside(false, n)).collect(),
                (0..OUTSIDE_HOSTS).map(|n| outside(true, n)).collect(),
            ),
        ] {
            for a in v4 {
                ip(&["-n", ns, "addr", "add", &format!("{a}/24"), "dev", dev])?;
            }
            for a in v6 {
                let a = format!("{a}/{V6_LINK_PREFIX}");
                ip(&["-n", ns, "addr", "add", &a, "dev", dev, "nodad"])?;
            }
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    fn remove(&self) {
        // Deleting a namespace deletes the veth end inside it, and with it the peer.
        for ns in [&self.gw, &self.out] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (only the network namespace:
/// `ip netns exec` would also remount /sys and hide bpffs).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
}

/// Listeners on one port of the gateway (TCP and UDP, IPv4 and IPv6), counting what reaches
/// them, until dropped.
pub struct Listeners {
    pub tcp_accepted: Arc<AtomicU64>,
    pub udp_received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Listeners {
    pub fn start(ns: &str, port: u16) -> Result<Listeners> {
        let tcp_accepted = Arc::new(AtomicU64::new(0));
        let udp_received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for addr in [gw_v4(), gw_v6()] {
            let sa = SocketAddr::new(addr, port);
            let tcp = in_netns(ns, move || TcpListener::bind(sa))??;
            let udp = in_netns(ns, move || UdpSocket::bind(sa))??;
            tcp.set_nonblocking(true)?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            let (n, s) = (tcp_accepted.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut c, _)) => {
                            n.fetch_add(1, Ordering::Relaxed);
                            let _ = c.write_all(b"ok");
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
            let (n, s) = (udp_received.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if udp.recv_from(&mut buf).is_ok() {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Listeners { tcp_accepted, udp_received, stop, threads })
    }

    pub fn tcp(&self) -> u64 {
        self.tcp_accepted.load(Ordering::Relaxed)
    }
    pub fn udp(&self) -> u64 {
        self.udp_received.load(Ordering::Relaxed)
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP connection attempt from `src` to `dst`, from inside namespace `ns`: true if it
/// connected (and read the listener's greeting) within `timeout`.
pub fn tcp_connect(ns: &str, src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    in_netns(ns, move || -> Result<bool> {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        if s.connect_timeout(&dst.into(), timeout).is_err() {
            return Ok(false);
        }
        let mut c: TcpStream = s.into();
        c.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 2];
        Ok(c.read_exact(&mut buf).is_ok())
    })?
}

/// `count` UDP datagrams of `len` bytes from `src` to `dst`, from inside namespace `ns`.
pub fn udp_send(ns: &str, src: IpAddr, dst: SocketAddr, count: u32, len: usize) -> Result<()> {
    in_netns(ns, move || -> Result<()> {
        let s = UdpSocket::bind(SocketAddr::new(src, 0))?;
        let payload = vec![0x5a; len];
        for _ in 0..count {
            s.send_to(&payload, dst)?;
        }
        Ok(())
    })?
}
