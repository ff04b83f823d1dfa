//! Upkeep of the per-source table: nothing in the kernel evicts (see SOURCES in
//! portguard-ebpf/src/maps.rs), so the owner of a guard makes room when the table fills, by
//! forgetting the sources least worth keeping.

use portguard_common::{EVICT_ABOVE_PERCENT, EVICT_DOWN_TO_PERCENT};

use crate::{counters::Source, maps::Maps, wire};

/// What a table of `capacity` sources costs the kernel on a machine with `cpus` possible CPUs,
/// in bytes, as the kernel accounts it (the `memlock` of the map's fdinfo;
/// htab_map_mem_usage() in kernel/bpf/hashtab.c, for a preallocated hash): per entry, an
/// element (a 48-byte header, the 24-byte key and the 48-byte value), and one spare element per
/// CPU for updates in place; per bucket, 16 bytes, with the buckets rounded up to a power of
/// two; and the map itself. About capacity × 136 bytes for a power of two, whatever the CPU
/// count. The one place this is written down: README.md and packaging/portguard.toml quote
/// it, and a test holds it to the kernel's figure.
pub fn memory(capacity: u32, cpus: u32) -> u64 {
    const HEADER: u64 = 48;
    const BUCKET: u64 = 16;
    let element = HEADER
        + (size_of::<portguard_common::SourceKey>() as u64).next_multiple_of(8)
        + (size_of::<portguard_common::SourceSlot>() as u64).next_multiple_of(8);
    let (n, cpus) = (u64::from(capacity), u64::from(cpus));
    let buckets = n.next_power_of_two();
    (n + cpus) * element + buckets * BUCKET + MAP_OVERHEAD + LOCKS_PER_CPU * cpus
}

/// The map's own structure (struct bpf_htab: 832 bytes on Linux 6.18 x86-64; it varies a
/// little with the kernel's configuration).
const MAP_OVERHEAD: u64 = 832;
/// Its bucket locks: HASHTAB_MAP_LOCK_COUNT ints per CPU.
const LOCKS_PER_CPU: u64 = 8 * 4;

/// The number of possible CPUs (/sys/devices/system/cpu/possible, e.g. "0-63"): what per-CPU
/// maps are sized by, which can be more than are online.
pub fn possible_cpus() -> Option<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()? - a.parse::<u32>().ok()? + 1,
            None => 1,
        };
    }
    Some(n)
}

/// The sources to forget from a table of `capacity` holding `sources`, at `now_ns`
/// (CLOCK_MONOTONIC): none until it is fuller than EVICT_ABOVE_PERCENT, then down to
/// EVICT_DOWN_TO_PERCENT, those least likely to matter first:
/// 1. sources of one packet (a spoofed flood is made of them), seen least recently first;
/// 2. sources that repeated but have gone quiet: silent for longer than three of their own
///    mean gaps and than QUIET_NS, seen least recently first;
/// 3. sources still active, the most recently admitted first: a flood from sources that repeat
///    churns among its own, and what the table knew before it (a slow prober, one packet in
///    10 s) stays.
///
/// A source that repeated is never forgotten while a one-packet source remains.
pub fn to_forget(sources: &[Source], capacity: u32, now_ns: u64) -> Vec<&Source> {
    let cap = capacity as usize;
    if sources.len() * 100 <= cap * EVICT_ABOVE_PERCENT as usize {
        return Vec::new();
    }
    let keep = cap * EVICT_DOWN_TO_PERCENT as usize / 100;
    let mut order: Vec<&Source> = sources.iter().collect();
    order.sort_by_key(|s| {
        let st = &s.stats;
        match (st.packets > 1, quiet(s, now_ns)) {
            (false, _) => (0, st.last_seen_ns),
            (true, true) => (1, st.last_seen_ns),
            (true, false) => (2, u64::MAX - st.first_seen_ns),
        }
    });
    order.truncate(sources.len().saturating_sub(keep));
    order
}

/// Whether a source that repeated has gone quiet: silent for more than three of its mean gaps
/// between packets, and for more than QUIET_NS.
fn quiet(s: &Source, now_ns: u64) -> bool {
    let st = &s.stats;
    let gap =
        st.last_seen_ns.saturating_sub(st.first_seen_ns) / st.packets.saturating_sub(1).max(1);
    now_ns.saturating_sub(st.last_seen_ns) > (3 * gap).max(QUIET_NS)
}

/// Silence shorter than this never makes a source quiet: the table's clock, the daemon's
/// reading interval and a prober's jitter are all well within it.
const QUIET_NS: u64 = 30_000_000_000;

/// Forgets what `to_forget` picks. Returns how many were removed (one already gone, because
/// another portguard made room too, is not counted).
pub fn forget(maps: &mut Maps, sources: &[Source], capacity: u32) -> usize {
    to_forget(sources, capacity, crate::clock::monotonic_ns())
        .into_iter()
        .filter(|s| maps.remove_source(&wire::source_key(s.addr)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::SourceStats;

    fn source(n: u32, packets: u64, last_seen_ns: u64) -> Source {
        Source {
            addr: crate::counters::SourceAddr::host(
                std::net::Ipv4Addr::from(0xc612_0000 + n).into(),
            ),
            stats: SourceStats { packets, last_seen_ns, ..SourceStats::default() },
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn forgets_the_least_recent_down_to_the_low_mark() {
        let sources: Vec<Source> = (0..95).map(|n| source(n, 1, 1000 - n as u64)).collect();
        let gone = to_forget(&sources, 100, 2000);
        assert_eq!(gone.len(), 20);
        assert!(gone.iter().all(|s| s.stats.last_seen_ns <= 1000 - 75));
        assert!(to_forget(&sources[..90], 100, 2000).is_empty());
    }

    #[test]
    fn one_packet_sources_go_before_any_that_repeated() {
        // Ten slow probers, seen long ago with a few packets each, and 85 fresh one-packet
        // sources: the probers all stay.
        let mut sources: Vec<Source> = (0..10).map(|n| source(n, 3, n as u64)).collect();
        sources.extend((10..95).map(|n| source(n, 1, 1000 + n as u64)));
        let gone = to_forget(&sources, 100, 2000);
        assert_eq!(gone.len(), 20);
        assert!(gone.iter().all(|s| s.stats.packets == 1));
        assert_eq!(gone[0].stats.last_seen_ns, 1010, "the oldest one-packet source first");
    }

    #[test]
    fn sources_that_repeat_go_quiet_ones_first_then_the_newest() {
        let now = 1000 * S;
        let with = |n, packets, first: u64, last: u64| {
            let mut s = source(n, packets, last);
            s.stats.first_seen_ns = first;
            s
        };
        // A slow prober known before the flood: 5 packets 10 s apart, the last 9 s ago.
        let mut sources = vec![with(0, 5, 951 * S, 991 * S)];
        // A scanner that stopped long ago.
        sources.push(with(1, 40, 100 * S, 140 * S));
        // 93 flood sources that repeat every second, admitted during the flood (after 990 s).
        sources.extend((2..95).map(|n| with(n, 10, 990 * S + n as u64, 999 * S)));
        let gone = to_forget(&sources, 100, now);
        assert_eq!(gone.len(), 20);
        assert_eq!(gone[0].addr, sources[1].addr, "the quiet scanner first");
        assert!(gone[1..].iter().all(|s| s.stats.first_seen_ns > 990 * S), "the newest next");
        assert!(!gone.iter().any(|s| s.addr == sources[0].addr), "the slow prober stays");
        assert_eq!(gone[1].stats.first_seen_ns, 990 * S + 94, "the newest first");
    }
}
