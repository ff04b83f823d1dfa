//! Every conversion between Rust values and the bytes in the program's maps, in one place:
//! settings ↔ CONFIG, source addresses ↔ SourceKey, the flag bits of CONFIG and of a source's
//! slot ↔ typed sets. `maps.rs` only moves bytes; everything else speaks in these types.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use portguard_common::{
    ACTION_COUNT, ACTION_DROP, ALLOW_HAS_V4, ALLOW_HAS_V6, CFG_CONSUMERS, CFG_UNJUDGED_DROP,
    CLASS_MISC, CLASS_OS, CLASS_SCANNER, CLASS_UNKNOWN, CLASS_WORM, Config, DIR_DST, DIR_SRC,
    DIR_UNJUDGED, Fingerprint, PROTO_TCP, PROTO_UDP, SourceKey, Totals,
};

use crate::{
    counters::{self, Source, SourceAddr, SourceStats},
    fingerprint::{Class, Label},
    maps::Maps,
    settings::{Cidr, Direction, Mode, Protocol, Settings, Unjudged},
};

/// A set of `DIR_*` bits: which way sources used a guarded port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directions(pub u8);

impl Directions {
    pub fn probing(self) -> bool {
        self.0 & DIR_DST != 0
    }

    pub fn answering(self) -> bool {
        self.0 & DIR_SRC != 0
    }

    /// "probing", "answering", "both", or "unjudged" (only frames whose ports could not be
    /// read): the word JSON and metrics use.
    pub fn word(self) -> &'static str {
        match (self.probing(), self.answering()) {
            (true, true) => "both",
            (false, true) => "answering",
            (false, false) if self.unjudged() => "unjudged",
            _ => "probing",
        }
    }

    /// Frames from it could not be judged (their ports could not be read).
    pub fn unjudged(self) -> bool {
        self.0 & DIR_UNJUDGED != 0
    }

    /// "probing 2745", "answering from 2745", both, or "sending unjudged frames": for people.
    pub fn describe(self, port: u16) -> String {
        let what = match (self.probing(), self.answering()) {
            (true, true) => format!("probing and answering from {port}"),
            (false, true) => format!("answering from {port}"),
            (true, false) => format!("probing {port}"),
            (false, false) if self.unjudged() => return "sending unjudged frames".into(),
            (false, false) => format!("probing {port}"),
        };
        if self.unjudged() { format!("{what}, and unjudged frames") } else { what }
    }
}

impl From<Direction> for Directions {
    fn from(d: Direction) -> Directions {
        Directions(match d {
            Direction::Dst => DIR_DST,
            Direction::Src => DIR_SRC,
            Direction::Both => DIR_DST | DIR_SRC,
        })
    }
}

impl From<Directions> for Direction {
    fn from(d: Directions) -> Direction {
        match (d.probing(), d.answering()) {
            (true, true) => Direction::Both,
            (false, true) => Direction::Src,
            _ => Direction::Dst,
        }
    }
}

/// A set of `PROTO_*` bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protocols(pub u8);

impl Protocols {
    pub fn list(self) -> Vec<Protocol> {
        [Protocol::Tcp, Protocol::Udp].into_iter().filter(|p| self.0 & bit(*p) != 0).collect()
    }

    /// The names in JSON order: ["tcp", "udp"].
    pub fn names(self) -> Vec<&'static str> {
        self.list().into_iter().map(Protocol::as_str).collect()
    }
}

impl FromIterator<Protocol> for Protocols {
    fn from_iter<I: IntoIterator<Item = Protocol>>(it: I) -> Protocols {
        Protocols(it.into_iter().fold(0, |b, p| b | bit(p)))
    }
}

/// "tcp+udp".
impl fmt::Display for Protocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join("+"))
    }
}

fn bit(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// The CONFIG entry for `s`, with the admission budget worked out and the sketch's seeds (kept
/// from the running CONFIG: new seeds would make every source a stranger again).
pub fn config(s: &Settings, admit_per_slice: u32, sketch_seed: [u64; 2]) -> Config {
    let mut allow = 0;
    for c in &s.allow {
        allow |= if c.addr.is_ipv4() { ALLOW_HAS_V4 } else { ALLOW_HAS_V6 };
    }
    let v4_mask = u32::MAX.checked_shl(32 - s.v4_prefix as u32).unwrap_or(0);
    let v6_mask = u128::MAX.checked_shl(128 - s.v6_prefix as u32).unwrap_or(0).to_be_bytes();
    Config {
        action: match s.mode {
            Mode::Drop => ACTION_DROP,
            Mode::Count => ACTION_COUNT,
        },
        protocols: s.protocols.iter().copied().collect::<Protocols>().0,
        direction: Directions::from(s.direction).0,
        allow,
        admit_per_slice,
        flags: match s.unjudged_action() {
            Unjudged::Drop => CFG_UNJUDGED_DROP,
            Unjudged::Pass => 0,
        },
        v4_prefix: s.v4_prefix,
        v6_prefix: s.v6_prefix,
        _pad: 0,
        // The program ANDs the address's bytes as they lie in memory.
        v4_mask: u32::from_ne_bytes(v4_mask.to_be_bytes()),
        v6_mask: [
            u64::from_ne_bytes(v6_mask[..8].try_into().unwrap_or_default()),
            u64::from_ne_bytes(v6_mask[8..].try_into().unwrap_or_default()),
        ],
        sketch_seed,
        feature_first: 0,
        capture_first: 0,
        capture_per_slice: 0,
    }
}

/// What the readers of the ring buffers asked for (CFG_FEATURES, CFG_CAPTURE_*, and their
/// numbers): not settings, so every write of the settings carries them over unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumers {
    /// `CFG_FEATURES` and `CFG_CAPTURE_*` bits.
    pub flags: u8,
    pub feature_first: u16,
    pub capture_first: u16,
    pub capture_per_slice: u32,
}

impl Consumers {
    pub fn of(c: &Config) -> Consumers {
        Consumers {
            flags: c.flags & CFG_CONSUMERS,
            feature_first: c.feature_first,
            capture_first: c.capture_first,
            capture_per_slice: c.capture_per_slice,
        }
    }

    /// `c` with these consumers and its own settings.
    pub fn apply(&self, c: &mut Config) {
        c.flags = (c.flags & !CFG_CONSUMERS) | (self.flags & CFG_CONSUMERS);
        c.feature_first = self.feature_first;
        c.capture_first = self.capture_first;
        c.capture_per_slice = self.capture_per_slice;
    }
}

/// What CONFIG says, as settings. The ports and the allowlist live in maps of their own and are
/// filled in by the caller.
pub fn settings(c: &Config) -> Settings {
    let mode = if c.action == ACTION_DROP { Mode::Drop } else { Mode::Count };
    let unjudged = if c.flags & CFG_UNJUDGED_DROP != 0 { Unjudged::Drop } else { Unjudged::Pass };
    let mut s = Settings {
        mode,
        ports: Vec::new(),
        protocols: Protocols(c.protocols).list(),
        direction: Directions(c.direction).into(),
        allow: Vec::new(),
        admit_per_slice: None,
        unjudged: Some(unjudged),
        v4_prefix: c.v4_prefix,
        v6_prefix: c.v6_prefix,
    };
    // What the mode does anyway is not an override.
    let by_mode = Settings { unjudged: None, ..s.clone() }.unjudged_action();
    if s.unjudged_action() == by_mode {
        s.unjudged = None;
    }
    s
}

/// New random seeds for the sketch's hashes.
fn random_seed() -> [u64; 2] {
    let mut b = [0u8; 16];
    // SAFETY: getrandom fills the buffer it is given, up to its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    if n != b.len() as isize {
        // Never seen on Linux for 16 bytes; the clock is a poor but harmless fallback.
        let t = crate::clock::monotonic_ns();
        return [t, t.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15];
    }
    [
        u64::from_ne_bytes(b[..8].try_into().unwrap_or_default()),
        u64::from_ne_bytes(b[8..].try_into().unwrap_or_default()),
    ]
}

/// The number of CPUs the admission budget is shared among.
fn online_cpus() -> Result<u32> {
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    Ok(cpus.len() as u32)
}

/// The settings the maps hold now, for a source table of `capacity` entries.
pub fn read_settings(maps: &Maps, capacity: u32) -> Result<Settings> {
    let c = maps.config()?;
    let mut s = settings(&c);
    s.ports = maps.guarded_ports()?;
    for (len, a) in maps.allow_v4()? {
        s.allow.push(Cidr { addr: IpAddr::from(a), len: len as u8 });
    }
    for (len, a) in maps.allow_v6()? {
        s.allow.push(Cidr { addr: IpAddr::from(a), len: len as u8 });
    }
    s.allow.sort_by_key(|c| (c.addr, c.len));
    // A budget other than the one derived from the table is an override to keep.
    let derived = portguard_common::admit_per_slice(capacity, online_cpus()?);
    s.admit_per_slice =
        (capacity != 0 && c.admit_per_slice != derived).then_some(c.admit_per_slice);
    Ok(s)
}

/// Moves the maps from `old` to `new` settings in place: no reload, counters kept. New ports
/// and allowlist entries are written before CONFIG changes and old ones removed after it, so
/// that no packet sees a state that guards less than both `old` and `new` do.
pub fn write_settings(
    maps: &mut Maps,
    old: &Settings,
    new: &Settings,
    capacity: u32,
) -> Result<()> {
    for p in new.ports.iter().filter(|p| !old.ports.contains(p)) {
        maps.set_port(*p, true)?;
    }
    for c in new.allow.iter().filter(|c| !old.allow.contains(c)) {
        match c.addr {
            IpAddr::V4(a) => maps.insert_allow_v4(c.len as u32, a.octets()),
            IpAddr::V6(a) => maps.insert_allow_v6(c.len as u32, a.octets()),
        }
        .with_context(|| format!("adding {c} to the allowlist"))?;
    }
    let cpus = online_cpus()?;
    let admit = new.admit_per_slice.unwrap_or(portguard_common::admit_per_slice(capacity, cpus));
    let running = maps.config()?;
    let seed = match running.sketch_seed {
        [0, 0] => random_seed(),
        kept => kept,
    };
    let mut c = config(new, admit, seed);
    Consumers::of(&running).apply(&mut c);
    maps.set_config(c)?;
    for p in old.ports.iter().filter(|p| !new.ports.contains(p)) {
        maps.set_port(*p, false)?;
    }
    for c in old.allow.iter().filter(|c| !new.allow.contains(c)) {
        match c.addr {
            IpAddr::V4(a) => maps.remove_allow_v4(c.len as u32, a.octets()),
            IpAddr::V6(a) => maps.remove_allow_v6(c.len as u32, a.octets()),
        }
    }
    Ok(())
}

/// TOTALS summed over CPUs.
pub fn read_totals(maps: &Maps) -> Result<Totals> {
    Ok(counters::sum(maps.totals()?))
}

/// Every tracked source, its CPUs merged. Entries with no packets (a slot written by hand, or a
/// race with an insert) are left out.
pub fn read_sources(maps: &Maps) -> Result<Vec<Source>> {
    Ok(maps
        .source_slots()?
        .into_iter()
        .filter_map(|(key, slot)| {
            let stats = SourceStats::from_slot(&slot);
            (stats.packets > 0).then(|| Source { addr: source_addr(&key), stats })
        })
        .collect())
}

/// Every published fingerprint, by source.
pub fn read_fingerprints(maps: &Maps) -> Result<std::collections::HashMap<SourceAddr, Label>> {
    Ok(maps.fingerprints()?.iter().map(|(k, f)| (source_addr(k), label(f))).collect())
}

/// A FINGERPRINTS value as shown.
pub fn label(f: &Fingerprint) -> Label {
    let text = |b: &[u8]| {
        let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let os = text(&f.os);
    let signature = text(&f.signature);
    Label {
        label: text(&f.label),
        class: match f.class {
            CLASS_SCANNER => Some(Class::Scanner),
            CLASS_WORM => Some(Class::Worm),
            CLASS_OS => Some(Class::Os),
            CLASS_MISC => Some(Class::Misc),
            _ => None,
        },
        os: (!os.is_empty()).then_some(os),
        evidence: text(&f.evidence),
        signature: (!signature.is_empty()).then_some(signature),
        ttl: f.ttl,
        distance: f.distance,
        agreeing: f.agreeing,
        packets: f.packets,
    }
}

/// The FINGERPRINTS value of a label: texts cut at a character boundary to their fields.
pub fn fingerprint(l: &Label) -> Fingerprint {
    fn put<const N: usize>(s: &str) -> [u8; N] {
        let mut b = [0u8; N];
        let mut n = s.len().min(N);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        b
    }
    Fingerprint {
        packets: l.packets,
        agreeing: l.agreeing,
        class: match l.class {
            Some(Class::Scanner) => CLASS_SCANNER,
            Some(Class::Worm) => CLASS_WORM,
            Some(Class::Os) => CLASS_OS,
            Some(Class::Misc) => CLASS_MISC,
            None => CLASS_UNKNOWN,
        },
        ttl: l.ttl,
        distance: l.distance,
        _pad: 0,
        label: put(&l.label),
        os: put(l.os.as_deref().unwrap_or("")),
        signature: put(l.signature.as_deref().unwrap_or("")),
        evidence: put(&l.evidence),
    }
}

/// The SOURCES key of a source (IPv4 as `::ffff:a.b.c.d` of family 4, as the program builds
/// it).
pub fn source_key(a: SourceAddr) -> SourceKey {
    match a.ip {
        IpAddr::V4(v4) => SourceKey::v4(v4.octets(), a.prefix),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w =
                |r: std::ops::Range<usize>| u64::from_ne_bytes(o[r].try_into().unwrap_or_default());
            SourceKey::v6([w(0..8), w(8..16)], a.prefix)
        }
    }
}

/// The source a SOURCES key stands for.
pub fn source_addr(k: &SourceKey) -> SourceAddr {
    let ip = if k.family == 4 {
        IpAddr::V4(Ipv4Addr::new(k.addr[12], k.addr[13], k.addr[14], k.addr[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.addr))
    };
    SourceAddr { ip, prefix: k.prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_config() {
        let s = Settings {
            mode: Mode::Count,
            protocols: vec![Protocol::Udp],
            direction: Direction::Both,
            ..Settings::default()
        };
        let c = config(&s, 7, [1, 2]);
        assert_eq!(c.action, ACTION_COUNT);
        assert_eq!(c.flags, 0, "count mode passes unjudged frames");
        assert_eq!(c.v4_mask, u32::from_ne_bytes([255; 4]));
        assert_eq!(c.v6_mask, [u64::MAX, 0], "a /64");
        assert_eq!(c.protocols, PROTO_UDP);
        assert_eq!(c.direction, DIR_DST | DIR_SRC);
        assert_eq!(c.admit_per_slice, 7);
        let back = settings(&c);
        assert_eq!((back.mode, back.protocols, back.direction), (s.mode, s.protocols, s.direction));
        assert_eq!((back.unjudged, back.v6_prefix), (None, 64));
        let d = config(&Settings::default(), 274, [1, 2]);
        assert_eq!((d.action, d.protocols, d.direction, d.allow), (ACTION_DROP, 3, DIR_DST, 0));
        assert_eq!(d.flags, CFG_UNJUDGED_DROP, "drop mode drops unjudged frames");
        let p = Settings { unjudged: Some(Unjudged::Pass), v4_prefix: 24, ..Settings::default() };
        let c = config(&p, 1, [1, 2]);
        assert_eq!((c.flags, c.v4_mask), (0, u32::from_ne_bytes([255, 255, 255, 0])));
        assert_eq!(settings(&c).unjudged, Some(Unjudged::Pass));
    }

    #[test]
    fn allow_bits_follow_the_families() {
        let s = Settings {
            allow: vec!["198.18.0.0/15".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
            ..Settings::default()
        };
        assert_eq!(config(&s, 1, [0, 0]).allow, ALLOW_HAS_V4 | ALLOW_HAS_V6);
    }

    #[test]
    fn keys_round_trip() {
        for (a, p) in [("198.18.0.1", 32), ("2001:db8::7", 128), ("2001:db8:0:7::", 64)] {
            let a = SourceAddr { ip: a.parse().unwrap(), prefix: p };
            assert_eq!(source_addr(&source_key(a)), a);
        }
        // An IPv6 source in ::ffff:0:0/96 stays IPv6.
        let mapped = SourceAddr::host("::ffff:198.18.0.2".parse().unwrap());
        assert_eq!(source_addr(&source_key(mapped)), mapped);
        assert_ne!(source_key(mapped), source_key(SourceAddr::host("198.18.0.2".parse().unwrap())));
    }

    #[test]
    fn labels_round_trip_and_long_texts_are_cut_at_a_character() {
        let l = Label {
            label: "OS stack".into(),
            class: Some(Class::Os),
            os: Some("Linux 3.11 and newer".into()),
            evidence: "é".repeat(100),
            signature: Some("4:64+0:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0".into()),
            ttl: 64,
            distance: 0,
            agreeing: 2,
            packets: 3,
        };
        let back = label(&fingerprint(&l));
        assert_eq!(back.evidence, "é".repeat(64), "128 bytes hold 64 two-byte characters");
        assert_eq!(Label { evidence: l.evidence.clone(), ..back }, l);
        let none = Label { os: None, signature: None, class: None, ..l };
        assert_eq!(label(&fingerprint(&none)).class, None);
        assert_eq!(label(&fingerprint(&none)).signature, None);
    }

    #[test]
    fn bit_sets_read_as_words() {
        assert_eq!(Directions(DIR_DST | DIR_SRC).word(), "both");
        assert_eq!(Directions(DIR_SRC).describe(2745), "answering from 2745");
        assert_eq!(Protocols(PROTO_TCP | PROTO_UDP).to_string(), "tcp+udp");
        assert_eq!(Protocols(PROTO_UDP).names(), ["udp"]);
    }
}
