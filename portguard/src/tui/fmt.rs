//! Compact numbers: table columns are a few characters wide even at 80 columns.

/// "999", "12.3K", "4.5M", "1.2G", "3.4T": counts that keep to 6 characters.
pub fn count(n: u64) -> String {
    if n < 100_000 {
        return n.to_string();
    }
    scaled(n as f64, "")
}

/// Bytes the same way, with a B for small amounts: "512B", "1.2K", "34M".
pub fn bytes(n: u64) -> String {
    if n < 1_000 {
        return format!("{n}B");
    }
    scaled(n as f64, "")
}

fn scaled(mut v: f64, suffix: &str) -> String {
    for unit in ["", "K", "M", "G", "T", "P"] {
        if v < 1_000.0 {
            // One decimal while it fits in the column, none after.
            return if v < 100.0 && !unit.is_empty() {
                format!("{v:.1}{unit}{suffix}")
            } else {
                format!("{v:.0}{unit}{suffix}")
            };
        }
        v /= 1_000.0;
    }
    format!("{v:.0}E{suffix}")
}

/// "-" when unknown (no previous refresh to compare with), else "0.0/s", "12/s", "3.4K/s".
pub fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_string(),
        Some(r) if r < 10.0 => format!("{r:.1}/s"),
        Some(r) if r < 1_000.0 => format!("{r:.0}/s"),
        Some(r) => scaled(r, "/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact() {
        assert_eq!(count(31), "31");
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(123_456), "123K");
        assert_eq!(count(4_560_000), "4.6M");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1_234), "1.2K");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0.0/s");
        assert_eq!(rate(Some(31.2)), "31/s");
        assert_eq!(rate(Some(3_400.0)), "3.4K/s");
    }
}
