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
