//! The reference classifier: portguard's verdict semantics ("What the XDP program does" in the
//! README) as plain Rust on the host, the specification in executable form.
//!
//! It shares no code with the XDP program. Header decoding is etherparse's (Ethernet, VLAN
//! tags, IPv4, IPv6, its extension headers, TCP, UDP, each with its length checks); what
//! etherparse does not know or judges differently from portguard is written out here: PPPoE,
//! the VLAN tag and extension-header depth limits, and which inconsistencies are malformed.
//! The differential test (`tests/differential.rs`) and `cargo xtask fuzz` run the real program
//! through BPF_PROG_TEST_RUN beside it and compare verdicts and counters frame by frame.
//!
//! A frame is read in two steps:
//! - [`read`] says what the frame is ([`Reading`]), whatever the settings: not IP, IP without
//!   ports, TCP/UDP ports, a non-first fragment, or malformed (and why). Some frames have more
//!   than one acceptable reading ([`Parsed::alternatives`]): ambiguous frames the stack discards
//!   anyway ([`Doubt`]), and frames on which the program is known to depart from the documented
//!   semantics ([`Quirk`]).
//! - [`Reference::expect`] turns readings into outcomes ([`Outcome`]: verdict and counters)
//!   under the settings, with the fragment state: a non-first fragment follows the verdict its
//!   datagram's first fragment got when that one matched. [`Reference::commit`] records the
//!   effect of the outcome the program was seen to choose.

use std::{collections::HashMap, net::IpAddr};

use etherparse::{
    Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
    checksum::Sum16BitWords, err,
};
use portguard_common::{FragmentKey, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, SourceKey, Totals};

use portguard::settings::{Cidr, Direction, Mode, Protocol, Settings};

use crate::{XDP_DROP, XDP_PASS};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_PPP_SES: u16 = 0x8864;
const PPP_IP: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
/// 802.1Q, 802.1ad, and the pre-standard QinQ tag.
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

const TCP: u8 = 6;
const UDP: u8 = 17;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
/// Extension headers whose length is (len + 1) × 8: hop-by-hop, routing, destination options,
/// mobility, HIP, shim6.
const EIGHT_OCTET_EXTS: [u8; 6] = [0, 43, 60, 135, 139, 140];

/// What a frame is, independently of the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Not IP: ARP, an unknown EtherType, a PPP protocol other than IPv4 and IPv6.
    NotIp,
    /// IP without ports to read: ICMP, ESP, "no next header", any protocol but TCP and UDP.
    /// `ext_headers`: IPv6 extension headers before it.
    NoPorts {
        ext_headers: usize,
    },
    /// TCP or UDP whose header is in the frame: an unfragmented datagram or a first fragment.
    Ports(Ports),
    /// A non-first fragment of a TCP or UDP datagram (IPv4), or of any datagram (IPv6): its
    /// payload is never read as ports.
    Fragment(FragmentKey),
    Malformed(Malformed),
    /// It could reach a guarded port (the kernel would deliver it, as the kernel oracle shows),
    /// but its ports cannot be read: a VLAN stack or an IPv6 chain deeper than followed, a
    /// first fragment cut before its ports.
    Unjudged(Unjudged),
}

/// An unjudged frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unjudged {
    /// TCP or UDP when known; None: either.
    pub protocol: Option<Protocol>,
    /// The source, when the IP header was reached.
    pub src: Option<IpAddr>,
    /// Set on a first fragment: its datagram.
    pub first_fragment: Option<FragmentKey>,
}

/// A readable TCP or UDP header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    pub protocol: Protocol,
    pub sport: u16,
    pub dport: u16,
    pub src: IpAddr,
    /// Set on a first fragment (more fragments follow): its datagram.
    pub first_fragment: Option<FragmentKey>,
}

/// Why a frame is malformed: passed, and counted in `malformed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The Ethernet header, a VLAN tag or the PPPoE header ends past the frame.
    LinkCut,
    /// PPPoE session header with version/type other than 0x11 or code other than 0.
    BadPppoe,
    /// Fewer than 20 bytes of IPv4 header.
    Ipv4Cut,
    Ipv4Version,
    /// IHL below 5.
    Ipv4HeaderLength,
    /// Total length below the header length.
    Ipv4TotalLength,
    /// The header length (options) reaches past the frame.
    Ipv4OptionsCut,
    /// Fewer than 40 bytes of IPv6 header.
    Ipv6Cut,
    Ipv6Version,
    /// An extension header ends past the frame (of an unfragmented datagram: in a first fragment
    /// reassembly may complete it, and it is unjudged).
    ExtCut,
    /// Fewer than 20 bytes of TCP header, unfragmented.
    TcpCut,
    /// Fewer than 8 bytes of UDP header, unfragmented.
    UdpCut,
    /// Only as an alternative reading of an ambiguous frame: what a stricter parser (the
    /// stack) would say.
    Doubtful,
}

/// Ambiguous frames: inconsistencies portguard does not check because the stack discards such
/// frames anyway. Either verdict is acceptable for them: the documented reading (which ignores
/// the inconsistency), or malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Doubt {
    /// Wrong IPv4 header checksum (portguard does not verify it).
    Ipv4Checksum,
    /// IPv4 total length or IPv6 payload length larger than the frame: a truncated datagram.
    DatagramCut,
    /// TCP data offset below 5.
    TcpDataOffset,
    /// TCP data offset reaching past the frame (portguard reads 20 bytes).
    TcpOptionsCut,
    /// UDP length below 8 or past the datagram (unfragmented datagrams only).
    UdpLength,
    /// An authentication header whose length field is 0 (8 bytes; RFC 4302 needs at least
    /// 12): etherparse rejects it, portguard skips 8 bytes.
    AhZeroLength,
}

/// Frames on which the program is known to depart from the documented semantics (reported,
/// not fixed here: see the differential test). Each comes with the reading the program makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quirk {
    /// An IPv4 header whose IHL reaches past the frame is malformed, but the program only
    /// notices it when it reads the L4 header: with another protocol than TCP/UDP it reads "no
    /// ports", and a non-first fragment follows its datagram.
    Ipv4OptionsUnread,
    /// An IPv6 extension header cut short is malformed, but the program only reads its first
    /// two bytes: when the next header has no ports it reads "no ports".
    Ipv6ExtUnread,
}

/// Why an outcome other than the documented one is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    Ambiguous(Doubt),
    KnownQuirk(Quirk),
    /// The datagram's FRAGMENTS entry may have been evicted from the LRU map.
    Evicted,
}

/// A frame's readings: the documented one first, then acceptable alternatives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub reading: Reading,
    pub alternatives: Vec<(Reading, Why)>,
}

impl Parsed {
    fn exact(reading: Reading) -> Parsed {
        Parsed { reading, alternatives: Vec::new() }
    }

    /// `reading`, unless `doubt`: then malformed is acceptable too.
    fn doubted(reading: Reading, doubt: Option<Doubt>) -> Parsed {
        let mut p = Parsed::exact(reading);
        if let Some(d) = doubt {
            p.alternatives.push((Reading::Malformed(Malformed::Doubtful), Why::Ambiguous(d)));
        }
        p
    }

    fn quirk(reading: Reading, program: Reading, q: Quirk) -> Parsed {
        Parsed { reading, alternatives: vec![(program, Why::KnownQuirk(q))] }
    }
}

/// What the program does with a frame, as its verdict and TOTALS show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Passed; only `seen` moves.
    Passed,
    /// Passed and counted as malformed.
    Malformed,
    /// Matched and dropped.
    Dropped,
    /// Matched and passed (count mode).
    Counted,
    /// Matched, allowlisted, passed.
    Allowed,
    /// A non-first fragment that followed its datagram's drop.
    FollowedDrop,
    /// A non-first fragment that followed its datagram's pass.
    FollowedPass,
    /// Unjudged and dropped (fail closed).
    UnjudgedDropped,
    /// Unjudged and passed (count mode, or `unjudged = pass`).
    UnjudgedPassed,
    /// Unjudged, allowlisted, passed.
    UnjudgedAllowed,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Passed,
        Outcome::Malformed,
        Outcome::Dropped,
        Outcome::Counted,
        Outcome::Allowed,
        Outcome::FollowedDrop,
        Outcome::FollowedPass,
        Outcome::UnjudgedDropped,
        Outcome::UnjudgedPassed,
        Outcome::UnjudgedAllowed,
    ];

    pub fn verdict(self) -> u32 {
        match self {
            Outcome::Dropped | Outcome::FollowedDrop | Outcome::UnjudgedDropped => XDP_DROP,
            _ => XDP_PASS,
        }
    }

    fn unjudged(self) -> bool {
        matches!(
            self,
            Outcome::UnjudgedDropped | Outcome::UnjudgedPassed | Outcome::UnjudgedAllowed
        )
    }

    /// How TOTALS move for one frame of `len` bytes with this outcome. `untracked` and
    /// `admitted` depend on the per-source table's budget, not on the frame: left at 0.
    pub fn totals(self, len: u64) -> Totals {
        let matched = matches!(self, Outcome::Dropped | Outcome::Counted | Outcome::Allowed);
        let dropped = self.verdict() == XDP_DROP;
        Totals {
            seen: 1,
            matched: matched as u64,
            matched_bytes: if matched { len } else { 0 },
            dropped: dropped as u64,
            dropped_bytes: if dropped { len } else { 0 },
            allowed: matches!(self, Outcome::Allowed | Outcome::UnjudgedAllowed) as u64,
            malformed: (self == Outcome::Malformed) as u64,
            fragments_followed: matches!(self, Outcome::FollowedDrop | Outcome::FollowedPass)
                as u64,
            unjudged: self.unjudged() as u64,
            unjudged_bytes: if self.unjudged() { len } else { 0 },
            ..Totals::default()
        }
    }

    /// The outcome a verdict and a change of TOTALS (for one frame of `len` bytes) show, if
    /// they are consistent with one.
    pub fn observed(verdict: u32, delta: &Totals, len: u64) -> Option<Outcome> {
        let d = Totals {
            untracked: 0,
            untracked_bytes: 0,
            admitted: 0,
            admitted_evidence: 0,
            ..*delta
        };
        Outcome::ALL.into_iter().find(|o| o.verdict() == verdict && o.totals(len) == d)
    }
}

/// A possible outcome for a frame, with what it leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub outcome: Outcome,
    pub effect: Effect,
    /// None for the documented outcome.
    pub why: Option<Why>,
}

/// State a frame leaves in FRAGMENTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A first fragment matched: its datagram's later fragments get this verdict (true: drop).
    Remember(FragmentKey, bool),
    /// The datagram's entry turned out to be gone (LRU eviction).
    Forget(FragmentKey),
}

/// Matched first fragments recorded within this many insertions are certainly still in the
/// program's FRAGMENTS (an LRU of `FRAGMENT_CAPACITY` = 4,096 entries, which may evict a little
/// before it is full: CPUs keep local free lists of up to 128 nodes). Older ones may be gone.
const SURELY_REMEMBERED: u64 = 1_024;

/// The reference: settings plus the fragment state.
pub struct Reference {
    drop: bool,
    unjudged_drop: bool,
    tcp: bool,
    udp: bool,
    dst: bool,
    src: bool,
    ports: Vec<bool>,
    allow: Vec<Cidr>,
    /// Datagram → (its first fragment was dropped, insertion number).
    fragments: HashMap<FragmentKey, (bool, u64)>,
    inserts: u64,
}

impl Reference {
    pub fn new(s: &Settings) -> Reference {
        let mut ports = vec![false; 1 << 16];
        for p in &s.ports {
            ports[*p as usize] = true;
        }
        Reference {
            drop: s.mode == Mode::Drop,
            unjudged_drop: s.unjudged_action() == portguard::settings::Unjudged::Drop,
            tcp: s.protocols.contains(&Protocol::Tcp),
            udp: s.protocols.contains(&Protocol::Udp),
            dst: matches!(s.direction, Direction::Dst | Direction::Both),
            src: matches!(s.direction, Direction::Src | Direction::Both),
            ports,
            allow: s.allow.clone(),
            fragments: HashMap::new(),
            inserts: 0,
        }
    }

    /// The acceptable judgements for `frame`, the documented one first.
    pub fn expect(&self, frame: &[u8]) -> (Parsed, Vec<Judgement>) {
        let parsed = read(frame);
        let mut out = self.judge(&parsed.reading, None);
        for (r, why) in &parsed.alternatives {
            out.extend(self.judge(r, Some(*why)));
        }
        (parsed, out)
    }

    /// Records the effect of the judgement the program was seen to follow.
    pub fn commit(&mut self, j: &Judgement) {
        match j.effect {
            Effect::None => {}
            Effect::Remember(key, drop) => {
                self.fragments.insert(key, (drop, self.inserts));
                self.inserts += 1;
            }
            Effect::Forget(key) => {
                self.fragments.remove(&key);
            }
        }
    }

    /// Datagrams whose first fragment matched, so far.
    pub fn datagrams_remembered(&self) -> usize {
        self.fragments.len()
    }

    fn judge(&self, r: &Reading, why: Option<Why>) -> Vec<Judgement> {
        let one = |outcome, effect| vec![Judgement { outcome, effect, why }];
        match r {
            Reading::NotIp | Reading::NoPorts { .. } => one(Outcome::Passed, Effect::None),
            Reading::Malformed(_) => one(Outcome::Malformed, Effect::None),
            Reading::Ports(p) => {
                let outcome = self.ports(p);
                let effect = match (outcome, p.first_fragment) {
                    (Outcome::Dropped | Outcome::Counted | Outcome::Allowed, Some(k)) => {
                        Effect::Remember(k, outcome == Outcome::Dropped)
                    }
                    _ => Effect::None,
                };
                one(outcome, effect)
            }
            Reading::Unjudged(u) => {
                let outcome = self.unjudged(u);
                let effect = match (outcome, u.first_fragment) {
                    (Outcome::Passed, _) | (_, None) => Effect::None,
                    (o, Some(k)) => Effect::Remember(k, o == Outcome::UnjudgedDropped),
                };
                one(outcome, effect)
            }
            Reading::Fragment(key) => match self.fragments.get(key) {
                None => one(Outcome::Passed, Effect::None),
                Some(&(drop, n)) => {
                    let followed = if drop { Outcome::FollowedDrop } else { Outcome::FollowedPass };
                    let mut v = one(followed, Effect::None);
                    if self.inserts - n > SURELY_REMEMBERED {
                        v.push(Judgement {
                            outcome: Outcome::Passed,
                            effect: Effect::Forget(*key),
                            why: why.or(Some(Why::Evicted)),
                        });
                    }
                    v
                }
            },
        }
    }

    fn unjudged(&self, u: &Unjudged) -> Outcome {
        let guarded_protocol = match u.protocol {
            Some(Protocol::Tcp) => self.tcp,
            Some(Protocol::Udp) => self.udp,
            None => self.tcp || self.udp,
        };
        if !guarded_protocol {
            Outcome::Passed
        } else if u.src.is_some_and(|src| self.allow.iter().any(|c| c.contains(src))) {
            Outcome::UnjudgedAllowed
        } else if self.unjudged_drop {
            Outcome::UnjudgedDropped
        } else {
            Outcome::UnjudgedPassed
        }
    }

    fn ports(&self, p: &Ports) -> Outcome {
        let guarded_protocol = match p.protocol {
            Protocol::Tcp => self.tcp,
            Protocol::Udp => self.udp,
        };
        let hit = (self.dst && self.ports[p.dport as usize])
            || (self.src && self.ports[p.sport as usize]);
        if !guarded_protocol || !hit {
            Outcome::Passed
        } else if self.allow.iter().any(|c| c.contains(p.src)) {
            Outcome::Allowed
        } else if self.drop {
            Outcome::Dropped
        } else {
            Outcome::Counted
        }
    }
}

/// Reads a frame as the documented semantics do (see the module doc).
pub fn read(frame: &[u8]) -> Parsed {
    match link_layer(frame) {
        Err(m) => Parsed::exact(Reading::Malformed(m)),
        Ok(Network::Ipv4(off)) => ipv4(&frame[off..]),
        Ok(Network::Ipv6(off)) => ipv6(&frame[off..]),
        Ok(Network::Other) => Parsed::exact(Reading::NotIp),
        Ok(Network::TooDeep) => Parsed::exact(Reading::Unjudged(Unjudged {
            protocol: None,
            src: None,
            first_fragment: None,
        })),
    }
}

enum Network {
    /// IPv4 or IPv6 at this offset.
    Ipv4(usize),
    Ipv6(usize),
    Other,
    /// More VLAN tags than followed.
    TooDeep,
}

/// Ethernet, up to `MAX_VLAN_TAGS` VLAN tags, then an optional PPPoE session header (not in
/// etherparse). More tags: unjudged (Linux peels priority tags at any depth).
fn link_layer(f: &[u8]) -> Result<Network, Malformed> {
    let eth = Ethernet2HeaderSlice::from_slice(f).map_err(|_| Malformed::LinkCut)?;
    let mut proto = eth.ether_type().0;
    let mut off = eth.slice().len();
    let mut tags = 0;
    while VLAN_TPIDS.contains(&proto) {
        if tags == MAX_VLAN_TAGS {
            return Ok(Network::TooDeep);
        }
        let tag = SingleVlanHeaderSlice::from_slice(&f[off..]).map_err(|_| Malformed::LinkCut)?;
        proto = tag.ether_type().0;
        off += tag.slice().len();
        tags += 1;
    }
    if proto == ETH_P_PPP_SES {
        // Version/type, code, session id, length (unchecked), then the PPP protocol.
        let h = f.get(off..off + 8).ok_or(Malformed::LinkCut)?;
        if h[0] != 0x11 || h[1] != 0 {
            return Err(Malformed::BadPppoe);
        }
        off += 8;
        proto = match u16::from_be_bytes([h[6], h[7]]) {
            PPP_IP => ETH_P_IP,
            PPP_IPV6 => ETH_P_IPV6,
            _ => return Ok(Network::Other),
        };
    }
    Ok(match proto {
        ETH_P_IP => Network::Ipv4(off),
        ETH_P_IPV6 => Network::Ipv6(off),
        _ => Network::Other,
    })
}

fn v4_key(src: [u8; 4], dst: [u8; 4], id: u16, proto: u8) -> FragmentKey {
    FragmentKey {
        src: SourceKey::v4(src, 32).addr,
        dst: SourceKey::v4(dst, 32).addr,
        id: id as u32,
        proto,
        _pad: [0; 3],
    }
}

/// The IPv6 reassembly key has no protocol: the fragments of one datagram may carry different
/// next headers.
fn v6_key(src: [u8; 16], dst: [u8; 16], id: u32) -> FragmentKey {
    FragmentKey { src, dst, id, proto: 0, _pad: [0; 3] }
}

/// `b` starts at the IPv4 header.
fn ipv4(b: &[u8]) -> Parsed {
    use err::ipv4::{HeaderError, HeaderSliceError};
    let h = match Ipv4HeaderSlice::from_slice(b) {
        Ok(h) => h,
        Err(HeaderSliceError::Len(_)) if b.len() >= 20 => return ipv4_options_cut(b),
        Err(HeaderSliceError::Len(_)) => {
            return Parsed::exact(Reading::Malformed(Malformed::Ipv4Cut));
        }
        Err(HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. })) => {
            return Parsed::exact(Reading::Malformed(Malformed::Ipv4Version));
        }
        Err(HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. })) => {
            return Parsed::exact(Reading::Malformed(Malformed::Ipv4HeaderLength));
        }
    };
    let hlen = h.slice().len();
    let total = h.total_len() as usize;
    if total < hlen {
        return Parsed::exact(Reading::Malformed(Malformed::Ipv4TotalLength));
    }
    let mut doubt = None;
    if Sum16BitWords::new().add_slice(h.slice()).ones_complement() != 0 {
        doubt = Some(Doubt::Ipv4Checksum);
    } else if total > b.len() {
        doubt = Some(Doubt::DatagramCut);
    }
    // What follows the datagram is Ethernet padding, which the stack trims.
    let b = &b[..total.min(b.len())];
    let proto = h.protocol().0;
    if proto != TCP && proto != UDP {
        return Parsed::doubted(Reading::NoPorts { ext_headers: 0 }, doubt);
    }
    let key = v4_key(h.source(), h.destination(), h.identification(), proto);
    if h.fragments_offset().value() != 0 {
        return Parsed::doubted(Reading::Fragment(key), doubt);
    }
    let first = h.more_fragments().then_some(key);
    transport(b, hlen, total, proto, IpAddr::V4(h.source_addr()), first, doubt)
}

/// An IPv4 header whose options reach past the frame: malformed. The program notices only
/// when it goes on to read ports (see `Quirk::Ipv4OptionsUnread`).
fn ipv4_options_cut(b: &[u8]) -> Parsed {
    let hlen = (b[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([b[2], b[3]]) as usize;
    if total < hlen {
        return Parsed::exact(Reading::Malformed(Malformed::Ipv4TotalLength));
    }
    let documented = Reading::Malformed(Malformed::Ipv4OptionsCut);
    let proto = b[9];
    let offset = u16::from_be_bytes([b[6], b[7]]) & 0x1fff;
    let program = if proto != TCP && proto != UDP {
        Reading::NoPorts { ext_headers: 0 }
    } else if offset != 0 {
        let a = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Reading::Fragment(v4_key(a(12), a(16), u16::from_be_bytes([b[4], b[5]]), proto))
    } else {
        return Parsed::exact(documented);
    };
    Parsed::quirk(documented, program, Quirk::Ipv4OptionsUnread)
}

/// `b` starts at the IPv6 header.
fn ipv6(b: &[u8]) -> Parsed {
    use err::ipv6::HeaderSliceError;
    let h = match Ipv6HeaderSlice::from_slice(b) {
        Ok(h) => h,
        Err(HeaderSliceError::Len(_)) => {
            return Parsed::exact(Reading::Malformed(Malformed::Ipv6Cut));
        }
        Err(HeaderSliceError::Content(_)) => {
            return Parsed::exact(Reading::Malformed(Malformed::Ipv6Version));
        }
    };
    // A payload length of 0 (no Jumbo option): Linux takes the frame's length, and delivers
    // (the kernel oracle shows it), so no doubt about what follows.
    let end = match h.payload_length() {
        0 => b.len(),
        n => 40 + n as usize,
    };
    let mut doubt = (end > b.len()).then_some(Doubt::DatagramCut);
    // What follows the datagram is Ethernet padding, which the stack trims.
    let b = &b[..end.min(b.len())];
    let (src, dst) = (h.source(), h.destination());
    let mut next = h.next_header().0;
    let mut p = 40;
    let mut first = None;
    let mut depth = 0;
    while next != TCP && next != UDP {
        let is_ext = EIGHT_OCTET_EXTS.contains(&next) || next == AH || next == FRAGMENT;
        if !is_ext {
            if p > b.len() {
                // A first fragment's chain, run past it: whatever it names, unjudged.
                return chain_cut(src_of(&h), first, doubt);
            }
            let documented = Reading::NoPorts { ext_headers: depth };
            return Parsed::doubted(documented, doubt);
        }
        if depth == MAX_IPV6_EXT_HEADERS {
            // Linux follows any depth: what lies behind may be a guarded port.
            return Parsed::exact(Reading::Unjudged(Unjudged {
                protocol: None,
                src: Some(IpAddr::V6(h.source_addr())),
                first_fragment: first,
            }));
        }
        depth += 1;
        let rest = b.get(p..).unwrap_or(&[]);
        if next == FRAGMENT {
            let Ok(fh) = Ipv6FragmentHeaderSlice::from_slice(rest) else {
                if first.is_some() {
                    return chain_cut(src_of(&h), first, doubt);
                }
                // The stack cannot tell what this fragment is: it discards it.
                return Parsed::exact(Reading::Malformed(Malformed::ExtCut));
            };
            let key = v6_key(src, dst, fh.identification());
            if fh.fragment_offset().value() != 0 {
                return Parsed::doubted(Reading::Fragment(key), doubt);
            }
            if fh.more_fragments() {
                first = Some(key);
            }
            // else an atomic fragment (RFC 6946): a whole datagram.
            next = fh.next_header().0;
            p += 8;
            continue;
        }
        let header = if next == AH {
            if rest.len() >= 2 && rest[1] == 0 {
                doubt = doubt.or(Some(Doubt::AhZeroLength));
                rest.get(..8).map(|s| (s[0], 8))
            } else {
                IpAuthHeaderSlice::from_slice(rest)
                    .ok()
                    .map(|a| (a.next_header().0, a.slice().len()))
            }
        } else {
            Ipv6RawExtHeaderSlice::from_slice(rest)
                .ok()
                .map(|e| (e.next_header().0, e.slice().len()))
        };
        let header = match header {
            Some(h) => h,
            // A first fragment goes on by each header's first two bytes, as far as they are
            // there: reassembly completes the rest, and what follows is what they name.
            None if first.is_some() && rest.len() >= 2 => {
                let units = rest[1] as usize;
                (rest[0], if next == AH { (units + 2) * 4 } else { (units + 1) * 8 })
            }
            None if first.is_some() => return chain_cut(src_of(&h), first, doubt),
            None => return ipv6_ext_cut(rest, depth),
        };
        let (n, len) = header;
        next = n;
        p += len;
    }
    // A first fragment whose chain ends past it is judged by what transport() can read: the
    // protocol the chain names, unjudged.
    transport(b, p, end, next, IpAddr::V6(h.source_addr()), first, doubt)
}

fn src_of(h: &Ipv6HeaderSlice) -> IpAddr {
    IpAddr::V6(h.source_addr())
}

/// A first fragment whose extension chain runs past it: reassembly may complete the chain
/// (Linux checks RFC 7112 only in part, the kernel oracle shows), so the frame is unjudged.
fn chain_cut(src: IpAddr, first: Option<FragmentKey>, doubt: Option<Doubt>) -> Parsed {
    let u = Unjudged { protocol: None, src: Some(src), first_fragment: first };
    Parsed::doubted(Reading::Unjudged(u), doubt)
}

/// Extension header number `depth` (1-based) ends past the frame: malformed. The program reads
/// only its first two bytes (next header, length); see `Quirk::Ipv6ExtUnread`.
fn ipv6_ext_cut(rest: &[u8], depth: usize) -> Parsed {
    let documented = Reading::Malformed(Malformed::ExtCut);
    let Some(&next) = rest.first().filter(|_| rest.len() >= 2) else {
        return Parsed::exact(documented);
    };
    let has_more = next == TCP
        || next == UDP
        || next == AH
        || next == FRAGMENT
        || EIGHT_OCTET_EXTS.contains(&next);
    if has_more {
        // The program goes on to read past the frame: malformed too.
        return Parsed::exact(documented);
    }
    Parsed::quirk(documented, Reading::NoPorts { ext_headers: depth }, Quirk::Ipv6ExtUnread)
}

/// TCP or UDP at `off` in `b` (which starts at the IP header); `end`: where the IP datagram
/// ends by its length field.
fn transport(
    b: &[u8],
    off: usize,
    end: usize,
    proto: u8,
    src: IpAddr,
    first_fragment: Option<FragmentKey>,
    mut doubt: Option<Doubt>,
) -> Parsed {
    let t = b.get(off..).unwrap_or(&[]);
    let protocol = if proto == TCP { Protocol::Tcp } else { Protocol::Udp };
    if let Some(first) = first_fragment
        && t.len() < if proto == TCP { 20 } else { 8 }
    {
        // A first fragment needs only its ports: reassembly completes the header (tiny
        // fragments, RFC 1858, which Linux accepts and delivers).
        if t.len() < 4 {
            return Parsed::exact(Reading::Unjudged(Unjudged {
                protocol: Some(protocol),
                src: Some(src),
                first_fragment: Some(first),
            }));
        }
        let ports = Ports {
            protocol,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
            src,
            first_fragment,
        };
        return Parsed::doubted(Reading::Ports(ports), doubt);
    }
    if proto == TCP {
        if t.len() < 20 {
            return Parsed::exact(Reading::Malformed(Malformed::TcpCut));
        }
        match TcpHeaderSlice::from_slice(t) {
            Ok(_) => {}
            Err(err::tcp::HeaderSliceError::Content(_)) => {
                doubt = doubt.or(Some(Doubt::TcpDataOffset));
            }
            // In a first fragment the options continue in the next one: delivered (the kernel
            // oracle shows it), no doubt.
            Err(err::tcp::HeaderSliceError::Len(_)) if first_fragment.is_none() => {
                doubt = doubt.or(Some(Doubt::TcpOptionsCut));
            }
            Err(err::tcp::HeaderSliceError::Len(_)) => {}
        }
    } else {
        let Ok(u) = UdpHeaderSlice::from_slice(t) else {
            return Parsed::exact(Reading::Malformed(Malformed::UdpCut));
        };
        // A first fragment's UDP length is the whole datagram's. Over IPv6 a length of 0 means
        // "the payload length's" to Linux (delivered, as the kernel oracle shows).
        let len = u.length() as usize;
        let v6_zero = src.is_ipv6() && len == 0;
        if first_fragment.is_none() && !v6_zero && (len < 8 || off + len > end.min(b.len())) {
            doubt = doubt.or(Some(Doubt::UdpLength));
        }
    }
    // Both headers start with the source and destination ports.
    let ports = Ports {
        protocol,
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        src,
        first_fragment,
    };
    Parsed::doubted(Reading::Ports(ports), doubt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{Ext, Frame, v6};

    const SRC4: [u8; 4] = [198, 18, 0, 2];
    const DST4: [u8; 4] = [198, 18, 0, 1];
    const SRC6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]);
    const DST6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);

    fn outcomes(r: &Reference, f: &Frame) -> Vec<Outcome> {
        r.expect(&f.build()).1.iter().map(|j| j.outcome).collect()
    }

    #[test]
    fn the_suites_shapes_read_as_documented() {
        let r = Reference::new(&Settings::default());
        let hit = Frame::tcp4(SRC4, DST4, 40000, 2745);
        for f in [
            hit.clone(),
            hit.clone().vlan(0x88a8, 1).vlan(0x8100, 2).pppoe(),
            Frame::udp6(SRC6, DST6, 1, 2745).ext(Ext::HopByHop(0)).ext(Ext::Ah(1)),
            Frame::udp6(SRC6, DST6, 1, 2745).ext(Ext::Mobility(1)).ext(Ext::Shim6(0)),
        ] {
            assert_eq!(outcomes(&r, &f), [Outcome::Dropped], "{f:?}");
        }
        for f in [
            Frame::tcp4(SRC4, DST4, 2745, 443),
            Frame::arp(),
            Frame::ip6_other(SRC6, DST6, 59),
            Frame::ip4_other(SRC4, DST4, 1),
        ] {
            assert_eq!(outcomes(&r, &f), [Outcome::Passed], "{f:?}");
        }
        for f in [
            hit.clone().truncate(53),
            hit.clone().pppoe().poke(14, 0x12),
            hit.clone().poke(14, 0x44),
        ] {
            assert_eq!(outcomes(&r, &f), [Outcome::Malformed], "{f:?}");
        }
        // Ports that cannot be read, on a frame Linux would deliver: fail closed.
        let tags = |n: u16| (1..=n).fold(hit.clone(), |f, i| f.vlan(0x8100, i));
        assert_eq!(outcomes(&r, &tags(MAX_VLAN_TAGS as u16)), [Outcome::Dropped]);
        for f in [
            tags(MAX_VLAN_TAGS as u16 + 1),
            hit.clone().ipv4_fragment(0, true, 9).ip_payload(2),
            (0..=MAX_IPV6_EXT_HEADERS)
                .fold(Frame::udp6(SRC6, DST6, 1, 443), |f, _| f.ext(Ext::DestOpts(0))),
        ] {
            assert_eq!(outcomes(&r, &f), [Outcome::UnjudgedDropped], "{f:?}");
        }
    }

    #[test]
    fn fragments_follow_their_first() {
        let mut r = Reference::new(&Settings::default());
        let first = Frame::udp4(SRC4, DST4, 1, 2745).ipv4_fragment(0, true, 7).build();
        let tail = Frame::ip4_other(SRC4, DST4, 17).ipv4_fragment(3, false, 7).build();
        assert_eq!(r.expect(&tail).1[0].outcome, Outcome::Passed);
        let (_, js) = r.expect(&first);
        assert_eq!(js[0].outcome, Outcome::Dropped);
        r.commit(&js[0]);
        assert_eq!(r.expect(&tail).1[0].outcome, Outcome::FollowedDrop);
        // Another protocol, same id: another datagram.
        let other = Frame::ip4_other(SRC4, DST4, 6).ipv4_fragment(3, false, 7).build();
        assert_eq!(r.expect(&other).1[0].outcome, Outcome::Passed);
    }

    #[test]
    fn ambiguous_frames_accept_malformed_too() {
        let r = Reference::new(&Settings::default());
        let f = Frame::udp4(SRC4, DST4, 1, 2745).poke(24, 0).poke(25, 0);
        assert_eq!(outcomes(&r, &f), [Outcome::Dropped, Outcome::Malformed]);
        let (p, _) = r.expect(&f.build());
        assert_eq!(p.alternatives[0].1, Why::Ambiguous(Doubt::Ipv4Checksum));
        // TCP data offset 4.
        let f = Frame::tcp4(SRC4, DST4, 1, 2745).poke(14 + 20 + 12, 0x40);
        assert_eq!(outcomes(&r, &f), [Outcome::Dropped, Outcome::Malformed]);
    }

    #[test]
    fn counters_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::observed(o.verdict(), &o.totals(60), 60), Some(o));
        }
    }
}
