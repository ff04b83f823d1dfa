//! Per-source accounting: find the source's slot in SOURCES, or admit it within the budget, or
//! count it as untracked. The verdict never depends on what happens here.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use portguard_common::{ADMISSION_SLICE_SHIFT, SourceKey, SourceSlot, Totals};

use crate::maps::{ADMISSION, SOURCES};

/// One matched packet, as the per-source table records it.
pub struct Hit {
    pub bytes: u64,
    pub port: u16,
    pub direction: u8,
    /// `PROTO_*` bit.
    pub l4: u8,
    pub syn: bool,
}

#[inline(always)]
pub fn record<C: EbpfContext>(
    ctx: &C,
    key: &SourceKey,
    hit: &Hit,
    budget: u32,
    totals: &mut Totals,
) {
    // SAFETY: helpers without arguments or side effects. jiffies64 is inlined by the verifier
    // into a load: the known-source path pays for no helper call.
    let jiffies = unsafe { bpf_jiffies64() };
    if let Some(s) = SOURCES.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: only this CPU writes it, and preemption is off in XDP.
        update(unsafe { &mut *s }, hit, jiffies);
        return;
    }
    // An unknown source: the rarer path can afford the real clock.
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if !admit(now, budget) {
        totals.untracked += 1;
        totals.untracked_bytes += hit.bytes;
        return;
    }
    let mut s = SourceSlot { admitted_ns: now, ..SourceSlot::default() };
    update(&mut s, hit, jiffies);
    match SOURCES.insert(key, s, BPF_NOEXIST as u64) {
        Ok(()) => totals.admitted += 1,
        // Another CPU inserted it first: ours is a per-CPU slot in the same entry.
        Err(_) => match SOURCES.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(s) => update(unsafe { &mut *s }, hit, jiffies),
            None => {
                // The table is full.
                totals.untracked += 1;
                totals.untracked_bytes += hit.bytes;
                log_full(ctx, now);
            }
        },
    }
}

#[inline(always)]
fn update(s: &mut SourceSlot, hit: &Hit, jiffies: u64) {
    if s.packets == 0 {
        s.first_jiffies = jiffies;
    }
    s.packets += 1;
    s.bytes += hit.bytes;
    s.last_jiffies = jiffies;
    s.last_port = hit.port;
    s.directions |= hit.direction;
    s.protocols |= hit.l4;
    s.tcp_syns += hit.syn as u32;
}

/// Takes one unit of this CPU's admission budget for the current slice, if any is left.
#[inline(always)]
fn admit(now: u64, budget: u32) -> bool {
    let Some(a) = ADMISSION.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU, as above.
    let a = unsafe { &mut *a };
    let slice = now >> ADMISSION_SLICE_SHIFT;
    if a.slice != slice {
        a.slice = slice;
        a.used = 0;
    }
    if a.used >= budget {
        return false;
    }
    a.used += 1;
    true
}

/// A rare event, logged through aya-log at most once per CPU per admission slice.
#[inline(always)]
fn log_full<C: EbpfContext>(ctx: &C, now: u64) {
    let Some(a) = ADMISSION.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU, as above.
    let a = unsafe { &mut *a };
    let slice = (now >> ADMISSION_SLICE_SHIFT) as u32;
    if a.full_logged != slice {
        a.full_logged = slice;
        aya_log_ebpf::warn!(ctx, "source table full: new sources are counted as untracked");
    }
}
