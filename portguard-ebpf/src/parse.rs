//! Frame parsing: one small bounds-checked step per header, each reading at an offset into the
//! frame and returning the next protocol and the offset of its header, or ending the walk with
//! a `Frame` saying what the frame is. Every read is checked against `data_end` first; a frame
//! that ends early, or whose header fields contradict each other, is `Malformed`, never an
//! error path that could make the program abort. Header fields are read at the named offsets
//! below (as in xdp-tools' parsing_helpers.h, where the kernel's structs name them).
//!
//! The contract with main.rs: `frame()` reads, it never writes, and it never looks at ports in
//! a non-first fragment (RFC 1858, RFC 8200 §4.5): those frames come back as `Fragment`, to be
//! judged by the verdict their first fragment got.
//!
//! Malformed and Unjudged are told apart by what the kernel would do: a frame the stack
//! discards itself (a truncated IP header, a version that contradicts the EtherType, an
//! unfragmented datagram cut before its transport header) is Malformed and passes; a frame the
//! stack could still deliver to a socket but whose ports cannot be read here (a VLAN stack or an
//! IPv6 extension chain deeper than followed — Linux follows any depth —, a first fragment cut
//! before its ports, which reassembly completes) is Unjudged, dropped in drop mode.

use aya_ebpf::programs::XdpContext;
use portguard_common::{
    Config, FragmentKey, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PROTO_TCP, PROTO_UDP, SourceKey,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag, still seen on some carrier gear.
const ETH_P_QINQ_OLD: u16 = 0x9100;
const ETH_P_PPP_SES: u16 = 0x8864;
const PPP_IP: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

/// Ethernet: the EtherType is the header's last two bytes.
const ETH_PROTO: usize = 12;
/// An 802.1Q/802.1ad tag: 2 bytes of TCI, then the inner EtherType.
const VLAN_HLEN: usize = 4;
const VLAN_PROTO: usize = 2;
/// PPPoE session header (RFC 2516): ver/type, code, session id, length; then the PPP protocol.
const PPPOE_HLEN: usize = 8;
const PPPOE_VER_TYPE: usize = 0;
const PPPOE_CODE: usize = 1;
const PPPOE_PPP_PROTO: usize = 6;
/// Version 1, type 1.
const PPPOE_VER_TYPE_1_1: u8 = 0x11;
const PPPOE_CODE_SESSION: u8 = 0;

/// IPv4 (struct iphdr).
pub(crate) const IPV4_HLEN: usize = 20;
const IPV4_VER_IHL: usize = 0;
pub(crate) const IPV4_TOT_LEN: usize = 2;
pub(crate) const IPV4_ID: usize = 4;
pub(crate) const IPV4_FRAG_OFF: usize = 6;
const IPV4_PROTOCOL: usize = 9;
pub const IPV4_SADDR: usize = 12;
pub const IPV4_DADDR: usize = 16;
/// IPV4_FRAG_OFF bits: more fragments follow; the fragment offset (in 8-byte units).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// IPv6 (struct ipv6hdr).
pub(crate) const IPV6_HLEN: usize = 40;
const IPV6_VERSION: usize = 0;
pub(crate) const IPV6_PLEN: usize = 4;
const IPV6_NEXTHDR: usize = 6;
pub const IPV6_SADDR: usize = 8;
pub const IPV6_DADDR: usize = 24;
/// An extension header starts with the next header and its length.
const EXT_NEXTHDR: usize = 0;
const EXT_LEN: usize = 1;
/// The fragment header (struct frag_hdr): next header, reserved, offset and flags, id.
const FRAG_HLEN: usize = 8;
const FRAG_OFF: usize = 2;
const FRAG_ID: usize = 4;
/// FRAG_OFF bits: the offset (in 8-byte units, above 3 flag bits) and "more fragments".
const IP6_OFFSET_SHIFT: u16 = 3;
const IP6_MF: u16 = 0x0001;

/// TCP (struct tcphdr) and UDP (struct udphdr): ports first, in both.
pub(crate) const TCP_HLEN: usize = 20;
pub(crate) const UDP_HLEN: usize = 8;
pub(crate) const L4_SPORT: usize = 0;
pub(crate) const L4_DPORT: usize = 2;
pub(crate) const TCP_FLAGS: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// `link_layer`'s protocol for a VLAN stack deeper than MAX_VLAN_TAGS: outside the EtherTypes'
/// 16 bits, so that no frame can spell it.
const VLAN_TOO_DEEP: u32 = 0x1_0000;

/// Header offsets beyond this are treated as unparseable. It bounds the cursor for the
/// verifier; no real header chain comes near it (a jumbo frame is 9 KB).
const MAX_OFFSET: usize = 0x3fff;

/// A header offset read back from memory (a copy-out request, copy.rs), or None past
/// MAX_OFFSET. The AND is a no-op on the value, but it is what the verifier sees: the compiler
/// may test the offset in one register and add it to the packet pointer from another copy
/// loaded from the stack, and Linux 6.1's verifier then knows no bound for the second (it
/// refused `R4 offset is outside of the packet`). black_box keeps the compiler from dropping
/// the AND as redundant after the test.
#[inline(always)]
pub fn bounded(off: u16) -> Option<usize> {
    let off = off as usize;
    if off > MAX_OFFSET {
        return None;
    }
    Some(core::hint::black_box(off) & MAX_OFFSET)
}

/// An IP header that the parser has checked is wholly inside the frame (20 bytes for IPv4,
/// 40 for IPv6). Addresses are read from it only when a frame matched, so the common path
/// copies nothing.
#[derive(Clone, Copy)]
pub struct Ip {
    hdr: *const u8,
    pub v6: bool,
}

impl Ip {
    /// Source address bytes (4 or 16), network order.
    #[inline(always)]
    pub fn v4_src(&self) -> [u8; 4] {
        // SAFETY: 20 bytes were checked at `hdr` (see the type's doc).
        unsafe { *(self.hdr.add(IPV4_SADDR) as *const [u8; 4]) }
    }

    #[inline(always)]
    pub fn v6_src(&self) -> [u8; 16] {
        // SAFETY: 40 bytes were checked at `hdr` for IPv6.
        unsafe { *(self.hdr.add(IPV6_SADDR) as *const [u8; 16]) }
    }

    /// The SOURCES key: the source's prefix under CONFIG's masks, or, with `whole`, its whole
    /// address (an address in ::/64 always: see below).
    #[inline(always)]
    pub fn source_key(&self, cfg: &Config, whole: bool) -> SourceKey {
        if self.v6 {
            // SAFETY: 40 bytes were checked at `hdr` for IPv6.
            let w = unsafe { words(self.hdr.add(IPV6_SADDR)) };
            // ::/64 holds the IPv4-mapped and -compatible forms, which no host has as its /64:
            // one row per address, an IPv6 source that names an IPv4 host kept apart.
            if whole || w[0] == 0 {
                return SourceKey::v6(w, 128);
            }
            SourceKey::v6([w[0] & cfg.v6_mask[0], w[1] & cfg.v6_mask[1]], cfg.v6_prefix)
        } else if whole {
            SourceKey::v4(self.v4_src(), 32)
        } else {
            let a = u32::from_ne_bytes(self.v4_src()) & cfg.v4_mask;
            SourceKey::v4(a.to_ne_bytes(), cfg.v4_prefix)
        }
    }

    /// The reassembly key: IPv4 (src, dst, id, protocol); IPv6 (src, dst, id), as the kernel's.
    /// Built as 8-byte words: struct literals with padding become memset calls on BPF.
    #[inline(always)]
    pub fn fragment_key(&self, id: u32, proto: u8) -> FragmentKey {
        let (src, dst, proto) = if self.v6 {
            // SAFETY: 40 bytes were checked at `hdr`; both addresses are inside them.
            unsafe { (words(self.hdr.add(IPV6_SADDR)), words(self.hdr.add(IPV6_DADDR)), 0) }
        } else {
            // SAFETY: 20 bytes were checked at `hdr`.
            let dst = unsafe { *(self.hdr.add(IPV4_DADDR) as *const [u8; 4]) };
            (mapped(self.v4_src()), mapped(dst), proto)
        };
        let i = id.to_ne_bytes();
        let tail = u64::from_ne_bytes([i[0], i[1], i[2], i[3], proto, 0, 0, 0]);
        // SAFETY: FragmentKey is 40 bytes of integers, no invalid values.
        unsafe {
            core::mem::transmute::<[u64; 5], FragmentKey>([src[0], src[1], dst[0], dst[1], tail])
        }
    }
}

/// 16 bytes at `p` as two words.
///
/// # Safety
/// `p` must point to 16 readable bytes.
#[inline(always)]
unsafe fn words(p: *const u8) -> [u64; 2] {
    // SAFETY: the caller vouches for 16 readable bytes at `p`; unaligned reads need nothing more.
    unsafe { [(p as *const u64).read_unaligned(), (p.add(8) as *const u64).read_unaligned()] }
}

/// An IPv4 address as the 16 bytes of `::ffff:a.b.c.d`, in two words (the fragment key holds
/// either family in one layout, as the kernel's does).
#[inline(always)]
fn mapped(a: [u8; 4]) -> [u64; 2] {
    [0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]])]
}

/// A first fragment's datagram identification, or none (0): one plain word rather than an
/// `Option<u32>`, whose payload is left unwritten when it is None. LLVM spills and reloads such
/// a value whole, and Linux 6.1.176's verifier refuses the read of a stack slot nothing wrote
/// (later kernels accept it).
#[derive(Clone, Copy)]
pub struct FirstFragment(u64);

impl FirstFragment {
    pub const NONE: FirstFragment = FirstFragment(0);

    #[inline(always)]
    fn of(id: u32) -> FirstFragment {
        FirstFragment(1 << 32 | id as u64)
    }

    #[inline(always)]
    pub fn is_some(self) -> bool {
        self.0 != 0
    }

    /// The identification (meaningful when `is_some`).
    #[inline(always)]
    pub fn id(self) -> u32 {
        self.0 as u32
    }
}

/// A TCP or UDP header read from an unfragmented frame or a first fragment.
pub struct Ports {
    pub ip: Ip,
    /// `PROTO_TCP` or `PROTO_UDP`: the bit CONFIG and a source's slot use.
    pub l4: u8,
    pub sport: u16,
    pub dport: u16,
    /// SYN without ACK: a connection attempt.
    pub syn: bool,
    /// Set on a first fragment: the datagram's identification, under which the rest of it is
    /// remembered.
    pub first_fragment: FirstFragment,
    /// The IP protocol number, 6 or 17 (for the IPv4 reassembly key).
    pub ip_proto: u8,
    /// Where the IP header and the TCP or UDP header start, from the start of the frame (for
    /// the copy-out path, copy.rs; nothing on the verdict path reads them).
    pub ip_off: usize,
    pub l4_off: usize,
}

pub enum Frame {
    /// Not IP, or IP without ports (ICMP, ESP, "no next header", ...): not ours to judge.
    Other,
    /// Truncated or self-contradictory headers: the stack discards the frame itself.
    Malformed,
    /// It could reach a guarded port, but its ports cannot be read.
    Unjudged {
        ip: Ip,
        /// The `PROTO_*` bits it may be (both when the transport protocol is unknown).
        l4: u8,
        /// For a first fragment: the datagram's identification and IP protocol (IPv4; 0 for
        /// IPv6), under which the rest of it is remembered.
        fragment: FirstFragment,
        ip_proto: u8,
    },
    /// The same, before the IP header was reached (a VLAN stack deeper than followed).
    UnjudgedLink,
    /// TCP or UDP with readable ports.
    Ports(Ports),
    /// A non-first fragment, to be judged by the verdict its datagram's first fragment got.
    Fragment {
        ip: Ip,
        /// The datagram's identification.
        id: u32,
        /// The IP protocol number (IPv4; 0 for IPv6, whose reassembly key has none).
        ip_proto: u8,
    },
}

pub struct Cursor {
    data: usize,
    end: usize,
    /// Where the IP datagram ends, as an offset from `data`, once its length is known: the
    /// bytes after it are Ethernet padding, which the stack trims and a sender can fill with
    /// anything (a first fragment of 2 bytes padded with "port 443" must not read as 443).
    limit: usize,
}

impl Cursor {
    /// The frame, its datagram ending at `limit` (an offset from its start).
    #[inline(always)]
    pub fn new(ctx: &XdpContext, limit: usize) -> Cursor {
        Cursor { data: ctx.data(), end: ctx.data_end(), limit }
    }

    /// `N` bytes at `off`, or None when the datagram (or the frame) ends before them.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        if off > MAX_OFFSET || off + N > self.limit || self.data + off + N > self.end {
            return None;
        }
        // SAFETY: the range was checked against data_end just above; [u8; N] has alignment 1.
        Some(unsafe { &*((self.data + off) as *const [u8; N]) })
    }

    /// The first `len` bytes are all inside the datagram and the frame (headers that are
    /// skipped, not read).
    #[inline(always)]
    fn covers(&self, len: usize) -> bool {
        len <= self.limit && self.data + len <= self.end
    }

    /// The same frame, its datagram ending at `limit` (when that is before the current one).
    #[inline(always)]
    fn datagram(&self, limit: usize) -> Cursor {
        Cursor {
            data: self.data,
            end: self.end,
            limit: if limit < self.limit { limit } else { self.limit },
        }
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Reads the frame as far as needed to decide.
#[inline(always)]
pub fn frame(ctx: &XdpContext) -> Frame {
    let c = Cursor { data: ctx.data(), end: ctx.data_end(), limit: usize::MAX };
    let Some((proto, off)) = link_layer(&c) else {
        return Frame::Malformed;
    };
    const IP: u32 = ETH_P_IP as u32;
    const IPV6: u32 = ETH_P_IPV6 as u32;
    match proto {
        IP => ipv4(&c, off),
        IPV6 => ipv6(&c, off),
        VLAN_TOO_DEEP => Frame::UnjudgedLink,
        _ => Frame::Other,
    }
}

/// Ethernet, up to MAX_VLAN_TAGS VLAN tags, then PPPoE session: returns the network protocol
/// (an EtherType, PPP's mapped onto it, or VLAN_TOO_DEEP) and the offset of its header.
/// `None`: malformed.
#[inline(always)]
fn link_layer(c: &Cursor) -> Option<(u32, usize)> {
    let mut proto = be16(*c.bytes::<2>(ETH_PROTO)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(proto) {
            break;
        }
        let tag = c.bytes::<VLAN_HLEN>(off)?;
        proto = be16([tag[VLAN_PROTO], tag[VLAN_PROTO + 1]]);
        off += VLAN_HLEN;
    }
    if is_vlan(proto) {
        // Deeper than followed. The stack peels priority tags at any depth, and stacked
        // sub-interfaces take more: not for us to say it is undeliverable.
        return Some((VLAN_TOO_DEEP, off));
    }
    if proto == ETH_P_PPP_SES {
        let h = c.bytes::<PPPOE_HLEN>(off)?;
        if h[PPPOE_VER_TYPE] != PPPOE_VER_TYPE_1_1 || h[PPPOE_CODE] != PPPOE_CODE_SESSION {
            return None;
        }
        off += PPPOE_HLEN;
        proto = match be16([h[PPPOE_PPP_PROTO], h[PPPOE_PPP_PROTO + 1]]) {
            PPP_IP => ETH_P_IP,
            PPP_IPV6 => ETH_P_IPV6,
            // LCP, IPCP and friends: not IP.
            _ => 0,
        };
    }
    Some((proto as u32, off))
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD || proto == ETH_P_QINQ_OLD
}

#[inline(always)]
fn ipv4(c: &Cursor, off: usize) -> Frame {
    let Some(h) = c.bytes::<IPV4_HLEN>(off) else {
        return Frame::Malformed;
    };
    if h[IPV4_VER_IHL] >> 4 != 4 {
        return Frame::Malformed;
    }
    let ihl = ((h[IPV4_VER_IHL] & 0x0f) as usize) * 4;
    let tot_len = be16([h[IPV4_TOT_LEN], h[IPV4_TOT_LEN + 1]]) as usize;
    // Options are skipped, not read, but a header that claims more than the frame holds is
    // malformed whatever follows it.
    if ihl < IPV4_HLEN || tot_len < ihl || !c.covers(off + ihl) {
        return Frame::Malformed;
    }
    let c = &c.datagram(off + tot_len);
    let proto = h[IPV4_PROTOCOL];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Frame::Other;
    }
    let frag = be16([h[IPV4_FRAG_OFF], h[IPV4_FRAG_OFF + 1]]);
    let more_fragments = frag & IP_MF != 0;
    let frag_offset = frag & IP_OFFSET;
    let ip = Ip { hdr: h.as_ptr(), v6: false };
    let id = be16([h[IPV4_ID], h[IPV4_ID + 1]]) as u32;
    if frag_offset != 0 {
        return Frame::Fragment { ip, id, ip_proto: proto };
    }
    let first_fragment = if more_fragments { FirstFragment::of(id) } else { FirstFragment::NONE };
    transport(c, off, off + ihl, proto, ip, first_fragment)
}

#[inline(always)]
fn ipv6(c: &Cursor, off: usize) -> Frame {
    let Some(h) = c.bytes::<IPV6_HLEN>(off) else {
        return Frame::Malformed;
    };
    if h[IPV6_VERSION] >> 4 != 6 {
        return Frame::Malformed;
    }
    // A payload length of 0 is a jumbogram's (RFC 2675) or a sender's that leaves it to the
    // frame: Linux then takes the frame's length.
    let payload = be16([h[IPV6_PLEN], h[IPV6_PLEN + 1]]) as usize;
    let c = &c.datagram(if payload != 0 { off + IPV6_HLEN + payload } else { usize::MAX });
    let ip = Ip { hdr: h.as_ptr(), v6: true };
    let mut next = h[IPV6_NEXTHDR];
    let mut p = off + IPV6_HLEN;
    let mut first_fragment = FirstFragment::NONE;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => break,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
            | IPPROTO_SHIM6 => {
                let Some(e) = c.bytes::<2>(p) else {
                    return cut(ip, first_fragment);
                };
                next = e[EXT_NEXTHDR];
                // In 8-octet units, not counting the first 8 (RFC 8200 §4.3).
                p += (e[EXT_LEN] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let Some(e) = c.bytes::<2>(p) else {
                    return cut(ip, first_fragment);
                };
                next = e[EXT_NEXTHDR];
                // In 4-octet units, minus 2 (RFC 4302 §2.2).
                p += (e[EXT_LEN] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = c.bytes::<FRAG_HLEN>(p) else {
                    return cut(ip, first_fragment);
                };
                let fo = be16([e[FRAG_OFF], e[FRAG_OFF + 1]]);
                let id = u32::from_be_bytes([
                    e[FRAG_ID],
                    e[FRAG_ID + 1],
                    e[FRAG_ID + 2],
                    e[FRAG_ID + 3],
                ]);
                if fo >> IP6_OFFSET_SHIFT != 0 {
                    return Frame::Fragment { ip, id, ip_proto: 0 };
                }
                if fo & IP6_MF != 0 {
                    first_fragment = FirstFragment::of(id);
                }
                // else an atomic fragment (RFC 6946): a whole datagram.
                next = e[EXT_NEXTHDR];
                p += FRAG_HLEN;
            }
            _ => return no_ports(c, p, ip, first_fragment),
        }
    }
    match next {
        IPPROTO_TCP | IPPROTO_UDP => transport(c, off, p, next, ip, first_fragment),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
        | IPPROTO_SHIM6 | IPPROTO_AH | IPPROTO_FRAGMENT => {
            if !c.covers(p) {
                // The last header followed ends past the frame.
                return cut(ip, first_fragment);
            }
            // Still inside the extension chain after MAX_IPV6_EXT_HEADERS headers. Linux
            // follows any number of them (RFC 9098 on long chains; RFC 8200 §4 sets no
            // limit): the ports behind may well be a guarded one.
            Frame::Unjudged { ip, l4: PROTO_TCP | PROTO_UDP, fragment: first_fragment, ip_proto: 0 }
        }
        _ => no_ports(c, p, ip, first_fragment),
    }
}

/// An IPv6 extension chain that runs past the end of the frame. Unfragmented, the stack
/// discards it; in a first fragment, reassembly may complete it (RFC 7112 says the first
/// fragment must hold the whole chain, but Linux checks only part of that): unjudged.
#[inline(always)]
fn cut(ip: Ip, first_fragment: FirstFragment) -> Frame {
    if first_fragment.is_some() {
        Frame::Unjudged { ip, l4: PROTO_TCP | PROTO_UDP, fragment: first_fragment, ip_proto: 0 }
    } else {
        Frame::Malformed
    }
}

/// ICMPv6, ESP, no next header (59), anything else after the chain: no ports to read. The
/// chain itself must still be whole.
#[inline(always)]
fn no_ports(c: &Cursor, chain_end: usize, ip: Ip, first_fragment: FirstFragment) -> Frame {
    if c.covers(chain_end) { Frame::Other } else { cut(ip, first_fragment) }
}

/// TCP or UDP at `off`. An unfragmented datagram cut short is malformed (the stack discards
/// it). A first fragment needs only its ports: reassembly completes a header split across
/// fragments (RFC 1858's tiny fragments, which Linux accepts), so one whose ports are there is
/// judged by them, and one cut before them is unjudged.
#[inline(always)]
fn transport(
    c: &Cursor,
    ip_off: usize,
    off: usize,
    proto: u8,
    ip: Ip,
    first_fragment: FirstFragment,
) -> Frame {
    let tcp = proto == IPPROTO_TCP;
    let l4 = if tcp { PROTO_TCP } else { PROTO_UDP };
    let whole = c.covers(off + if tcp { TCP_HLEN } else { UDP_HLEN });
    if !whole && !first_fragment.is_some() {
        return Frame::Malformed;
    }
    let Some(t) = c.bytes::<4>(off) else {
        return Frame::Unjudged { ip, l4, fragment: first_fragment, ip_proto: proto };
    };
    let sport = be16([t[L4_SPORT], t[L4_SPORT + 1]]);
    let dport = be16([t[L4_DPORT], t[L4_DPORT + 1]]);
    // A SYN without ACK: a connection attempt. A first fragment cut before the flags is not
    // known to be one.
    let syn = tcp
        && matches!(c.bytes::<{ TCP_FLAGS + 1 }>(off), Some(f) if f[TCP_FLAGS] & (TCP_SYN | TCP_ACK) == TCP_SYN);
    Frame::Ports(Ports {
        ip,
        l4,
        sport,
        dport,
        syn,
        first_fragment,
        ip_proto: proto,
        ip_off,
        l4_off: off,
    })
}
