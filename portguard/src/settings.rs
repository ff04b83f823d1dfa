//! What an admin asks portguard to do, validated. `wire.rs` turns it into map contents.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use portguard_common::DEFAULT_PORT;

/// What happens to a matched packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop it (XDP_DROP).
    Drop,
    /// Count it and let it through (XDP_PASS).
    Count,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Drop => "drop",
            Mode::Count => "count",
        }
    }
}

/// Which port of a packet is compared with the guarded set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The destination port: someone probing a guarded port.
    Dst,
    /// The source port: a host answering from a guarded port (an infected host's backdoor).
    Src,
    /// Either.
    Both,
}

impl Direction {
    /// The name used in output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Dst => "dst",
            Direction::Src => "src",
            Direction::Both => "both",
        }
    }
}

/// Guarded L4 protocols.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An IPv4 or IPv6 prefix, e.g. `198.18.0.0/15` or `2001:db8::/32`; a bare address is a
/// host prefix. Host bits below the prefix are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr =
            a.parse().map_err(|_| format!("invalid CIDR '{s}': '{a}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("invalid CIDR '{s}': prefix length must be 0..={max}")),
            },
        };
        let cidr = Cidr { addr: mask(addr, len), len };
        // IPv4 packets are looked up in the IPv4 trie, so an IPv4-mapped IPv6 prefix would match
        // only IPv6 packets that carry such a source, never the IPv4 host it seems to name:
        // refused, with what to write instead.
        if let Some(v4) = cidr.mapped_v4() {
            return Err(format!(
                "'{s}' is an IPv4-mapped IPv6 prefix: it would match only IPv6 packets with such a \
                 source, never IPv4 packets from {}; write {v4}",
                v4.addr
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The IPv4 prefix an IPv4-mapped IPv6 prefix (inside ::ffff:0:0/96) means, if it is one.
    fn mapped_v4(&self) -> Option<Cidr> {
        let IpAddr::V6(a) = self.addr else { return None };
        let v4 = a.to_ipv4_mapped()?;
        (self.len >= 96).then(|| Cidr { addr: IpAddr::V4(v4), len: self.len - 96 })
    }

    /// Whether it covers a whole address family (0.0.0.0/0 or ::/0): allowing it switches off
    /// dropping for every IPv4 or every IPv6 source.
    pub fn is_everything(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` lies in this prefix (an IPv4 address never lies in an IPv6 prefix, as in
    /// the program's two tries).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

/// `addr` with the bits past `len` cleared.
pub(crate) fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len as u32) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What happens to a frame that could reach a guarded port but whose ports cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unjudged {
    /// Drop it: fail closed.
    Drop,
    /// Pass it (and count it).
    Pass,
}

impl Unjudged {
    pub fn as_str(self) -> &'static str {
        match self {
            Unjudged::Drop => "drop",
            Unjudged::Pass => "pass",
        }
    }
}

/// Everything the program's behaviour depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub ports: Vec<u16>,
    pub protocols: Vec<Protocol>,
    pub direction: Direction,
    pub allow: Vec<Cidr>,
    /// Override of the admission budget (new sources per CPU per slice); by default it is
    /// derived from the table's capacity and the CPU count (`admit_per_slice`).
    pub admit_per_slice: Option<u32>,
    /// What to do with unjudged frames; None: what the mode does (drop mode drops them, count
    /// mode passes them).
    pub unjudged: Option<Unjudged>,
    /// Sources are counted per prefix of these lengths.
    pub v4_prefix: u8,
    pub v6_prefix: u8,
}

/// Sources are counted per IPv4 address, and per IPv6 /64: one host (or one scanner rotating
/// through its /64) is one row.
pub const DEFAULT_V4_PREFIX: u8 = 32;
pub const DEFAULT_V6_PREFIX: u8 = 64;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Drop,
            ports: vec![DEFAULT_PORT],
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            direction: Direction::Dst,
            allow: Vec::new(),
            admit_per_slice: None,
            unjudged: None,
            v4_prefix: DEFAULT_V4_PREFIX,
            v6_prefix: DEFAULT_V6_PREFIX,
        }
    }
}

impl Settings {
    /// Nothing guarded: what a map set holds before anything is written.
    pub fn empty() -> Settings {
        Settings { ports: Vec::new(), allow: Vec::new(), ..Settings::default() }
    }

    /// "tcp+udp dst": what the ports apply to.
    pub fn scope(&self) -> String {
        let protos: crate::wire::Protocols = self.protocols.iter().copied().collect();
        format!("{protos} {}", self.direction.as_str())
    }

    /// What differs from `self` to `new`, one phrase each: "mode drop → count", "ports +3000",
    /// "allow -198.18.0.0/24". Empty when nothing does.
    pub fn diff(&self, new: &Settings) -> Vec<String> {
        fn set<T: PartialEq + fmt::Display>(what: &str, old: &[T], new: &[T]) -> Option<String> {
            let added: Vec<String> =
                new.iter().filter(|x| !old.contains(x)).map(|x| format!("+{x}")).collect();
            let gone: Vec<String> =
                old.iter().filter(|x| !new.contains(x)).map(|x| format!("-{x}")).collect();
            let all = [added, gone].concat();
            (!all.is_empty()).then(|| format!("{what} {}", all.join(" ")))
        }
        let mut out = Vec::new();
        if self.mode != new.mode {
            out.push(format!("mode {} → {}", self.mode.as_str(), new.mode.as_str()));
        }
        if self.direction != new.direction {
            out.push(format!("direction {} → {}", self.direction.as_str(), new.direction.as_str()));
        }
        out.extend(set("ports", &self.ports, &new.ports));
        out.extend(set("protocols", &self.protocols, &new.protocols));
        out.extend(set("allow", &self.allow, &new.allow));
        if self.admit_per_slice != new.admit_per_slice {
            out.push("admission budget changed".into());
        }
        // A mode change carries the default along with it; only an override is news.
        if self.unjudged != new.unjudged && self.unjudged_action() != new.unjudged_action() {
            out.push(format!(
                "unjudged {} → {}",
                self.unjudged_action().as_str(),
                new.unjudged_action().as_str()
            ));
        }
        if (self.v4_prefix, self.v6_prefix) != (new.v4_prefix, new.v6_prefix) {
            out.push(format!(
                "source prefixes /{}, /{} → /{}, /{}",
                self.v4_prefix, self.v6_prefix, new.v4_prefix, new.v6_prefix
            ));
        }
        out
    }

    /// What is done with unjudged frames under these settings.
    pub fn unjudged_action(&self) -> Unjudged {
        self.unjudged.unwrap_or(match self.mode {
            Mode::Drop => Unjudged::Drop,
            Mode::Count => Unjudged::Pass,
        })
    }

    /// One line for logs and headers: "drop tcp+udp dst port 2745".
    pub fn summary(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut s = format!("{} {} port {}", self.mode.as_str(), self.scope(), ports.join(","));
        if !self.allow.is_empty() {
            let a: Vec<String> = self.allow.iter().map(Cidr::to_string).collect();
            s.push_str(&format!(", allow {}", a.join(",")));
        }
        // Only what departs from the defaults, so the common line stays short.
        if self.unjudged.is_some_and(|u| u != self.unjudged_action_by_mode()) {
            s.push_str(&format!(", unjudged {}", self.unjudged_action().as_str()));
        }
        if (self.v4_prefix, self.v6_prefix) != (DEFAULT_V4_PREFIX, DEFAULT_V6_PREFIX) {
            s.push_str(&format!(", sources per /{} and /{}", self.v4_prefix, self.v6_prefix));
        }
        s
    }

    fn unjudged_action_by_mode(&self) -> Unjudged {
        Settings { unjudged: None, ..self.clone() }.unjudged_action()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_mask() {
        let c: Cidr = "198.18.1.7/15".parse().unwrap();
        assert_eq!(c.to_string(), "198.18.0.0/15");
        let c: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(c.len, 128);
        let c: Cidr = "2001:db8:ffff::/32".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::/32");
        assert!("198.18.0.0/33".parse::<Cidr>().unwrap_err().contains("0..=32"));
        assert!("nonsense/8".parse::<Cidr>().unwrap_err().contains("not an IP address"));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().len, 0);
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().is_everything());
        assert!(!"0.0.0.0/1".parse::<Cidr>().unwrap().is_everything());
    }

    #[test]
    fn ipv4_mapped_prefixes_are_refused_with_their_ipv4_form() {
        let e = "::ffff:198.18.7.10/128".parse::<Cidr>().unwrap_err();
        assert!(e.contains("write 198.18.7.10/32"), "{e}");
        let e = "::ffff:198.18.0.0/111".parse::<Cidr>().unwrap_err();
        assert!(e.contains("write 198.18.0.0/15"), "{e}");
        // A prefix wider than the mapped range is an ordinary IPv6 prefix.
        assert!("::/64".parse::<Cidr>().is_ok());
    }

    #[test]
    fn cidrs_contain_their_family_only() {
        let c: Cidr = "198.18.0.0/30".parse().unwrap();
        assert!(c.contains("198.18.0.3".parse().unwrap()));
        assert!(!c.contains("198.18.0.4".parse().unwrap()));
        assert!(!c.contains("::ffff:198.18.0.1".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(!all.contains("198.18.0.1".parse().unwrap()));
    }

    #[test]
    fn diff_names_each_change() {
        let a = Settings::default();
        let mut b = a.clone();
        b.mode = Mode::Count;
        b.ports.push(3000);
        b.allow.push("198.18.0.0/24".parse().unwrap());
        assert_eq!(a.diff(&b), ["mode drop → count", "ports +3000", "allow +198.18.0.0/24"]);
        assert_eq!(b.diff(&a), ["mode count → drop", "ports -3000", "allow -198.18.0.0/24"]);
        assert!(a.diff(&a).is_empty());
        let c = Settings { unjudged: Some(Unjudged::Pass), v6_prefix: 56, ..a.clone() };
        assert_eq!(a.diff(&c), ["unjudged drop → pass", "source prefixes /32, /64 → /32, /56"]);
    }

    #[test]
    fn default_settings_drop_tcp_and_udp_to_2745() {
        assert_eq!(Settings::default().summary(), "drop tcp+udp dst port 2745");
    }
}
