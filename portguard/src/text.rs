//! Small helpers for text meant for people: counted nouns, and cutting a string to a width
//! with a visible mark rather than letting a terminal wrap it or silently dropping its end.

/// "1 packet", "2 packets", "0 packets".
pub fn plural(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// At most `width` characters: cut at the end, the cut marked with "…".
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// At most `width` characters, cut in the middle ("2001:db8:…:4:449"): an address keeps its
/// network and its host part, the two ends that tell one source from another.
pub fn fit_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width < 3 {
        return fit(s, width);
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let chars: Vec<char> = s.chars().collect();
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[n - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural(1u64, "packet"), "1 packet");
        assert_eq!(plural(0u64, "packet"), "0 packets");
        assert_eq!(plural(268u32, "source"), "268 sources");
    }

    #[test]
    fn cuts_are_marked() {
        assert_eq!(fit("probing 2745", 20), "probing 2745");
        assert_eq!(fit("probing 2745", 8), "probing…");
        assert_eq!(fit_middle("2001:db8:7:0:1234:5678:9abc:4", 15), "2001:db…:9abc:4");
        assert_eq!(fit_middle("2001:db8:7:0:1234:5678:9abc:4", 15).chars().count(), 15);
        assert_eq!(fit_middle("198.18.0.4", 15), "198.18.0.4");
    }
}
