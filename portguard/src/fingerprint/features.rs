//! What classification needs from ONE packet, in two shapes:
//!
//! - [`Features`]: a plain Rust struct, what userspace works with (rules, p0f signatures);
//! - [`FeaturesRaw`] (portguard-common): the record the XDP program copies out of a matched TCP
//!   SYN (and of UDP datagrams among a source's first packets), to the FEATURES ring buffer.
//!   [`Features::from_raw`] turns one into the other.
//!
//! [`Features::from_frame`] parses an Ethernet frame (IPv4/IPv6, TCP/UDP, up to two VLAN tags)
//! into the same struct; the tests use it on pcap fixtures and captures, and it is the
//! reference for what the program copies: `tests/features.rs` holds the program's records to
//! it, frame by frame.
//!
//! # What the XDP program copies, and what it costs
//!
//! Header fields from bytes it already reads to judge the packet (the IP header, the first 20
//! bytes of TCP or the 8 of UDP), and two bounded copies (portguard-ebpf/src/features.rs):
//! the TCP option bytes (at most 40) and the first 8 payload bytes, byte by byte, each checked
//! against the frame and the datagram. The options are walked here, by `parse_tcp_options`
//! (p0f's corner cases in one place for records and captures alike), not in the kernel: a walk
//! there would cost a branchy loop the verifier must follow path by path, for every SYN.
//!
//! Field by field, from the IP header: `version`, `ttl` (hop limit), `tos` (IPv4 TOS / IPv6
//! traffic class, ECN bits included), `ip_id` (IPv4 only), DF and the reserved "must be zero"
//! flag, `ip_opt_len` (IHL*4-20, or the length of the IPv6 extension headers walked), `ip_len`
//! (IPv4 total length, IPv6 payload length + 40), a non-zero IPv6 flow label, `dst_v4` (the
//! IPv4 destination: masscan's and Mirai's tells are relations with it). From TCP: ports,
//! `seq`, `ack`, `window`, the flag byte and the NS bit, a non-zero urgent pointer, `doff`.
//! `payload_len` is the IP length minus all headers.
//!
//! The source address is not in the record: it travels beside it, as the SOURCES key
//! (`FeatureEvent::key`): the source as portguard counts it, an address or a prefix.
//!
//! Byte order follows portguard-common: every integer in host order, the address in network
//! order.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use portguard_common::FeaturesRaw;
use portguard_common::{FEATURE_PAYLOAD_BYTES, feature_bits};

/// Option kinds kept in order (later ones are counted, not kept): Linux sends 5, Windows 6,
/// macOS 8, OpenBSD 9, so 14 keeps every stack p0f knows whole.
pub const MAX_OPTION_KINDS: usize = 14;
/// Payload bytes kept (UDP tools are told apart by their probe payloads): what the program
/// copies.
pub const PAYLOAD_PREFIX: usize = FEATURE_PAYLOAD_BYTES;
/// p0f 3.09b stops reading options after this many (MAX_TCP_OPT); so does the parser below,
/// so that its signatures agree with p0f's byte for byte.
const P0F_MAX_TCP_OPT: usize = 24;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// TCP option kinds portguard names (others are shown as `?N`, as p0f does).
pub mod opt {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WS: u8 = 3;
    pub const SACK_PERM: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TS: u8 = 8;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// The TCP options of a segment, as p0f reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Kinds in order; only the first `MAX_OPTION_KINDS` are kept.
    pub kinds: [u8; MAX_OPTION_KINDS],
    /// Kinds seen (may exceed `MAX_OPTION_KINDS`: then `kinds` is a prefix).
    pub count: u8,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    /// The timestamp option's TSval.
    pub ts_val: Option<u32>,
    /// TSecr non-zero on a SYN (p0f's `ts2+`).
    pub ts_ecr_nz: bool,
    /// Bytes after an EOL option (p0f's `eol+N`).
    pub eol_pad: u8,
    /// Non-zero bytes after EOL (p0f's `opt+`).
    pub eol_nz: bool,
    /// A malformed option: wrong length, running past the header (p0f's `bad`).
    pub bad: bool,
}

impl TcpOptions {
    /// The kinds kept, in order.
    pub fn kinds(&self) -> &[u8] {
        &self.kinds[..(self.count as usize).min(MAX_OPTION_KINDS)]
    }

    /// More kinds were seen than kept.
    pub fn truncated(&self) -> bool {
        self.count as usize > MAX_OPTION_KINDS
    }

    /// The layout in p0f's notation: `mss,sok,ts,nop,ws`, `eol+1`, `?30`; "" for none.
    pub fn layout(&self) -> String {
        let mut s = String::new();
        for (i, k) in self.kinds().iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match *k {
                opt::EOL => s.push_str(&format!("eol+{}", self.eol_pad)),
                opt::NOP => s.push_str("nop"),
                opt::MSS => s.push_str("mss"),
                opt::WS => s.push_str("ws"),
                opt::SACK_PERM => s.push_str("sok"),
                opt::SACK => s.push_str("sack"),
                opt::TS => s.push_str("ts"),
                k => s.push_str(&format!("?{k}")),
            }
        }
        if self.truncated() {
            s.push_str(",...");
        }
        s
    }
}

/// What classification needs from one packet (a TCP SYN, or a UDP datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The sender (in the kernel event: the SOURCES key beside the 64 bytes).
    pub src: IpAddr,
    /// The IPv4 destination; `None` over IPv6.
    pub dst_v4: Option<Ipv4Addr>,
    /// 4 or 6.
    pub version: u8,
    /// TTL or hop limit, as received.
    pub ttl: u8,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN bits).
    pub tos: u8,
    /// IPv4 identification; 0 over IPv6.
    pub ip_id: u16,
    /// IPv4 don't-fragment.
    pub df: bool,
    /// IPv4 reserved flag bit ("must be zero"; p0f's `0+`).
    pub mbz: bool,
    /// IPv6 flow label non-zero (p0f's `flow`).
    pub flow: bool,
    /// IPv4 options or IPv6 extension headers, bytes.
    pub ip_opt_len: u8,
    /// IPv4 total length; IPv6 payload length + 40.
    pub ip_len: u16,
    pub transport: Transport,
    pub sport: u16,
    pub dport: u16,
    /// TCP or UDP payload bytes, from the IP lengths.
    pub payload_len: u16,
    /// The first `min(payload_len, PAYLOAD_PREFIX)` payload bytes (the rest zero).
    pub payload: [u8; PAYLOAD_PREFIX],
    /// TCP flags (0 for UDP).
    pub flags: u8,
    /// TCP NS bit (ECN nonce; p0f counts it as `ecn`).
    pub ns: bool,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Urgent pointer non-zero (p0f's `uptr+` without URG).
    pub urg_nz: bool,
    /// TCP option bytes (doff*4 - 20).
    pub tcp_opt_len: u8,
    pub options: TcpOptions,
}

impl Features {
    /// A connection attempt: SYN set, ACK, RST and FIN clear (what the XDP program fingerprints).
    pub fn is_syn(&self) -> bool {
        self.transport == Transport::Tcp
            && self.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
                == tcp_flags::SYN
    }

    /// The first stored payload bytes.
    pub fn payload_prefix(&self) -> &[u8] {
        &self.payload[..(self.payload_len as usize).min(PAYLOAD_PREFIX)]
    }

    /// IP + TCP header bytes (p0f's `tot_hdr`, used to spot windows that are multiples of the
    /// MTU).
    pub fn header_len(&self) -> u32 {
        let ip = if self.version == 4 { 20 } else { 40 };
        ip + self.ip_opt_len as u32 + 20 + self.tcp_opt_len as u32
    }
}

/// A frame that cannot be fingerprinted; the message is one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for FrameError {}

fn err<T>(msg: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError(msg.into()))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Walks TCP options as p0f 3.09b does (`process.c`), including its corner cases, so that
/// signatures agree with p0f's: an option that would run past the header stops the walk and
/// marks it bad; after EOL the rest is padding. `syn_only` gates `ts2+` as p0f does.
fn parse_tcp_options(o: &[u8], syn_only: bool) -> TcpOptions {
    let mut t = TcpOptions::default();
    let end = o.len();
    let mut i = 0;
    let mut count = 0usize;
    let mut push = |t: &mut TcpOptions, k: u8| {
        if count < MAX_OPTION_KINDS {
            t.kinds[count] = k;
        }
        count += 1;
        t.count = count as u8;
    };
    let mut aborted = false;
    while i < end && (t.count as usize) < P0F_MAX_TCP_OPT {
        let kind = o[i];
        push(&mut t, kind);
        i += 1;
        match kind {
            opt::EOL => {
                t.eol_pad = (end - i) as u8;
                // p0f's `while (data < opt_end && !*data++);` consumes the first non-zero byte
                // too, so a non-zero last byte goes unnoticed: kept as is.
                while i < end {
                    let b = o[i];
                    i += 1;
                    if b != 0 {
                        break;
                    }
                }
                if i != end {
                    t.eol_nz = true;
                    i = end;
                }
            }
            opt::NOP => {}
            opt::MSS => {
                if i + 3 > end {
                    aborted = true;
                    break;
                }
                t.bad |= o[i] != 4;
                t.mss = Some(be16(o, i + 1));
                i += 3;
            }
            opt::WS => {
                if i + 2 > end {
                    aborted = true;
                    break;
                }
                t.bad |= o[i] != 3;
                t.wscale = Some(o[i + 1]);
                i += 2;
            }
            opt::SACK_PERM => {
                if i + 1 > end {
                    aborted = true;
                    break;
                }
                t.bad |= o[i] != 2;
                i += 1;
            }
            opt::SACK => {
                if i == end || !(10..=34).contains(&o[i]) || i - 1 + o[i] as usize > end {
                    aborted = true;
                    break;
                }
                i += o[i] as usize - 1;
            }
            opt::TS => {
                if i + 9 > end {
                    aborted = true;
                    break;
                }
                t.bad |= o[i] != 10;
                t.ts_val = Some(be32(o, i + 1));
                t.ts_ecr_nz = syn_only && be32(o, i + 5) != 0;
                i += 9;
            }
            _ => {
                if i == end || !(2..=40).contains(&o[i]) || i - 1 + o[i] as usize > end {
                    aborted = true;
                    break;
                }
                i += o[i] as usize - 1;
            }
        }
    }
    if aborted || i != end {
        t.bad = true;
    }
    t
}

impl Features {
    /// Parses an Ethernet frame: up to two VLAN tags, IPv4 (options honoured) or IPv6 (up to 8
    /// extension headers), then TCP or UDP. Non-first fragments, other protocols and truncated
    /// headers are errors (one line), never panics.
    pub fn from_frame(frame: &[u8]) -> Result<Features, FrameError> {
        if frame.len() < 14 {
            return err(format!(
                "frame of {} bytes is shorter than an Ethernet header",
                frame.len()
            ));
        }
        let mut at = 12;
        let mut ethertype = be16(frame, at);
        at += 2;
        let mut tags = 0;
        while matches!(ethertype, 0x8100 | 0x88a8 | 0x9100) {
            tags += 1;
            if tags > 2 {
                return err("more than two VLAN tags");
            }
            if frame.len() < at + 4 {
                return err("frame ends inside a VLAN tag");
            }
            ethertype = be16(frame, at + 2);
            at += 4;
        }
        match ethertype {
            0x0800 => Self::from_ipv4(&frame[at..]),
            0x86dd => Self::from_ipv6(&frame[at..]),
            t => err(format!("EtherType 0x{t:04x} is neither IPv4 nor IPv6")),
        }
    }

    /// Parses a packet that starts at the IP header (version from its first nibble).
    pub fn from_ip(packet: &[u8]) -> Result<Features, FrameError> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Self::from_ipv4(packet),
            Some(6) => Self::from_ipv6(packet),
            Some(v) => err(format!("IP version {v} is neither 4 nor 6")),
            None => err("empty packet"),
        }
    }

    fn from_ipv4(p: &[u8]) -> Result<Features, FrameError> {
        if p.len() < 20 {
            return err(format!("IPv4 header truncated ({} bytes)", p.len()));
        }
        if p[0] >> 4 != 4 {
            return err(format!("IPv4 EtherType but IP version {}", p[0] >> 4));
        }
        let ihl = (p[0] & 0x0f) as usize * 4;
        if ihl < 20 || p.len() < ihl {
            return err(format!("IPv4 header length {ihl} is invalid or past the frame"));
        }
        let total = be16(p, 2) as usize;
        if total < ihl {
            return err(format!("IPv4 total length {total} is shorter than its header ({ihl})"));
        }
        let flags_off = be16(p, 6);
        if flags_off & 0x1fff != 0 {
            return err("non-first IPv4 fragment: no transport header");
        }
        let proto = p[9];
        let mut f = Features::empty(IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])));
        f.dst_v4 = Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
        f.version = 4;
        f.tos = p[1];
        f.ip_id = be16(p, 4);
        f.df = flags_off & 0x4000 != 0;
        f.mbz = flags_off & 0x8000 != 0;
        f.ttl = p[8];
        f.ip_opt_len = (ihl - 20) as u8;
        f.ip_len = total as u16;
        // The IP length bounds the segment (Ethernet padding is not payload); a capture cut by
        // its snaplen still has the headers, and the payload length comes from the IP header.
        let l4_len = total - ihl;
        f.transport_from(proto, &p[ihl..], l4_len)?;
        Ok(f)
    }

    fn from_ipv6(p: &[u8]) -> Result<Features, FrameError> {
        if p.len() < 40 {
            return err(format!("IPv6 header truncated ({} bytes)", p.len()));
        }
        if p[0] >> 4 != 6 {
            return err(format!("IPv6 EtherType but IP version {}", p[0] >> 4));
        }
        let vtf = be32(p, 0);
        let payload = be16(p, 4) as usize;
        let mut src = [0u8; 16];
        src.copy_from_slice(&p[8..24]);
        let mut f = Features::empty(IpAddr::V6(Ipv6Addr::from(src)));
        f.version = 6;
        f.tos = (vtf >> 20) as u8;
        f.flow = vtf & 0xf_ffff != 0;
        f.ttl = p[7];
        f.ip_len = (payload + 40).min(u16::MAX as usize) as u16;
        let mut next = p[6];
        let mut at = 40;
        let mut headers = 0;
        loop {
            match next {
                6 | 17 => break,
                0 | 43 | 60 | 51 | 44 => {
                    headers += 1;
                    if headers > 8 {
                        return err("more than 8 IPv6 extension headers");
                    }
                    if p.len() < at + 8 {
                        return err("IPv6 extension header past the frame");
                    }
                    let len = match next {
                        51 => (p[at + 1] as usize + 2) * 4,
                        44 => {
                            if be16(p, at + 2) & 0xfff8 != 0 {
                                return err("non-first IPv6 fragment: no transport header");
                            }
                            8
                        }
                        _ => (p[at + 1] as usize + 1) * 8,
                    };
                    next = p[at];
                    at += len;
                }
                n => return err(format!("IP protocol {n} is neither TCP nor UDP")),
            }
        }
        if at > 40 + payload || p.len() < at {
            return err("IPv6 extension headers run past the packet");
        }
        f.ip_opt_len = (at - 40).min(255) as u8;
        f.transport_from(next, &p[at..], 40 + payload - at)?;
        Ok(f)
    }

    fn empty(src: IpAddr) -> Features {
        Features {
            src,
            dst_v4: None,
            version: 0,
            ttl: 0,
            tos: 0,
            ip_id: 0,
            df: false,
            mbz: false,
            flow: false,
            ip_opt_len: 0,
            ip_len: 0,
            transport: Transport::Udp,
            sport: 0,
            dport: 0,
            payload_len: 0,
            payload: [0; PAYLOAD_PREFIX],
            flags: 0,
            ns: false,
            seq: 0,
            ack: 0,
            window: 0,
            urg_nz: false,
            tcp_opt_len: 0,
            options: TcpOptions::default(),
        }
    }

    /// Fills the transport fields from `l4` (what the frame holds) and `l4_len` (what the IP
    /// header says the segment is).
    fn transport_from(&mut self, proto: u8, l4: &[u8], l4_len: usize) -> Result<(), FrameError> {
        match proto {
            6 => {
                if l4.len() < 20 || l4_len < 20 {
                    return err("TCP header truncated");
                }
                let doff = (l4[12] >> 4) as usize * 4;
                if doff < 20 || doff > l4_len || doff > l4.len() {
                    return err(format!("TCP data offset {doff} is invalid or past the segment"));
                }
                self.transport = Transport::Tcp;
                self.sport = be16(l4, 0);
                self.dport = be16(l4, 2);
                self.seq = be32(l4, 4);
                self.ack = be32(l4, 8);
                self.ns = l4[12] & 0x01 != 0;
                self.flags = l4[13];
                self.window = be16(l4, 14);
                self.urg_nz = be16(l4, 18) != 0;
                self.tcp_opt_len = (doff - 20) as u8;
                let syn_only = self.is_syn();
                self.options = parse_tcp_options(&l4[20..doff], syn_only);
                self.set_payload(&l4[doff..], l4_len - doff);
            }
            17 => {
                if l4.len() < 8 || l4_len < 8 {
                    return err("UDP header truncated");
                }
                self.transport = Transport::Udp;
                self.sport = be16(l4, 0);
                self.dport = be16(l4, 2);
                self.set_payload(&l4[8..], l4_len - 8);
            }
            n => return err(format!("IP protocol {n} is neither TCP nor UDP")),
        }
        Ok(())
    }

    fn set_payload(&mut self, have: &[u8], len: usize) {
        self.payload_len = len.min(u16::MAX as usize) as u16;
        let n = have.len().min(len).min(PAYLOAD_PREFIX);
        self.payload[..n].copy_from_slice(&have[..n]);
    }
}

impl Features {
    /// Features from the program's record (`FeatureEvent::raw`) and the source address beside
    /// it. The TCP options come as the bytes the frame held; they are read by the same walk as
    /// a captured frame's, so that both give the same signature. Bad values (a version other
    /// than 4 or 6, a protocol other than TCP or UDP) are a one-line error.
    pub fn from_raw(src: IpAddr, r: &FeaturesRaw) -> Result<Features, FrameError> {
        let transport = match r.proto {
            6 => Transport::Tcp,
            17 => Transport::Udp,
            p => return err(format!("feature record with IP protocol {p}")),
        };
        let dst_v4 = match r.version {
            4 => Some(Ipv4Addr::from(r.dst_v4)),
            6 => None,
            v => return err(format!("feature record with IP version {v}")),
        };
        let has = |bit| r.bits & bit != 0;
        let mut f = Features {
            src,
            dst_v4,
            version: r.version,
            ttl: r.ttl,
            tos: r.tos,
            ip_id: r.ip_id,
            df: has(feature_bits::DF),
            mbz: has(feature_bits::MBZ),
            flow: has(feature_bits::FLOW),
            ip_opt_len: r.ip_opt_len,
            ip_len: r.ip_len,
            transport,
            sport: r.sport,
            dport: r.dport,
            payload_len: r.payload_len,
            payload: r.payload,
            flags: r.tcp_flags,
            ns: has(feature_bits::TCP_NS),
            seq: r.seq,
            ack: r.ack,
            window: r.window,
            urg_nz: has(feature_bits::URG_NZ),
            tcp_opt_len: r.tcp_opt_len,
            options: TcpOptions::default(),
        };
        if transport == Transport::Tcp {
            let copied = (r.opt_copied as usize).min(r.options.len());
            f.options = parse_tcp_options(&r.options[..copied], f.is_syn());
            // Options the header announced but the frame did not hold (a first fragment cut
            // short): the walk saw less than there was.
            f.options.bad |= copied < r.tcp_opt_len as usize;
        }
        // The payload prefix holds what the frame held, zeros past it.
        let n = (f.payload_len as usize).min(PAYLOAD_PREFIX);
        f.payload[n..].fill(0);
        Ok(f)
    }
}

#[cfg(test)]
pub(crate) mod testframes {
    /// An IPv4 Ethernet frame carrying a TCP segment with these options.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp4(
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        id: u16,
        df: bool,
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: &[u8],
    ) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
        f.extend_from_slice(&[ttl, 6, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[((tcp_len / 4) as u8) << 4, flags]);
        f.extend_from_slice(&window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(options);
        f
    }

    /// Linux's SYN options: MSS 1460, SACK_PERM, TS (val, 0), NOP, WS 7.
    pub fn linux_opts(ts_val: u32) -> Vec<u8> {
        let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
        o.extend_from_slice(&ts_val.to_be_bytes());
        o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::{testframes::*, *};

    /// The record the program would copy for `f`, whose TCP options are the bytes `options`.
    fn raw_of(f: &Features, options: &[u8]) -> FeaturesRaw {
        let mut bits = 0;
        for (on, bit) in [
            (f.df, feature_bits::DF),
            (f.mbz, feature_bits::MBZ),
            (f.flow, feature_bits::FLOW),
            (f.urg_nz, feature_bits::URG_NZ),
            (f.ns, feature_bits::TCP_NS),
        ] {
            if on {
                bits |= bit;
            }
        }
        let mut r = FeaturesRaw {
            seq: f.seq,
            ack: f.ack,
            dst_v4: f.dst_v4.map(|a| a.octets()).unwrap_or_default(),
            ip_id: f.ip_id,
            window: f.window,
            sport: f.sport,
            dport: f.dport,
            ip_len: f.ip_len,
            payload_len: f.payload_len,
            bits,
            version: f.version,
            ttl: f.ttl,
            tos: f.tos,
            proto: if f.transport == Transport::Tcp { 6 } else { 17 },
            tcp_flags: f.flags,
            ip_opt_len: f.ip_opt_len,
            tcp_opt_len: options.len() as u8,
            opt_copied: options.len() as u8,
            payload: f.payload,
            ..FeaturesRaw::default()
        };
        r.options[..options.len()].copy_from_slice(options);
        r
    }

    #[test]
    fn linux_syn_is_read_whole() {
        let f = tcp4(
            [198, 18, 0, 5],
            [198, 18, 0, 1],
            64,
            0x1234,
            true,
            40000,
            2745,
            7,
            0,
            tcp_flags::SYN,
            64240,
            &linux_opts(99),
        );
        let x = Features::from_frame(&f).unwrap();
        assert_eq!(x.src, "198.18.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(x.dst_v4, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!((x.version, x.ttl, x.ip_id, x.df, x.window), (4, 64, 0x1234, true, 64240));
        assert!(x.is_syn());
        assert_eq!(x.options.layout(), "mss,sok,ts,nop,ws");
        assert_eq!(x.options.mss, Some(1460));
        assert_eq!(x.options.wscale, Some(7));
        assert_eq!(x.options.ts_val, Some(99));
        assert!(!x.options.bad);
        assert_eq!(x.tcp_opt_len, 20);
        assert_eq!(x.header_len(), 60);
        // Through the kernel's record and back: nothing lost.
        assert_eq!(Features::from_raw(x.src, &raw_of(&x, &linux_opts(99))).unwrap(), x);
        // Options the frame did not hold all of: read as far as they go, marked bad.
        let mut cut = raw_of(&x, &linux_opts(99));
        cut.opt_copied = 9;
        let y = Features::from_raw(x.src, &cut).unwrap();
        assert!(y.options.bad && y.options.mss == Some(1460), "{:?}", y.options);
    }

    #[test]
    fn option_corner_cases_follow_p0f() {
        let mk = |opts: &[u8]| {
            let f = tcp4([1, 1, 1, 1], [2, 2, 2, 2], 64, 1, false, 1, 2745, 1, 0, 2, 1024, opts);
            Features::from_frame(&f).unwrap().options
        };
        // MSS with a wrong length byte: read, flagged bad.
        let o = mk(&[2, 5, 1, 0]);
        assert_eq!((o.mss, o.bad), (Some(256), true));
        // EOL then padding: eol+3, non-zero padding is opt+.
        let o = mk(&[2, 4, 5, 0xb4, 0, 0, 0, 0]);
        assert_eq!((o.layout().as_str(), o.eol_nz), ("mss,eol+3", false));
        let o = mk(&[1, 0, 7, 0]);
        assert_eq!((o.layout().as_str(), o.eol_nz), ("nop,eol+2", true));
        // An option running past the header stops the walk.
        let o = mk(&[1, 1, 8, 10]);
        assert!(o.bad);
        assert_eq!(o.layout(), "nop,nop,ts");
        // Unknown kinds are shown by number; a window scale above 14 is read as is.
        let o = mk(&[30, 4, 0, 0, 3, 3, 15, 1]);
        assert_eq!((o.layout().as_str(), o.wscale), ("?30,ws,nop", Some(15)));
        // Twenty NOPs: only the first 14 are kept, all are counted.
        let o = mk(&[1; 20]);
        assert_eq!((o.count, o.truncated()), (20, true));
        assert!(o.layout().ends_with(",..."));
    }

    #[test]
    fn ipv6_udp_and_extension_headers() {
        use portguard_testkit::frames::{Ext, Frame, v6};
        let src = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7]);
        let dst = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
        let f = Frame::udp6(src, dst, 5000, 2745)
            .ext(Ext::HopByHop(0))
            .ext(Ext::DestOpts(1))
            .payload(b"GET / HTTP/1.1")
            .build();
        let x = Features::from_frame(&f).unwrap();
        assert_eq!((x.version, x.transport, x.dport), (6, Transport::Udp, 2745));
        assert_eq!(x.ip_opt_len, 24);
        assert_eq!(x.payload_len, 14);
        assert_eq!(x.payload_prefix(), b"GET / HT");
        assert_eq!(x.dst_v4, None);
        assert_eq!(Features::from_raw(x.src, &raw_of(&x, &[])).unwrap(), x);
        // A VLAN tag changes nothing.
        let tagged = Frame::udp6(src, dst, 5000, 2745).vlan(0x8100, 7).build();
        assert_eq!(Features::from_frame(&tagged).unwrap().sport, 5000);
    }

    #[test]
    fn bad_frames_are_one_line_errors() {
        use portguard_testkit::frames::Frame;
        let good = Frame::tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2745).syn().build();
        for n in 0..good.len() {
            if let Err(e) = Features::from_frame(&good[..n]) {
                assert!(!e.0.is_empty() && !e.0.contains('\n'), "{e}");
            }
        }
        assert!(Features::from_frame(&good[..20]).is_err());
        let frag = Frame::tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2745).ipv4_fragment(8, false, 9);
        assert!(Features::from_frame(&frag.build()).unwrap_err().0.contains("non-first"));
        assert!(Features::from_frame(&Frame::arp().build()).unwrap_err().0.contains("0x0806"));
        // Every flipped byte of a good frame: an answer or an error, never a panic.
        for i in 0..good.len() {
            for v in [0u8, 0x0f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = Features::from_frame(&b);
            }
        }
        let bad = FeaturesRaw { version: 5, proto: 6, ..FeaturesRaw::default() };
        assert!(Features::from_raw("1.1.1.1".parse().unwrap(), &bad).is_err());
    }
}
