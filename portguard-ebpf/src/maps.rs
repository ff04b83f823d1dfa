//! Every map the program uses, in one place. Layouts live in portguard-common; sizes that
//! userspace may change at load time (SOURCES) are set with `EbpfLoader::set_max_entries`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use portguard_common::{
    ALLOWLIST_CAPACITY, Admission, AllowV4, AllowV6, Config, DEFAULT_SOURCE_CAPACITY,
    FRAGMENT_CAPACITY, FragmentKey, FragmentVerdict, Meta, PORT_TABLE_ENTRIES, SourceKey,
    SourceStats, Totals,
};

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

/// Per-source counters: an LRU per-CPU hash behind an admission budget.
///
/// Why this shape: a lookup of a known source in an LRU hash is cheap (≈10 ns), but inserting a
/// new one costs ≈370–430 ns here (allocation from the LRU free lists, eviction when full). A
/// spoofed-source flood makes every packet a new source, so inserting unconditionally would
/// make the flood 6× dearer than xdp-filter's whole packet. So new sources are admitted only
/// within a budget per CPU and time slice (ADMISSION); past it, a packet from an unknown source
/// is counted in `Totals::untracked` and judged exactly as any other. Known sources are never
/// affected by the budget, and the LRU evicts the least recently active entries, never a source
/// that keeps sending: two steady probers cannot evict each other while the flood's one-packet
/// sources are there to be evicted first. Per-CPU values keep one hot source arriving on many
/// queues from bouncing a cache line between cores; userspace merges the CPUs.
#[map]
pub static SOURCES: LruPerCpuHashMap<SourceKey, SourceStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);

/// The admission budget's state, per CPU.
#[map]
pub static ADMISSION: PerCpuArray<Admission> = PerCpuArray::with_max_entries(1, 0);

/// Datagrams whose first fragment matched, with the verdict it got. Shared between CPUs:
/// fragments of one datagram may arrive on different queues (ports hash the first one only).
#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentVerdict> =
    LruHashMap::with_max_entries(FRAGMENT_CAPACITY, 0);
