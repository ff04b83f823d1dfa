//! Upkeep of the per-source table: nothing in the kernel evicts (see SOURCES in
//! portguard-ebpf/src/maps.rs), so the owner of a guard makes room when the table fills, by
//! forgetting the sources least worth keeping.

use portguard_common::{EVICT_ABOVE_PERCENT, EVICT_DOWN_TO_PERCENT};

use crate::{counters::Source, maps::Maps, wire};

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
