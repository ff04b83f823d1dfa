//! The XDP program stamps with `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, coarse).

use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC now, in ns: the program's time base.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long ago a program timestamp was.
pub fn age(stamp_ns: u64, now_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(stamp_ns))
}

/// The wall-clock time of a program timestamp.
pub fn wall(stamp_ns: u64, now_ns: u64) -> SystemTime {
    SystemTime::now() - age(stamp_ns, now_ns)
}

/// "3s", "4m12s", "2h05m", "3d04h": compact ages for tables.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ages() {
        assert_eq!(short(Duration::from_secs(3)), "3s");
        assert_eq!(short(Duration::from_secs(252)), "4m12s");
        assert_eq!(short(Duration::from_secs(7500)), "2h05m");
        assert_eq!(short(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
        assert_eq!(age(10, 5), Duration::ZERO);
    }
}

/// Whole seconds since the Unix epoch: JSON's `_unix` fields, beside the RFC 3339 string of
/// the same instant.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 in UTC, to the second: "2026-11-26T06:40:12Z". The one format for times, for
/// people and machines alike: the logs use it, and the zone is always shown.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod time_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_675_212)),
            "2026-11-26T06:40:12Z"
        );
        assert_eq!(
            super::rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
