//! The copy-out path: a packet's features (features.rs) and bytes (capture.rs) copied to the
//! ring buffers, for a source's first packets, when a reader asked (CONFIG flags).
//!
//! It runs as a second XDP program, `portguard_copy`, which the first reaches by a tail call
//! after judging and counting the packet. Why a program of its own: the verifier walks the
//! first program once per path through the parser (VLAN stacks, PPPoE, IPv4 options, IPv6
//! extension chains), about 460,000 instructions on Linux 6.18 before this path existed, and
//! code inlined after the verdict would be walked once more on each of those paths, past the
//! verifier's limit of a million. A program reached by a tail call is verified once, on its
//! own. The first program hands over what it found in COPY_REQUEST (per CPU: nothing else
//! runs on this CPU between the write and the tail call), and the second returns the verdict.
//! If the tail call fails (COPY empty: no process holds the programs any more), the first
//! program returns its verdict itself, and nothing is copied.

use aya_ebpf::{
    EbpfContext as _, bindings::xdp_action::XDP_PASS, helpers::generated::bpf_xdp_load_bytes,
    macros::xdp, programs::XdpContext,
};
use portguard_common::SourceKey;

use crate::{
    capture, features,
    maps::{CONFIG, COPY_REQUEST, TOTALS},
};

/// `CopyRequest::want`.
pub const WANT_FEATURES: u8 = 1 << 0;
pub const WANT_CAPTURE: u8 = 1 << 1;

/// What the first program hands to the second (COPY_REQUEST, per CPU): scalars only, so that
/// the second re-reads the frame under its own bounds checks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CopyRequest {
    pub key: SourceKey,
    /// The verdict the first program reached, which the second returns.
    pub verdict: u32,
    /// Offsets of the IP and transport headers in the frame (transport: 0 for an unjudged
    /// frame, which has none to read).
    pub ip_off: u16,
    pub l4_off: u16,
    /// `WANT_*`.
    pub want: u8,
    /// `CAPTURED_*`.
    pub why: u8,
    pub v6: u8,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub l4: u8,
    pub _pad: u32,
}

/// Records the request; the caller tail-calls the second program after counting the packet.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn request(
    key: &SourceKey,
    verdict: u32,
    ip_off: usize,
    l4_off: usize,
    v6: bool,
    l4: u8,
    want: u8,
    why: u8,
) -> bool {
    let Some(r) = COPY_REQUEST.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU, and preemption is off in XDP.
    unsafe {
        *r = CopyRequest {
            key: *key,
            verdict,
            ip_off: ip_off as u16,
            l4_off: l4_off as u16,
            want,
            why,
            v6: v6 as u8,
            l4,
            _pad: 0,
        };
    }
    true
}

#[xdp]
pub fn portguard_copy(ctx: XdpContext) -> u32 {
    let Some(r) = COPY_REQUEST.get_ptr(0) else {
        return XDP_PASS;
    };
    // SAFETY: per-CPU; written by the first program on this CPU just before the tail call.
    let r = unsafe { *r };
    let (Some(totals), Some(cfg)) = (TOTALS.get_ptr_mut(0), CONFIG.get(0)) else {
        return r.verdict;
    };
    // SAFETY: per-CPU, as in the first program.
    let totals = unsafe { &mut *totals };
    if r.want & WANT_FEATURES != 0 {
        features::send(&ctx, &r, totals);
    }
    if r.want & WANT_CAPTURE != 0 {
        capture::send(&ctx, cfg, &r, totals);
    }
    r.verdict
}

/// Copies `n` bytes of the frame from offset `from` to `dst`, which holds `CAP` (at most `CAP`
/// of them); returns the bytes copied: none when `n` is 0 or they are not all in the frame.
///
/// `bpf_xdp_load_bytes` (Linux 5.18) checks the frame's bounds itself; its length must be one
/// the verifier can bound to 1..=CAP. A length computed from header fields is one the compiler
/// may already know to be in range, and then it drops the clamp below, or folds it into a
/// test of another register, and Linux 6.1's verifier refuses the call. So `n - 1` goes
/// through memory (the compiler can assume nothing about it), is clamped, and the length
/// passed is computed from it after the clamp.
///
/// # Safety
/// `dst` must point to `CAP` writable bytes.
#[inline(always)]
pub unsafe fn load<const CAP: usize>(
    ctx: &XdpContext,
    from: usize,
    dst: *mut u8,
    n: usize,
) -> usize {
    if n == 0 {
        return 0;
    }
    let m = n - 1;
    // SAFETY: a read of a local.
    let mut m = unsafe { core::ptr::read_volatile(&m) };
    if m >= CAP {
        m = CAP - 1;
    }
    let len = m + 1;
    // SAFETY: at most CAP bytes to `dst`; the helper checks the frame's bounds.
    let r = unsafe {
        bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, from as u32, dst as *mut _, len as u32)
    };
    if r == 0 { len } else { 0 }
}
