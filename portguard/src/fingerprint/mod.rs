//! What is probing port 2745: a tool label with the evidence behind it, a p0f signature, and
//! p0f's own verdict when its database is installed.
//!
//! - `features`: what one packet tells (the plain struct, the 64-byte kernel layout, a frame
//!   parser for tests and captures);
//! - `rules`: the rule table (`packaging/portguard.fp`), its parser and evaluator;
//! - `p0f`: p0f 3.09b signatures and matching against a p0f.fp;
//! - `evidence`: per-source accumulation (labels change as SYNs arrive; relations between a
//!   source's consecutive packets).
//!
//! The order of precedence, decided once here: a tool rule (class scanner, worm or misc) that
//! matches always wins, whatever p0f says; then a p0f tool signature (`!`); then "OS stack"
//! from an `os` rule or an exact p0f OS match; otherwise "unknown". A fuzzy p0f match alone
//! is not enough to call a sender an OS stack: p0f's fuzzy answer for nmap over IPv6 is
//! "Linux".
//!
//! - `feed`: the owner's side of it: reads the program's FEATURES ring buffer, keeps each
//!   source's `Evidence`, and publishes a `Label` per source in FINGERPRINTS, for every
//!   portguard process to show;
//! - `label`: what is shown of a source's fingerprint.
//!
//! The daemon loads a `Fingerprinter` once (`Fingerprinter::load(&extra_rule_files, p0f_db)`:
//! the shipped table is compiled in, `/etc/p0f/p0f.fp` is used when present) and gives it to
//! each guard's `Feed`.

pub mod evidence;
pub mod features;
pub mod feed;
pub mod label;
pub mod p0f;
pub mod rules;

use std::{fmt, path::Path};

pub use evidence::{Evidence, SourceTable, Summary};
pub use features::{Features, FeaturesRaw, FrameError, Transport};
pub use feed::Feed;
pub use label::Label;
pub use p0f::{P0fDb, P0fMatch};
pub use rules::{Class, RuleSet};

/// The label of an ordinary operating system's stack.
pub const OS_STACK: &str = "OS stack";
/// The label when nothing matched.
pub const UNKNOWN: &str = "unknown";

/// What one packet says about its sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// "nmap", "masscan", ..., `OS_STACK` or `UNKNOWN`.
    pub label: String,
    /// `None` for unknown.
    pub class: Option<Class>,
    /// For an OS stack: which one (p0f's label when it matched exactly, else the rule's).
    pub os: Option<String>,
    /// Why, in one sentence.
    pub evidence: String,
    /// The matching rule's specificity (0 for unknown).
    pub specificity: u8,
    /// The p0f signature of a TCP SYN.
    pub signature: Option<String>,
    /// p0f's verdict, when a database is loaded and it matched (even when a rule won).
    pub p0f: Option<P0fMatch>,
    /// The rule that decided (`FILE:LINE`), if one did.
    pub rule: Option<String>,
    /// The deciding rule compared this packet with the source's previous one.
    pub uses_prev: bool,
}

impl Verdict {
    /// The label with the OS when there is one: "OS stack (Linux 2.2.x-3.x)".
    pub fn display_label(&self) -> String {
        match &self.os {
            Some(os) => format!("{} ({os})", self.label),
            None => self.label.clone(),
        }
    }

    /// A tool (scanner, worm, misc) rather than an OS stack or unknown.
    pub fn is_tool(&self) -> bool {
        matches!(self.class, Some(Class::Scanner | Class::Worm | Class::Misc))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.display_label(), self.evidence)
    }
}

/// The rule table and, optionally, a p0f database.
#[derive(Clone, Debug, Default)]
pub struct Fingerprinter {
    pub rules: RuleSet,
    pub p0f: Option<P0fDb>,
}

impl Fingerprinter {
    pub fn new(rules: RuleSet, p0f: Option<P0fDb>) -> Fingerprinter {
        Fingerprinter { rules, p0f }
    }

    /// The shipped rules, the admin's extra rule files in order, and p0f's database when the
    /// given one (or Debian's) exists. Errors are one line, naming file and line.
    pub fn load(extra_rules: &[&Path], p0f_db: Option<&Path>) -> Result<Fingerprinter, String> {
        let mut f = Fingerprinter::load_rules(extra_rules)?;
        f.p0f = match p0f_db {
            Some(p) => Some(P0fDb::load(p).map_err(|e| e.to_string())?),
            None => P0fDb::load_default().transpose().map_err(|e| e.to_string())?,
        };
        Ok(f)
    }

    /// The shipped rules and the admin's extra rule files, without p0f.
    pub fn load_rules(extra_rules: &[&Path]) -> Result<Fingerprinter, String> {
        let mut rules = RuleSet::builtin();
        for p in extra_rules {
            rules.extend(RuleSet::load(p).map_err(|e| e.to_string())?);
        }
        Ok(Fingerprinter { rules, p0f: None })
    }

    /// Classifies one packet on its own.
    pub fn classify(&self, f: &Features) -> Verdict {
        self.classify_with(f, None)
    }

    /// Classifies a packet given the previous one from the same source and transport (for
    /// the rules' `prev.*` relations; see `Evidence`).
    pub fn classify_with(&self, f: &Features, prev: Option<&Features>) -> Verdict {
        let tcp = f.transport == Transport::Tcp;
        let signature = tcp.then(|| p0f::signature(f));
        let p0f =
            if tcp && f.is_syn() { self.p0f.as_ref().and_then(|db| db.lookup(f)) } else { None };
        let matches = self.rules.evaluate(f, prev);
        // The most specific rule of a class; the first in file order among equals.
        let best = |os: bool| {
            matches.iter().filter(|m| (m.rule.class == Class::Os) == os).fold(
                None,
                |best: Option<&rules::RuleMatch>, m| match best {
                    Some(b) if b.rule.specificity >= m.rule.specificity => Some(b),
                    _ => Some(m),
                },
            )
        };
        let p0f_note = match &p0f {
            Some(m) => format!("; p0f: {m}"),
            None if self.p0f.is_some() && tcp => "; p0f: ???".to_string(),
            None => String::new(),
        };
        let verdict =
            |label: &str, class, os, evidence: String, spec, rule: Option<&rules::Rule>| Verdict {
                label: label.to_string(),
                class,
                os,
                evidence,
                specificity: spec,
                signature: signature.clone(),
                p0f: p0f.clone(),
                rule: rule.map(|r| r.origin.clone()),
                uses_prev: rule.is_some_and(|r| r.uses_prev()),
            };
        if let Some(m) = best(false) {
            let r = m.rule;
            return verdict(
                &r.label,
                Some(r.class),
                None,
                m.evidence.clone(),
                r.specificity,
                Some(r),
            );
        }
        if let Some(m) = p0f.as_ref().filter(|m| m.is_tool()) {
            return verdict(
                &m.label,
                Some(Class::Scanner),
                None,
                format!(
                    "p0f tool signature (line {}): {}",
                    m.line,
                    signature.as_deref().unwrap_or("")
                ),
                10,
                None,
            );
        }
        let exact_os = p0f.as_ref().filter(|m| !m.is_tool() && !m.fuzzy);
        if let Some(m) = best(true) {
            let r = m.rule;
            let os = exact_os.map(|p| p.label.clone()).unwrap_or_else(|| r.label.clone());
            return verdict(
                OS_STACK,
                Some(Class::Os),
                Some(os),
                format!("{}{p0f_note}", m.evidence),
                r.specificity,
                Some(r),
            );
        }
        if let Some(m) = exact_os {
            return verdict(
                OS_STACK,
                Some(Class::Os),
                Some(m.label.clone()),
                format!("p0f signature {}{p0f_note}", signature.as_deref().unwrap_or("")),
                20,
                None,
            );
        }
        let what = match &signature {
            Some(s) => format!("no rule matched signature {s}"),
            None => format!(
                "no rule matched a UDP datagram (TTL {}, {} payload bytes)",
                f.ttl, f.payload_len
            ),
        };
        verdict(UNKNOWN, None, None, format!("{what}{p0f_note}"), 0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        features::{tcp_flags::SYN, testframes::*},
        *,
    };

    const DB: &str = "classes = win,unix,other\n[tcp:request]\n\
        label = s:unix:Linux:3.11 and newer\n\
        sig   = *:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0\n\
        label = g:unix:Linux:2.2.x-3.x (barebone)\n\
        sig   = *:64:0:*:*,0:mss:df,id+:0\n\
        label = s:!:NMap:OS detection\n\
        sys   = @unix,@win\n\
        sig   = *:64-:0:265:512,0:mss,sok,ts:ack+:0\n";

    fn fp() -> Fingerprinter {
        Fingerprinter::new(RuleSet::builtin(), Some(P0fDb::parse(DB, "t.fp").unwrap()))
    }

    fn frame(ttl: u8, df: bool, ack: u32, win: u16, opts: &[u8]) -> Features {
        let f =
            tcp4([198, 18, 0, 9], [198, 18, 0, 1], ttl, 77, df, 4000, 2745, 5, ack, SYN, win, opts);
        Features::from_frame(&f).unwrap()
    }

    #[test]
    fn a_tool_rule_beats_what_p0f_says() {
        // nmap's SYN over IPv6: p0f calls it Linux (fuzzy); the rule names nmap and p0f's
        // opinion is kept beside it.
        let mut f = frame(255, false, 0, 1024, &[2, 4, 5, 0xb4]);
        f.version = 6;
        f.dst_v4 = None;
        f.ip_id = 0;
        let v = fp().classify(&f);
        assert_eq!(v.label, "nmap");
        assert_eq!(v.class, Some(Class::Scanner));
        assert!(v.p0f.as_ref().is_some_and(|m| m.label.starts_with("Linux") && m.fuzzy));
        assert!(v.rule.as_deref().is_some_and(|r| r.starts_with("portguard.fp")));
    }

    #[test]
    fn os_stack_only_without_a_tool_and_never_from_a_fuzzy_guess() {
        let fp = fp();
        // An exact p0f OS match and the Linux rule: OS stack, named by p0f.
        let linux = frame(64, true, 0, 29200, &{
            let mut o = linux_opts(9);
            *o.last_mut().unwrap() = 10;
            o
        });
        let v = fp.classify(&linux);
        assert_eq!((v.label.as_str(), v.os.as_deref()), (OS_STACK, Some("Linux 3.11 and newer")));
        assert_eq!(v.display_label(), "OS stack (Linux 3.11 and newer)");
        assert!(v.evidence.contains("p0f: Linux 3.11 and newer"), "{}", v.evidence);
        // No rule, and only a fuzzy p0f guess (a Cisco-like SYN): unknown, p0f's guess noted.
        let v = fp.classify(&frame(255, false, 0, 4128, &[2, 4, 5, 0xb4]));
        assert_eq!(v.label, UNKNOWN);
        assert!(v.evidence.contains("(generic, fuzzy)"), "{}", v.evidence);
        assert_eq!(v.signature.as_deref(), Some("4:255+0:0:1460:4128,0:mss::0"));
        // A p0f tool signature no rule knows: named after p0f, as a scanner.
        let probe =
            frame(50, false, 0x0100_0000, 512, &[2, 4, 1, 9, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0]);
        let v = fp.classify(&probe);
        assert_eq!((v.label.as_str(), v.class), ("NMap OS detection", Some(Class::Scanner)));
        // Without a p0f database: the rule alone still says OS stack.
        let bare = Fingerprinter::new(RuleSet::builtin(), None);
        let v = bare.classify(&linux);
        assert_eq!((v.label.as_str(), v.os.as_deref()), (OS_STACK, Some("Linux")));
    }

    #[test]
    fn extra_rule_files_load_after_the_shipped_ones() {
        let dir = std::env::temp_dir().join(format!("pgfp-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = dir.join("mine.fp");
        std::fs::write(&mine, "[our scanner]\nclass = misc\nspecificity = 99\nmatch = syn && sport == 4000\nevidence = our own audit scanner\n").unwrap();
        let p0f = dir.join("p0f.fp");
        std::fs::write(&p0f, DB).unwrap();
        let fp = Fingerprinter::load(&[mine.as_path()], Some(&p0f)).unwrap();
        assert_eq!(fp.classify(&frame(64, false, 0, 512, &[])).label, "our scanner");
        let bad = dir.join("bad.fp");
        std::fs::write(&bad, "[x]\nclass = scanner\nmatch = ttl ==\n").unwrap();
        let e = Fingerprinter::load(&[bad.as_path()], Some(&p0f)).unwrap_err();
        assert!(e.contains("bad.fp:3:") && !e.contains('\n'), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
