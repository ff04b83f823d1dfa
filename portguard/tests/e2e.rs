//! End to end: the program attached natively to a veth in a namespace, real TCP connects and
//! UDP datagrams from the other namespace, over IPv4 and IPv6.

use std::{net::SocketAddr, thread, time::Duration};

use portguard::{
    guard::{Acquired, AttachMode, Attached, Owner},
    lab::{self, GW_IF, Lab, Listeners},
    pins::Pins,
    settings::{Mode, Settings},
};
use portguard_common::DEFAULT_SOURCE_CAPACITY;
use portguard_testkit::{Fixture, root_or_skip, wait_until};

fn fixture() -> Fixture {
    Fixture::new(env!("CARGO_BIN_EXE_portguard"), "pge")
}

/// Guards the lab's gateway from this process, its pins in the fixture's root.
fn attach(f: &Fixture, settings: Settings, mode: AttachMode) -> Owner {
    let pins = Pins::new(&f.pins.path);
    let acquired = lab::in_netns(&f.lab.gw, move || {
        Owner::acquire(&pins, GW_IF, Some(&settings), DEFAULT_SOURCE_CAPACITY, mode)
    })
    .unwrap()
    .unwrap();
    match acquired {
        Acquired::Attached(o) => o,
        _ => panic!("the lab's interface was already guarded"),
    }
}

/// Waits until the listeners have counted `tcp` and `udp` (delivery is asynchronous).
fn settle(l: &Listeners, tcp: u64, udp: u64) {
    wait_until("the listeners to count what was sent", || l.tcp() >= tcp && l.udp() >= udp);
}

fn traffic(lab: &Lab, port: u16, timeout: Duration) -> (u32, u32) {
    let mut connected = 0;
    let mut sent = 0;
    for v6 in [false, true] {
        let gw = if v6 { lab::gw_v6() } else { lab::gw_v4() };
        let src = lab::outside(v6, 1);
        if lab::tcp_connect(&lab.out, src, SocketAddr::new(gw, port), timeout).unwrap() {
            connected += 1;
        }
        lab::udp_send(&lab.out, src, SocketAddr::new(gw, port), 5, 100).unwrap();
        sent += 5;
    }
    (connected, sent)
}

#[test]
fn drop_mode_drops_2745_and_delivers_everything_else() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let lab = &f.lab;
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let service = Listeners::start(&lab.gw, 8080).unwrap();
    let g = attach(&f, Settings::default(), AttachMode::Native);
    assert_eq!(g.attached(), Attached::Native);

    let (connected, _) = traffic(lab, 2745, Duration::from_millis(300));
    assert_eq!(connected, 0, "no TCP connection to 2745 may get through");
    let (ok, sent) = traffic(lab, 8080, Duration::from_secs(2));
    assert_eq!(ok, 2, "ordinary TCP over IPv4 and IPv6 is delivered");
    settle(&service, 2, sent as u64);
    assert_eq!(service.udp(), sent as u64, "ordinary UDP is delivered");
    thread::sleep(Duration::from_millis(100));
    assert_eq!((guarded.tcp(), guarded.udp()), (0, 0));

    let t = g.view().totals().unwrap();
    assert!(t.dropped >= 12, "{t:?}");
    let sources = g.view().sources().unwrap();
    for v6 in [false, true] {
        let who = lab::outside(v6, 1);
        let s = sources
            .iter()
            .find(|s| s.addr.contains(who))
            .unwrap_or_else(|| panic!("{who} not in {sources:?}"));
        // One SYN (and possibly its retransmission within the timeout) plus 5 datagrams.
        assert!(s.stats.packets >= 6 && s.stats.packets <= 7, "{who}: {:?}", s.stats);
        assert!(s.stats.tcp_syns >= 1);
        assert_eq!(s.stats.last_port, 2745);
    }
    // Nobody else probed.
    assert_eq!(sources.len(), 2, "{sources:?}");
    // The 8080 traffic was seen but not matched.
    assert!(t.seen > t.matched);
    g.release(false).unwrap();
    // Detached: 2745 reachable again.
    let (connected, _) = traffic(lab, 2745, Duration::from_secs(2));
    assert_eq!(connected, 2);
}

#[test]
fn count_mode_delivers_and_counts() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let lab = &f.lab;
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let g = attach(&f, Settings { mode: Mode::Count, ..Settings::default() }, AttachMode::Native);
    let (connected, sent) = traffic(lab, 2745, Duration::from_secs(2));
    assert_eq!(connected, 2);
    settle(&guarded, 2, sent as u64);
    assert_eq!(guarded.udp(), sent as u64);
    let t = g.view().totals().unwrap();
    assert_eq!(t.dropped, 0);
    assert!(t.matched >= 12, "{t:?}");
    let sources = g.view().sources().unwrap();
    assert!(
        sources.iter().any(|s| s.addr.contains(lab::outside(true, 1)) && s.stats.tcp_syns == 1)
    );
}

#[test]
fn generic_mode_drops_too() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let lab = &f.lab;
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let g = attach(&f, Settings::default(), AttachMode::Generic);
    assert_eq!(g.attached(), Attached::Generic);
    let (connected, _) = traffic(lab, 2745, Duration::from_millis(300));
    assert_eq!(connected, 0);
    wait_until("12 drops", || g.view().totals().unwrap().dropped >= 12);
    // Anything that got through would have arrived by now: the drops were counted after it.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(guarded.udp(), 0);
}

/// `portguard run` as an admin runs it, inside the gateway namespace, until SIGTERM.
#[test]
fn run_command_guards_until_sigterm_and_detaches() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let guarded = Listeners::start(&f.lab.gw, 2745).unwrap();
    let run = f.run(&["--interval", "0.2"]);
    wait_until("portguard run to attach", || f.attached());
    let (connected, _) = traffic(&f.lab, 2745, Duration::from_millis(300));
    assert_eq!(connected, 0);
    let dropped = || {
        f.bin.stats().and_then(|v| v["interfaces"][0]["totals"]["dropped"].as_u64()).unwrap_or(0)
    };
    wait_until("12 drops", || dropped() >= 12);
    // An interval printed after the drops were counted.
    let printed = |d: &portguard_testkit::Daemon| {
        d.out().lines().rev().find_map(|l| {
            l.split_whitespace().find_map(|kv| kv.strip_prefix("dropped=")?.parse::<u64>().ok())
        })
    };
    wait_until("an interval line with the drops", || printed(&f.daemons[run]) >= Some(12));
    f.daemons[run].signal(libc::SIGTERM);
    let out = f.daemons[run].wait();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("iface={GW_IF} xdp=native ")), "{stdout}");
    assert!(
        // IPv6 in brackets, so that each entry splits at its last colon.
        last.contains(&format!("top=[{}]:", lab::outside_source(true, 1)))
            || last.contains(&format!("{}:", lab::outside(false, 1))),
        "{last}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("detached"), "{stderr}");
    // Nothing left attached.
    assert!(!f.attached());
    assert_eq!(guarded.tcp(), 0);
    let (connected, _) = traffic(&f.lab, 2745, Duration::from_secs(2));
    assert_eq!(connected, 2, "reachable again after detach");
}

/// `portguard lab` (what `cargo xtask demo` runs) end to end: nothing through to 2745, the
/// ordinary traffic delivered, and nothing left behind: no namespace, no pin directory.
#[test]
fn the_built_in_lab_runs_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_portguard"))
        .args(["lab", "--seconds", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The lab's process id names its pin root.
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/portguard-lab-{}", child.id()));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0 TCP connections and 0 UDP datagrams got through"), "{stdout}");
    assert!(stdout.contains("lab removed: namespaces deleted, nothing left attached"), "{stdout}");
    assert!(!root.exists(), "{} left behind", root.display());
}
