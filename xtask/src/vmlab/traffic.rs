//! Traffic from the host side of the tap. Probes are whole Ethernet frames written to the tap
//! with a packet socket: one frame is exactly one packet in the guest, from any source address
//! and port, with correct checksums (in count mode the guest's stack takes them). Ordinary
//! traffic to 8080 goes through the host's own sockets (a real TCP handshake).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    initramfs::{GUEST_V4, GUEST_V6},
    lab::{GUEST_MAC, HOST_MAC, HOST_V4, HOST_V6, Lab, TAP},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    TcpSyn,
}

/// UDP payload of every probe: 18 bytes, so an IPv4 UDP frame is 60 bytes, IPv6 80.
pub const UDP_PAYLOAD: usize = 18;

/// The frame length of a probe (what the XDP program counts as bytes).
pub fn frame_len(v6: bool, proto: Proto) -> u64 {
    let ip = if v6 { 40 } else { 20 };
    let l4 = match proto {
        Proto::Udp => 8 + UDP_PAYLOAD,
        Proto::TcpSyn => 20,
    };
    (14 + ip + l4) as u64
}

pub fn guest_addr(v6: bool) -> IpAddr {
    if v6 { IpAddr::from_str(GUEST_V6).unwrap() } else { IpAddr::from_str(GUEST_V4).unwrap() }
}

/// Lab source addresses by number: 198.18.77.<n> and 2001:db8:77:<n in hex>::2, each IPv6
/// source in a /64 of its own, as real hosts are (portguard counts IPv6 probers per /64).
pub fn source(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x77, u16::from(n), 0, 0, 0, 2))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 77, n))
    }
}

/// How portguard names a probing source's row: its IPv4 address, or its IPv6 /64.
pub fn row(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An Ethernet frame from the host side to the guest: IPv4 or IPv6, then a UDP datagram
/// (UDP_PAYLOAD bytes) or a bare TCP SYN.
pub fn frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: Proto, seq: u32) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    let next = match proto {
        Proto::Udp => {
            l4.extend_from_slice(&((8 + UDP_PAYLOAD) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(b"portguard vmlab   ");
            17u8
        }
        Proto::TcpSyn => {
            l4.extend_from_slice(&seq.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0x04, 0x00, 0, 0, 0, 0]);
            6u8
        }
    };
    // Pseudo-header checksum.
    let (s, d) = (ip_bytes(src), ip_bytes(dst));
    let mut acc = sum16(&s, 0);
    acc = sum16(&d, acc);
    acc += u32::from(next) + l4.len() as u32;
    acc = sum16(&l4, acc);
    let mut c = fold(acc);
    if c == 0 && next == 17 {
        c = 0xffff;
    }
    let at = if next == 17 { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + l4.len());
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&(seq as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0, 64, next, 0, 0]);
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
            let c = fold(sum16(&h, 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        _ => {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[next, 64]);
            f.extend_from_slice(&s);
            f.extend_from_slice(&d);
        }
    }
    f.extend_from_slice(&l4);
    f
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A small xorshift generator: random source ports without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// An ephemeral-range port.
    pub fn port(&mut self) -> u16 {
        (1024 + self.next() % 64000) as u16
    }
}

/// A packet socket on the lab's tap: frames written here go to the guest as they are.
pub struct Tap {
    fd: OwnedFd,
    ifindex: i32,
}

impl Tap {
    pub fn open(lab: &Lab) -> Result<Tap> {
        lab.run_in(|| -> Result<Tap> {
            // SAFETY: plain socket calls; the descriptor is owned right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("opening a packet socket");
            }
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(TAP).unwrap();
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            if ifindex == 0 {
                bail!("{TAP} is missing in the lab namespace");
            }
            Ok(Tap { fd, ifindex })
        })?
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set are those AF_PACKET reads.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = self.ifindex;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&GUEST_MAC);
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending a frame on the tap");
        }
        Ok(())
    }

    /// Sends frames in bursts with pauses, gentle enough for an emulated guest.
    pub fn send_paced(&self, frames: &[Vec<u8>], per_burst: usize, pause: Duration) -> Result<()> {
        for chunk in frames.chunks(per_burst.max(1)) {
            for f in chunk {
                self.send(f)?;
            }
            thread::sleep(pause);
        }
        Ok(())
    }
}

/// One probe of a planned batch.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub src: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Proto,
}

/// Frames for a batch of probes to the guest.
pub fn frames(probes: &[Probe], rng: &mut Rng) -> Vec<Vec<u8>> {
    probes
        .iter()
        .map(|p| {
            let dst = guest_addr(p.src.is_ipv6());
            frame(p.src, dst, p.sport, p.dport, p.proto, rng.next() as u32)
        })
        .collect()
}

/// `n` UDP datagrams and `tcp` TCP connections to the guest's `port`, from the host's own
/// address, through the host's stack; returns the connections that completed.
pub fn ordinary(lab: &Lab, v6: bool, port: u16, n: u32, tcp: u32) -> Result<u32> {
    lab.run_in(move || -> Result<u32> {
        let host = if v6 { HOST_V6 } else { HOST_V4 };
        let guest = SocketAddr::new(guest_addr(v6), port);
        let s = UdpSocket::bind((host, 0))?;
        for i in 0..n {
            s.send_to(format!("ordinary datagram {i}").as_bytes(), guest)?;
            thread::sleep(Duration::from_millis(5));
        }
        let mut ok = 0;
        for _ in 0..tcp {
            if TcpStream::connect_timeout(&guest, Duration::from_secs(10)).is_ok() {
                ok += 1;
            }
        }
        Ok(ok)
    })?
}

/// A steady stream of UDP probes from one source on a thread of its own, until stopped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<Result<()>>>,
}

impl Stream {
    /// `pps` frames per second to `dport` from `src`, with random source ports; bounded by
    /// `max` in any case.
    pub fn start(tap: Arc<Tap>, src: IpAddr, dport: u16, pps: u32, max: Duration) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let handle = thread::spawn(move || -> Result<()> {
            let mut rng = Rng::new(0x5eed ^ u64::from(dport));
            let dst = guest_addr(src.is_ipv6());
            let gap = Duration::from_secs_f64(1.0 / f64::from(pps.max(1)));
            let start = Instant::now();
            let mut next = start;
            while !st.load(Ordering::Relaxed) && start.elapsed() < max {
                let f = frame(src, dst, rng.port(), dport, Proto::Udp, rng.next() as u32);
                tap.send(&f)?;
                se.fetch_add(1, Ordering::Relaxed);
                next += gap;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            Ok(())
        });
        Stream { stop, sent, handle: Some(handle) }
    }

    /// Stops the stream; the number of frames it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
        }
        Ok(self.sent.load(Ordering::Relaxed))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_and_checksums() {
        for v6 in [false, true] {
            for proto in [Proto::Udp, Proto::TcpSyn] {
                let f = frame(source(v6, 11), guest_addr(v6), 4000, 2745, proto, 7);
                assert_eq!(f.len() as u64, frame_len(v6, proto));
            }
        }
        // IPv4 header checksum verifies to zero.
        let f = frame(source(false, 11), guest_addr(false), 4000, 2745, Proto::Udp, 7);
        assert_eq!(fold(sum16(&f[14..34], 0)), 0);
        // UDP checksum over the pseudo-header verifies to zero.
        let l4 = &f[34..];
        let mut acc = sum16(&f[26..34], 0) + 17 + l4.len() as u32;
        acc = sum16(l4, acc);
        assert_eq!(fold(acc), 0);
    }
}
