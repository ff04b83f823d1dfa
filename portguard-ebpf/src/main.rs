//! portguard's XDP program: drops (or counts) TCP/UDP packets to guarded ports, at line rate,
//! and counts who sends them.
//!
//! Per packet: parse (parse.rs) → judge against CONFIG, PORTS and the allowlist → record the
//! source (sources.rs) → one exit that counts in TOTALS. When a reader asked for them (CONFIG
//! flags), a source's first packets are then copied out by a second program reached by a tail
//! call (copy.rs): their features for fingerprints (features.rs) and the packets themselves
//! for a capture (capture.rs). Maps are in maps.rs, their layouts in portguard-common.
//! Nothing here can return XDP_ABORTED: every failure passes the packet.
#![no_std]
#![no_main]
// Atomic adds on shared map values (sources.rs): the BPF target has no atomic types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod capture;
mod clock;
mod copy;
mod features;
mod maps;
mod parse;
mod sources;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use portguard_common::{
    ACTION_DROP, ALLOW_HAS_V4, ALLOW_HAS_V6, CAPTURED_ALLOWED, CAPTURED_MATCHED, CAPTURED_UNJUDGED,
    CFG_CAPTURE, CFG_CONSUMERS, CFG_FEATURES, CFG_UNJUDGED_DROP, Config, DIR_DST, DIR_SRC,
    DIR_UNJUDGED, FragmentKey, Totals,
};

use crate::{
    copy::{WANT_CAPTURE, WANT_FEATURES},
    maps::{ALLOW_V4, ALLOW_V6, CONFIG, COPY, FRAGMENTS, PORTS, TOTALS},
    parse::{FirstFragment, Frame, Ip, Ports},
    sources::Hit,
};

#[xdp]
pub fn portguard(ctx: XdpContext) -> u32 {
    let Some(totals) = TOTALS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: per-CPU value; XDP runs with preemption off, so nothing else writes it now.
    let totals = unsafe { &mut *totals };
    totals.seen += 1;
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let v = match parse::frame(&ctx) {
        Frame::Other => Verdict::of(XDP_PASS),
        Frame::Malformed => {
            totals.malformed += 1;
            Verdict::of(XDP_PASS)
        }
        Frame::Ports(p) => judge(&ctx, cfg, &p, totals),
        Frame::Fragment { ip, id, ip_proto } => {
            Verdict::of(follow(&ip.fragment_key(id, ip_proto), totals))
        }
        Frame::Unjudged { ip, l4, fragment, ip_proto } => {
            unjudged(&ctx, cfg, &ip, l4, fragment, ip_proto, totals)
        }
        Frame::UnjudgedLink => Verdict::of(unjudged_link(&ctx, cfg, totals)),
    };
    if v.action == XDP_DROP {
        totals.dropped += 1;
        totals.dropped_bytes += frame_len(&ctx);
    }
    if v.copy {
        // SAFETY: a tail call to the copy-out program, which returns the same action; if it
        // fails (no program in COPY), execution goes on here.
        unsafe { COPY.tail_call(&ctx, 0) };
    }
    v.action
}

/// An XDP action, and whether the packet is to be copied out (copy.rs) once it is counted:
/// then the second program takes over and returns the same action.
#[derive(Clone, Copy)]
struct Verdict {
    action: u32,
    copy: bool,
}

impl Verdict {
    #[inline(always)]
    fn of(action: u32) -> Verdict {
        Verdict { action, copy: false }
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[inline(always)]
fn guarded(port: u16) -> bool {
    matches!(PORTS.get(port as u32), Some(v) if *v != 0)
}

/// The verdict for a frame with readable ports.
#[inline(always)]
fn judge(ctx: &XdpContext, cfg: &Config, p: &Ports, totals: &mut Totals) -> Verdict {
    if cfg.protocols & p.l4 == 0 {
        return Verdict::of(XDP_PASS);
    }
    let mut direction = 0;
    let mut port = 0;
    if cfg.direction & DIR_DST != 0 && guarded(p.dport) {
        direction = DIR_DST;
        port = p.dport;
    }
    if cfg.direction & DIR_SRC != 0 && guarded(p.sport) {
        if direction == 0 {
            port = p.sport;
        }
        direction |= DIR_SRC;
    }
    if direction == 0 {
        return Verdict::of(XDP_PASS);
    }
    let bytes = frame_len(ctx);
    totals.matched += 1;
    totals.matched_bytes += bytes;
    let mut why = CAPTURED_MATCHED;
    let verdict = if cfg.allow != 0 && allowlisted(cfg.allow, &p.ip) {
        totals.allowed += 1;
        why = CAPTURED_ALLOWED;
        XDP_PASS
    } else if cfg.action == ACTION_DROP {
        XDP_DROP
    } else {
        XDP_PASS
    };
    if p.first_fragment.is_some() {
        let key = p.ip.fragment_key(p.first_fragment.id(), p.ip_proto);
        // Best effort: if it cannot be remembered, the tail passes and the stack's reassembly
        // times out waiting for the head we dropped.
        let _ = FRAGMENTS.insert(key, verdict, 0);
    }
    let hit = Hit { bytes, port, direction, l4: p.l4, syn: p.syn };
    // A host answering from a guarded port is one of ours: which one is the point, so it is
    // counted per address, never folded into a prefix.
    let key = p.ip.source_key(cfg, direction & DIR_SRC != 0);
    let seen = sources::record(&key, &hit, cfg, totals);
    let mut copy = false;
    if cfg.flags & CFG_CONSUMERS != 0 {
        let mut want = 0;
        if cfg.flags & CFG_FEATURES != 0 && features::wanted(cfg, p, seen.seen()) {
            want |= WANT_FEATURES;
        }
        if cfg.flags & CFG_CAPTURE != 0 && capture::wanted(cfg, seen.seen()) {
            want |= WANT_CAPTURE;
        }
        if want != 0 {
            copy = copy::request(&key, verdict, p.ip_off, p.l4_off, p.ip.v6, p.l4, want, why);
        }
    }
    Verdict { action: verdict, copy }
}

/// The verdict for a frame that could reach a guarded port but whose ports cannot be read:
/// fail closed (dropped) unless CONFIG says otherwise. Its source is recorded like a match's,
/// with no port.
#[inline(always)]
fn unjudged(
    ctx: &XdpContext,
    cfg: &Config,
    ip: &Ip,
    l4: u8,
    fragment: FirstFragment,
    ip_proto: u8,
    totals: &mut Totals,
) -> Verdict {
    if cfg.protocols & l4 == 0 {
        // A protocol that is not guarded: no guarded port is reachable through it.
        return Verdict::of(XDP_PASS);
    }
    let bytes = frame_len(ctx);
    totals.unjudged += 1;
    totals.unjudged_bytes += bytes;
    let verdict = if cfg.allow != 0 && allowlisted(cfg.allow, ip) {
        totals.allowed += 1;
        XDP_PASS
    } else if cfg.flags & CFG_UNJUDGED_DROP != 0 {
        XDP_DROP
    } else {
        XDP_PASS
    };
    if fragment.is_some() {
        // The rest of the datagram gets the same verdict (best effort, as for a match).
        let _ = FRAGMENTS.insert(ip.fragment_key(fragment.id(), ip_proto), verdict, 0);
    }
    let hit = Hit { bytes, port: 0, direction: DIR_UNJUDGED, l4, syn: false };
    let key = ip.source_key(cfg, false);
    let seen = sources::record(&key, &hit, cfg, totals);
    // No transport header to read: only the packet's bytes can be copied.
    let copy = cfg.flags & CFG_CAPTURE != 0
        && capture::wanted(cfg, seen.seen())
        && copy::request(&key, verdict, 0, 0, ip.v6, l4, WANT_CAPTURE, CAPTURED_UNJUDGED);
    Verdict { action: verdict, copy }
}

/// An unjudged frame whose IP header was not reached (a deep VLAN stack): nobody to record or
/// allow.
#[inline(always)]
fn unjudged_link(ctx: &XdpContext, cfg: &Config, totals: &mut Totals) -> u32 {
    totals.unjudged += 1;
    totals.unjudged_bytes += frame_len(ctx);
    if cfg.flags & CFG_UNJUDGED_DROP != 0 { XDP_DROP } else { XDP_PASS }
}

/// A non-first fragment gets the verdict its first fragment got, if that one matched.
#[inline(always)]
fn follow(key: &FragmentKey, totals: &mut Totals) -> u32 {
    // SAFETY: a plain u32 read; a concurrent update writes the same values.
    match unsafe { FRAGMENTS.get(key) } {
        Some(v) => {
            totals.fragments_followed += 1;
            *v
        }
        None => XDP_PASS,
    }
}

/// A source is looked up in the allowlist tries as a host route: its whole address.
const V4_HOST_PREFIX: u32 = 32;
const V6_HOST_PREFIX: u32 = 128;

#[inline(always)]
fn allowlisted(allow: u8, ip: &Ip) -> bool {
    // LPM keys are packed (a 4-byte prefix length, then the address). They are built in
    // 8-aligned buffers with one volatile store per 4-byte word: left free, LLVM merges the
    // stores into misaligned 8-byte ones, which the verifier refuses on the stack.
    if ip.v6 {
        if allow & ALLOW_HAS_V6 == 0 {
            return false;
        }
        #[repr(C, align(8))]
        struct K([u32; 6]);
        let a = ip.v6_src();
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        let mut k = K([0; 6]);
        for (i, v) in [V6_HOST_PREFIX, w(0), w(4), w(8), w(12)].into_iter().enumerate() {
            // SAFETY: in bounds of the local array.
            unsafe { core::ptr::write_volatile(&mut k.0[i], v) };
        }
        // SAFETY: Key<[u8; 16]> is 20 packed bytes, here at the start of a 24-byte buffer.
        let key = unsafe { &*(k.0.as_ptr() as *const Key<[u8; 16]>) };
        ALLOW_V6.get(key).is_some()
    } else {
        if allow & ALLOW_HAS_V4 == 0 {
            return false;
        }
        #[repr(C, align(8))]
        struct K([u32; 2]);
        let a = ip.v4_src();
        let mut k = K([0; 2]);
        // SAFETY: in bounds of the local array.
        unsafe {
            core::ptr::write_volatile(&mut k.0[0], V4_HOST_PREFIX);
            core::ptr::write_volatile(&mut k.0[1], u32::from_ne_bytes(a));
        }
        // SAFETY: Key<[u8; 4]> is 8 packed bytes.
        let key = unsafe { &*(k.0.as_ptr() as *const Key<[u8; 4]>) };
        ALLOW_V4.get(key).is_some()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
