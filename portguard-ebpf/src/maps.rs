//! Every map the program uses, in one place. Layouts live in portguard-common; sizes that
//! userspace may change at load time (SOURCES) are set with `EbpfLoader::set_max_entries`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use portguard_common::{
    ALLOWLIST_CAPACITY, Admission, AllowV4, AllowV6, CAPTURE_RING_BYTES, CapturePace, Config,
    DEFAULT_SOURCE_CAPACITY, FEATURES_RING_BYTES, FINGERPRINT_CAPACITY, FRAGMENT_CAPACITY,
    Fingerprint, FragmentKey, FragmentVerdict, Meta, PORT_TABLE_ENTRIES, SKETCH_BLOCKS,
    SketchBlock, SourceKey, SourceSlot, Totals,
};

use crate::copy::CopyRequest;

/// Written and read by userspace only (see `Meta`); declared here so that it is created and
/// pinned with the rest.
#[map]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// The runtime configuration (one entry), written by userspace at any time.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Guarded ports, indexed by port number: a direct index is the cheapest lookup there is.
#[map]
pub static PORTS: Array<u8> = Array::with_max_entries(PORT_TABLE_ENTRIES, 0);

/// Sources that are counted but never dropped.
#[map]
pub static ALLOW_V4: LpmTrie<AllowV4, u8> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);
#[map]
pub static ALLOW_V6: LpmTrie<AllowV6, u8> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

/// What the program did, per CPU so that no two cores write the same cache line.
#[map]
pub static TOTALS: PerCpuArray<Totals> = PerCpuArray::with_max_entries(1, 0);

/// Per-source counters: a preallocated hash shared by the CPUs, its counters added to
/// atomically, behind an admission budget, made room in by userspace.
///
/// Why this shape: a lookup of a known source must be cheap, because every matched packet does
/// one; a hash lookup is inlined by the verifier, the LRU variant's is a full helper call.
/// Shared rather than per-CPU: a per-CPU value is allocated for every possible CPU, so a
/// 65,536-source table took 3 MiB per CPU (192 MiB on a 64-CPU router) and every reading of it
/// copied every CPU's values. Atomic adds cost a few ns more per matched packet, and a source
/// arriving on many queues at once bounces one cache line between them (BENCHMARKS.md measures
/// both).
///
/// A spoofed-source flood makes every packet a new source, and an insert costs far more than a
/// lookup, so new sources are admitted only within a budget per CPU and time slice (ADMISSION),
/// paced so the table fills no faster than once in TURNOVER_SECONDS, and past it on evidence
/// (SKETCH). Past both, or with the table full, a packet from an unknown source is counted in
/// `Totals::untracked` and judged exactly as any other. Nothing in the kernel evicts: a source
/// that is in the table stays, with exact counts, so two steady probers can never push each
/// other out. The portguard that owns the guard makes room when the table passes 90%, down to
/// 75% (`table::to_forget`: one-packet sources first).
#[map]
pub static SOURCES: HashMap<SourceKey, SourceSlot> =
    HashMap::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);

/// The admission budget's state, per CPU.
#[map]
pub static ADMISSION: PerCpuArray<Admission> = PerCpuArray::with_max_entries(1, 0);

/// Evidence for admission during a flood (see `SKETCH_BLOCKS` in portguard-common): which
/// unknown sources were seen before, as bits in a blocked Bloom filter of two generations.
///
/// Why this shape: a flood of spoofed sources is, to the table, a stream of one-packet
/// strangers, while a real prober repeats (a scan of several ports or addresses, retransmitted
/// SYNs, a beacon). Admitting on the second sighting lets a prober that starts during a flood
/// in, without a per-source insert for every stranger. Shared, not per-CPU: a prober's packets
/// may hash to different queues; the cells are written only by unknown sources once the first-
/// sight budget is spent, and a lost race costs at worst one admission. One block (half a cache
/// line) per source: one memory access on the flood path. Generations rather than timestamps:
/// a block ages by the sources it takes, so no one has to clear it and its memory stretches
/// when the flood is slow.
#[map]
pub static SKETCH: Array<SketchBlock> = Array::with_max_entries(SKETCH_BLOCKS, 0);

/// Datagrams whose first fragment matched, with the verdict it got. Shared between CPUs:
/// fragments of one datagram may arrive on different queues (ports hash the first one only).
#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentVerdict> =
    LruHashMap::with_max_entries(FRAGMENT_CAPACITY, 0);

/// What a prober's first packets say about it (`FeatureEvent`), for the owner's fingerprints.
/// A ring buffer, not a per-CPU perf buffer: one reader, records in order, and a full buffer is
/// a failed reserve the program counts (`Totals::features_lost`), never a stall.
#[map]
pub static FEATURES: RingBuf = RingBuf::with_byte_size(FEATURES_RING_BYTES, 0);

/// Matched packets for a capture (`CaptureEvent`), while one runs (CFG_CAPTURE_*).
#[map]
pub static CAPTURE: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// The capture's rate limit, per CPU.
#[map]
pub static CAPTURE_PACE: PerCpuArray<CapturePace> = PerCpuArray::with_max_entries(1, 0);

/// Written and read by userspace only (see `Fingerprint`); declared here so that it is created
/// and pinned with the rest.
#[map]
pub static FINGERPRINTS: HashMap<SourceKey, Fingerprint> =
    HashMap::with_max_entries(FINGERPRINT_CAPACITY, BPF_F_NO_PREALLOC);

/// The copy-out program (copy.rs), at index 0, for the tail call. Filled by the loading
/// process, never pinned.
#[map]
pub static COPY: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What the first program hands to the copy-out program, per CPU.
#[map]
pub static COPY_REQUEST: PerCpuArray<CopyRequest> = PerCpuArray::with_max_entries(1, 0);
