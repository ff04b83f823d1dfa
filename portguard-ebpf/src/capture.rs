//! Captures: matched (and unjudged) packets copied to CAPTURE, with their verdict, while a
//! capture runs (`portguard capture`, or the daemon's `[capture]`). Never on the known-source
//! path when no capture runs: the first program asks for it (`wanted`) only when CFG_CAPTURE_*
//! is set; the copy (`send`) runs in the second program (copy.rs).
//!
//! By default a capture wants each source's first `capture_first` packets (as its SOURCES
//! entry counts them); with CFG_CAPTURE_ALL, every one. Either way at most `capture_per_slice`
//! per CPU per admission slice are copied, so that a flood costs the reader (and the disk) a
//! bounded rate; the rest are counted as paced, and those that find the ring buffer full as
//! lost. The verdict never depends on any of it.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP, helpers::generated::bpf_ktime_get_ns, programs::XdpContext,
};
use portguard_common::{
    ADMISSION_SLICE_SHIFT, CAPTURE_SNAP, CFG_CAPTURE_ALL, CFG_CAPTURE_NEW, CaptureEvent, Config,
    Totals,
};

use crate::{
    copy::{CopyRequest, load},
    maps::{CAPTURE, CAPTURE_PACE},
    sources::Seen,
};

/// Whether the capture wants this packet.
#[inline(always)]
pub fn wanted(cfg: &Config, seen: Seen) -> bool {
    cfg.flags & CFG_CAPTURE_ALL != 0
        || (cfg.flags & CFG_CAPTURE_NEW != 0
            && seen.packets != 0
            && seen.packets <= cfg.capture_first as u64)
}

/// Copies the packet to CAPTURE, within the pace.
#[inline(always)]
pub fn send(ctx: &XdpContext, cfg: &Config, r: &CopyRequest, totals: &mut Totals) {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if !paced(cfg, now) {
        totals.captures_paced += 1;
        return;
    }
    let Some(mut e) = CAPTURE.reserve::<CaptureEvent>(0) else {
        totals.captures_lost += 1;
        return;
    };
    let len = ctx.data_end() - ctx.data();
    let caplen = if len < CAPTURE_SNAP { len } else { CAPTURE_SNAP };
    let ev = e.as_mut_ptr();
    // SAFETY: the reserved record is CaptureEvent-sized and 8-aligned; every field is written
    // before it is submitted (`data` up to `caplen`, which is all the reader looks at).
    let copied = unsafe {
        addr_of_mut!((*ev).key).write(r.key);
        addr_of_mut!((*ev).ts_ns).write(now);
        addr_of_mut!((*ev).len).write(len as u32);
        addr_of_mut!((*ev).caplen).write(caplen as u32);
        addr_of_mut!((*ev).verdict).write(r.verdict as u8);
        addr_of_mut!((*ev).why).write(r.why);
        addr_of_mut!((*ev)._pad).write([0; 6]);
        load::<CAPTURE_SNAP>(ctx, 0, addr_of_mut!((*ev).data) as *mut u8, caplen)
    };
    if copied != 0 {
        e.submit(BPF_RB_NO_WAKEUP as u64);
    } else {
        e.discard(BPF_RB_NO_WAKEUP as u64);
    }
}

/// Takes one packet of this CPU's budget for the slice.
#[inline(always)]
fn paced(cfg: &Config, now: u64) -> bool {
    let Some(pace) = CAPTURE_PACE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU, and preemption is off in XDP.
    let pace = unsafe { &mut *pace };
    let slice = now >> ADMISSION_SLICE_SHIFT;
    if pace.slice != slice {
        pace.slice = slice;
        pace.used = 0;
    }
    if pace.used >= cfg.capture_per_slice {
        return false;
    }
    pace.used += 1;
    true
}
