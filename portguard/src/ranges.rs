//! The accepted range of every numeric value a verb or the config file takes that is not simply
//! a type's own range, in one place: the flags' parsers, the config file and the `--help` texts
//! all use these, so `run`, `stats` and `top` never disagree about what an interval may be.

/// Seconds between two reads of the counters (`run`, `stats`, `top`, `[output] interval`).
/// Below 50 ms the reads themselves would be most of the work; above an hour nothing is live.
pub const INTERVAL: (f64, f64) = (0.05, 3600.0);

/// The capacity of a per-source table (`run --sources`, `sources` in the config file): the
/// bounds the kernel/user contract sets (portguard-common).
pub const SOURCES: (u32, u32) =
    (portguard_common::MIN_SOURCE_CAPACITY, portguard_common::MAX_SOURCE_CAPACITY);

/// A table capacity in `SOURCES`.
pub fn sources(v: u32) -> Result<u32, String> {
    let (lo, hi) = SOURCES;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v}: the source table holds {lo} to {hi} entries"));
    }
    Ok(v)
}

/// A guarded port: 0 is no port.
pub fn port(v: u16) -> Result<u16, String> {
    if v == 0 {
        return Err("port 0 is not a valid port (1..=65535)".into());
    }
    Ok(v)
}

/// A number of seconds in `INTERVAL`.
pub fn interval(v: f64) -> Result<f64, String> {
    let (lo, hi) = INTERVAL;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v} is not between {lo} and {hi} seconds"));
    }
    Ok(v)
}

/// The longest `--duration`: a year (and a sane bound for a timer).
pub const MAX_DURATION: f64 = 365.0 * 86_400.0;

/// A duration in seconds: more than 0 (a run of no time would still guard for one interval,
/// which nobody asking for 0 means), and at most `MAX_DURATION`.
pub fn duration(v: f64) -> Result<f64, String> {
    if !(v > 0.0 && v <= MAX_DURATION) {
        return Err(format!(
            "{v} is not a positive number of seconds (at most {MAX_DURATION}, a year)"
        ));
    }
    Ok(v)
}

/// Sources are counted per prefix of this length: IPv4 /8 to /32, IPv6 /16 to /128 (wider
/// would lump unrelated networks into one row).
pub const V4_PREFIX: (u8, u8) = (8, 32);
pub const V6_PREFIX: (u8, u8) = (16, 128);

/// A source prefix length for IPv4 (`v6`: false) or IPv6.
pub fn prefix(v: u8, v6: bool) -> Result<u8, String> {
    let (lo, hi) = if v6 { V6_PREFIX } else { V4_PREFIX };
    if !(lo..=hi).contains(&v) {
        let family = if v6 { "IPv6" } else { "IPv4" };
        return Err(format!("/{v}: {family} sources are counted per /{lo} to /{hi}"));
    }
    Ok(v)
}

/// Bytes a capture keeps of each packet (`capture --snaplen`, `[capture] snaplen`): enough for
/// the Ethernet header, at most what the program copies (portguard-common's CAPTURE_SNAP).
pub const SNAPLEN: (u32, u32) = (14, portguard_common::CAPTURE_SNAP as u32);

pub fn snaplen(v: u32) -> Result<u32, String> {
    let (lo, hi) = SNAPLEN;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v}: a capture keeps {lo} to {hi} bytes of each packet"));
    }
    Ok(v)
}

/// Packets a capture keeps of each new source (`--per-source`, `[capture] per_source`): the
/// program counts them in a 16-bit field.
pub fn per_source(v: u16) -> Result<u16, String> {
    if v == 0 {
        return Err("a capture keeps at least 1 packet of each source (or use --all)".into());
    }
    Ok(v)
}

/// Captured packets per second (`--rate`, `[capture] rate`): a flood must not swamp the disk.
pub const CAPTURE_RATE: (u32, u32) = (1, 100_000);

pub fn capture_rate(v: u32) -> Result<u32, String> {
    let (lo, hi) = CAPTURE_RATE;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v}: a capture takes {lo} to {hi} packets per second"));
    }
    Ok(v)
}

/// The size at which the daemon's capture file rotates, MiB.
pub const CAPTURE_SIZE_MIB: (u64, u64) = (1, 65_536);

pub fn capture_size_mib(v: u64) -> Result<u64, String> {
    let (lo, hi) = CAPTURE_SIZE_MIB;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v}: a capture file rotates at {lo} to {hi} MiB"));
    }
    Ok(v)
}

/// clap's parsers for the flags: a number, then its range.
pub mod parse {
    fn seconds(s: &str) -> Result<f64, String> {
        s.trim().parse::<f64>().map_err(|_| format!("'{s}' is not a number of seconds"))
    }

    pub fn interval(s: &str) -> Result<f64, String> {
        super::interval(seconds(s)?)
    }

    pub fn duration(s: &str) -> Result<f64, String> {
        super::duration(seconds(s)?)
    }

    fn prefix(s: &str, v6: bool) -> Result<u8, String> {
        let n = s.trim().trim_start_matches('/');
        super::prefix(n.parse().map_err(|_| format!("'{s}' is not a prefix length"))?, v6)
    }

    pub fn v4_prefix(s: &str) -> Result<u8, String> {
        prefix(s, false)
    }

    pub fn v6_prefix(s: &str) -> Result<u8, String> {
        prefix(s, true)
    }

    pub fn sources(s: &str) -> Result<u32, String> {
        super::sources(s.trim().parse().map_err(|_| format!("'{s}' is not a number of sources"))?)
    }

    fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.trim().parse().map_err(|_| format!("'{s}' is not a number"))
    }

    pub fn snaplen(s: &str) -> Result<u32, String> {
        super::snaplen(number(s)?)
    }

    pub fn per_source(s: &str) -> Result<u16, String> {
        super::per_source(number(s)?)
    }

    pub fn capture_rate(s: &str) -> Result<u32, String> {
        super::capture_rate(number(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(parse::interval("0").is_err());
        assert!(parse::interval("0.05").is_ok());
        assert!(parse::interval("3600").is_ok());
        assert!(parse::interval("3600.5").is_err());
        assert!(parse::interval("NaN").is_err());
        assert!(parse::interval("fast").unwrap_err().contains("not a number"));
        assert!(parse::duration("0").is_err());
        assert!(parse::duration("inf").is_err());
        assert_eq!(parse::duration("0.5"), Ok(0.5));
    }
}
