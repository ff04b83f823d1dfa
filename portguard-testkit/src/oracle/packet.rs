//! Datagrams the kernel accepts when they are valid, and fragments of them.
//!
//! `frames::Frame` builds one frame at a time for the verdict tests and the BPF_PROG_TEST_RUN
//! fuzzer, where nothing checks a transport checksum and a "fragment" is one frame with its
//! fragment fields set. The kernel oracle needs more: a TCP SYN or UDP datagram whose checksum
//! is right over the *reassembled* datagram (with the IPv6 pseudo-header, whatever extension
//! headers precede it), split into real fragments at 8-byte boundaries, with IPv6 option TLVs
//! Linux accepts (RFC 4942 padding rules) and IPv4 options it parses. Otherwise the kernel would
//! discard the frame for a reason that has nothing to do with the case, and the oracle would
//! say nothing.
//!
//! Layout of a built frame: Ethernet (destination = the gateway's MAC), any VLAN tags, then the
//! IP header. Every frame of a datagram carries the same frame id: in the TCP sequence number
//! and after `MAGIC` in the payload, so that a delivery (a datagram read from a socket, a
//! SYN-ACK acknowledging `seq + 1`, an ICMP error quoting it) is attributed to its case.

use crate::frames::checksum;

/// Marks the frame id in payloads: `MAGIC`, then the id (big-endian u32).
pub const MAGIC: [u8; 4] = *b"PGor";

/// Ethernet addresses of the two ends, and the addresses of one instance of a case.
#[derive(Clone, Copy, Debug)]
pub struct Wire {
    /// The gateway's MAC (the receiving veth end).
    pub dst_mac: [u8; 6],
    /// The sender's MAC.
    pub src_mac: [u8; 6],
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// The transport header.
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    /// TCP only: the sequence number (the frame id) and flags (SYN for every case).
    pub seq: u32,
    pub flags: u8,
    /// TCP options, a multiple of 4 bytes.
    pub tcp_options: Vec<u8>,
    /// UDP over IPv4 only: send checksum 0 ("none", RFC 768), which IPv4 accepts.
    pub udp_no_checksum: bool,
}

/// The body of a hop-by-hop or destination options header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opts {
    /// What Linux accepts: PadN of at most 7 bytes, and for longer headers one unknown option
    /// whose action bits (00) say "skip it" (RFC 8200 §4.2).
    Valid,
    /// PadN longer than 7 bytes (RFC 4942 §2.1.9.5; Linux drops it).
    PadTooLong,
    /// PadN whose bytes are not zero (Linux drops it).
    PadNonZero,
    /// An unknown option with action 01: "discard the packet".
    Discard,
    /// An unknown option with action 10: "discard and send an ICMP Parameter Problem".
    Icmp,
    /// Nine options in one header (Linux's max_{hbh,dst}_opts_number is 8).
    TooMany,
}

/// An IPv6 extension header of a case's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ext {
    /// `units`: the length field (8-octet units beyond the first).
    HopByHop {
        units: u8,
        opts: Opts,
    },
    DestOpts {
        units: u8,
        opts: Opts,
    },
    /// A routing header of `kind` (0, 2, 3, 4, or an unassigned type).
    Routing {
        kind: u8,
        units: u8,
        segments_left: u8,
    },
    /// An atomic fragment (offset 0, M clear: a whole datagram, RFC 6946).
    AtomicFragment,
    /// Authentication header, `len` in its own units (4 octets, minus 2).
    Ah {
        len: u8,
    },
    /// A next-header value with no extension-header format the kernel knows (formatted like an
    /// 8-octet header anyway): mobility (135), HIP (139), shim6 (140), experimental (253).
    Other {
        proto: u8,
        units: u8,
    },
}

impl Ext {
    pub fn proto(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::DestOpts { .. } => 60,
            Ext::Routing { .. } => 43,
            Ext::AtomicFragment => 44,
            Ext::Ah { .. } => 51,
            Ext::Other { proto, .. } => *proto,
        }
    }

    pub fn size(&self) -> usize {
        match *self {
            Ext::HopByHop { units, .. }
            | Ext::DestOpts { units, .. }
            | Ext::Routing { units, .. }
            | Ext::Other { units, .. } => (units as usize + 1) * 8,
            Ext::AtomicFragment => 8,
            Ext::Ah { len } => (len as usize + 2) * 4,
        }
    }

    /// A short name for labels.
    pub fn name(&self) -> String {
        match *self {
            Ext::HopByHop { opts: Opts::Valid, .. } => "hbh".into(),
            Ext::HopByHop { opts, .. } => format!("hbh({opts:?})"),
            Ext::DestOpts { opts: Opts::Valid, .. } => "dst".into(),
            Ext::DestOpts { opts, .. } => format!("dst({opts:?})"),
            Ext::Routing { kind, segments_left, .. } => format!("rt{kind}/sl{segments_left}"),
            Ext::AtomicFragment => "atomic-frag".into(),
            Ext::Ah { .. } => "ah".into(),
            Ext::Other { proto, .. } => format!("nh{proto}"),
        }
    }

    fn bytes(&self, next: u8, id: u32) -> Vec<u8> {
        let mut b = vec![0u8; self.size()];
        b[0] = next;
        match *self {
            Ext::HopByHop { units, opts } | Ext::DestOpts { units, opts } => {
                b[1] = units;
                fill_options(&mut b[2..], opts);
            }
            Ext::Routing { kind, units, segments_left } => {
                b[1] = units;
                b[2] = kind;
                b[3] = segments_left;
            }
            Ext::AtomicFragment => {
                b[4..8].copy_from_slice(&id.to_be_bytes());
            }
            Ext::Ah { len } => {
                b[1] = len;
                // SPI 0x100 (0 is reserved), sequence 1.
                b[4..8].copy_from_slice(&0x100u32.to_be_bytes());
                b[8..12].copy_from_slice(&1u32.to_be_bytes());
            }
            Ext::Other { units, .. } => b[1] = units,
        }
        b
    }
}

/// Option TLVs over `body` (a header's bytes after next-header and length).
fn fill_options(body: &mut [u8], opts: Opts) {
    let n = body.len(); // 6, 14, 22, ...
    // PadN of `len` bytes in all (type 1, length len - 2).
    let padn = |b: &mut [u8], len: usize| {
        if len == 1 {
            b[0] = 0; // Pad1
        } else if len >= 2 {
            b[0] = 1;
            b[1] = (len - 2) as u8;
        }
    };
    match opts {
        Opts::Valid if n <= 7 => padn(body, n),
        Opts::Valid => {
            // RFC 3692-style experimental option 0x1e: action bits 00, skip over it.
            body[0] = 0x1e;
            body[1] = (n - 2) as u8;
        }
        Opts::PadTooLong => {
            if n >= 8 {
                // One PadN over all of it: more than 7 bytes of padding.
                padn(body, n);
            } else {
                // A 6-byte body cannot hold 8 bytes of padding: a PadN claiming one byte more
                // than the header has instead.
                body[0] = 1;
                body[1] = (n - 1) as u8;
            }
        }
        Opts::PadNonZero => {
            // A skip option over all but the last 6 bytes, then PadN(6) with a non-zero byte.
            if n > 6 {
                body[0] = 0x1e;
                body[1] = (n - 8) as u8;
            }
            let tail = &mut body[n - 6..];
            padn(tail, 6);
            tail[3] = 0xa5;
        }
        Opts::Discard | Opts::Icmp => {
            body[0] = if opts == Opts::Discard { 0x5e } else { 0x9e };
            body[1] = (n - 2) as u8;
        }
        Opts::TooMany => {
            // As many zero-length skip options as fit (3 in 6 bytes, 7 in 14, ...): at least
            // nine needs 18 bytes; shorter headers get what fits.
            for i in 0..n / 2 {
                body[2 * i] = 0x1e;
                body[2 * i + 1] = 0;
            }
        }
    }
}

/// An IPv4 option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum V4Opt {
    Nop,
    /// End of options: what follows is padding.
    Eol,
    /// Record route with room for `slots` addresses.
    RecordRoute {
        slots: u8,
    },
    /// Timestamps only (flag 0), room for `slots`.
    Timestamp {
        slots: u8,
    },
    /// Router alert (RFC 2113), copied into every fragment.
    RouterAlert,
    /// Loose source route with `hops` addresses, pointer past them (the route is done).
    LooseSourceRoute {
        hops: u8,
    },
    /// An unassigned option type (copied flag set when `copied`), 4 bytes long.
    Unknown {
        copied: bool,
    },
    /// Record route whose length byte (2) is shorter than its pointer needs.
    BadLength,
}

impl V4Opt {
    fn bytes(&self, dst: [u8; 4]) -> Vec<u8> {
        match *self {
            V4Opt::Nop => vec![1],
            V4Opt::Eol => vec![0],
            V4Opt::RecordRoute { slots } => {
                let mut b = vec![7, 3 + 4 * slots, 4];
                b.resize(3 + 4 * slots as usize, 0);
                b
            }
            V4Opt::Timestamp { slots } => {
                let mut b = vec![68, 4 + 4 * slots, 5, 0];
                b.resize(4 + 4 * slots as usize, 0);
                b
            }
            V4Opt::RouterAlert => vec![148, 4, 0, 0],
            V4Opt::LooseSourceRoute { hops } => {
                let len = 3 + 4 * hops;
                let mut b = vec![131, len, len + 1];
                for _ in 0..hops {
                    b.extend_from_slice(&dst);
                }
                b
            }
            V4Opt::Unknown { copied } => vec![if copied { 0x9e } else { 0x1e }, 4, 0, 0],
            V4Opt::BadLength => vec![7, 2, 4, 0],
        }
    }

    /// Copied into every fragment (the option type's top bit, RFC 791).
    fn copied(&self) -> bool {
        matches!(
            self,
            V4Opt::RouterAlert | V4Opt::LooseSourceRoute { .. } | V4Opt::Unknown { copied: true }
        )
    }
}

/// The options area of an IPv4 header: padded with EOL to a multiple of 4, at most 40 bytes.
pub fn v4_options(opts: &[V4Opt], dst: [u8; 4], first_fragment: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for o in opts {
        if first_fragment || o.copied() {
            b.extend(o.bytes(dst));
        }
    }
    b.truncate(40);
    while b.len() % 4 != 0 {
        b.push(0);
    }
    b
}

/// The network layer of a case.
#[derive(Clone, Debug)]
pub enum Net {
    V4 {
        options: Vec<V4Opt>,
    },
    /// `exts`: the chain before the transport header. When the datagram is fragmented the
    /// fragment header goes in at `frag_at`: headers before it are repeated in every fragment
    /// (the unfragmentable part), those after it are fragmented with the payload.
    V6 {
        exts: Vec<Ext>,
        frag_at: usize,
    },
}

impl Net {
    pub fn is_v6(&self) -> bool {
        matches!(self, Net::V6 { .. })
    }
}

/// One fragment: the bytes `start..end` of the fragmentable part (a multiple of 8 apart from
/// the end), and whether more follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub start: usize,
    pub end: usize,
    pub more: bool,
    /// Carries other bytes over its range (an overlapping fragment): the transport ports
    /// swapped for these (with the source port adjusted so that the checksum still holds), or
    /// the payload bytes in it inverted.
    pub rewrite: Option<Rewrite>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Destination port replaced (offset 0 pieces only); the checksum stays valid.
    Dport(u16),
    /// Every byte of the piece inverted (a conflicting overlap).
    Invert,
}

/// A case's datagram, before the addresses of an instance are known.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub net: Net,
    pub l4: L4,
    /// The frame id: in the payload after `MAGIC`, as the TCP sequence number, as the IPv4
    /// identification (low 16 bits) and the IPv6 fragment identification.
    pub id: u32,
    /// Payload bytes after the 8-byte id marker.
    pub filler: usize,
    /// None: one unfragmented frame.
    pub pieces: Option<Vec<Piece>>,
    /// VLAN tags, outermost first: (TPID, TCI).
    pub tags: Vec<(u16, u16)>,
}

/// Where the headers of a built frame are (for mutations and for reading replies).
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub l3: usize,
    pub v6: bool,
    /// IPv6 extension headers in this frame: (offset, its protocol number).
    pub exts: Vec<(usize, u8)>,
    /// The fragment header (IPv6) in this frame.
    pub frag: Option<usize>,
    /// The transport header, when this frame starts it (unfragmented, or a first fragment that
    /// holds its first bytes).
    pub l4: Option<usize>,
    pub proto: u8,
    /// This frame's offset in the fragmentable part (0 for unfragmented frames).
    pub frag_offset: usize,
    /// Fragmented (this frame is one piece of several).
    pub fragmented: bool,
}

/// Ones-complement sum of big-endian 16-bit words (odd length padded with a zero byte).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        acc += (*b as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The TCP/UDP checksum over `segment` (its checksum field zero) with the pseudo-header.
pub fn l4_checksum(v6: bool, src: &[u8], dst: &[u8], proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum16(src, 0);
    acc = sum16(dst, acc);
    if v6 {
        acc = sum16(&(segment.len() as u32).to_be_bytes(), acc);
        acc = sum16(&[0, 0, 0, proto], acc);
    } else {
        acc = sum16(&[0, proto], acc);
        acc = sum16(&(segment.len() as u16).to_be_bytes(), acc);
    }
    let c = fold(sum16(segment, acc));
    // A computed 0 is sent as 0xffff for UDP (0 means "no checksum"); harmless for TCP.
    if c == 0 { 0xffff } else { c }
}

/// Ones-complement difference `a - b`, for adjusting a field so that a sum stays the same.
fn ones_sub(a: u16, b: u16) -> u16 {
    let s = a as u32 + (!b) as u32;
    ((s & 0xffff) + (s >> 16)) as u16
}

fn ones_add(a: u16, b: u16) -> u16 {
    let s = a as u32 + b as u32;
    ((s & 0xffff) + (s >> 16)) as u16
}

impl Datagram {
    /// The transport segment (header and payload) with its checksum for these addresses.
    pub fn segment(&self, w: &Wire) -> Vec<u8> {
        let l = &self.l4;
        let mut payload = Vec::with_capacity(8 + self.filler);
        payload.extend_from_slice(&MAGIC);
        payload.extend_from_slice(&self.id.to_be_bytes());
        // Filler that is never zero, so a truncation or overlap shows in the checksum.
        payload.extend((0..self.filler).map(|i| 0x41 + (i % 26) as u8));
        let mut s = Vec::new();
        s.extend_from_slice(&l.sport.to_be_bytes());
        s.extend_from_slice(&l.dport.to_be_bytes());
        match l.proto {
            Proto::Tcp => {
                s.extend_from_slice(&l.seq.to_be_bytes());
                s.extend_from_slice(&0u32.to_be_bytes());
                let off = (20 + l.tcp_options.len()) / 4;
                s.push((off as u8) << 4);
                s.push(l.flags);
                s.extend_from_slice(&64240u16.to_be_bytes());
                s.extend_from_slice(&[0, 0, 0, 0]);
                s.extend_from_slice(&l.tcp_options);
            }
            Proto::Udp => {
                s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(&[0, 0]);
            }
        }
        s.extend_from_slice(&payload);
        let at = if l.proto == Proto::Tcp { 16 } else { 6 };
        if !(l.proto == Proto::Udp && l.udp_no_checksum && !self.net.is_v6()) {
            let c = match self.net {
                Net::V4 { .. } => l4_checksum(false, &w.src4, &w.dst4, l.proto.number(), &s),
                Net::V6 { .. } => l4_checksum(true, &w.src6, &w.dst6, l.proto.number(), &s),
            };
            s[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        s
    }

    /// Builds every frame of this instance, in send order, with its layout.
    pub fn build(&self, w: &Wire) -> Vec<(Vec<u8>, Layout)> {
        let segment = self.segment(w);
        let proto = self.l4.proto.number();
        let mut out = Vec::new();
        match &self.net {
            Net::V4 { options } => {
                let whole = [Piece { start: 0, end: segment.len(), more: false, rewrite: None }];
                let pieces = self.pieces.as_deref().unwrap_or(&whole);
                for p in pieces {
                    let body = piece_bytes(&segment, p, 0, self.l4.proto);
                    let opts = v4_options(options, w.dst4, p.start == 0);
                    let ihl = 20 + opts.len();
                    let mut h = vec![0x40 | (ihl / 4) as u8, 0];
                    h.extend_from_slice(&((ihl + body.len()) as u16).to_be_bytes());
                    h.extend_from_slice(&(self.id as u16).to_be_bytes());
                    let frag = if self.pieces.is_some() {
                        ((p.start / 8) as u16 & 0x1fff) | if p.more { 0x2000 } else { 0 }
                    } else {
                        0
                    };
                    h.extend_from_slice(&frag.to_be_bytes());
                    h.push(64);
                    h.push(proto);
                    h.extend_from_slice(&[0, 0]);
                    h.extend_from_slice(&w.src4);
                    h.extend_from_slice(&w.dst4);
                    h.extend_from_slice(&opts);
                    let sum = checksum(&h);
                    h[10..12].copy_from_slice(&sum.to_be_bytes());
                    let (mut f, l3) = self.link(w, 0x0800);
                    f.extend_from_slice(&h);
                    let l4 = (p.start == 0 && !body.is_empty()).then_some(l3 + ihl);
                    f.extend_from_slice(&body);
                    let layout = Layout {
                        l3,
                        v6: false,
                        l4,
                        proto,
                        frag_offset: p.start,
                        fragmented: self.pieces.is_some(),
                        ..Layout::default()
                    };
                    out.push((f, layout));
                }
            }
            Net::V6 { exts, frag_at } => {
                let frag_at = (*frag_at).min(exts.len());
                let (unfrag, frag): (&[Ext], &[Ext]) = match self.pieces {
                    Some(_) => exts.split_at(frag_at),
                    None => (exts, &[]),
                };
                // The fragmentable part: the extension headers after the fragment header, then
                // the segment.
                let mut fragmentable = Vec::new();
                let mut frag_ext_at = Vec::new();
                for (i, e) in frag.iter().enumerate() {
                    let next = frag.get(i + 1).map_or(proto, Ext::proto);
                    frag_ext_at.push((fragmentable.len(), e.proto()));
                    fragmentable.extend(e.bytes(next, self.id));
                }
                let seg_at = fragmentable.len();
                fragmentable.extend_from_slice(&segment);
                let whole =
                    [Piece { start: 0, end: fragmentable.len(), more: false, rewrite: None }];
                let pieces = self.pieces.as_deref().unwrap_or(&whole);
                for p in pieces {
                    let body = piece_bytes(&fragmentable, p, seg_at, self.l4.proto);
                    let first_fragmentable = frag.first().map_or(proto, Ext::proto);
                    let mut chain = Vec::new();
                    let mut layout = Layout {
                        v6: true,
                        proto,
                        frag_offset: p.start,
                        fragmented: self.pieces.is_some(),
                        ..Layout::default()
                    };
                    let (mut f, l3) = self.link(w, 0x86dd);
                    layout.l3 = l3;
                    let after_unfrag = if self.pieces.is_some() { 44 } else { first_fragmentable };
                    for (i, e) in unfrag.iter().enumerate() {
                        let next = unfrag.get(i + 1).map_or(after_unfrag, Ext::proto);
                        layout.exts.push((l3 + 40 + chain.len(), e.proto()));
                        chain.extend(e.bytes(next, self.id));
                    }
                    if self.pieces.is_some() {
                        let at = l3 + 40 + chain.len();
                        layout.frag = Some(at);
                        layout.exts.push((at, 44));
                        chain.push(first_fragmentable);
                        chain.push(0);
                        let fo = ((p.start / 8) as u16) << 3 | p.more as u16;
                        chain.extend_from_slice(&fo.to_be_bytes());
                        chain.extend_from_slice(&self.id.to_be_bytes());
                    }
                    let body_at = l3 + 40 + chain.len();
                    for &(o, pr) in &frag_ext_at {
                        if o >= p.start && o < p.end {
                            layout.exts.push((body_at + o - p.start, pr));
                        }
                    }
                    if seg_at >= p.start && seg_at < p.end {
                        layout.l4 = Some(body_at + seg_at - p.start);
                    }
                    let first = unfrag.first().map_or(
                        if self.pieces.is_some() { 44 } else { first_fragmentable },
                        Ext::proto,
                    );
                    let mut h = vec![0x60, 0, 0, 0];
                    h.extend_from_slice(&((chain.len() + body.len()) as u16).to_be_bytes());
                    h.push(first);
                    h.push(64);
                    h.extend_from_slice(&w.src6);
                    h.extend_from_slice(&w.dst6);
                    f.extend_from_slice(&h);
                    f.extend_from_slice(&chain);
                    f.extend_from_slice(&body);
                    out.push((f, layout));
                }
            }
        }
        out
    }

    /// Ethernet and VLAN tags; returns the bytes so far and the offset of the IP header.
    fn link(&self, w: &Wire, ethertype: u16) -> (Vec<u8>, usize) {
        let mut f = Vec::with_capacity(256);
        f.extend_from_slice(&w.dst_mac);
        f.extend_from_slice(&w.src_mac);
        for &(tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        let l3 = f.len();
        (f, l3)
    }
}

/// The bytes of one piece, with its rewrite applied. `seg_at`: where the transport header
/// starts in `data`.
fn piece_bytes(data: &[u8], p: &Piece, seg_at: usize, proto: Proto) -> Vec<u8> {
    let end = p.end.min(data.len());
    let mut b = data[p.start.min(end)..end].to_vec();
    match p.rewrite {
        None => {}
        Some(Rewrite::Invert) => b.iter_mut().for_each(|x| *x = !*x),
        // Ports are at seg_at..seg_at + 4 of the fragmentable part. The checksum is kept valid
        // by adjusting the checksum field when this piece holds it; otherwise (a TCP piece
        // shorter than 18 bytes) the rewritten version's checksum is left wrong. The source
        // port is never touched: another case may own the 4-tuple it would make.
        Some(Rewrite::Dport(new)) if seg_at >= p.start && seg_at + 4 <= end => {
            let at = seg_at - p.start;
            let old = u16::from_be_bytes([b[at + 2], b[at + 3]]);
            b[at + 2..at + 4].copy_from_slice(&new.to_be_bytes());
            let ck = at + if proto == Proto::Tcp { 16 } else { 6 };
            if ck + 2 <= b.len() {
                let c = u16::from_be_bytes([b[ck], b[ck + 1]]);
                if !(proto == Proto::Udp && c == 0) {
                    let sum = ones_add(!c, ones_sub(new, old));
                    let c = !sum;
                    let c = if c == 0 && proto == Proto::Udp { 0xffff } else { c };
                    b[ck..ck + 2].copy_from_slice(&c.to_be_bytes());
                }
            }
        }
        Some(Rewrite::Dport(_)) => {}
    }
    b
}

/// Recomputes the IPv4 header checksum of a frame whose IPv4 header is at `l3`, when the
/// header (by its IHL) is inside the frame.
pub fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let Some(&vihl) = f.get(l3) else {
        return;
    };
    let hlen = (vihl & 0x0f) as usize * 4;
    if hlen < 20 || l3 + hlen > f.len() {
        return;
    }
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let sum = checksum(&f[l3..l3 + hlen]);
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

/// Recomputes the transport checksum of an unfragmented frame after its header fields were
/// changed, over the span the IP length field now gives it (as the kernel would read it), the
/// way an attacker would send it. Does nothing if the span is shorter than the header.
pub fn fix_l4_checksum(f: &mut [u8], l: &Layout) {
    let Some(l4) = l.l4 else {
        return;
    };
    if l.fragmented {
        return;
    }
    let end = if l.v6 {
        let Some(b) = f.get(l.l3 + 4..l.l3 + 6) else { return };
        l.l3 + 40 + u16::from_be_bytes([b[0], b[1]]) as usize
    } else {
        let Some(b) = f.get(l.l3 + 2..l.l3 + 4) else { return };
        l.l3 + u16::from_be_bytes([b[0], b[1]]) as usize
    };
    let end = end.min(f.len());
    let (at, hlen) = if l.proto == 6 { (16, 20) } else { (6, 8) };
    if end < l4 + hlen {
        return;
    }
    if l.proto == 17 && !l.v6 && f[l4 + 6] == 0 && f[l4 + 7] == 0 {
        return; // "no checksum" stays that way
    }
    f[l4 + at] = 0;
    f[l4 + at + 1] = 0;
    let (src, dst) = if l.v6 {
        (f[l.l3 + 8..l.l3 + 24].to_vec(), f[l.l3 + 24..l.l3 + 40].to_vec())
    } else {
        (f[l.l3 + 12..l.l3 + 16].to_vec(), f[l.l3 + 16..l.l3 + 20].to_vec())
    };
    let c = l4_checksum(l.v6, &src, &dst, l.proto, &f[l4..end]);
    f[l4 + at..l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Finds `MAGIC` in `data` and returns the id after it.
pub fn find_id(data: &[u8]) -> Option<u32> {
    data.windows(8).find(|w| w[..4] == MAGIC).map(|w| u32::from_be_bytes([w[4], w[5], w[6], w[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    fn wire() -> Wire {
        Wire {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            src4: [198, 19, 0, 5],
            dst4: [198, 18, 0, 1],
            src6: crate::frames::v6([0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 5]),
            dst6: crate::frames::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
        }
    }

    fn syn(v6: bool, exts: Vec<Ext>) -> Datagram {
        Datagram {
            net: if v6 { Net::V6 { exts, frag_at: 0 } } else { Net::V4 { options: vec![] } },
            l4: L4 {
                proto: Proto::Tcp,
                sport: 40000,
                dport: 2745,
                seq: 77,
                flags: 0x02,
                tcp_options: vec![2, 4, 5, 0xb4],
                udp_no_checksum: false,
            },
            id: 77,
            filler: 10,
            pieces: None,
            tags: vec![],
        }
    }

    /// etherparse verifies the checksums the kernel will.
    #[test]
    fn checksums_verify() {
        let w = wire();
        for v6 in [false, true] {
            let exts = vec![
                Ext::HopByHop { units: 0, opts: Opts::Valid },
                Ext::DestOpts { units: 2, opts: Opts::Valid },
                Ext::Routing { kind: 0, units: 0, segments_left: 0 },
            ];
            for d in [syn(v6, exts.clone()), {
                let mut d = syn(v6, exts);
                d.l4.proto = Proto::Udp;
                d
            }] {
                let frames = d.build(&w);
                assert_eq!(frames.len(), 1);
                let (f, l) = &frames[0];
                let p = SlicedPacket::from_ethernet(f).unwrap();
                let (src, dst) =
                    if v6 { (&w.src6[..], &w.dst6[..]) } else { (&w.src4[..], &w.dst4[..]) };
                let l4 = l.l4.unwrap();
                let seg = &f[l4..];
                let mut z = seg.to_vec();
                let at = if d.l4.proto == Proto::Tcp { 16 } else { 6 };
                z[at] = 0;
                z[at + 1] = 0;
                let c = l4_checksum(v6, src, dst, d.l4.proto.number(), &z);
                assert_eq!(&seg[at..at + 2], &c.to_be_bytes());
                match p.transport {
                    Some(TransportSlice::Tcp(t)) => assert_eq!(t.destination_port(), 2745),
                    Some(TransportSlice::Udp(u)) => assert_eq!(u.destination_port(), 2745),
                    other => panic!("{other:?}"),
                }
                // The receiver's check: the sum over pseudo-header and segment, checksum
                // included, is all ones.
                let mut pseudo = src.to_vec();
                pseudo.extend_from_slice(dst);
                if v6 {
                    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
                    pseudo.extend_from_slice(&[0, 0, 0, d.l4.proto.number()]);
                } else {
                    pseudo.extend_from_slice(&[0, d.l4.proto.number()]);
                    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                }
                assert_eq!(fold(sum16(seg, sum16(&pseudo, 0))), 0);
                assert_eq!(find_id(f), Some(77));
            }
        }
    }

    #[test]
    fn fragments_reassemble_to_the_segment() {
        let w = wire();
        for v6 in [false, true] {
            let mut d = syn(v6, vec![Ext::DestOpts { units: 0, opts: Opts::Valid }]);
            if let Net::V6 { frag_at, .. } = &mut d.net {
                *frag_at = 0; // the destination options go into the fragmentable part
            }
            let whole = d.build(&w)[0].0.clone();
            d.pieces = Some(vec![
                Piece { start: 0, end: 16, more: true, rewrite: None },
                Piece { start: 16, end: 1000, more: false, rewrite: None },
            ]);
            let frames = d.build(&w);
            assert_eq!(frames.len(), 2);
            let mut data = Vec::new();
            for (f, l) in &frames {
                let hdr = if v6 { 40 + 8 } else { 20 };
                data.extend_from_slice(&f[l.l3 + hdr..]);
            }
            let tail = if v6 { &whole[14 + 40..] } else { &whole[14 + 20..] };
            assert_eq!(data, tail);
            // The transport header starts in the first piece (after 8 bytes of options for IPv6).
            assert!(frames[0].1.l4.is_some());
            assert!(frames[1].1.l4.is_none());
        }
    }

    #[test]
    fn port_rewrite_keeps_the_checksum() {
        let w = wire();
        let mut d = syn(false, vec![]);
        let seg = d.segment(&w);
        d.pieces = Some(vec![Piece {
            start: 0,
            end: 24,
            more: true,
            rewrite: Some(Rewrite::Dport(8080)),
        }]);
        let f = &d.build(&w)[0].0;
        let mut new = seg.clone();
        new[..24].copy_from_slice(&f[34..58]);
        assert_eq!(new[..2], seg[..2], "the source port stays");
        assert_eq!(u16::from_be_bytes([new[2], new[3]]), 8080);
        let mut z = new.clone();
        z[16] = 0;
        z[17] = 0;
        assert_eq!(l4_checksum(false, &w.src4, &w.dst4, 6, &z).to_be_bytes(), [new[16], new[17]]);
    }

    #[test]
    fn options_follow_linux_padding_rules() {
        for units in 0..4u8 {
            let b = Ext::DestOpts { units, opts: Opts::Valid }.bytes(6, 0);
            // Walk the TLVs: padding never exceeds 7 bytes in a row, PadN bytes are zero.
            let mut i = 2;
            let mut pad = 0;
            while i < b.len() {
                match b[i] {
                    0 => {
                        pad += 1;
                        i += 1;
                    }
                    t => {
                        let len = b[i + 1] as usize;
                        if t == 1 {
                            pad += len + 2;
                            assert!(b[i + 2..i + 2 + len].iter().all(|&x| x == 0));
                        } else {
                            pad = 0;
                            assert_eq!(t >> 6, 0);
                        }
                        i += 2 + len;
                    }
                }
                assert!(pad <= 7, "{b:?}");
            }
            assert_eq!(i, b.len());
        }
    }
}
