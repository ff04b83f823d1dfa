//! The kernel/user contract of portguard, defined once.
//!
//! Everything that crosses the boundary between the XDP program (`portguard-ebpf`) and
//! userspace (`portguard`) lives here: map names, key and value layouts, flag bits, limits.
//!
//! Byte order, decided once:
//! - addresses (map keys, LPM keys) are in network byte order, exactly as on the wire; IPv4
//!   sources are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) so one table holds both;
//! - ports are host byte order everywhere (the port table is indexed by the port number);
//! - every counter and timestamp is a host-order integer.
//!
//! Timestamps are CLOCK_MONOTONIC: `bpf_ktime_get_coarse_ns()` (jiffy resolution), or
//! `bpf_ktime_get_ns()` on kernels without it (see `COARSE_CLOCK_GLOBAL`). Userspace converts
//! them with `clock_gettime(CLOCK_MONOTONIC)`.
#![cfg_attr(target_arch = "bpf", no_std)]

use core::mem::size_of;

/// The port portguard guards when told nothing else: the Bagle backdoor.
pub const DEFAULT_PORT: u16 = 2745;

/// Map names, as the XDP program declares them and userspace finds (and pins) them.
pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const PORTS: &str = "PORTS";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const TOTALS: &str = "TOTALS";
    pub const SOURCES: &str = "SOURCES";
    pub const ADMISSION: &str = "ADMISSION";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const SKETCH: &str = "SKETCH";
    pub const META: &str = "META";
    pub const FEATURES: &str = "FEATURES";
    pub const CAPTURE: &str = "CAPTURE";
    pub const CAPTURE_PACE: &str = "CAPTURE_PACE";
    pub const FINGERPRINTS: &str = "FINGERPRINTS";
    /// Every map, in the order userspace pins and reports them.
    pub const ALL: [&str; 14] = [
        META,
        CONFIG,
        PORTS,
        ALLOW_V4,
        ALLOW_V6,
        TOTALS,
        SOURCES,
        ADMISSION,
        FRAGMENTS,
        SKETCH,
        FEATURES,
        CAPTURE,
        CAPTURE_PACE,
        FINGERPRINTS,
    ];
}

/// The XDP program's name in the object file.
pub const PROGRAM_NAME: &str = "portguard";
/// The second XDP program: copies a packet's features and bytes to the ring buffers, reached
/// from the first by a tail call through COPY only when a reader asked for them (see
/// portguard-ebpf/src/copy.rs). Loaded beside the first, never attached.
pub const COPY_PROGRAM_NAME: &str = "portguard_copy";
/// The program array holding it (index 0). Not pinned: it is the loading process's, and an
/// empty one (no process holding it) makes the tail call fail, which the first program
/// survives by returning its verdict as if nobody had asked.
pub const COPY_MAP_NAME: &str = "COPY";

/// The program's read-only global (u8) choosing its clock, set at load time: 1 for
/// `bpf_ktime_get_coarse_ns()` (Linux 5.11+), 0 for `bpf_ktime_get_ns()` (older kernels,
/// whose verifier refuses helper 160 anywhere in a program).
pub const COARSE_CLOCK_GLOBAL: &str = "COARSE_CLOCK";

/// Entries in PORTS: one per possible port, indexed by the port number (host order).
pub const PORT_TABLE_ENTRIES: u32 = 65_536;
/// PORTS value for a guarded port; 0 means not guarded.
pub const PORT_GUARDED: u8 = 1;

/// Default capacity of SOURCES (sources tracked individually); `--sources N` changes it,
/// within MIN..=MAX: below the minimum, making room would forget nearly every source each
/// interval; above the maximum, the per-CPU table outgrows any router's memory.
pub const DEFAULT_SOURCE_CAPACITY: u32 = 65_536;
pub const MIN_SOURCE_CAPACITY: u32 = 256;
pub const MAX_SOURCE_CAPACITY: u32 = 1 << 20;
/// Userspace makes room in SOURCES when it is fuller than this (percent)...
pub const EVICT_ABOVE_PERCENT: u32 = 90;
/// ...by removing the sources seen least recently until it is this full.
pub const EVICT_DOWN_TO_PERCENT: u32 = 75;
/// Capacity of FRAGMENTS: datagrams whose first fragment matched, remembered so that the rest
/// of each gets the same verdict.
pub const FRAGMENT_CAPACITY: u32 = 4_096;
/// Capacity of each allowlist trie.
pub const ALLOWLIST_CAPACITY: u32 = 1_024;

/// IPv6 extension headers followed. Linux follows any number, so a longer chain is not
/// malformed: it is *unjudged* (see `Totals::unjudged`), dropped in drop mode.
pub const MAX_IPV6_EXT_HEADERS: usize = 16;
/// VLAN tags (802.1Q, 802.1ad, 0x9100) peeled. Linux peels priority tags (VLAN id 0) at any
/// depth and sub-interfaces can nest, so a frame with more is unjudged, not malformed.
pub const MAX_VLAN_TAGS: usize = 4;

/// Admission of new sources into SOURCES is budgeted per CPU and time slice, so that a
/// spoofed-source flood pays the cost of an LRU insert (≈400 ns here) only a bounded number of
/// times. A slice is 2^26 ns ≈ 67 ms (a shift, not a division, in the hot path).
pub const ADMISSION_SLICE_SHIFT: u32 = 26;
/// During a flood, admissions are paced so that the table fills no faster than once in this
/// many seconds; userspace then makes room by removing the sources seen least recently, so any
/// source that sends more often than that keeps its entry and a steady prober sending once a
/// second is never pushed out by one-packet sources.
pub const TURNOVER_SECONDS: u64 = 8;

/// The per-CPU, per-slice admission budget for a table of `capacity` entries on `cpus` CPUs:
/// capacity / TURNOVER_SECONDS admissions per second in all, shared out among the CPUs, at
/// least 1. For 65,536 entries on 2 CPUs: 274 per CPU per 67 ms slice (≈8,200 per second).
pub const fn admit_per_slice(capacity: u32, cpus: u32) -> u32 {
    let slice_ns = 1u64 << ADMISSION_SLICE_SHIFT;
    let cpus = if cpus == 0 { 1 } else { cpus as u64 };
    let per_slice = capacity as u64 * slice_ns / (TURNOVER_SECONDS * 1_000_000_000) / cpus;
    if per_slice == 0 {
        1
    } else if per_slice > u32::MAX as u64 {
        u32::MAX
    } else {
        per_slice as u32
    }
}

/// `Config::action`. Zero is count, so a program whose config was never written passes
/// everything.
pub const ACTION_COUNT: u8 = 0;
pub const ACTION_DROP: u8 = 1;

/// `Config::protocols` and `SourceStats::protocols` bits.
pub const PROTO_TCP: u8 = 1 << 0;
pub const PROTO_UDP: u8 = 1 << 1;

/// `Config::direction` and `SourceSlot::directions` bits: which port of a packet is compared
/// with the guarded set. DST: someone probes a guarded port. SRC: a host answers from one.
/// UNJUDGED (a source's slot only): it sent frames whose ports could not be read.
pub const DIR_DST: u8 = 1 << 0;
pub const DIR_SRC: u8 = 1 << 1;
pub const DIR_UNJUDGED: u8 = 1 << 2;

/// `Config::flags`: drop what cannot be judged (frames that could reach a guarded port but
/// whose ports cannot be read). Userspace sets it in drop mode unless told otherwise.
pub const CFG_UNJUDGED_DROP: u8 = 1 << 0;
/// `Config::flags`, set by a consumer while it reads the ring buffers (not a setting: writing
/// the settings keeps them). FEATURES: the owner reads FEATURES (fingerprints). CAPTURE_NEW:
/// a capture wants the first `capture_first` packets of each source; CAPTURE_ALL: every
/// matched packet. Both captures are paced by `capture_per_slice`. With none of them set, the
/// program does nothing more per packet than test this byte.
pub const CFG_FEATURES: u8 = 1 << 1;
pub const CFG_CAPTURE_NEW: u8 = 1 << 2;
pub const CFG_CAPTURE_ALL: u8 = 1 << 3;
pub const CFG_CAPTURE: u8 = CFG_CAPTURE_NEW | CFG_CAPTURE_ALL;
pub const CFG_CONSUMERS: u8 = CFG_FEATURES | CFG_CAPTURE;

/// `Config::allow` bits: set by userspace when the matching trie is non-empty, so that the
/// program skips the LPM lookup entirely when there is no allowlist.
pub const ALLOW_HAS_V4: u8 = 1 << 0;
pub const ALLOW_HAS_V6: u8 = 1 << 1;

/// CONFIG\[0\]: the runtime configuration, written by userspace, read once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `ACTION_*`.
    pub action: u8,
    /// `PROTO_*` bits: which L4 protocols are guarded.
    pub protocols: u8,
    /// `DIR_*` bits: which port is compared.
    pub direction: u8,
    /// `ALLOW_HAS_*` bits.
    pub allow: u8,
    /// New sources admitted into SOURCES per CPU per admission slice on first sight (and as
    /// many again on evidence, see `SKETCH`).
    pub admit_per_slice: u32,
    /// `CFG_*` bits.
    pub flags: u8,
    /// Sources are counted per prefix of this length (IPv4 /32 and IPv6 /128: per address).
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub _pad: u8,
    /// The IPv4 prefix mask, as the address's 4 network-order bytes read in native order.
    pub v4_mask: u32,
    /// The IPv6 prefix mask, as the address's 16 network-order bytes read as two native words.
    pub v6_mask: [u64; 2],
    /// Seeds of the sketch's hash, random per load, so that no one can aim at its blocks.
    pub sketch_seed: [u64; 2],
    /// With CFG_FEATURES: a source's first this many TCP SYNs (and UDP datagrams among its
    /// first this many packets) go to FEATURES, as SOURCES counts them.
    pub feature_first: u16,
    /// With CFG_CAPTURE_NEW: a source's first this many packets go to CAPTURE.
    pub capture_first: u16,
    /// Captured packets per CPU per admission slice, at most: a flood cannot swamp the reader.
    pub capture_per_slice: u32,
}
const _: () = assert!(size_of::<Config>() == 56);

/// `Config::feature_first` as the owner sets it: enough SYNs for the rules that compare a
/// packet with the previous one (hping3's source port +1), few enough that a source that keeps
/// sending costs nothing more after them.
pub const FEATURE_FIRST: u16 = 8;

/// TOTALS\[0\], one per CPU: what the program did. Userspace sums the CPUs.
///
/// `seen` counts every frame; `matched` counts frames whose port matched (unfragmented or first
/// fragments); `fragments_followed` counts later fragments of a matched datagram, which get its
/// verdict; `dropped` counts every XDP_DROP (matched, followed or unjudged). `allowed` are
/// matched (or unjudged) frames passed because their source is on the allowlist. `malformed`
/// are frames the stack discards itself (a truncated or contradictory IP header, say): passed.
/// `unjudged` are frames that could reach a guarded port but whose ports cannot be read (an
/// IPv6 chain longer than MAX_IPV6_EXT_HEADERS, more VLAN tags than MAX_VLAN_TAGS, a first
/// fragment cut before its ports): dropped when CFG_UNJUDGED_DROP is set. `untracked` are
/// matched or unjudged frames whose source could not get a SOURCES entry (admission budget
/// spent or map full); they are judged all the same. `admitted` counts sources admitted,
/// `admitted_evidence` those of them admitted on evidence during a flood.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, schemars::JsonSchema))]
pub struct Totals {
    pub seen: u64,
    pub matched: u64,
    pub matched_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub allowed: u64,
    pub malformed: u64,
    pub fragments_followed: u64,
    pub untracked: u64,
    pub untracked_bytes: u64,
    #[cfg_attr(feature = "user", serde(rename = "sources_admitted"))]
    pub admitted: u64,
    pub unjudged: u64,
    pub unjudged_bytes: u64,
    #[cfg_attr(feature = "user", serde(rename = "sources_admitted_on_evidence"))]
    pub admitted_evidence: u64,
    /// Feature records (fingerprints) that found FEATURES full: the packet was judged and
    /// counted all the same; only its fingerprint is missing.
    pub features_lost: u64,
    /// Packets a capture wanted that found CAPTURE full...
    pub captures_lost: u64,
    /// ...and those past the capture's rate (`capture_per_slice`).
    pub captures_paced: u64,
}
const _: () = assert!(size_of::<Totals>() == 136);

impl Totals {
    /// Every counter, in declaration order: the names JSON and metrics use.
    pub const NAMES: [&'static str; 17] = [
        "seen",
        "matched",
        "matched_bytes",
        "dropped",
        "dropped_bytes",
        "allowed",
        "malformed",
        "fragments_followed",
        "untracked",
        "untracked_bytes",
        "sources_admitted",
        "unjudged",
        "unjudged_bytes",
        "sources_admitted_on_evidence",
        "features_lost",
        "captures_lost",
        "captures_paced",
    ];

    /// The counters as one array, in declaration order (userspace sums CPUs and takes
    /// differences over it, so a new counter is one field here and one name above).
    pub fn to_array(self) -> [u64; Self::NAMES.len()] {
        // SAFETY: repr(C), only u64 fields, no padding (size asserted below).
        unsafe { core::mem::transmute::<Totals, [u64; Self::NAMES.len()]>(self) }
    }

    pub fn from_array(a: [u64; Self::NAMES.len()]) -> Totals {
        // SAFETY: as above; every bit pattern is a valid u64.
        unsafe { core::mem::transmute::<[u64; Self::NAMES.len()], Totals>(a) }
    }
}
const _: () = assert!(size_of::<Totals>() == Totals::NAMES.len() * 8);

/// ADMISSION\[0\], one per CPU: the admission budget's state (see `ADMISSION_SLICE_SHIFT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// `now >> ADMISSION_SLICE_SHIFT` of the slice being counted.
    pub slice: u64,
    /// New sources admitted on this CPU in that slice on first sight...
    pub used: u32,
    /// ...and on evidence (seen before, in the sketch).
    pub used_evidence: u32,
}
const _: () = assert!(size_of::<Admission>() == 16);

/// SKETCH: the evidence that an unknown source was seen before, for admission during a flood
/// (once the first-sight budget is spent). A blocked Bloom filter in two generations: a source
/// hashes to one block of SKETCH blocks and to SKETCH_BITS_PER_SOURCE bits within a
/// generation's 128; it was seen before when all its bits are set in the block's current or
/// previous generation. Each sighting sets them in the current one; when that would pass
/// SKETCH_ROTATE_AT bits, the current generation becomes the previous and a new one starts.
///
/// No clock: a block forgets after it has taken two generations' worth of other sources, so
/// memory adapts to the flood by itself (about 6 × SKETCH_BLOCKS sightings surely remembered,
/// ~0.8 s at 1 Mpps, and nothing is forgotten while nothing floods) and the share of bits set,
/// hence the chance that a one-packet source looks seen before, stays bounded (about 0.1%
/// whatever the flood's rate).
pub const SKETCH_BLOCKS: u32 = 1 << 17;
/// Bits set per source in a generation, and the most bits a generation holds before it rotates.
pub const SKETCH_BITS_PER_SOURCE: u32 = 5;
pub const SKETCH_ROTATE_AT: u32 = 32;

/// One SKETCH block: the current generation's 128 bits, then the previous one's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SketchBlock {
    pub current: [u64; 2],
    pub previous: [u64; 2],
}
const _: () = assert!(size_of::<SketchBlock>() == 32);

/// SOURCES key: a source prefix. `addr` is the address with the bits past `prefix` cleared,
/// network order, IPv4 as `::ffff:a.b.c.d`; `family` (4 or 6) keeps an IPv6 source an IPv6
/// source, also one in `::ffff:0:0/96`. Aligned to 8 so that the XDP program can build it on
/// the stack with word stores (the verifier refuses misaligned stack access).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub prefix: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<SourceKey>() == 24);

impl SourceKey {
    /// The key of an IPv4 prefix (network-order octets, already masked).
    #[inline(always)]
    pub const fn v4(a: [u8; 4], prefix: u8) -> Self {
        // 8-byte words rather than an array literal: for the BPF target LLVM lowers the literal
        // to a call of compiler_builtins' byte-by-byte memset, in the hot path.
        let lo = u64::from_ne_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]);
        let tail = u64::from_ne_bytes([4, prefix, 0, 0, 0, 0, 0, 0]);
        // SAFETY: SourceKey is 24 plain bytes; [u64; 3] is 24 bytes with no invalid values.
        unsafe { core::mem::transmute::<[u64; 3], SourceKey>([0, lo, tail]) }
    }

    /// The key of an IPv6 prefix, from its 16 network-order bytes read as two native words
    /// (already masked).
    #[inline(always)]
    pub const fn v6(words: [u64; 2], prefix: u8) -> Self {
        let tail = u64::from_ne_bytes([6, prefix, 0, 0, 0, 0, 0, 0]);
        // SAFETY: as above.
        unsafe { core::mem::transmute::<[u64; 3], SourceKey>([words[0], words[1], tail]) }
    }
}

/// SOURCES value, one per CPU (a per-CPU hash): what one source sent to guarded ports, as
/// this CPU saw it. A CPU that never saw the source has an all-zero slot.
///
/// Times are jiffies (`bpf_jiffies64()`, which the verifier inlines into one load: the known-
/// source path reads no clock helper at all), except `admitted_ns`, which the CPU that admitted
/// the source stamps with CLOCK_MONOTONIC (see `COARSE_CLOCK_GLOBAL`) along with `first_jiffies`: that pair
/// lets userspace turn jiffies into CLOCK_MONOTONIC (portguard's `counters::JiffyClock`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSlot {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC (coarse where the kernel has it) at admission, on the admitting CPU
    /// only; 0 elsewhere.
    pub admitted_ns: u64,
    /// Jiffies of this CPU's first and latest packet from the source.
    pub first_jiffies: u64,
    pub last_jiffies: u64,
    /// TCP segments with SYN set and ACK clear: connection attempts.
    pub tcp_syns: u32,
    /// The guarded port of the latest packet (host order).
    pub last_port: u16,
    /// `DIR_*` bits seen: DST "probing", SRC "answering from", UNJUDGED "sent frames whose
    /// ports could not be read".
    pub directions: u8,
    /// `PROTO_*` bits seen.
    pub protocols: u8,
}
const _: () = assert!(size_of::<SourceSlot>() == 48);

/// The version of the map layouts in this file. A new portguard adopting pinned maps of another
/// layout would misread them: it refuses, and says how to start afresh. Bump it whenever a
/// type below changes size or meaning.
pub const LAYOUT_VERSION: u32 = 4;

/// META\[0\]: facts about the attachment that userspace records for other portguard processes
/// (`status`, adoption after a restart, `detach`). The XDP program never reads it.
///
/// A guard's identity is (network namespace, interface): the namespace by its cookie (unique
/// for the boot, never reused, unlike its inode), the interface by its index in that
/// namespace, with its name kept for people and for following a device that is replaced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `LAYOUT_VERSION` of the portguard that created the maps.
    pub layout: u32,
    /// The interface index attached to (in the namespace below).
    pub ifindex: u32,
    /// When the interface was first guarded, seconds since the Unix epoch.
    pub since_unix: u64,
    /// SO_NETNS_COOKIE of the interface's network namespace (its inode on kernels before 5.14,
    /// which have no cookies).
    pub netns_cookie: u64,
    /// The namespace's inode (`ip netns identify`, `lsns`), for people.
    pub netns_inode: u64,
    /// SOURCES capacity.
    pub capacity: u32,
    /// The process that owns the attachment (0: none; it was left in place on exit).
    pub owner_pid: u32,
    /// Bumped by every change of the settings, so that other processes re-read them (and the
    /// daemon logs the change) only when they moved.
    pub generation: u32,
    /// The process that made the latest change of the settings, and how (`CHANGE_*`).
    pub changed_by: u32,
    /// The interface's name, NUL-padded.
    pub ifname: [u8; 16],
    /// `XDP_MODE_*`.
    pub xdp_mode: u8,
    /// `STATE_*`.
    pub state: u8,
    /// `CHANGE_*` of the latest change of the settings.
    pub change: u8,
    /// `ATTACH_*`: how the program takes the interface's XDP hook. A byte that was padding
    /// before, zero (exclusive) in every guard made before sharing existed.
    pub attach: u8,
    /// The `portguard detach` that asked for STATE_DETACHING.
    pub detach_by: u32,
}
const _: () = assert!(size_of::<Meta>() == 72);

/// `Meta::xdp_mode`.
pub const XDP_MODE_NATIVE: u8 = 1;
pub const XDP_MODE_GENERIC: u8 = 2;

/// `Meta::attach`: alone through a pinned bpf_link (`link` in the guard's directory), or as a
/// component of libxdp's multi-program dispatcher (pinned under libxdp's own directory).
pub const ATTACH_EXCLUSIVE: u8 = 0;
pub const ATTACH_MULTIPROG: u8 = 1;

/// `Meta::state`: guarding (what a zeroed META says), or a `portguard detach` asked the owner to
/// stop: a deliberate, recorded request, which the owner honours instead of guarding again.
pub const STATE_GUARDING: u8 = 0;
pub const STATE_DETACHING: u8 = 1;

/// `Meta::change`: who changed the settings last.
pub const CHANGE_ATTACH: u8 = 1;
pub const CHANGE_ADOPT: u8 = 2;
pub const CHANGE_SET: u8 = 3;
pub const CHANGE_RELOAD: u8 = 4;
pub const CHANGE_TOP: u8 = 5;

/// FRAGMENTS key: one fragmented datagram whose first fragment matched. Fields mirror the
/// kernel's reassembly key: IPv4 (src, dst, id, protocol); IPv6 (src, dst, id), `proto` = 0.
/// Aligned to 8, as `SourceKey`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Identification, host order (IPv4's 16 bits widened).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragmentKey>() == 40);

/// FRAGMENTS value: the verdict its first fragment got (an XDP action: XDP_DROP or XDP_PASS).
pub type FragmentVerdict = u32;

/// Allowlist trie data for IPv4 (network order); the LPM key is `{ prefix_len: u32, data }`.
pub type AllowV4 = [u8; 4];
/// Allowlist trie data for IPv6 (network order).
pub type AllowV6 = [u8; 16];

/// FEATURES: a BPF ring buffer of `FeatureEvent`s, read by the guard's owner (the daemon),
/// which turns them into fingerprints. Written only for a source's first few SYNs (see
/// `Config::feature_first`), so its rate is bounded by the admission budget, not by the
/// traffic.
pub const FEATURES_RING_BYTES: u32 = 256 * 1024;

/// `FeaturesRaw::bits`.
pub mod feature_bits {
    /// IPv4 don't-fragment.
    pub const DF: u16 = 1 << 0;
    /// IPv4 reserved flag bit ("must be zero").
    pub const MBZ: u16 = 1 << 1;
    /// IPv6 flow label non-zero.
    pub const FLOW: u16 = 1 << 2;
    /// TCP urgent pointer non-zero.
    pub const URG_NZ: u16 = 1 << 3;
    /// TCP NS bit.
    pub const TCP_NS: u16 = 1 << 4;
}

/// TCP option bytes a feature record carries: all there can be (a data offset of 15 words).
pub const FEATURE_OPTION_BYTES: usize = 40;
/// Payload bytes a feature record carries (UDP tools are told apart by their probes).
pub const FEATURE_PAYLOAD_BYTES: usize = 8;

/// What one packet (a TCP SYN, or a UDP datagram) says about its sender, as the program copies
/// it out: the header fields classification reads, the TCP options as raw bytes, and the first
/// payload bytes. The options are copied rather than walked here: userspace reads them with
/// the same parser it uses on captures (p0f's corner cases, in one place), and the program
/// pays for one bounded copy instead of a walk whose every branch the verifier must follow.
///
/// Every integer in host order except `dst_v4` (network order), as the rest of this file.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeaturesRaw {
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    /// TCP acknowledgment number, even without ACK (hping3's tell).
    pub ack: u32,
    /// IPv4 destination, network order; zero over IPv6.
    pub dst_v4: [u8; 4],
    /// IPv4 identification (0 over IPv6).
    pub ip_id: u16,
    pub window: u16,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length; IPv6 payload length + 40.
    pub ip_len: u16,
    /// Transport payload bytes, from the IP length.
    pub payload_len: u16,
    /// `feature_bits::*`.
    pub bits: u16,
    pub _pad: u16,
    /// 4 or 6.
    pub version: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// TOS / traffic class.
    pub tos: u8,
    /// IP protocol: 6 or 17.
    pub proto: u8,
    /// TCP flag byte.
    pub tcp_flags: u8,
    /// IPv4 options / IPv6 extension header bytes.
    pub ip_opt_len: u8,
    /// TCP option bytes the header announces (data offset × 4 − 20)...
    pub tcp_opt_len: u8,
    /// ...and those of them the frame holds, copied into `options`.
    pub opt_copied: u8,
    pub _pad2: u32,
    /// The TCP option bytes, zero past `opt_copied`.
    pub options: [u8; FEATURE_OPTION_BYTES],
    /// The first payload bytes, zero past the payload.
    pub payload: [u8; FEATURE_PAYLOAD_BYTES],
}
const _: () = assert!(size_of::<FeaturesRaw>() == 88);

impl Default for FeaturesRaw {
    fn default() -> Self {
        FeaturesRaw {
            seq: 0,
            ack: 0,
            dst_v4: [0; 4],
            ip_id: 0,
            window: 0,
            sport: 0,
            dport: 0,
            ip_len: 0,
            payload_len: 0,
            bits: 0,
            _pad: 0,
            version: 0,
            ttl: 0,
            tos: 0,
            proto: 0,
            tcp_flags: 0,
            ip_opt_len: 0,
            tcp_opt_len: 0,
            opt_copied: 0,
            _pad2: 0,
            options: [0; FEATURE_OPTION_BYTES],
            payload: [0; FEATURE_PAYLOAD_BYTES],
        }
    }
}

/// One FEATURES record: the source as SOURCES keys it, and what its packet says.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureEvent {
    pub key: SourceKey,
    pub raw: FeaturesRaw,
}
const _: () = assert!(size_of::<FeatureEvent>() == 112);

/// CAPTURE: a BPF ring buffer of `CaptureEvent`s, read by one capture at a time (`portguard
/// capture`, or the daemon's `[capture]`), which holds the guard's capture lock.
pub const CAPTURE_RING_BYTES: u32 = 1024 * 1024;
/// Bytes of each packet the program copies: headers and then some. `--snaplen` cuts further.
pub const CAPTURE_SNAP: usize = 256;

/// `CaptureEvent::why`: what the packet was to the program.
pub const CAPTURED_MATCHED: u8 = 1;
/// Matched, and passed because its source is allowlisted.
pub const CAPTURED_ALLOWED: u8 = 2;
/// Its ports could not be read (see `Totals::unjudged`).
pub const CAPTURED_UNJUDGED: u8 = 3;

/// One CAPTURE record: a packet as the program saw it, with its verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureEvent {
    /// The source as SOURCES keys it.
    pub key: SourceKey,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// The frame's length on the wire, and the bytes of it in `data`.
    pub len: u32,
    pub caplen: u32,
    /// The XDP action the program returned for it (XDP_DROP 1, XDP_PASS 2).
    pub verdict: u8,
    /// `CAPTURED_*`.
    pub why: u8,
    pub _pad: [u8; 6],
    pub data: [u8; CAPTURE_SNAP],
}
const _: () = assert!(size_of::<CaptureEvent>() == 48 + CAPTURE_SNAP);

/// CAPTURE_PACE\[0\], one per CPU: the capture's rate limit, per admission slice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapturePace {
    pub slice: u64,
    pub used: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CapturePace>() == 16);

/// FINGERPRINTS: what the owner made of each source's feature records, so that every portguard
/// process (`stats`, `top`, `capture`) shows the same label. Written and read by userspace
/// only; SOURCES keys. Not preallocated: it costs memory only for the sources it holds, at most
/// this many (under a flood, the one-packet sources SOURCES forgets are forgotten here too).
pub const FINGERPRINT_CAPACITY: u32 = 16_384;

/// `Fingerprint::class`.
pub const CLASS_UNKNOWN: u8 = 0;
pub const CLASS_SCANNER: u8 = 1;
pub const CLASS_WORM: u8 = 2;
pub const CLASS_OS: u8 = 3;
pub const CLASS_MISC: u8 = 4;

/// FINGERPRINTS value. Texts are UTF-8, NUL-padded, cut (at a character) to their field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Packets classified, and how many of them agreed with `label`.
    pub packets: u32,
    pub agreeing: u32,
    /// `CLASS_*`.
    pub class: u8,
    /// The TTL (hop limit) of the latest packet, and the hops it suggests it came (p0f's
    /// guess: from the next initial TTL of 32, 64, 128 or 255).
    pub ttl: u8,
    pub distance: u8,
    pub _pad: u8,
    /// "masscan", "OS stack", "unknown", ...
    pub label: [u8; 24],
    /// For an OS stack: which one ("Linux 2.2.x-3.x").
    pub os: [u8; 40],
    /// The p0f signature of the latest TCP SYN; empty for UDP-only sources.
    pub signature: [u8; 64],
    /// Why, in one sentence.
    pub evidence: [u8; 128],
}
const _: () = assert!(size_of::<Fingerprint>() == 268);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint {
            packets: 0,
            agreeing: 0,
            class: 0,
            ttl: 0,
            distance: 0,
            _pad: 0,
            label: [0; 24],
            os: [0; 40],
            signature: [0; 64],
            evidence: [0; 128],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain only integers and have no padding that is
    // not an explicit field.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for Totals {}
    unsafe impl aya::Pod for Admission {}
    unsafe impl aya::Pod for SketchBlock {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for SourceSlot {}
    unsafe impl aya::Pod for FragmentKey {}
    unsafe impl aya::Pod for CapturePace {}
    unsafe impl aya::Pod for Fingerprint {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_paces_a_full_turnover() {
        assert_eq!(admit_per_slice(65_536, 2), 274);
        assert_eq!(admit_per_slice(65_536, 1), 549);
        assert_eq!(admit_per_slice(16, 64), 1);
        assert_eq!(admit_per_slice(65_536, 0), 549);
        // Whatever the CPU count, all CPUs together refill the table in ~TURNOVER_SECONDS.
        let per_sec =
            admit_per_slice(65_536, 8) as u64 * 8 * 1_000_000_000 / (1 << ADMISSION_SLICE_SHIFT);
        assert!((7_500..=8_300).contains(&per_sec), "{per_sec}");
    }

    #[test]
    fn totals_round_trip_through_an_array() {
        let t = Totals { seen: 1, admitted: 11, malformed: 7, ..Totals::default() };
        let a = t.to_array();
        assert_eq!((a[0], a[6], a[10]), (1, 7, 11));
        assert_eq!(Totals::NAMES[6], "malformed");
        assert_eq!(Totals::from_array(a), t);
    }

    #[test]
    fn v4_keys_are_mapped_addresses_of_family_4() {
        let k = SourceKey::v4([198, 18, 0, 1], 32);
        assert_eq!(k.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1]);
        assert_eq!((k.family, k.prefix), (4, 32));
        // The IPv6 source ::ffff:198.18.0.1 is another key.
        let w = [
            u64::from_ne_bytes(k.addr[..8].try_into().unwrap()),
            u64::from_ne_bytes(k.addr[8..].try_into().unwrap()),
        ];
        assert_ne!(SourceKey::v6(w, 128), k);
    }
}
