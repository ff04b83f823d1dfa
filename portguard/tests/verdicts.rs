//! The verdict suite: the real XDP program, driven through BPF_PROG_TEST_RUN with hand-built
//! frames, checking the verdict and how every counter moved.

use aya::programs::{TestRun as _, TestRunOptions};
use portguard::{
    counters::Source,
    guard::Loaded,
    settings::{Cidr, Direction, Mode, Protocol, Settings},
    wire::{Directions, Protocols},
};
use portguard_common::{DIR_DST, DIR_SRC, PROTO_TCP, PROTO_UDP, Totals};
use portguard_testkit::{
    XDP_DROP, XDP_PASS,
    frames::{Ext, Frame, TCP_ACK, TCP_RST, TCP_SYN, v6},
    root_or_skip, test_run as run,
};

const SRC4: [u8; 4] = [198, 18, 0, 2];
const DST4: [u8; 4] = [198, 18, 0, 1];
const SRC6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]);
const DST6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);

fn load(settings: Settings) -> Loaded {
    Loaded::with_defaults(&settings).unwrap()
}

fn drop_guard() -> Loaded {
    load(Settings::default())
}

/// The outcomes a frame can have, as counters see them.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    /// Matched and dropped.
    Dropped,
    /// Matched and passed (count mode, allowlist).
    Counted,
    /// Not ours: passed, only `seen` moves.
    Passed,
    /// Passed and counted as malformed.
    Malformed,
    /// A later fragment that followed its first fragment's drop.
    FollowedDrop,
    /// A later fragment that followed its first fragment's pass.
    FollowedPass,
}

fn outcome(verdict: u32, d: &Totals) -> Outcome {
    assert_eq!(d.seen, 1, "every frame is seen once: {d:?}");
    match (verdict, d.matched, d.malformed, d.fragments_followed, d.dropped) {
        (XDP_DROP, 1, 0, 0, 1) => Outcome::Dropped,
        (XDP_PASS, 1, 0, 0, 0) => Outcome::Counted,
        (XDP_PASS, 0, 0, 0, 0) => Outcome::Passed,
        (XDP_PASS, 0, 1, 0, 0) => Outcome::Malformed,
        (XDP_DROP, 0, 0, 1, 1) => Outcome::FollowedDrop,
        (XDP_PASS, 0, 0, 1, 0) => Outcome::FollowedPass,
        _ => panic!("inconsistent counters for verdict {verdict}: {d:?}"),
    }
}

fn check(g: &mut Loaded, f: &Frame, want: Outcome) {
    let bytes = f.build();
    let (v, d) = run(g, &bytes);
    assert_eq!(outcome(v, &d), want, "frame {f:?}");
    if want == Outcome::Dropped {
        assert_eq!(d.dropped_bytes, bytes.len() as u64);
        assert_eq!(d.matched_bytes, bytes.len() as u64);
    }
}

/// The same frame in every L2 wrapping portguard understands.
fn wrappings(f: Frame) -> Vec<Frame> {
    vec![
        f.clone(),
        f.clone().vlan(0x8100, 10),
        f.clone().vlan(0x88a8, 100).vlan(0x8100, 10),
        f.clone().vlan(0x9100, 100).vlan(0x8100, 10),
        f.clone().pppoe(),
        f.clone().vlan(0x8100, 7).pppoe(),
        f.vlan(0x88a8, 7).vlan(0x8100, 8).pppoe(),
    ]
}

fn all_l4(dport: u16, sport: u16) -> Vec<Frame> {
    vec![
        Frame::tcp4(SRC4, DST4, sport, dport).syn(),
        Frame::udp4(SRC4, DST4, sport, dport),
        Frame::tcp6(SRC6, DST6, sport, dport).syn(),
        Frame::udp6(SRC6, DST6, sport, dport),
    ]
}

#[test]
fn guarded_port_is_dropped_everything_else_passes() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    for f in all_l4(2745, 40000).into_iter().flat_map(wrappings) {
        check(&mut g, &f, Outcome::Dropped);
    }
    for f in all_l4(443, 40000).into_iter().flat_map(wrappings) {
        check(&mut g, &f, Outcome::Passed);
    }
    // The source port is not looked at by default: a server answering to a client port 2745.
    for f in all_l4(443, 2745) {
        check(&mut g, &f, Outcome::Passed);
    }
    // Neighbouring ports are not 2745.
    for p in [2744, 2746, 0, 65535, 0x0aba_u16.swap_bytes()] {
        for f in all_l4(p, 40000) {
            check(&mut g, &f, Outcome::Passed);
        }
    }
}

#[test]
fn count_mode_passes_and_counts() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings { mode: Mode::Count, ..Settings::default() });
    for f in all_l4(2745, 40000).into_iter().flat_map(wrappings) {
        check(&mut g, &f, Outcome::Counted);
    }
    for f in all_l4(443, 40000) {
        check(&mut g, &f, Outcome::Passed);
    }
}

#[test]
fn direction_selects_the_port_compared() {
    if !root_or_skip() {
        return;
    }
    for (dir, mode) in
        [(Direction::Src, Mode::Drop), (Direction::Both, Mode::Drop), (Direction::Src, Mode::Count)]
    {
        let mut g = load(Settings { direction: dir, mode, ..Settings::default() });
        let hit = if mode == Mode::Drop { Outcome::Dropped } else { Outcome::Counted };
        // Answering from 2745: an infected host's backdoor replying.
        for f in all_l4(40000, 2745) {
            check(&mut g, &f, hit);
        }
        let dst_outcome = if dir == Direction::Both { hit } else { Outcome::Passed };
        for f in all_l4(2745, 40000) {
            check(&mut g, &f, dst_outcome);
        }
        for f in all_l4(443, 40000) {
            check(&mut g, &f, Outcome::Passed);
        }
    }
}

#[test]
fn protocols_and_ports_are_configurable() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings {
        protocols: vec![Protocol::Tcp],
        ports: vec![2745, 3127],
        ..Settings::default()
    });
    check(&mut g, &Frame::tcp4(SRC4, DST4, 1, 3127), Outcome::Dropped);
    check(&mut g, &Frame::tcp6(SRC6, DST6, 1, 2745), Outcome::Dropped);
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745), Outcome::Passed);
    check(&mut g, &Frame::udp6(SRC6, DST6, 1, 3127), Outcome::Passed);
}

#[test]
fn ipv4_options_are_skipped_by_header_length() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    for words in 1..=10u8 {
        // NOPs, then an option whose bytes look like port 2745 to a parser that ignores IHL.
        let mut opts = vec![1u8; words as usize * 4];
        let n = opts.len();
        opts[n - 2] = 0x0a;
        opts[n - 1] = 0xb9;
        check(&mut g, &Frame::tcp4(SRC4, DST4, 40000, 2745).ipv4_options(&opts), Outcome::Dropped);
        check(&mut g, &Frame::udp4(SRC4, DST4, 40000, 443).ipv4_options(&opts), Outcome::Passed);
    }
}

#[test]
fn ipv6_extension_chains_are_followed() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let chains: Vec<Vec<Ext>> = vec![
        vec![Ext::HopByHop(0)],
        vec![Ext::HopByHop(1), Ext::DestOpts(0)],
        vec![Ext::HopByHop(0), Ext::Routing(2), Ext::DestOpts(0), Ext::Ah(4)],
        vec![Ext::Ah(1)],
        vec![Ext::Fragment { offset: 0, more: false, id: 7 }], // atomic fragment: a whole datagram
        // Eight headers: the deepest chain portguard follows.
        vec![
            Ext::HopByHop(0),
            Ext::DestOpts(0),
            Ext::Routing(0),
            Ext::DestOpts(0),
            Ext::Ah(1),
            Ext::DestOpts(1),
            Ext::DestOpts(0),
            Ext::DestOpts(0),
        ],
    ];
    for chain in chains {
        let mut f = Frame::tcp6(SRC6, DST6, 40000, 2745);
        let mut u = Frame::udp6(SRC6, DST6, 40000, 443);
        for e in &chain {
            f = f.ext(e.clone());
            u = u.ext(e.clone());
        }
        for w in wrappings(f) {
            check(&mut g, &w, Outcome::Dropped);
        }
        check(&mut g, &u, Outcome::Passed);
    }
    // Nine: beyond what is followed, counted as malformed and passed.
    let mut f = Frame::udp6(SRC6, DST6, 40000, 2745);
    for _ in 0..9 {
        f = f.ext(Ext::DestOpts(0));
    }
    check(&mut g, &f, Outcome::Malformed);
    // No next header, ICMPv6, ESP: no ports, not malformed.
    for p in [59u8, 58, 50] {
        check(&mut g, &Frame::ip6_other(SRC6, DST6, p), Outcome::Passed);
    }
}

#[test]
fn ipv4_fragments_follow_their_first() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let id = 0x4242;
    // The first fragment carries the ports: dropped, and remembered.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 40000, 2745).payload(&[0; 16]).ipv4_fragment(0, true, id),
        Outcome::Dropped,
    );
    // The rest: no ports, the first fragment's verdict. The payload starts with bytes that
    // read as ports 443→443 to a parser that looks: they must not matter.
    let tail = Frame::ip4_other(SRC4, DST4, 17).payload(&[0x01, 0xbb, 0x01, 0xbb, 0, 0, 0, 0]);
    check(&mut g, &tail.clone().ipv4_fragment(3, true, id), Outcome::FollowedDrop);
    check(&mut g, &tail.clone().ipv4_fragment(6, false, id), Outcome::FollowedDrop);
    // Another datagram's later fragment, whose payload looks like port 2745: passes untouched
    // (xdp-filter drops this one).
    let innocent = Frame::ip4_other(SRC4, DST4, 17).payload(&[0x9c, 0x40, 0x0a, 0xb9, 0, 0, 0, 0]);
    check(&mut g, &innocent.clone().ipv4_fragment(3, false, id + 1), Outcome::Passed);
    // Same id but another protocol, or another source: another datagram.
    let tcp_tail = Frame::ip4_other(SRC4, DST4, 6).payload(&[0; 8]);
    check(&mut g, &tcp_tail.ipv4_fragment(3, false, id), Outcome::Passed);
    let other_src = Frame::ip4_other([198, 18, 0, 9], DST4, 17).payload(&[0; 8]);
    check(&mut g, &other_src.ipv4_fragment(3, false, id), Outcome::Passed);
    // A first fragment that did not match: its tail is not remembered.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 40000, 53).ipv4_fragment(0, true, 0x777),
        Outcome::Passed,
    );
    check(&mut g, &innocent.ipv4_fragment(3, false, 0x777), Outcome::Passed);
}

#[test]
fn ipv6_fragments_follow_their_first() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let first = Frame::tcp6(SRC6, DST6, 40000, 2745).syn().ext(Ext::Fragment {
        offset: 0,
        more: true,
        id: 99,
    });
    check(&mut g, &first, Outcome::Dropped);
    let tail =
        Frame::ip6_other(SRC6, DST6, 6).ext(Ext::Fragment { offset: 2, more: false, id: 99 });
    check(&mut g, &tail, Outcome::FollowedDrop);
    // With a hop-by-hop header before the fragment header, same datagram.
    let tail2 = Frame::ip6_other(SRC6, DST6, 6).ext(Ext::HopByHop(0)).ext(Ext::Fragment {
        offset: 4,
        more: false,
        id: 99,
    });
    check(&mut g, &tail2, Outcome::FollowedDrop);
    // An unrelated later fragment whose payload reads as port 2745.
    let innocent = Frame::ip6_other(SRC6, DST6, 17)
        .payload(&[0x9c, 0x40, 0x0a, 0xb9, 0, 0, 0, 0])
        .ext(Ext::Fragment { offset: 2, more: false, id: 100 });
    check(&mut g, &innocent, Outcome::Passed);

    // Count mode: the tail follows the first fragment's pass.
    let mut c = load(Settings { mode: Mode::Count, ..Settings::default() });
    check(&mut c, &first, Outcome::Counted);
    check(&mut c, &tail, Outcome::FollowedPass);
}

#[test]
fn truncated_and_bogus_headers_pass_as_malformed() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let tcp = Frame::tcp4(SRC4, DST4, 40000, 2745).syn();
    let full = tcp.build();
    // Cut anywhere inside the IPv4 or TCP header (VLAN-free frame: IP at 14, TCP at 34).
    for n in [14, 15, 20, 33, 34, 36, 40, 53] {
        check(&mut g, &tcp.clone().truncate(n), Outcome::Malformed);
    }
    assert_eq!(full.len(), 60);
    // IHL below 5, wrong version, total length below the header.
    check(&mut g, &tcp.clone().poke(14, 0x44), Outcome::Malformed);
    check(&mut g, &tcp.clone().poke(14, 0x40), Outcome::Malformed);
    check(&mut g, &tcp.clone().poke(14, 0x65), Outcome::Malformed);
    check(&mut g, &tcp.clone().poke(16, 0).poke(17, 19), Outcome::Malformed);
    // IHL claiming options that are not there.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 1, 2745).poke(14, 0x4f).truncate(60),
        Outcome::Malformed,
    );
    // A UDP header cut short.
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).truncate(14 + 20 + 6), Outcome::Malformed);
    // IPv6: short fixed header, wrong version, cut extension header, cut TCP.
    let t6 = Frame::tcp6(SRC6, DST6, 1, 2745);
    check(&mut g, &t6.clone().truncate(14 + 39), Outcome::Malformed);
    check(&mut g, &t6.clone().poke(14, 0x40), Outcome::Malformed);
    check(
        &mut g,
        &Frame::udp6(SRC6, DST6, 1, 2745).ext(Ext::HopByHop(3)).truncate(14 + 40 + 20),
        Outcome::Malformed,
    );
    check(&mut g, &t6.truncate(14 + 40 + 19), Outcome::Malformed);
    // VLAN and PPPoE cut short; a bad PPPoE header; three VLAN tags.
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 1, 2745).vlan(0x8100, 1).truncate(16),
        Outcome::Malformed,
    );
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).pppoe().truncate(20), Outcome::Malformed);
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 2745).pppoe().poke(14, 0x12), Outcome::Malformed);
    check(
        &mut g,
        &Frame::udp4(SRC4, DST4, 1, 2745).vlan(0x88a8, 1).vlan(0x8100, 2).vlan(0x8100, 3),
        Outcome::Malformed,
    );
    // Headers skipped rather than read must still be whole, whatever follows them: IPv4
    // options past the frame before ICMP, an IPv6 extension header cut short before ICMPv6.
    check(&mut g, &Frame::ip4_other(SRC4, DST4, 1).poke(14, 0x4f).poke(17, 60), Outcome::Malformed);
    check(
        &mut g,
        &Frame::ip6_other(SRC6, DST6, 58).ext(Ext::HopByHop(1)).truncate(14 + 40 + 8),
        Outcome::Malformed,
    );
    // Eight extension headers are followed whatever comes after them.
    let eight = (0..8).fold(Frame::ip6_other(SRC6, DST6, 58), |f, _| f.ext(Ext::DestOpts(0)));
    check(&mut g, &eight, Outcome::Passed);
    // The shortest frame BPF_PROG_TEST_RUN accepts: a bare Ethernet header.
    check(&mut g, &Frame::arp().truncate(14), Outcome::Passed);
}

#[test]
fn other_traffic_passes_untouched() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    check(&mut g, &Frame::arp(), Outcome::Passed);
    check(&mut g, &Frame::arp().vlan(0x8100, 5), Outcome::Passed);
    check(&mut g, &Frame::ip4_other(SRC4, DST4, 1), Outcome::Passed); // ICMP
    check(&mut g, &Frame::ip6_other(SRC6, DST6, 58), Outcome::Passed); // ICMPv6
    // PPPoE carrying LCP, not IP.
    let mut lcp = Frame::udp4(SRC4, DST4, 1, 2745).pppoe().build();
    lcp[20] = 0xc0;
    lcp[21] = 0x21;
    let (v, d) = run(&mut g, &lcp);
    assert_eq!(outcome(v, &d), Outcome::Passed);
}

#[test]
fn allowlisted_sources_are_counted_never_dropped() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings {
        allow: vec!["198.18.0.0/30".parse::<Cidr>().unwrap(), "2001:db8::/64".parse().unwrap()],
        ..Settings::default()
    });
    for f in all_l4(2745, 40000) {
        let (v, d) = run(&mut g, &f.build());
        assert_eq!((v, d.allowed, d.matched, d.dropped), (XDP_PASS, 1, 1, 0));
    }
    check(&mut g, &Frame::udp4([198, 18, 0, 4], DST4, 1, 2745), Outcome::Dropped);
    check(
        &mut g,
        &Frame::udp6(v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 2]), DST6, 1, 2745),
        Outcome::Dropped,
    );
    let sources = g.sources().unwrap();
    assert!(
        sources.iter().any(|s| s.addr.to_string() == "198.18.0.2"),
        "allowed sources are still counted"
    );
}

#[test]
fn settings_change_at_run_time_and_counters_survive() {
    if !root_or_skip() {
        return;
    }
    let mut g = drop_guard();
    let f = Frame::udp4(SRC4, DST4, 1, 2745);
    check(&mut g, &f, Outcome::Dropped);
    let mut s = g.settings().clone();
    s.mode = Mode::Count;
    g.apply(&s).unwrap();
    check(&mut g, &f, Outcome::Counted);
    s.ports = vec![3127];
    g.apply(&s).unwrap();
    check(&mut g, &f, Outcome::Passed);
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 3127), Outcome::Counted);
    s.mode = Mode::Drop;
    s.allow = vec!["198.18.0.2/32".parse().unwrap()];
    g.apply(&s).unwrap();
    let (v, d) = run(&mut g, &Frame::udp4(SRC4, DST4, 1, 3127).build());
    assert_eq!((v, d.allowed), (XDP_PASS, 1));
    s.allow.clear();
    g.apply(&s).unwrap();
    check(&mut g, &Frame::udp4(SRC4, DST4, 1, 3127), Outcome::Dropped);
    let t = g.totals().unwrap();
    assert_eq!((t.seen, t.matched, t.dropped, t.allowed), (6, 5, 2, 1));
}

#[test]
fn per_source_counters_name_the_sender() {
    if !root_or_skip() {
        return;
    }
    let mut g = load(Settings { direction: Direction::Both, ..Settings::default() });
    let syn = Frame::tcp4(SRC4, DST4, 40000, 2745).syn();
    for _ in 0..3 {
        run(&mut g, &syn.build());
    }
    run(&mut g, &Frame::tcp4(SRC4, DST4, 40000, 2745).flags(TCP_SYN | TCP_ACK).build());
    run(&mut g, &Frame::tcp4(SRC4, DST4, 40000, 2745).flags(TCP_RST).build());
    let udp = Frame::udp6(SRC6, DST6, 2745, 5000).payload(&[0; 100]);
    run(&mut g, &udp.build());
    run(&mut g, &udp.build());
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 2);
    let v4 = sources.iter().find(|s| s.addr.to_string() == "198.18.0.2").unwrap();
    assert_eq!(v4.stats.packets, 5);
    assert_eq!(v4.stats.bytes, 5 * 60);
    assert_eq!(v4.stats.tcp_syns, 3, "SYN+ACK and RST are not connection attempts");
    assert_eq!(v4.stats.last_port, 2745);
    assert_eq!(v4.stats.directions, Directions(DIR_DST));
    assert_eq!(v4.stats.protocols, Protocols(PROTO_TCP));
    assert!(v4.stats.first_seen_ns > 0 && v4.stats.first_seen_ns <= v4.stats.last_seen_ns);
    let v6s = sources.iter().find(|s| s.addr.to_string() == "2001:db8::2").unwrap();
    assert_eq!(v6s.stats.packets, 2);
    assert_eq!(v6s.stats.bytes, 2 * (14 + 40 + 8 + 100));
    assert_eq!(v6s.stats.directions, Directions(DIR_SRC), "answering from 2745");
    assert_eq!(v6s.stats.protocols, Protocols(PROTO_UDP));
    assert_eq!(v6s.stats.tcp_syns, 0);
}

#[test]
fn new_sources_are_admitted_within_budget_and_the_rest_is_counted() {
    if !root_or_skip() {
        return;
    }
    // A budget of 8 new sources per CPU per slice; 300 distinct sources arrive in a burst.
    let mut g = load(Settings { admit_per_slice: Some(8), ..Settings::default() });
    let steady = Frame::udp4([198, 19, 255, 1], DST4, 1, 2745).build();
    run(&mut g, &steady);
    for i in 0..300u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let (v, _) = run(&mut g, &Frame::udp4(src, DST4, 1, 2745).build());
        assert_eq!(v, XDP_DROP, "the drop never depends on accounting");
        if i % 50 == 0 {
            run(&mut g, &steady);
        }
    }
    let t = g.totals().unwrap();
    assert_eq!(t.dropped, 307);
    assert_eq!(t.matched, 307);
    let sources = g.sources().unwrap();
    let tracked: u64 = sources.iter().map(|s| s.stats.packets).sum();
    assert_eq!(tracked + t.untracked, 307, "every matched packet is either tracked or untracked");
    assert_eq!(t.admitted as usize, sources.len(), "every admission is one table entry");
    assert!(t.untracked > 0, "the budget held: {t:?}");
    // 300 frames take well under a second: at most a few slices' worth were admitted.
    assert!(sources.len() < 100, "{} sources admitted", sources.len());
    let s = sources.iter().find(|s| s.addr.to_string() == "198.19.255.1").unwrap();
    assert_eq!(s.stats.packets, 7, "a known source is counted exactly during a flood");
}

#[test]
fn no_frame_aborts() {
    if !root_or_skip() {
        return;
    }
    // Pseudo-random frames and mutations of valid ones (the thorough run is the fuzzer's).
    let mut g = drop_guard();
    let seeds: Vec<Vec<u8>> = all_l4(2745, 40000)
        .into_iter()
        .flat_map(wrappings)
        .map(|f| f.build())
        .chain([Frame::udp6(SRC6, DST6, 1, 2745)
            .ext(Ext::HopByHop(1))
            .ext(Ext::Fragment { offset: 0, more: true, id: 5 })
            .build()])
        .collect();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % f.len();
            f[at] = next() as u8;
        }
        let cut = 14 + (next() as usize) % (f.len() - 13);
        f.truncate(cut);
        let r = g
            .program()
            .unwrap()
            .test_run(TestRunOptions { data_in: Some(&f), ..Default::default() })
            .unwrap();
        assert!(
            r.return_value == XDP_PASS || r.return_value == XDP_DROP,
            "{} for {f:02x?}",
            r.return_value
        );
    }
}

/// A flood of one-packet sources fills the table to its bound and never pushes out a source
/// already there: two steady probers keep exact counts. Making room (what the running daemon
/// does past 90%) forgets the sources seen least recently, never the steady ones, and new
/// sources are admitted again.
#[test]
fn steady_probers_survive_a_flood_that_fills_the_table() {
    if !root_or_skip() {
        return;
    }
    let settings = Settings { admit_per_slice: Some(u32::MAX), ..Settings::default() };
    let mut g = Loaded::new(&settings, 4096).unwrap();
    let a = Frame::udp4([198, 19, 0, 1], DST4, 1, 2745).build();
    let b = Frame::tcp6(v6([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1]), DST6, 1, 2745).syn().build();
    let (mut sent_a, mut sent_b) = (0u64, 0u64);
    let flood = |g: &mut Loaded, from: u32, to: u32, sent_a: &mut u64, sent_b: &mut u64| {
        for i in from..to {
            let src = [198, 18, (i >> 8) as u8, i as u8];
            let r = g.program().unwrap().test_run(TestRunOptions {
                data_in: Some(&Frame::udp4(src, DST4, 1, 2745).build()),
                ..Default::default()
            });
            assert_eq!(r.unwrap().return_value, XDP_DROP);
            if i % 512 == 0 {
                run(g, &a);
                *sent_a += 1;
            }
            if i % 512 == 256 {
                run(g, &b);
                *sent_b += 1;
            }
        }
    };
    flood(&mut g, 0, 10_000, &mut sent_a, &mut sent_b);
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 4096, "the table is full and stays at its bound");
    let t = g.totals().unwrap();
    assert_eq!(
        t.untracked,
        10_000 + sent_a + sent_b - (sources.iter().map(|s| s.stats.packets).sum::<u64>())
    );
    assert_eq!(t.dropped, 10_000 + sent_a + sent_b);
    let find = |sources: &[Source], addr: &str| {
        sources.iter().find(|s| s.addr.to_string() == addr).map(|s| s.stats.packets)
    };
    assert_eq!(find(&sources, "198.19.0.1"), Some(sent_a));
    assert_eq!(find(&sources, "2001:db8:ffff::1"), Some(sent_b));

    // Make room: down to 75%, the steady probers kept.
    let removed = g.make_room(&sources);
    assert_eq!(removed, 4096 - 3072);
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 3072);
    assert_eq!(find(&sources, "198.19.0.1"), Some(sent_a));
    assert_eq!(find(&sources, "2001:db8:ffff::1"), Some(sent_b));
    // Below 90%: nothing to do.
    assert_eq!(g.make_room(&sources), 0);
    // New sources get in again, and the probers are still exact.
    flood(&mut g, 20_000, 21_500, &mut sent_a, &mut sent_b);
    let sources = g.sources().unwrap();
    assert_eq!(sources.len(), 4096);
    // Source 20000 (198.18.78.32) came first after the room was made; the last, 21499, found
    // the table full again and is counted as untracked.
    assert_eq!(find(&sources, "198.18.78.32"), Some(1));
    assert_eq!(find(&sources, "198.18.83.251"), None);
    assert_eq!(find(&sources, "198.19.0.1"), Some(sent_a));
    assert_eq!(find(&sources, "2001:db8:ffff::1"), Some(sent_b));
}

/// A full table is a rare event the program logs through aya-log (once per CPU per slice, not
/// per packet); `flush_log` hands it to the `log` crate.
#[test]
fn a_full_table_is_logged_once_not_per_packet() {
    if !root_or_skip() {
        return;
    }
    static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            LINES.lock().unwrap().push(format!("{}", r.args()));
        }
        fn flush(&self) {}
    }
    let _ = log::set_boxed_logger(Box::new(Capture))
        .map(|()| log::set_max_level(log::LevelFilter::Trace));
    let settings = Settings { admit_per_slice: Some(u32::MAX), ..Settings::default() };
    let mut g = Loaded::new(&settings, 16).unwrap();
    for i in 0..200u32 {
        run(&mut g, &Frame::udp4([198, 18, 1, i as u8], DST4, 1, 2745).build());
    }
    g.flush_log();
    let lines = LINES.lock().unwrap();
    let full = lines.iter().filter(|l| l.contains("source table full")).count();
    assert!(full >= 1, "{lines:?}");
    assert!(full <= 4, "logged per packet: {full}");
    assert_eq!(g.totals().unwrap().untracked, 184);
}
