//! Hand-built Ethernet frames, for the verdict tests, the benchmarks and the fuzzer: every
//! header portguard parses, and the ways each can be wrong.
//!
//! ```
//! use portguard_testkit::frames::Frame;
//! let f = Frame::tcp4([198, 18, 0, 2], [198, 18, 0, 1], 40000, 2745).syn().vlan(0x8100, 7).build();
//! assert_eq!(&f[12..14], &[0x81, 0x00]);
//! ```

/// A link-layer wrapper, outermost first.
#[derive(Clone, Debug)]
pub enum L2 {
    /// A VLAN tag: TPID (0x8100, 0x88a8, 0x9100) and VLAN id.
    Vlan(u16, u16),
    /// A PPPoE session header (EtherType 0x8864) with the PPP protocol for the inner packet.
    Pppoe,
}

/// An IPv6 extension header, in chain order.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `n` 8-byte units beyond the first.
    HopByHop(u8),
    Routing(u8),
    DestOpts(u8),
    /// Authentication header, `n` 4-byte units beyond the first two.
    Ah(u8),
    /// Fragment header: offset in 8-byte units, more-fragments flag, identification.
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
    /// Mobility (135), HIP (139) and shim6 (140): `n` 8-byte units beyond the first, like
    /// hop-by-hop; their bodies are zeros (portguard only reads the length).
    Mobility(u8),
    Hip(u8),
    Shim6(u8),
}

impl Ext {
    fn proto(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DestOpts(_) => 60,
            Ext::Ah(_) => 51,
            Ext::Fragment { .. } => 44,
            Ext::Mobility(_) => 135,
            Ext::Hip(_) => 139,
            Ext::Shim6(_) => 140,
        }
    }

    /// Length in bytes.
    pub fn size(&self) -> usize {
        match *self {
            Ext::HopByHop(n)
            | Ext::Routing(n)
            | Ext::DestOpts(n)
            | Ext::Mobility(n)
            | Ext::Hip(n)
            | Ext::Shim6(n) => (n as usize + 1) * 8,
            Ext::Ah(n) => (n as usize + 2) * 4,
            Ext::Fragment { .. } => 8,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match *self {
            Ext::HopByHop(n) | Ext::Routing(n) | Ext::DestOpts(n) => {
                let mut b = vec![0u8; (n as usize + 1) * 8];
                b[0] = next;
                b[1] = n;
                if let Ext::Routing(_) = self {
                    b[2] = 4; // segment routing type, segments left 0: skipped by the stack
                } else {
                    b[2] = 1; // PadN over the rest
                    b[3] = (b.len() - 4) as u8;
                }
                b
            }
            Ext::Ah(n) | Ext::Mobility(n) | Ext::Hip(n) | Ext::Shim6(n) => {
                let mut b = vec![0u8; self.size()];
                b[0] = next;
                b[1] = n;
                b
            }
            Ext::Fragment { offset, more, id } => {
                let fo = (offset << 3) | more as u16;
                let mut b = vec![next, 0];
                b.extend_from_slice(&fo.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

#[derive(Clone, Debug)]
enum L3 {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        options: Vec<u8>,
        id: u16,
        frag_offset: u16,
        more: bool,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        ext: Vec<Ext>,
    },
    /// A raw EtherType and body (ARP, ...).
    Raw(u16),
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Another IP protocol number (ICMP 1, ICMPv6 58, ESP 50, no next header 59, ...).
    Other(u8),
}

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct Frame {
    l2: Vec<L2>,
    l3: L3,
    l4: L4,
    payload: Vec<u8>,
    /// Cut the built frame to this many bytes.
    truncate: Option<usize>,
    /// End the datagram after this many bytes of IP payload, its length field saying so.
    ip_payload: Option<usize>,
    /// Raw edits applied after building: (offset, byte).
    pokes: Vec<(usize, u8)>,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IPv6 address from eight groups.
pub const fn v6(g: [u16; 8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        a[2 * i] = (g[i] >> 8) as u8;
        a[2 * i + 1] = g[i] as u8;
        i += 1;
    }
    a
}

impl Frame {
    fn new(l3: L3, l4: L4) -> Frame {
        Frame {
            l2: Vec::new(),
            l3,
            l4,
            payload: Vec::new(),
            truncate: None,
            ip_payload: None,
            pokes: Vec::new(),
        }
    }

    pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Frame {
        Frame::new(Frame::v4l3(src, dst), L4::Tcp { sport, dport, flags: TCP_ACK })
    }
    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Frame {
        Frame::new(Frame::v4l3(src, dst), L4::Udp { sport, dport })
    }
    pub fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Frame {
        Frame::new(L3::V6 { src, dst, ext: Vec::new() }, L4::Tcp { sport, dport, flags: TCP_ACK })
    }
    pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Frame {
        Frame::new(L3::V6 { src, dst, ext: Vec::new() }, L4::Udp { sport, dport })
    }
    /// IPv4 carrying protocol `proto` without a header portguard reads (ICMP: 1).
    pub fn ip4_other(src: [u8; 4], dst: [u8; 4], proto: u8) -> Frame {
        Frame::new(Frame::v4l3(src, dst), L4::Other(proto)).payload(&[0u8; 8])
    }
    pub fn ip6_other(src: [u8; 16], dst: [u8; 16], proto: u8) -> Frame {
        Frame::new(L3::V6 { src, dst, ext: Vec::new() }, L4::Other(proto)).payload(&[0u8; 8])
    }
    /// A non-IP frame: an ARP request.
    pub fn arp() -> Frame {
        let body = [
            0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0,
            1,
        ];
        Frame::new(L3::Raw(0x0806), L4::Other(0)).payload(&body)
    }

    fn v4l3(src: [u8; 4], dst: [u8; 4]) -> L3 {
        L3::V4 { src, dst, options: Vec::new(), id: 0x1234, frag_offset: 0, more: false }
    }

    /// TCP flags (default ACK).
    pub fn flags(mut self, f: u8) -> Frame {
        if let L4::Tcp { flags, .. } = &mut self.l4 {
            *flags = f;
        }
        self
    }
    /// A connection attempt: SYN alone.
    pub fn syn(self) -> Frame {
        self.flags(TCP_SYN)
    }
    pub fn payload(mut self, p: &[u8]) -> Frame {
        self.payload = p.to_vec();
        self
    }
    /// Adds a VLAN tag inside the ones already added.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        self.l2.push(L2::Vlan(tpid, vid));
        self
    }
    pub fn pppoe(mut self) -> Frame {
        self.l2.push(L2::Pppoe);
        self
    }
    /// IPv4 options (padded to a multiple of 4 with end-of-options).
    pub fn ipv4_options(mut self, o: &[u8]) -> Frame {
        if let L3::V4 { options, .. } = &mut self.l3 {
            *options = o.to_vec();
            while options.len() % 4 != 0 {
                options.push(0);
            }
        }
        self
    }
    /// IPv4 fragmentation fields (offset in 8-byte units).
    pub fn ipv4_fragment(mut self, offset: u16, more_fragments: bool, ident: u16) -> Frame {
        if let L3::V4 { frag_offset, more, id, .. } = &mut self.l3 {
            *frag_offset = offset;
            *more = more_fragments;
            *id = ident;
        }
        self
    }
    /// Appends an IPv6 extension header to the chain.
    pub fn ext(mut self, e: Ext) -> Frame {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            ext.push(e);
        }
        self
    }
    /// Cuts the finished frame to `n` bytes.
    pub fn truncate(mut self, n: usize) -> Frame {
        self.truncate = Some(n);
        self
    }
    /// Ends the datagram after `n` bytes of IP payload (IPv4: after the header and options;
    /// IPv6: after the fixed header, extension headers included), with the length fields saying
    /// so: a datagram sent that short, e.g. a tiny first fragment, not a truncated frame.
    pub fn ip_payload(mut self, n: usize) -> Frame {
        self.ip_payload = Some(n);
        self
    }
    /// Overwrites one byte of the finished frame.
    pub fn poke(mut self, offset: usize, byte: u8) -> Frame {
        self.pokes.push((offset, byte));
        self
    }

    /// Offset of the IP header in the built frame.
    pub fn l3_offset(&self) -> usize {
        14 + self.l2.iter().map(|l| if let L2::Vlan(..) = l { 4 } else { 8 }).sum::<usize>()
    }

    /// Offset of the TCP or UDP header (or the other protocol's payload) in the built frame.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset()
            + match &self.l3 {
                L3::V4 { options, .. } => 20 + options.len(),
                L3::V6 { ext, .. } => 40 + ext.iter().map(Ext::size).sum::<usize>(),
                L3::Raw(_) => 0,
            }
    }

    pub fn build(&self) -> Vec<u8> {
        let (ethertype, mut l3) = self.network();
        if let Some(n) = self.ip_payload {
            match &self.l3 {
                L3::V4 { options, .. } => {
                    let ihl = 20 + options.len();
                    l3.truncate(ihl + n);
                    l3[2..4].copy_from_slice(&((ihl + n) as u16).to_be_bytes());
                    l3[10..12].copy_from_slice(&[0, 0]);
                    let sum = checksum(&l3[..ihl]);
                    l3[10..12].copy_from_slice(&sum.to_be_bytes());
                }
                L3::V6 { .. } => {
                    l3.truncate(40 + n);
                    l3[4..6].copy_from_slice(&(n as u16).to_be_bytes());
                }
                L3::Raw(_) => l3.truncate(n),
            }
        }
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        let mut inner = ethertype;
        // Wrap from the inside out: the EtherType before each layer names what follows it.
        let mut types = Vec::new();
        for l in self.l2.iter().rev() {
            let t = match l {
                L2::Vlan(tpid, vid) => {
                    let mut h = vid.to_be_bytes().to_vec();
                    h.extend_from_slice(&inner.to_be_bytes());
                    (*tpid, h)
                }
                L2::Pppoe => {
                    let ppp: u16 = match inner {
                        0x0800 => 0x0021,
                        0x86dd => 0x0057,
                        _ => 0xc021,
                    };
                    let len = (l3.len() + 2) as u16;
                    let mut h = vec![0x11, 0x00, 0x12, 0x34];
                    h.extend_from_slice(&len.to_be_bytes());
                    h.extend_from_slice(&ppp.to_be_bytes());
                    (0x8864, h)
                }
            };
            inner = t.0;
            types.push(t.1);
        }
        f.extend_from_slice(&inner.to_be_bytes());
        for h in types.iter().rev() {
            f.extend_from_slice(h);
        }
        f.extend_from_slice(&l3);
        // Ethernet's minimum frame (without FCS) is 60 bytes: pad like a NIC would.
        while f.len() < 60 {
            f.push(0);
        }
        for &(o, b) in &self.pokes {
            if o < f.len() {
                f[o] = b;
            }
        }
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        f
    }

    fn transport(&self) -> (u8, Vec<u8>) {
        match self.l4 {
            L4::Tcp { sport, dport, flags } => {
                let mut t = Vec::with_capacity(20 + self.payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1u32.to_be_bytes()); // seq
                t.extend_from_slice(&0u32.to_be_bytes()); // ack
                t.push(5 << 4);
                t.push(flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                t.extend_from_slice(&self.payload);
                (6, t)
            }
            L4::Udp { sport, dport } => {
                let mut u = Vec::with_capacity(8 + self.payload.len());
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(&self.payload);
                (17, u)
            }
            L4::Other(p) => (p, self.payload.clone()),
        }
    }

    fn network(&self) -> (u16, Vec<u8>) {
        let (proto, l4) = self.transport();
        match &self.l3 {
            L3::Raw(t) => (*t, l4),
            L3::V4 { src, dst, options, id, frag_offset, more } => {
                let ihl = 20 + options.len();
                let mut h = vec![0x40 | (ihl / 4) as u8, 0];
                h.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                let frag = (*frag_offset & 0x1fff) | if *more { 0x2000 } else { 0 };
                h.extend_from_slice(&frag.to_be_bytes());
                h.push(64);
                h.push(proto);
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(src);
                h.extend_from_slice(dst);
                h.extend_from_slice(options);
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                h.extend_from_slice(&l4);
                (0x0800, h)
            }
            L3::V6 { src, dst, ext } => {
                let mut chain = Vec::new();
                for (i, e) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(proto, Ext::proto);
                    chain.extend_from_slice(&e.bytes(next));
                }
                let first = ext.first().map_or(proto, Ext::proto);
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
                h.push(first);
                h.push(64);
                h.extend_from_slice(src);
                h.extend_from_slice(dst);
                h.extend_from_slice(&chain);
                h.extend_from_slice(&l4);
                (0x86dd, h)
            }
        }
    }
}

/// The Internet checksum of an IPv4 header (whose checksum field is zero).
pub fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_well_formed() {
        let f = Frame::udp4([198, 18, 0, 2], [198, 18, 0, 1], 5000, 2745).payload(b"hi").build();
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 2745);
        assert_eq!(f.len(), 60);
    }

    #[test]
    fn layers_nest_outside_in() {
        let f = Frame::tcp6(
            v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]),
            v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
            1,
            2745,
        )
        .vlan(0x88a8, 100)
        .vlan(0x8100, 200)
        .pppoe()
        .ext(Ext::HopByHop(0))
        .ext(Ext::Fragment { offset: 0, more: true, id: 9 })
        .build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x88, 0x64]);
        assert_eq!(&f[28..30], &[0x00, 0x57]);
        assert_eq!(f[30] >> 4, 6);
        assert_eq!(f[30 + 6], 0); // hop-by-hop first
        assert_eq!(f[30 + 40], 44); // then fragment
        assert_eq!(f[30 + 48], 6); // then TCP
        assert_eq!(u16::from_be_bytes([f[30 + 56 + 2], f[30 + 56 + 3]]), 2745);
    }
}
