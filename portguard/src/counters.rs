//! Counter snapshots: TOTALS summed over CPUs, a source's per-CPU slots merged, the rates between
//! two readings, and the jiffy clock that turns the program's timestamps into monotonic time.

use std::{net::IpAddr, time::Duration};

use portguard_common::{SourceSlot, Totals};

use crate::wire::{Directions, Protocols};

/// TOTALS of every CPU added up.
pub fn sum(cpus: impl IntoIterator<Item = Totals>) -> Totals {
    let mut acc = [0u64; Totals::NAMES.len()];
    for t in cpus {
        for (a, v) in acc.iter_mut().zip(t.to_array()) {
            *a += v;
        }
    }
    Totals::from_array(acc)
}

/// What moved between an `earlier` reading and `later`.
pub fn since(later: &Totals, earlier: &Totals) -> Totals {
    let (a, b) = (later.to_array(), earlier.to_array());
    Totals::from_array(std::array::from_fn(|i| a[i].wrapping_sub(b[i])))
}

/// Per-second rates between two snapshots of the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub seen: f64,
    pub matched: f64,
    pub dropped: f64,
}

pub fn rates(prev: &Totals, cur: &Totals, dt: Duration) -> Rates {
    let s = dt.as_secs_f64().max(1e-9);
    let r = |a: u64, b: u64| b.saturating_sub(a) as f64 / s;
    Rates {
        seen: r(prev.seen, cur.seen),
        matched: r(prev.matched, cur.matched),
        dropped: r(prev.dropped, cur.dropped),
    }
}

/// One source's merged counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub addr: SourceAddr,
    pub stats: SourceStats,
}

/// A source as the table keys it: an address, or a prefix when sources are counted per prefix
/// (`--v6-prefix 64`). An IPv6 source stays IPv6, also in `::ffff:0:0/96`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceAddr {
    /// The address, the bits past `prefix` cleared.
    pub ip: IpAddr,
    pub prefix: u8,
}

impl SourceAddr {
    /// One address.
    pub fn host(ip: IpAddr) -> SourceAddr {
        SourceAddr { ip, prefix: if ip.is_ipv4() { 32 } else { 128 } }
    }

    /// One address, not a wider prefix.
    pub fn is_host(&self) -> bool {
        self.prefix == if self.ip.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `ip` is in this prefix (of the same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        crate::settings::Cidr { addr: self.ip, len: self.prefix }.contains(ip)
    }
}

/// "198.18.0.2", or "2001:db8:0:2::/64" for a wider prefix.
impl std::fmt::Display for SourceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.ip)
        } else {
            write!(f, "{}/{}", self.ip, self.prefix)
        }
    }
}

/// The form Display writes: an address, or a prefix ("2001:db8:0:2::/64").
impl std::str::FromStr for SourceAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<SourceAddr, String> {
        let bad = || format!("'{s}' is not an address or a prefix");
        let (a, len) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
        let ip: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(bad)?,
        };
        // Display writes the prefix's first address: anything else is not one of ours.
        if crate::settings::mask(ip, prefix) != ip {
            return Err(format!("'{s}' has bits set past /{prefix}"));
        }
        Ok(SourceAddr { ip, prefix })
    }
}

/// A host source equals its address.
impl PartialEq<IpAddr> for SourceAddr {
    fn eq(&self, ip: &IpAddr) -> bool {
        self.is_host() && self.ip == *ip
    }
}

/// Converts the kernel's jiffies into CLOCK_MONOTONIC nanoseconds, from one simultaneous
/// (jiffies, ns) reading. The tick rate is not exported anywhere a program can read, but
/// jiffies start at boot from `INITIAL_JIFFIES` = (u32)(-300 × HZ) while the monotonic clock
/// starts near 0, so only the true HZ makes the reading consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffyClock {
    pub hz: u64,
    pub jiffies: u64,
    pub ns: u64,
}

impl JiffyClock {
    /// Every CONFIG_HZ Linux offers.
    const CANDIDATES: [u64; 10] = [24, 48, 100, 250, 256, 300, 512, 864, 1000, 1024];

    pub fn fit(jiffies: u64, ns: u64) -> JiffyClock {
        let mut best = (u64::MAX, 250);
        for hz in Self::CANDIDATES {
            let initial = (300u64 * hz).wrapping_neg() & 0xffff_ffff;
            let uptime_ns =
                (jiffies.wrapping_sub(initial) as u128 * 1_000_000_000 / hz as u128) as u64;
            let err = uptime_ns.abs_diff(ns);
            if err < best.0 {
                best = (err, hz);
            }
        }
        JiffyClock { hz: best.1, jiffies, ns }
    }

    /// The monotonic time of `j` (0 stays 0: never seen).
    pub fn ns(&self, j: u64) -> u64 {
        if j == 0 {
            return 0;
        }
        let d = j as i128 - self.jiffies as i128;
        (self.ns as i128 + d * 1_000_000_000 / self.hz as i128).max(1) as u64
    }
}

/// One source's counters with its CPUs merged and its times in CLOCK_MONOTONIC nanoseconds:
/// what userspace works with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_syns: u32,
    pub last_port: u16,
    pub directions: Directions,
    pub protocols: Protocols,
}

impl SourceStats {
    /// A source's statistics from its SOURCES slot: the slot's own stamp (jiffies and
    /// CLOCK_MONOTONIC at admission) converts its jiffies.
    pub fn from_slot(s: &SourceSlot) -> SourceStats {
        if s.packets == 0 {
            return SourceStats::default();
        }
        let clock = JiffyClock::fit(s.first_jiffies, s.admitted_ns);
        SourceStats {
            packets: s.packets,
            bytes: s.bytes,
            first_seen_ns: clock.ns(s.first_jiffies),
            last_seen_ns: clock.ns(s.last_jiffies),
            tcp_syns: s.tcp_syns,
            last_port: s.last_port,
            directions: Directions(s.directions),
            protocols: Protocols(s.protocols),
        }
    }
}

#[cfg(test)]
mod tests {
    use portguard_common::{DIR_DST, DIR_SRC, PROTO_TCP, PROTO_UDP};

    use super::*;

    #[test]
    fn since_undoes_sum() {
        let a = Totals { seen: 5, dropped: 2, malformed: 1, ..Totals::default() };
        let b = sum([a, Totals { seen: 3, matched: 1, ..Totals::default() }]);
        assert_eq!(since(&b, &a), Totals { seen: 3, matched: 1, ..Totals::default() });
    }

    #[test]
    fn jiffies_fit_the_tick_rate() {
        // Read off this machine (HZ=250): /proc/timer_list "jiffies" and "now at".
        let c = JiffyClock::fit(4_295_313_110, 1_683_461_283_565);
        assert_eq!(c.hz, 250);
        assert_eq!(c.ns(4_295_313_110 + 250), 1_684_461_283_565);
        for hz in [100u64, 300, 1000] {
            let initial = (300 * hz).wrapping_neg() & 0xffff_ffff;
            let uptime_s = 86_400 * 3;
            let c = JiffyClock::fit(initial + uptime_s * hz, uptime_s * 1_000_000_000 + 123);
            assert_eq!(c.hz, hz);
        }
        assert_eq!(c.ns(0), 0);
    }

    #[test]
    fn a_slot_reads_with_its_own_clock() {
        // Jiffies at HZ=250 on a machine up for about 1,000 s, admitted at that moment.
        let initial = u64::from(u32::MAX) - 300 * 250 + 1;
        let first = initial + 1_000 * 250;
        let s = SourceSlot {
            packets: 3,
            bytes: 180,
            admitted_ns: 1_000_000_000_123,
            first_jiffies: first,
            last_jiffies: first + 250,
            tcp_syns: 2,
            last_port: 2746,
            directions: DIR_DST | DIR_SRC,
            protocols: PROTO_TCP | PROTO_UDP,
        };
        let m = SourceStats::from_slot(&s);
        assert_eq!((m.packets, m.bytes, m.tcp_syns, m.last_port), (3, 180, 2, 2746));
        assert_eq!(m.last_seen_ns - m.first_seen_ns, 1_000_000_000, "250 jiffies at HZ=250");
        assert!(m.first_seen_ns.abs_diff(1_000_000_000_123) < 4_000_000, "{m:?}");
        assert_eq!(m.directions, Directions(DIR_DST | DIR_SRC));
        assert_eq!(m.protocols, Protocols(PROTO_TCP | PROTO_UDP));
        assert_eq!(SourceStats::from_slot(&SourceSlot::default()), SourceStats::default());
    }
}
