//! Per-source accounting: find the source's slot in SOURCES, or admit it (on first sight while
//! the budget lasts, then on evidence that it was seen before), or count it as untracked. The
//! verdict never depends on what happens here.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_jiffies64};
use portguard_common::{
    ADMISSION_SLICE_SHIFT, Admission, Config, SKETCH_BITS_PER_SOURCE, SKETCH_BLOCKS,
    SKETCH_ROTATE_AT, SourceKey, SourceSlot, Totals,
};

use crate::{
    clock,
    maps::{ADMISSION, SKETCH, SOURCES},
};

/// One matched (or unjudged) packet, as the per-source table records it.
pub struct Hit {
    pub bytes: u64,
    pub port: u16,
    pub direction: u8,
    /// `PROTO_*` bit(s).
    pub l4: u8,
    pub syn: bool,
}

/// What the source's entry says after this packet: how far into its first packets and SYNs
/// the source is, for the copy-out path (copy.rs). Zero when the packet got no entry
/// (untracked).
#[derive(Clone, Copy)]
pub struct Seen {
    pub packets: u64,
    pub syns: u32,
}

/// Where the packet was counted. The entry of a known source is read (`seen`) only when a
/// reader asked for copies, so that the matched drop of a known source pays no loads for it.
#[derive(Clone, Copy)]
pub enum Recorded {
    Entry(*const SourceSlot),
    New(Seen),
    Untracked,
}

impl Recorded {
    /// Read after `update`, plainly: other CPUs may be counting on the same entry, and a value
    /// a packet or two off only moves where "a source's first packets" end.
    #[inline(always)]
    pub fn seen(self) -> Seen {
        match self {
            // SAFETY: a live map value (see `update`); aligned loads of counters that are only
            // ever added to atomically.
            Recorded::Entry(s) => unsafe { Seen { packets: (*s).packets, syns: (*s).tcp_syns } },
            Recorded::New(seen) => seen,
            Recorded::Untracked => Seen { packets: 0, syns: 0 },
        }
    }
}

#[inline(always)]
pub fn record(key: &SourceKey, hit: &Hit, cfg: &Config, totals: &mut Totals) -> Recorded {
    // SAFETY: helpers without arguments or side effects. jiffies64 is inlined by the verifier
    // into a load: the known-source path pays for no helper call.
    let jiffies = unsafe { bpf_jiffies64() };
    if let Some(s) = SOURCES.get_ptr_mut(key) {
        update(s, hit, jiffies);
        return Recorded::Entry(s);
    }
    // An unknown source: the rarer path can afford the real clock.
    let now = clock::now_ns();
    let Some(a) = ADMISSION.get_ptr_mut(0) else {
        untracked(hit, totals);
        return Recorded::Untracked;
    };
    // SAFETY: per-CPU, and preemption is off in XDP.
    let a = unsafe { &mut *a };
    let evidence = match admit(a, key, now, cfg) {
        Admit::FirstSight => false,
        Admit::Evidence => true,
        Admit::No => {
            untracked(hit, totals);
            return Recorded::Untracked;
        }
    };
    let s = SourceSlot {
        packets: 1,
        bytes: hit.bytes,
        admitted_ns: now,
        first_jiffies: jiffies,
        last_jiffies: jiffies,
        tcp_syns: hit.syn as u32,
        last_port: hit.port,
        directions: hit.direction,
        protocols: hit.l4,
    };
    match SOURCES.insert(key, s, BPF_NOEXIST as u64) {
        Ok(()) => {
            totals.admitted += 1;
            totals.admitted_evidence += evidence as u64;
            Recorded::New(Seen { packets: s.packets, syns: s.tcp_syns })
        }
        // Another CPU inserted it first: count on its entry.
        Err(_) => match SOURCES.get_ptr_mut(key) {
            Some(s) => {
                update(s, hit, jiffies);
                Recorded::Entry(s)
            }
            None => {
                // The table is full (the daemon says so: it sees the table and `untracked`).
                untracked(hit, totals);
                Recorded::Untracked
            }
        },
    }
}

#[inline(always)]
fn untracked(hit: &Hit, totals: &mut Totals) {
    totals.untracked += 1;
    totals.untracked_bytes += hit.bytes;
}

/// Counts a packet on a source's entry, which other CPUs may be updating at the same moment:
/// the counters are added atomically; the rest is written only when it changes (it rarely
/// does), so that a source steady on one port keeps its cache line clean. Two CPUs racing on
/// those fields leave one of the two values, both of them true.
#[inline(always)]
fn update(s: *mut SourceSlot, hit: &Hit, jiffies: u64) {
    // SAFETY: `s` points to a live map value (the map is preallocated: an entry removed by
    // userspace meanwhile is recycled memory, never freed). The counters are only ever
    // accessed atomically by the program; userspace reads them whole.
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*s).packets, 1);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*s).bytes, hit.bytes);
        if hit.syn {
            atomic_xadd::<u32, u32, { Relaxed }>(&raw mut (*s).tcp_syns, 1);
        }
        let s = &mut *s;
        if s.last_jiffies != jiffies {
            s.last_jiffies = jiffies;
        }
        if hit.port != 0 && s.last_port != hit.port {
            s.last_port = hit.port;
        }
        if s.directions & hit.direction != hit.direction {
            s.directions |= hit.direction;
        }
        if s.protocols & hit.l4 != hit.l4 {
            s.protocols |= hit.l4;
        }
    }
}

enum Admit {
    FirstSight,
    Evidence,
    No,
}

/// Whether an unknown source gets a slot: on first sight while this CPU's budget for the slice
/// lasts; past it (a flood of new sources), only when the sketch says it was seen before, from
/// a second budget as large.
#[inline(always)]
fn admit(a: &mut Admission, key: &SourceKey, now: u64, cfg: &Config) -> Admit {
    let slice = now >> ADMISSION_SLICE_SHIFT;
    if a.slice != slice {
        a.slice = slice;
        a.used = 0;
        a.used_evidence = 0;
    }
    if a.used < cfg.admit_per_slice {
        a.used += 1;
        return Admit::FirstSight;
    }
    if seen_before(key, cfg) && a.used_evidence < cfg.admit_per_slice {
        a.used_evidence += 1;
        return Admit::Evidence;
    }
    Admit::No
}

/// Whether `key` is in its sketch block's current or previous generation; it is put in the
/// current one either way (see `SketchBlock`).
#[inline(always)]
fn seen_before(key: &SourceKey, cfg: &Config) -> bool {
    let h = hash(key, cfg);
    let Some(b) = SKETCH.get_ptr_mut((h as u32) & (SKETCH_BLOCKS - 1)) else {
        return false;
    };
    // SAFETY: a block of a shared array; a racing CPU's write may be lost, which costs at
    // worst one admission.
    let b = unsafe { &mut *b };
    // The block from the hash's low 17 bits, then SKETCH_BITS_PER_SOURCE bit positions in
    // 0..128 from the next 35, 7 each.
    const _: () = assert!(SKETCH_BLOCKS == 1 << 17 && 17 + 7 * SKETCH_BITS_PER_SOURCE <= 64);
    // Two words, not an array: an array on the stack is zeroed by a call to memset and indexed
    // by a variable, both of which the verifier walks again on every path that gets here
    // (Debian 12's 6.1.176 gave up at a million instructions).
    let (mut lo, mut hi) = (0u64, 0u64);
    for i in 0..SKETCH_BITS_PER_SOURCE {
        let bit = (h >> (17 + 7 * i)) & 127;
        let m = 1u64 << (bit & 63);
        // All ones for the word the bit is in, without a branch.
        let upper = 0u64.wrapping_sub(bit >> 6);
        lo |= m & !upper;
        hi |= m & upper;
    }
    let bits = [lo, hi];
    let within = |g: &[u64; 2]| g[0] & bits[0] == bits[0] && g[1] & bits[1] == bits[1];
    let seen = within(&b.current) || within(&b.previous);
    let filled = popcount(b.current[0] | bits[0]) + popcount(b.current[1] | bits[1]);
    if filled > SKETCH_ROTATE_AT {
        b.previous = b.current;
        b.current = bits;
    } else {
        b.current[0] |= bits[0];
        b.current[1] |= bits[1];
    }
    seen
}

/// Bits set in `x` (BPF has no popcount instruction).
#[inline(always)]
fn popcount(mut x: u64) -> u32 {
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

/// A keyed hash of the source's key (24 bytes as three words): multiply-xorshift with seeds
/// from userspace, so that nobody can choose sources that land on a prober's block.
#[inline(always)]
fn hash(key: &SourceKey, cfg: &Config) -> u64 {
    // SAFETY: SourceKey is 24 bytes, aligned to 8.
    let w = unsafe { &*(key as *const SourceKey as *const [u64; 3]) };
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let mut h = (w[0] ^ cfg.sketch_seed[0]).wrapping_mul(K1);
    h ^= (w[1] ^ cfg.sketch_seed[1]).wrapping_mul(K2);
    h ^= w[2].wrapping_mul(K1);
    h ^= h >> 29;
    h = h.wrapping_mul(K2);
    h ^ (h >> 32)
}
