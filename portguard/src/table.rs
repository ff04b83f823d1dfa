//! Upkeep of the per-source table: nothing in the kernel evicts (see SOURCES in
//! portguard-ebpf/src/maps.rs), so the owner of a guard makes room when the table fills, by
//! forgetting the sources least worth keeping.

use portguard_common::{EVICT_ABOVE_PERCENT, EVICT_DOWN_TO_PERCENT};

use crate::{counters::Source, maps::Maps, wire};

/// What a table of `capacity` sources costs the kernel on a machine with `cpus` possible CPUs,
/// in bytes, as the kernel accounts it (the `memlock` of the map's fdinfo;
/// htab_map_mem_usage() in kernel/bpf/hashtab.c, for a preallocated per-CPU hash):
/// per entry, its 48-byte value once per CPU plus an element (a 48-byte header, the 16-byte key
/// and the pointer to the per-CPU values); per bucket, 16 bytes, with the buckets rounded up to
/// a power of two; and the map itself. About capacity × (88 + 48 × CPUs) for a power of two.
/// The one place this is written down: README.md and packaging/portguard.toml quote it, and a
/// test holds it to the kernel's figure.
pub fn memory(capacity: u32, cpus: u32) -> u64 {
    const ELEMENT: u64 = 48 + 16 + 8;
    const BUCKET: u64 = 16;
    let value = (size_of::<portguard_common::SourceSlot>() as u64).next_multiple_of(8);
    let (n, cpus) = (u64::from(capacity), u64::from(cpus));
    let buckets = n.next_power_of_two();
    n * (ELEMENT + value * cpus) + buckets * BUCKET + MAP_OVERHEAD + LOCKS_PER_CPU * cpus
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

/// The sources to forget from a table of `capacity` holding `sources`: none until it is fuller
/// than EVICT_ABOVE_PERCENT, then the sources seen least recently, down to
/// EVICT_DOWN_TO_PERCENT.
pub fn to_forget(sources: &[Source], capacity: u32) -> Vec<&Source> {
    let cap = capacity as usize;
    if sources.len() * 100 <= cap * EVICT_ABOVE_PERCENT as usize {
        return Vec::new();
    }
    let keep = cap * EVICT_DOWN_TO_PERCENT as usize / 100;
    let mut by_age: Vec<&Source> = sources.iter().collect();
    by_age.sort_by_key(|s| s.stats.last_seen_ns);
    by_age.truncate(sources.len().saturating_sub(keep));
    by_age
}

/// Forgets what `to_forget` picks. Returns how many were removed (one already gone, because
/// another portguard made room too, is not counted).
pub fn forget(maps: &mut Maps, sources: &[Source], capacity: u32) -> usize {
    to_forget(sources, capacity)
        .into_iter()
        .filter(|s| maps.remove_source(&wire::source_key(s.addr)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::SourceStats;

    fn source(n: u32, last_seen_ns: u64) -> Source {
        Source {
            addr: std::net::Ipv4Addr::from(0xc612_0000 + n).into(),
            stats: SourceStats { packets: 1, last_seen_ns, ..SourceStats::default() },
        }
    }

    #[test]
    fn forgets_the_least_recent_down_to_the_low_mark() {
        let sources: Vec<Source> = (0..95).map(|n| source(n, 1000 - n as u64)).collect();
        let gone = to_forget(&sources, 100);
        assert_eq!(gone.len(), 20);
        assert!(gone.iter().all(|s| s.stats.last_seen_ns <= 1000 - 75));
        assert!(to_forget(&sources[..90], 100).is_empty());
    }
}
