//! What an admin asks portguard to do, validated, and its translation into the program's
//! CONFIG and PORTS contents.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use portguard_common::{
    ACTION_COUNT, ACTION_DROP, ALLOW_HAS_V4, ALLOW_HAS_V6, Config, DEFAULT_PORT, DIR_DST, DIR_SRC,
    PROTO_TCP, PROTO_UDP,
};

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

    pub fn bits(self) -> u8 {
        match self {
            Direction::Dst => DIR_DST,
            Direction::Src => DIR_SRC,
            Direction::Both => DIR_DST | DIR_SRC,
        }
    }
}

/// Guarded L4 protocols.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize, serde::Serialize,
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

    pub fn bit(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
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
        Ok(Cidr { addr: mask(addr, len), len })
    }
}

impl Cidr {
    /// Whether `ip` lies in this prefix (an IPv4 address never lies in an IPv6 prefix, as in
    /// the program's two tries).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Drop,
            ports: vec![DEFAULT_PORT],
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            direction: Direction::Dst,
            allow: Vec::new(),
            admit_per_slice: None,
        }
    }
}

impl Settings {
    /// Nothing guarded: what a map set holds before anything is written.
    pub fn empty() -> Settings {
        Settings { ports: Vec::new(), allow: Vec::new(), ..Settings::default() }
    }

    /// The CONFIG entry these settings become, for a source table of `capacity` entries on
    /// `cpus` CPUs.
    pub fn config(&self, capacity: u32, cpus: u32) -> Config {
        let mut allow = 0;
        for c in &self.allow {
            allow |= if c.addr.is_ipv4() { ALLOW_HAS_V4 } else { ALLOW_HAS_V6 };
        }
        Config {
            action: match self.mode {
                Mode::Drop => ACTION_DROP,
                Mode::Count => ACTION_COUNT,
            },
            protocols: self.protocols.iter().fold(0, |b, p| b | p.bit()),
            direction: self.direction.bits(),
            allow,
            admit_per_slice: self
                .admit_per_slice
                .unwrap_or_else(|| portguard_common::admit_per_slice(capacity, cpus)),
        }
    }

    /// "tcp+udp dst": what the ports apply to.
    pub fn scope(&self) -> String {
        let protos: Vec<&str> = self.protocols.iter().map(|p| p.as_str()).collect();
        format!("{} {}", protos.join("+"), self.direction.as_str())
    }

    /// One line for logs and headers: "drop tcp+udp dst port 2745".
    pub fn summary(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut s = format!("{} {} port {}", self.mode.as_str(), self.scope(), ports.join(","));
        if !self.allow.is_empty() {
            let a: Vec<String> = self.allow.iter().map(Cidr::to_string).collect();
            s.push_str(&format!(", allow {}", a.join(",")));
        }
        s
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
    fn default_config_drops_tcp_and_udp_to_2745() {
        let s = Settings::default();
        let c = s.config(65_536, 2);
        assert_eq!(c.admit_per_slice, 274);
        assert_eq!(c.action, ACTION_DROP);
        assert_eq!(c.protocols, PROTO_TCP | PROTO_UDP);
        assert_eq!(c.direction, DIR_DST);
        assert_eq!(c.allow, 0);
        assert_eq!(s.summary(), "drop tcp+udp dst port 2745");
    }
}
