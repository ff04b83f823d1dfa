//! Per-source evidence: a label that sharpens as a source's SYNs arrive.
//!
//! The daemon keeps one [`Evidence`] per source (a [`SourceTable`]) and feeds it every feature
//! record the XDP program hands over for that source (TCP SYNs, and UDP datagrams), in arrival
//! order. Each packet is classified with the source's previous packet of the same transport as
//! `prev`, so that rules can state relations across packets (hping3's source port +1,
//! unicornscan's sequence numbers keyed by a per-scan secret).
//!
//! What it reports: the most specific label seen (a tool outranks an OS stack, which outranks
//! unknown; then specificity, then how many packets agreed), how many packets agreed with it
//! out of how many, and the other labels seen (a NAT gateway can hide a scanner and ordinary
//! hosts behind one address: that is shown, not averaged away).
//!
//! When a relation rule matches, the previous packet is part of the evidence: if that packet
//! had been given a weaker label on its own (a unicornscan SYN looks like a Cisco stack), it is
//! moved to the new label, so the counts say "3 of 3 SYNs", not "2 of 3 plus 1 OS stack".

use std::{collections::HashMap, net::IpAddr};

use super::{Class, Features, Fingerprinter, OS_STACK, Transport, UNKNOWN, Verdict};

/// How strongly a label speaks: tools over OS stacks over unknown, then specificity.
fn rank(class: Option<Class>, specificity: u8) -> (u8, u8) {
    let tier = match class {
        Some(Class::Scanner | Class::Worm | Class::Misc) => 2,
        Some(Class::Os) => 1,
        None => 0,
    };
    (tier, specificity)
}

/// Packets of one source that got one label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub label: String,
    pub class: Option<Class>,
    /// For OS stacks, the OS most recently named.
    pub os: Option<String>,
    pub count: u64,
    /// The highest specificity among the verdicts counted here.
    pub specificity: u8,
    /// The evidence of the most specific (then latest) of them.
    pub evidence: String,
}

/// What a source is, as far as its packets tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub label: String,
    pub class: Option<Class>,
    pub os: Option<String>,
    pub evidence: String,
    /// Packets that got this label.
    pub agreeing: u64,
    /// Packets classified.
    pub packets: u64,
    /// Every other label seen, with its count, most packets first.
    pub others: Vec<(String, u64)>,
    /// The p0f signature of the latest TCP SYN.
    pub signature: Option<String>,
}

impl Summary {
    /// "masscan (3 of 3 SYNs agreed)", "OS stack (Linux 2.2.x-3.x), 2 of 2 agreed".
    pub fn headline(&self) -> String {
        let label = match &self.os {
            Some(os) => format!("{} ({os})", self.label),
            None => self.label.clone(),
        };
        let mut s = format!("{label}: {} of {} packets agreed", self.agreeing, self.packets);
        if !self.others.is_empty() {
            let o: Vec<String> = self.others.iter().map(|(l, n)| format!("{l} {n}")).collect();
            s.push_str(&format!(" (also seen: {})", o.join(", ")));
        }
        s
    }
}

/// One source's evidence.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    tallies: Vec<Tally>,
    packets: u64,
    last_tcp: Option<(Features, usize, (u8, u8))>,
    last_udp: Option<(Features, usize, (u8, u8))>,
    signature: Option<String>,
}

impl Evidence {
    pub fn new() -> Evidence {
        Evidence::default()
    }

    /// Classifies a packet of this source in the light of its previous one, and counts it.
    pub fn observe(&mut self, fp: &Fingerprinter, f: &Features) -> Verdict {
        let slot = match f.transport {
            Transport::Tcp => self.last_tcp,
            Transport::Udp => self.last_udp,
        };
        let prev = slot.map(|(p, _, _)| p);
        let v = fp.classify_with(f, prev.as_ref());
        let r = rank(v.class, v.specificity);
        let idx = self.tally(&v);
        // A relation claims the previous packet too: move it here if it had a weaker label.
        if v.uses_prev
            && let Some((_, pidx, prank)) = slot
            && pidx != idx
            && prank < r
            && self.tallies[pidx].count > 0
        {
            self.tallies[pidx].count -= 1;
            self.tallies[idx].count += 1;
        }
        self.packets += 1;
        if v.signature.is_some() {
            self.signature = v.signature.clone();
        }
        let last = Some((*f, idx, r));
        match f.transport {
            Transport::Tcp => self.last_tcp = last,
            Transport::Udp => self.last_udp = last,
        }
        v
    }

    fn tally(&mut self, v: &Verdict) -> usize {
        let idx = match self.tallies.iter().position(|t| t.label == v.label) {
            Some(i) => i,
            None => {
                self.tallies.push(Tally {
                    label: v.label.clone(),
                    class: v.class,
                    os: None,
                    count: 0,
                    specificity: 0,
                    evidence: String::new(),
                });
                self.tallies.len() - 1
            }
        };
        let t = &mut self.tallies[idx];
        t.count += 1;
        if v.specificity >= t.specificity || t.evidence.is_empty() {
            t.specificity = v.specificity;
            t.evidence = v.evidence.clone();
        }
        if v.os.is_some() {
            t.os = v.os.clone();
        }
        idx
    }

    /// Packets classified so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The counts per label.
    pub fn tallies(&self) -> &[Tally] {
        &self.tallies
    }

    /// The most specific label and how many packets agreed (`None` before any packet).
    pub fn summary(&self) -> Option<Summary> {
        let best = self
            .tallies
            .iter()
            .filter(|t| t.count > 0)
            .max_by_key(|t| (rank(t.class, t.specificity), t.count))?;
        let mut others: Vec<(String, u64)> = self
            .tallies
            .iter()
            .filter(|t| t.count > 0 && t.label != best.label)
            .map(|t| (t.label.clone(), t.count))
            .collect();
        others.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Some(Summary {
            label: best.label.clone(),
            class: best.class,
            os: best.os.clone(),
            evidence: best.evidence.clone(),
            agreeing: best.count,
            packets: self.packets,
            others,
            signature: self.signature.clone(),
        })
    }

    /// True when this source looks like an ordinary OS stack or is unknown: no tool label.
    pub fn only_os_or_unknown(&self) -> bool {
        self.tallies
            .iter()
            .filter(|t| t.count > 0)
            .all(|t| t.label == OS_STACK || t.label == UNKNOWN)
    }
}

/// Evidence for every source, as the daemon would keep it beside SOURCES: it adds a source on
/// its first feature record and forgets it when the daemon evicts it from SOURCES (call
/// `forget` from the same place), so both stay the same size.
#[derive(Debug, Default)]
pub struct SourceTable {
    sources: HashMap<IpAddr, Evidence>,
}

impl SourceTable {
    pub fn new() -> SourceTable {
        SourceTable::default()
    }

    /// Feeds one feature record; returns the packet's verdict and the source's summary.
    pub fn observe(&mut self, fp: &Fingerprinter, f: &Features) -> (Verdict, Summary) {
        let e = self.sources.entry(f.src).or_default();
        let v = e.observe(fp, f);
        let s = e.summary().expect("a source that was just observed has a summary");
        (v, s)
    }

    pub fn get(&self, src: &IpAddr) -> Option<&Evidence> {
        self.sources.get(src)
    }

    pub fn summary(&self, src: &IpAddr) -> Option<Summary> {
        self.sources.get(src).and_then(Evidence::summary)
    }

    pub fn forget(&mut self, src: &IpAddr) {
        self.sources.remove(src);
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{
        RuleSet,
        features::{tcp_flags::SYN, testframes::*},
    };

    fn fp() -> Fingerprinter {
        Fingerprinter::new(RuleSet::builtin(), None)
    }

    #[allow(clippy::too_many_arguments)]
    fn syn(
        src: u8,
        ttl: u8,
        df: bool,
        sport: u16,
        seq: u32,
        ack: u32,
        win: u16,
        o: &[u8],
    ) -> Features {
        let f = tcp4(
            [198, 18, 9, src],
            [198, 18, 0, 1],
            ttl,
            7,
            df,
            sport,
            2745,
            seq,
            ack,
            SYN,
            win,
            o,
        );
        Features::from_frame(&f).unwrap()
    }

    #[test]
    fn hping3_sharpens_with_its_second_syn() {
        let fp = fp();
        let mut e = Evidence::new();
        // hping3's first SYN has ack 0: only window 512 and no options speak for it.
        let v1 = e.observe(&fp, &syn(2, 64, false, 1225, 10, 0, 512, &[]));
        assert_eq!(v1.label, "hping3");
        let weak = v1.specificity;
        let v2 = e.observe(&fp, &syn(2, 64, false, 1226, 99, 0x0100_0000, 512, &[]));
        assert_eq!(v2.label, "hping3");
        assert!(v2.specificity > weak, "{v2:?}");
        let s = e.summary().unwrap();
        assert_eq!((s.label.as_str(), s.agreeing, s.packets), ("hping3", 2, 2));
        assert!(s.others.is_empty());
    }

    #[test]
    fn a_relation_claims_the_previous_packet() {
        // unicornscan-like: the sequence number hides a per-scan key; one SYN alone is
        // unremarkable (window 4128, MSS only, TTL 255: a Cisco-like stack).
        let fp = fp();
        let mut e = Evidence::new();
        let key = 0x5eed_1234u32;
        let dst = u32::from_be_bytes([198, 18, 0, 1]);
        let mk = |sport: u16| {
            let seq = key ^ dst.swap_bytes() ^ ((2745u32 << 16) + sport as u32);
            syn(3, 255, false, sport, seq, 0, 4128, &[2, 4, 5, 0xb4])
        };
        let v1 = e.observe(&fp, &mk(12861));
        assert_ne!(v1.label, "unicornscan-like");
        let v2 = e.observe(&fp, &mk(40000));
        assert_eq!(v2.label, "unicornscan-like", "{v2:?}");
        assert!(v2.uses_prev);
        let s = e.summary().unwrap();
        assert_eq!((s.label.as_str(), s.agreeing, s.packets), ("unicornscan-like", 2, 2), "{s:?}");
        // A retransmission (same port, same sequence) proves nothing.
        let mut e = Evidence::new();
        e.observe(&fp, &mk(12861));
        assert_ne!(e.observe(&fp, &mk(12861)).label, "unicornscan-like");
    }

    #[test]
    fn an_os_stack_is_never_a_scanner_and_mixed_sources_show_both() {
        let fp = fp();
        let mut t = SourceTable::new();
        // Linux connect() retransmits: same port and sequence, IP ID +1.
        for _ in 0..3 {
            let (v, _) =
                t.observe(&fp, &syn(4, 64, true, 41470, 1193006982, 0, 64240, &linux_opts(5)));
            assert_eq!(v.label, OS_STACK, "{v:?}");
        }
        let s = t.summary(&"198.18.9.4".parse().unwrap()).unwrap();
        assert_eq!((s.label.as_str(), s.agreeing), (OS_STACK, 3));
        assert!(t.get(&"198.18.9.4".parse().unwrap()).unwrap().only_os_or_unknown());
        // Behind one address, a Linux host and zmap: the tool is named, the rest is shown.
        let zmap = {
            let f = tcp4(
                [198, 18, 9, 4],
                [198, 18, 0, 1],
                255,
                54321,
                false,
                5000,
                2745,
                1,
                0,
                SYN,
                65535,
                &[],
            );
            Features::from_frame(&f).unwrap()
        };
        let (v, s) = t.observe(&fp, &zmap);
        assert_eq!(v.label, "zmap");
        assert_eq!((s.label.as_str(), s.agreeing, s.packets), ("zmap", 1, 4));
        assert_eq!(s.others, vec![(OS_STACK.to_string(), 3)]);
        assert!(s.headline().contains("also seen: OS stack 3"), "{}", s.headline());
        t.forget(&"198.18.9.4".parse().unwrap());
        assert!(t.is_empty());
    }
}
