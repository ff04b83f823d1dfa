//! A source's fingerprint as every portguard process shows it: what the owner made of the
//! source's packets (an [`evidence::Summary`](super::Summary)), published in FINGERPRINTS so
//! that `stats`, `top`, `capture` and the metrics all say the same (`wire.rs` converts).

use super::{Class, Summary, p0f};

/// What is shown of a source's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// "masscan", "OS stack", "unknown", ...
    pub label: String,
    /// None for unknown.
    pub class: Option<Class>,
    /// For an OS stack: which one.
    pub os: Option<String>,
    /// Why, in one sentence (cut to what FINGERPRINTS holds).
    pub evidence: String,
    /// The p0f signature of the latest TCP SYN; None for a source that sent only UDP.
    pub signature: Option<String>,
    /// The TTL (hop limit) of the latest packet classified, and the hops that suggests.
    pub ttl: u8,
    pub distance: u8,
    /// Packets classified, and how many of them agreed with `label`.
    pub agreeing: u32,
    pub packets: u32,
}

impl Label {
    /// The label of a source whose latest classified packet had this TTL.
    pub fn of(s: &Summary, ttl: u8) -> Label {
        let n = |v: u64| v.min(u32::MAX as u64) as u32;
        Label {
            label: s.label.clone(),
            class: s.class,
            os: s.os.clone(),
            evidence: s.evidence.clone(),
            signature: s.signature.clone(),
            ttl,
            distance: p0f::guess_dist(ttl),
            agreeing: n(s.agreeing),
            packets: n(s.packets),
        }
    }

    /// "masscan", "OS stack (Linux)": the label with its OS.
    pub fn tool(&self) -> String {
        match &self.os {
            Some(os) => format!("{} ({os})", self.label),
            None => self.label.clone(),
        }
    }

    /// The evidence's first clause, without its closing remark in parentheses: "IP ID 54321"
    /// for zmap's "IP ID 54321 (zmap's constant), window 65535, ...".
    pub fn short_evidence(&self) -> String {
        let first = self.evidence.split(", ").next().unwrap_or("").trim();
        let first = first.split("; p0f").next().unwrap_or(first);
        match first.rfind(" (") {
            Some(i) if first.ends_with(')') && i > 0 => first[..i].to_string(),
            _ => first.to_string(),
        }
    }

    /// How the new-source line names it: "zmap (IP ID 54321)", "OS stack (Linux; TTL 64)".
    pub fn phrase(&self) -> String {
        let why = self.short_evidence();
        match (&self.os, why.is_empty()) {
            (Some(os), false) => format!("{} ({os}; {why})", self.label),
            (Some(os), true) => format!("{} ({os})", self.label),
            (None, false) => format!("{} ({why})", self.label),
            (None, true) => self.label.clone(),
        }
    }

    /// "3 of 3 agreed".
    pub fn agreement(&self) -> String {
        format!("{} of {} agreed", self.agreeing, self.packets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(l: &str, os: Option<&str>, evidence: &str) -> Label {
        Label {
            label: l.into(),
            class: None,
            os: os.map(str::to_string),
            evidence: evidence.into(),
            signature: None,
            ttl: 255,
            distance: 0,
            agreeing: 1,
            packets: 1,
        }
    }

    #[test]
    fn phrases_name_the_tool_and_its_tell() {
        let z = label(
            "zmap",
            None,
            "IP ID 54321 (zmap's constant), window 65535, no TCP options, TTL 255",
        );
        assert_eq!(z.phrase(), "zmap (IP ID 54321)");
        let m = label(
            "masscan",
            None,
            "IP ID 19830 == (dst ^ dport ^ seq) & 0xffff (masscan's SYN cookie), window 1024",
        );
        assert_eq!(m.phrase(), "masscan (IP ID 19830 == (dst ^ dport ^ seq) & 0xffff)");
        let l = label("OS stack", Some("Linux"), "TTL 64, options mss,sok,ts,nop,ws; p0f: ???");
        assert_eq!(l.phrase(), "OS stack (Linux; TTL 64)");
        assert_eq!(l.tool(), "OS stack (Linux)");
        assert_eq!(label("unknown", None, "").phrase(), "unknown");
    }
}
