//! Minimal reproducers, one per class of frames the kernel oracle found Linux 6.18 delivering
//! to a guarded port while portguard passes them, and a few it delivers that portguard gets
//! right today but the reference calls "discarded by the stack" (a TCP header whose options
//! continue into the next fragment, IPv6 payload length 0 behind hop-by-hop, IPv6 UDP length
//! 0), so that a change in the parser cannot quietly lose them. Each is the smallest frame (or
//! fragment set) of its class; `tests/oracle.rs` checks that the kernel still delivers every one without portguard
//! and that none reaches the port through it.

use super::{
    cases::{Case, Field, FieldOp, Labels, Mutation},
    netlab::sport,
    packet::{Datagram, Ext, L4, Net, Opts, Piece, Proto},
};

/// A reproducer: a case and what it shows.
pub struct Repro {
    pub name: &'static str,
    /// Needs the emulated VLAN sub-interfaces (see `vlan`); the others are the kernel alone.
    pub emulated_vlans: bool,
    pub case: Case,
}

fn l4(proto: Proto, id: u32, dport: u16) -> L4 {
    L4 {
        proto,
        sport: sport(id),
        dport,
        seq: id,
        flags: 0x02,
        tcp_options: vec![],
        udp_no_checksum: false,
    }
}

fn dst() -> Ext {
    Ext::DestOpts { units: 0, opts: Opts::Valid }
}

fn piece(start: usize, end: usize, more: bool) -> Piece {
    Piece { start, end, more, rewrite: None }
}

/// Every reproducer, ids counting up from `first_id`.
pub fn all(first_id: u32) -> Vec<Repro> {
    let prio = |n: usize| vec![(0x8100u16, 0u16); n];
    // Set after building: what the builder would otherwise compute.
    let zero_payload_length = Mutation::Field {
        frame: 0,
        field: Field::V6PayloadLen,
        op: FieldOp::Set(0),
        fix_l4: false,
    };
    // The cut header's other 8 bytes, a destination-options header naming TCP, ports 443.
    let chain_in_padding = Mutation::Trailer {
        frame: 0,
        bytes: [[0; 8], [6, 0, 1, 4, 0, 0, 0, 0], [0x01, 0xbb, 0x01, 0xbb, 0, 0, 0, 0]].concat(),
    };
    let zero_udp_length =
        Mutation::Field { frame: 0, field: Field::UdpLen, op: FieldOp::Set(0), fix_l4: true };
    #[allow(clippy::type_complexity)]
    let specs: Vec<(&'static str, bool, Box<dyn Fn(u32) -> Datagram>, Option<Mutation>)> = vec![
        (
            "ipv6 udp behind 9 destination-options headers",
            false,
            Box::new(|id| Datagram {
                net: Net::V6 { exts: vec![dst(); 9], frag_at: 0 },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: vec![],
            }),
            None,
        ),
        (
            "ipv6 tcp syn behind 9 destination-options headers",
            false,
            Box::new(|id| Datagram {
                net: Net::V6 { exts: vec![dst(); 9], frag_at: 0 },
                l4: l4(Proto::Tcp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: vec![],
            }),
            None,
        ),
        (
            "ipv6 udp first fragment with 9 destination-options headers after the fragment header",
            false,
            Box::new(|id| Datagram {
                net: Net::V6 { exts: vec![dst(); 9], frag_at: 0 },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 8,
                // 72 bytes of headers and the UDP header in the first piece, the payload after.
                pieces: Some(vec![piece(0, 80, true), piece(80, 96, false)]),
                tags: vec![],
            }),
            None,
        ),
        (
            "ipv4 udp under three 802.1Q priority tags (VLAN id 0)",
            false,
            Box::new(move |id| Datagram {
                net: Net::V4 { options: vec![] },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: prio(3),
            }),
            None,
        ),
        (
            "ipv6 tcp syn under 802.1ad + two 802.1Q priority tags",
            false,
            Box::new(|id| Datagram {
                net: Net::V6 { exts: vec![], frag_at: 0 },
                l4: l4(Proto::Tcp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: vec![(0x88a8, 0), (0x8100, 0), (0x8100, 0)],
            }),
            None,
        ),
        (
            "ipv4 tcp syn, first fragment 16 bytes (ports and sequence in it, the rest of the TCP header in the second)",
            false,
            Box::new(|id| Datagram {
                net: Net::V4 { options: vec![] },
                l4: l4(Proto::Tcp, id, 2745),
                id,
                filler: 0,
                pieces: Some(vec![piece(0, 16, true), piece(16, 36, false)]),
                tags: vec![],
            }),
            None,
        ),
        (
            "ipv4 tcp syn, first fragment 8 bytes",
            false,
            Box::new(|id| Datagram {
                net: Net::V4 { options: vec![] },
                l4: l4(Proto::Tcp, id, 2745),
                id,
                filler: 0,
                pieces: Some(vec![piece(0, 8, true), piece(8, 36, false)]),
                tags: vec![],
            }),
            None,
        ),
        (
            "ipv6 udp, first fragment cuts the extension chain (8 of a 16-byte destination-options header, another one after it)",
            false,
            // Linux's RFC 8200 §4.5 check (ipv6frag_thdr_truncated) skips headers by their
            // first two bytes: here the next header's lie past the fragment, ipv6_skip_exthdr
            // gives up (-1), and that counts as "not truncated". With UDP right after the cut
            // header the check sees the transport header missing and drops the fragment.
            Box::new(|id| Datagram {
                net: Net::V6 {
                    exts: vec![Ext::DestOpts { units: 1, opts: Opts::Valid }, dst()],
                    frag_at: 0,
                },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 0,
                pieces: Some(vec![piece(0, 8, true), piece(8, 48, false)]),
                tags: vec![],
            }),
            None,
        ),
        (
            "ipv4 tcp syn whose options continue into the second fragment (24 of 40 header bytes in the first)",
            false,
            Box::new(|id| {
                let mut l = l4(Proto::Tcp, id, 2745);
                l.tcp_options =
                    vec![2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
                Datagram {
                    net: Net::V4 { options: vec![] },
                    l4: l,
                    id,
                    filler: 0,
                    pieces: Some(vec![piece(0, 24, true), piece(24, 48, false)]),
                    tags: vec![],
                }
            }),
            None,
        ),
        (
            "ipv4 udp on emulated qinq 200/300 with a priority tag inside (three tags)",
            true,
            Box::new(|id| Datagram {
                net: Net::V4 { options: vec![] },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: vec![(0x88a8, 200), (0x8100, 300), (0x8100, 0)],
            }),
            None,
        ),
        (
            "ipv6 tcp syn, payload length 0 with hop-by-hop first (jumbogram framing, no jumbo option)",
            false,
            // ip6_rcv_core trims to the payload length unless it is 0 and a hop-by-hop header
            // follows; nothing then requires a Jumbo Payload option: the frame's length counts.
            Box::new(|id| Datagram {
                net: Net::V6 {
                    exts: vec![Ext::HopByHop { units: 0, opts: Opts::Valid }],
                    frag_at: 0,
                },
                l4: l4(Proto::Tcp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: vec![],
            }),
            Some(zero_payload_length.clone()),
        ),
        (
            "ipv6 udp with UDP length 0 (the IPv6 payload length counts)",
            false,
            Box::new(|id| Datagram {
                net: Net::V6 { exts: vec![], frag_at: 0 },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 0,
                pieces: None,
                tags: vec![],
            }),
            Some(zero_udp_length.clone()),
        ),
        (
            "ipv6 udp, first fragment cuts the extension chain, padded with bytes that complete the chain and read as port 443",
            false,
            // As the cut-chain case above, and the padding (which the stack trims) spells the
            // rest of the cut header, a last destination-options header and TCP ports 443: a
            // parser bounded by the frame, not the payload length, reads them.
            Box::new(|id| Datagram {
                net: Net::V6 {
                    exts: vec![Ext::DestOpts { units: 1, opts: Opts::Valid }, dst()],
                    frag_at: 0,
                },
                l4: l4(Proto::Udp, id, 2745),
                id,
                filler: 0,
                pieces: Some(vec![piece(0, 8, true), piece(8, 48, false)]),
                tags: vec![],
            }),
            Some(chain_in_padding.clone()),
        ),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, emulated_vlans, make, mutation))| {
            let id = first_id + i as u32;
            let case = Case {
                id,
                dgram: make(id),
                mutation,
                labels: Labels {
                    shape: "reproducer".into(),
                    link: if emulated_vlans { "emulated".into() } else { "kernel".into() },
                    mutation: "none".into(),
                    detail: name.into(),
                },
                for_guarded: true,
            };
            Repro { name, emulated_vlans, case }
        })
        .collect()
}
