//! What the kernel did with each case, read back: datagrams on the gateway's sockets, and the
//! gateway's replies captured on the outside veth end (SYN-ACKs, RSTs, ICMP errors).
//!
//! Attribution: the phase is the third octet of the case's source (198.19.P.H) or the fourth
//! group of its IPv6 source, which replies carry as their destination; the case id is the
//! `MAGIC` id in a datagram's payload, `ack - 1` of a SYN-ACK (the SYN's sequence number), the
//! (host, port) pair of any other TCP reply, and the id quoted in an ICMP error.

use std::collections::HashMap;

use super::{
    netlab::{Received, phase_of},
    packet::find_id,
};

/// What reached the gateway's sockets for one case in one phase, and what the gateway said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Obs {
    /// Ports whose UDP socket received the case's datagram.
    pub udp: Vec<u16>,
    /// Ports that answered the case's SYN with a SYN-ACK.
    pub synack: Vec<u16>,
    /// Ports that answered with a RST.
    pub rst: Vec<u16>,
    /// ICMP errors about the case: (IPv6, type, code).
    pub icmp: Vec<(bool, u8, u8)>,
}

impl Obs {
    /// Delivered to a socket on one of `ports` (a datagram read, or a SYN answered).
    pub fn delivered_to(&self, ports: &[u16]) -> bool {
        self.udp.iter().chain(&self.synack).any(|p| ports.contains(p))
    }
}

#[derive(Default)]
pub struct Observations {
    pub by_case: HashMap<(u8, u32), Obs>,
    /// Datagrams and replies that could not be attributed to a case (should stay 0).
    pub unattributed: u64,
}

impl Observations {
    pub fn get(&self, phase: u8, id: u32) -> Option<&Obs> {
        self.by_case.get(&(phase, id))
    }

    pub fn udp(&mut self, r: Received) {
        // The payload's marker; failing that (an overlapping fragment that won reassembly can
        // overwrite it) the source host and port, as for TCP replies.
        let host = r.source.last().copied().unwrap_or(0);
        let id = find_id(&r.payload).or_else(|| id_from_port(host, r.source_port));
        match (phase_of(r.v6, &r.source), id) {
            (Some(p), Some(id)) => self.by_case.entry((p, id)).or_default().udp.push(r.port),
            _ => self.unattributed += 1,
        }
    }

    /// One frame captured on the outside end.
    pub fn captured(&mut self, f: &[u8]) {
        if let Some((phase, id, what)) = reply(f) {
            let o = self.by_case.entry((phase, id)).or_default();
            match what {
                Reply::SynAck(p) => o.synack.push(p),
                Reply::Rst(p) => o.rst.push(p),
                Reply::Icmp(v6, t, c) => o.icmp.push((v6, t, c)),
            }
        }
    }
}

enum Reply {
    SynAck(u16),
    Rst(u16),
    Icmp(bool, u8, u8),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The case id of a TCP reply from its destination host and port: ports are `1024 + id %
/// 50_000` and hosts change every 50,000 ids (see `netlab::source`).
fn id_from_port(host: u8, port: u16) -> Option<u32> {
    let off = port.checked_sub(1024)? as u32;
    (off < 50_000 && host >= 1).then(|| (host as u32 - 1) * 50_000 + off)
}

/// A reply from the gateway to one of the oracle's sources: its phase, case id, and kind.
fn reply(f: &[u8]) -> Option<(u8, u32, Reply)> {
    let mut off = 12;
    let mut ty = be16(f, off)?;
    while ty == 0x8100 || ty == 0x88a8 {
        off += 4;
        ty = be16(f, off)?;
    }
    let l3 = off + 2;
    let (v6, proto, dst, l4) = match ty {
        0x0800 => {
            let ihl = (*f.get(l3)? & 0x0f) as usize * 4;
            (false, *f.get(l3 + 9)?, f.get(l3 + 16..l3 + 20)?, l3 + ihl)
        }
        // The gateway's own replies carry no extension headers.
        0x86dd => (true, *f.get(l3 + 6)?, f.get(l3 + 24..l3 + 40)?, l3 + 40),
        _ => return None,
    };
    let phase = phase_of(v6, dst)?;
    let host = dst[dst.len() - 1];
    match proto {
        6 => {
            let (sport, dport) = (be16(f, l4)?, be16(f, l4 + 2)?);
            let flags = *f.get(l4 + 13)?;
            if flags & 0x12 == 0x12 {
                let id = be32(f, l4 + 8)?.wrapping_sub(1);
                Some((phase, id, Reply::SynAck(sport)))
            } else if flags & 0x04 != 0 {
                Some((phase, id_from_port(host, dport)?, Reply::Rst(sport)))
            } else {
                None
            }
        }
        1 | 58 => {
            let (t, c) = (*f.get(l4)?, *f.get(l4 + 1)?);
            // Errors only: v4 unreachable, time exceeded, parameter problem; v6 1..=4.
            let error = if v6 { (1..=4).contains(&t) } else { matches!(t, 3 | 11 | 12) };
            if !error {
                return None;
            }
            let quote = f.get(l4 + 8..)?;
            let id = find_id(quote).or_else(|| quoted_id(v6, quote, host))?;
            Some((phase, id, Reply::Icmp(v6, t, c)))
        }
        _ => None,
    }
}

/// The case id from a quoted header when the payload marker is not in the quote: the IPv6
/// fragment identification, or the TCP sequence number of a first fragment, or the IPv4
/// identification (low 16 bits of the id) within the host's block of 50,000 ids.
fn quoted_id(v6: bool, q: &[u8], host: u8) -> Option<u32> {
    if v6 {
        let mut next = *q.get(6)?;
        let mut at = 40;
        for _ in 0..32 {
            match next {
                44 => return be32(q, at + 4),
                6 => return be32(q, at + 4),
                0 | 43 | 60 => {
                    next = *q.get(at)?;
                    at += (*q.get(at + 1)? as usize + 1) * 8;
                }
                _ => return None,
            }
        }
        None
    } else {
        let ident = be16(q, 4)? as u32;
        let base = (host as u32).checked_sub(1)? * 50_000;
        // The id in [base, base + 50,000) whose low 16 bits are `ident`.
        let cand = (base & !0xffff) | ident;
        [cand, cand + 0x10000].into_iter().find(|c| (base..base + 50_000).contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{
        netlab::{GW4, GW6, source, sport},
        packet::{Datagram, L4, MAGIC, Net, Proto, Wire},
    };

    /// A reply from the gateway's port `from` to case `id` in `phase`, built as the gateway
    /// would send it: a SYN-ACK (flags 0x12) acknowledging the SYN, or a RST.
    fn reply_frame(v6: bool, phase: u8, id: u32, from: u16, flags: u8) -> Vec<u8> {
        let (s4, s6) = source(phase, id);
        // The gateway is the source of a reply, the case's source its destination.
        let w = Wire { dst_mac: [2; 6], src_mac: [4; 6], src4: GW4, dst4: s4, src6: GW6, dst6: s6 };
        let d = Datagram {
            net: if v6 {
                Net::V6 { exts: vec![], frag_at: 0 }
            } else {
                Net::V4 { options: vec![] }
            },
            l4: L4 {
                proto: Proto::Tcp,
                sport: from,
                dport: sport(id),
                seq: 999,
                flags,
                tcp_options: vec![],
                udp_no_checksum: false,
            },
            id: 0,
            filler: 0,
            pieces: None,
            tags: vec![],
        };
        let (mut f, l) = d.build(&w).remove(0);
        // The acknowledgment number: the SYN's sequence number (the id) + 1.
        let ack = l.l4.unwrap() + 8;
        f[ack..ack + 4].copy_from_slice(&id.wrapping_add(1).to_be_bytes());
        f
    }

    #[test]
    fn replies_are_attributed_to_their_case_and_phase() {
        for v6 in [false, true] {
            for (phase, id) in [(0, 0), (1, 49_999), (2, 50_000), (3, 1_234_567)] {
                let mut o = Observations::default();
                o.captured(&reply_frame(v6, phase, id, 2745, 0x12));
                o.captured(&reply_frame(v6, phase, id, 8080, 0x14));
                let got = o.get(phase, id).unwrap_or_else(|| panic!("{v6} {phase} {id}"));
                assert_eq!((got.synack.clone(), got.rst.clone()), (vec![2745], vec![8080]));
                assert!(got.delivered_to(&[2745]) && !got.delivered_to(&[8080]));
            }
        }
    }

    #[test]
    fn ports_map_back_to_ids() {
        for id in [0, 1, 49_999, 50_000, 123_456, 12_499_999] {
            let (v4, _) = source(0, id);
            assert_eq!(id_from_port(v4[3], sport(id)), Some(id));
        }
    }

    #[test]
    fn datagrams_without_their_marker_fall_back_to_the_port() {
        let (v4, _) = source(2, 70_000);
        let mut o = Observations::default();
        let payload = [MAGIC.as_slice(), &70_001u32.to_be_bytes()].concat();
        o.udp(Received { port: 2745, v6: false, source: v4.to_vec(), source_port: 1, payload });
        o.udp(Received {
            port: 3127,
            v6: false,
            source: v4.to_vec(),
            source_port: sport(70_000),
            payload: vec![0xbe; 12],
        });
        assert_eq!(o.get(2, 70_001).unwrap().udp, [2745]);
        assert_eq!(o.get(2, 70_000).unwrap().udp, [3127]);
        assert_eq!(o.unattributed, 0);
    }
}
