//! Fingerprint features: what a prober's first packets say about it, copied to FEATURES for the
//! owner to classify (portguard/src/fingerprint). Never on the known-source path: the first
//! program asks for it (`wanted`) only when a reader set CFG_FEATURES, and only for a source's
//! first `feature_first` SYNs (for UDP, datagrams among its first packets), as its SOURCES
//! entry counts them, so a source that keeps sending costs one comparison per packet after
//! them. The copy itself (`send`) runs in the second program (copy.rs).
//!
//! The record is written in place in the ring buffer (no copy through the stack). The TCP
//! options and the payload prefix are copied by `bpf_xdp_load_bytes`, which checks the frame's
//! bounds itself, for as many bytes as the frame and the datagram hold: nothing here can read
//! past the packet, and a frame cut short gives a shorter copy (`opt_copied`), never an error.

use core::ptr::addr_of_mut;

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, programs::XdpContext};
use portguard_common::{
    Config, FEATURE_OPTION_BYTES, FEATURE_PAYLOAD_BYTES, FeatureEvent, PROTO_TCP, Totals,
    feature_bits,
};

use crate::{
    copy::{CopyRequest, load},
    maps::FEATURES,
    parse::{
        Cursor, IPV4_FRAG_OFF, IPV4_HLEN, IPV4_ID, IPV4_TOT_LEN, IPV6_HLEN, IPV6_PLEN, L4_DPORT,
        L4_SPORT, Ports, TCP_FLAGS, TCP_HLEN, UDP_HLEN, bounded,
    },
    sources::Seen,
};

/// Header fields read here beyond those parse.rs defines.
const IPV4_TOS: usize = 1;
const IPV4_TTL: usize = 8;
const IPV4_DADDR: usize = 16;
const IP_DF: u8 = 0x40;
const IP_MBZ: u8 = 0x80;
/// IPv6: version, traffic class and flow label in the first 4 bytes; then the payload length
/// and the hop limit.
const IPV6_HOPS: usize = 7;
/// TCP and UDP: ports first; then TCP's sequence, acknowledgment, data offset (and NS), flags,
/// window, urgent pointer.
const TCP_SEQ: usize = 4;
const TCP_ACK: usize = 8;
const TCP_DOFF: usize = 12;
const TCP_WINDOW: usize = 14;
const TCP_URG: usize = 18;

/// Whether this packet goes to FEATURES: one of the source's first SYNs, or a UDP datagram
/// among its first packets. An untracked packet (no slot, `seen` zero) never does: under a
/// flood, only admitted sources are fingerprinted.
#[inline(always)]
pub fn wanted(cfg: &Config, p: &Ports, seen: Seen) -> bool {
    let first = cfg.feature_first as u64;
    if p.l4 == PROTO_TCP {
        p.syn && seen.syns != 0 && seen.syns as u64 <= first
    } else {
        seen.packets != 0 && seen.packets <= first
    }
}

/// Copies the packet's features to FEATURES; a full ring buffer is counted, nothing more.
#[inline(always)]
pub fn send(ctx: &XdpContext, r: &CopyRequest, totals: &mut Totals) {
    let Some(mut e) = FEATURES.reserve::<FeatureEvent>(0) else {
        totals.features_lost += 1;
        return;
    };
    // SAFETY: the reserved record is FeatureEvent-sized and 8-aligned; `fill` writes every
    // field before it is submitted.
    if unsafe { fill(ctx, r, e.as_mut_ptr()) } {
        e.submit(BPF_RB_NO_WAKEUP as u64);
    } else {
        e.discard(BPF_RB_NO_WAKEUP as u64);
    }
}

#[inline(always)]
fn be16(h: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

#[inline(always)]
fn be32(h: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// Fills the record; false when the headers are not all in the frame (a first fragment cut
/// short): such a packet says too little to classify.
///
/// # Safety
/// `ev` must point to a writable FeatureEvent.
#[inline(always)]
unsafe fn fill(ctx: &XdpContext, rq: &CopyRequest, ev: *mut FeatureEvent) -> bool {
    let (Some(ip_off), Some(l4_off)) = (bounded(rq.ip_off), bounded(rq.l4_off)) else {
        return false;
    };
    let v6 = rq.v6 != 0;
    let tcp = rq.l4 == PROTO_TCP;
    let frame = Cursor::new(ctx, usize::MAX);
    // The datagram's length from its IP header (bytes past it are Ethernet padding), and the
    // fixed header's: IPv4 options and IPv6 extension headers are what lies between it and
    // the transport header.
    let (ip_len, ip_hlen, ttl, tos, ip_id, dst, mut bits) = if v6 {
        let Some(h) = frame.bytes::<IPV6_HLEN>(ip_off) else { return false };
        let vtf = be32(h, 0);
        let flow = if vtf & 0xf_ffff != 0 { feature_bits::FLOW } else { 0 };
        let len = be16(h, IPV6_PLEN) as usize + IPV6_HLEN;
        (len, IPV6_HLEN, h[IPV6_HOPS], (vtf >> 20) as u8, 0, [0; 4], flow)
    } else {
        let Some(h) = frame.bytes::<IPV4_HLEN>(ip_off) else { return false };
        let flags = h[IPV4_FRAG_OFF];
        let bits = ((flags & IP_DF != 0) as u16 * feature_bits::DF)
            | ((flags & IP_MBZ != 0) as u16 * feature_bits::MBZ);
        let dst = [h[IPV4_DADDR], h[IPV4_DADDR + 1], h[IPV4_DADDR + 2], h[IPV4_DADDR + 3]];
        let len = be16(h, IPV4_TOT_LEN) as usize;
        (len, IPV4_HLEN, h[IPV4_TTL], h[IPV4_TOS], be16(h, IPV4_ID), dst, bits)
    };
    let end = ip_off + ip_len;
    let c = Cursor::new(ctx, end);
    let ext = l4_off.saturating_sub(ip_off + ip_hlen);
    // SAFETY (all writes below): fields of the record `ev` points to.
    let r = unsafe { addr_of_mut!((*ev).raw) };
    let (hdr_len, opt_len) = if tcp {
        let Some(t) = c.bytes::<TCP_HLEN>(l4_off) else { return false };
        let doff = (t[TCP_DOFF] >> 4) as usize * 4;
        bits |= (t[TCP_DOFF] & 1) as u16 * feature_bits::TCP_NS;
        bits |= (be16(t, TCP_URG) != 0) as u16 * feature_bits::URG_NZ;
        unsafe {
            addr_of_mut!((*r).sport).write(be16(t, L4_SPORT));
            addr_of_mut!((*r).dport).write(be16(t, L4_DPORT));
            addr_of_mut!((*r).seq).write(be32(t, TCP_SEQ));
            addr_of_mut!((*r).ack).write(be32(t, TCP_ACK));
            addr_of_mut!((*r).tcp_flags).write(t[TCP_FLAGS]);
            addr_of_mut!((*r).window).write(be16(t, TCP_WINDOW));
        }
        if doff > TCP_HLEN { (doff, doff - TCP_HLEN) } else { (TCP_HLEN, 0) }
    } else {
        let Some(u) = c.bytes::<UDP_HLEN>(l4_off) else { return false };
        unsafe {
            addr_of_mut!((*r).sport).write(be16(u, L4_SPORT));
            addr_of_mut!((*r).dport).write(be16(u, L4_DPORT));
            addr_of_mut!((*r).seq).write(0);
            addr_of_mut!((*r).ack).write(0);
            addr_of_mut!((*r).tcp_flags).write(0);
            addr_of_mut!((*r).window).write(0);
        }
        (UDP_HLEN, 0)
    };
    let hdr_end = l4_off + hdr_len;
    let payload_len = end.saturating_sub(hdr_end);
    // What the frame holds of `want` bytes from `from`, within the datagram.
    let frame_len = ctx.data_end() - ctx.data();
    let frame_end = if end < frame_len { end } else { frame_len };
    let held = |from: usize, want: usize| {
        let left = frame_end.saturating_sub(from);
        if want < left { want } else { left }
    };
    let n = held(l4_off + TCP_HLEN, opt_len);
    unsafe {
        addr_of_mut!((*ev).key).write(rq.key);
        addr_of_mut!((*r).version).write(if v6 { 6 } else { 4 });
        addr_of_mut!((*r).ttl).write(ttl);
        addr_of_mut!((*r).tos).write(tos);
        addr_of_mut!((*r).ip_id).write(ip_id);
        addr_of_mut!((*r).dst_v4).write(dst);
        addr_of_mut!((*r).ip_opt_len).write(if ext > 255 { 255 } else { ext as u8 });
        addr_of_mut!((*r).ip_len).write(if ip_len > 0xffff { 0xffff } else { ip_len as u16 });
        addr_of_mut!((*r).proto).write(if tcp { 6 } else { 17 });
        addr_of_mut!((*r).bits).write(bits);
        addr_of_mut!((*r)._pad).write(0);
        addr_of_mut!((*r)._pad2).write(0);
        addr_of_mut!((*r).tcp_opt_len).write(opt_len as u8);
        addr_of_mut!((*r).payload_len).write(if payload_len > 0xffff {
            0xffff
        } else {
            payload_len as u16
        });
        // Zeroed as words (the fields are 8-aligned in the record), then the bytes the frame
        // holds.
        let opts = addr_of_mut!((*r).options) as *mut u8;
        for i in 0..FEATURE_OPTION_BYTES / 8 {
            (opts as *mut u64).add(i).write(0);
        }
        let pay = addr_of_mut!((*r).payload) as *mut u8;
        (pay as *mut u64).write(0);
        let copied = load::<FEATURE_OPTION_BYTES>(ctx, l4_off + TCP_HLEN, opts, n);
        addr_of_mut!((*r).opt_copied).write(copied as u8);
        load::<FEATURE_PAYLOAD_BYTES>(ctx, hdr_end, pay, held(hdr_end, payload_len));
    }
    true
}
