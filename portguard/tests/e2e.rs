//! End to end: the program attached natively to a veth in a namespace, real TCP connects and
//! UDP datagrams from the other namespace, over IPv4 and IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use portguard::{
    guard::{AttachMode, Attached, Guard},
    lab::{self, GW_IF, Lab, Listeners},
    settings::{Mode, Settings},
};

static N: AtomicU32 = AtomicU32::new(0);

fn lab() -> Lab {
    Lab::create(&format!("pge{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
        .unwrap()
}

fn attach(lab: &Lab, settings: Settings, mode: AttachMode) -> Guard {
    lab::in_netns(&lab.gw, move || {
        let mut g = Guard::load_default(&settings).unwrap();
        g.attach(GW_IF, mode).unwrap();
        g
    })
    .unwrap()
}

/// Waits until the listeners have counted `tcp` and `udp` (delivery is asynchronous).
fn settle(l: &Listeners, tcp: u64, udp: u64) {
    for _ in 0..100 {
        if l.tcp() >= tcp && l.udp() >= udp {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
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
    let lab = lab();
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let service = Listeners::start(&lab.gw, 8080).unwrap();
    let g = attach(&lab, Settings::default(), AttachMode::Native);
    assert_eq!(g.attached, Some(Attached::Native));

    let (connected, _) = traffic(&lab, 2745, Duration::from_millis(300));
    assert_eq!(connected, 0, "no TCP connection to 2745 may get through");
    let (ok, sent) = traffic(&lab, 8080, Duration::from_secs(2));
    assert_eq!(ok, 2, "ordinary TCP over IPv4 and IPv6 is delivered");
    settle(&service, 2, sent as u64);
    assert_eq!(service.udp(), sent as u64, "ordinary UDP is delivered");
    thread::sleep(Duration::from_millis(100));
    assert_eq!((guarded.tcp(), guarded.udp()), (0, 0));

    let t = g.totals().unwrap();
    assert!(t.dropped >= 12, "{t:?}");
    let sources = g.sources().unwrap();
    for v6 in [false, true] {
        let who = lab::outside(v6, 1);
        let s = sources
            .iter()
            .find(|s| s.addr == who)
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
    drop(g);
    // Detached: 2745 reachable again.
    let (connected, _) = traffic(&lab, 2745, Duration::from_secs(2));
    assert_eq!(connected, 2);
}

#[test]
fn count_mode_delivers_and_counts() {
    let lab = lab();
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let g = attach(&lab, Settings { mode: Mode::Count, ..Settings::default() }, AttachMode::Native);
    let (connected, sent) = traffic(&lab, 2745, Duration::from_secs(2));
    assert_eq!(connected, 2);
    settle(&guarded, 2, sent as u64);
    assert_eq!(guarded.udp(), sent as u64);
    let t = g.totals().unwrap();
    assert_eq!(t.dropped, 0);
    assert!(t.matched >= 12, "{t:?}");
    let sources = g.sources().unwrap();
    assert!(sources.iter().any(|s| s.addr == lab::outside(true, 1) && s.stats.tcp_syns == 1));
}

#[test]
fn generic_mode_drops_too() {
    let lab = lab();
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let g = attach(&lab, Settings::default(), AttachMode::Generic);
    assert_eq!(g.attached, Some(Attached::Generic));
    let (connected, _) = traffic(&lab, 2745, Duration::from_millis(300));
    assert_eq!(connected, 0);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(guarded.udp(), 0);
    assert!(g.totals().unwrap().dropped >= 12);
}

/// `portguard run` as an admin runs it, inside the gateway namespace, until SIGTERM.
#[test]
fn run_command_guards_until_sigterm_and_detaches() {
    let lab = lab();
    let guarded = Listeners::start(&lab.gw, 2745).unwrap();
    let root = format!("/sys/fs/bpf/pgtest-e2e-{}", std::process::id());
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gw))
        .arg(env!("CARGO_BIN_EXE_portguard"))
        .args(["run", "--iface", GW_IF, "--interval", "0.2"])
        .env("PORTGUARD_PIN_ROOT", &root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is attached: a link appears on the interface.
    let mut attached = false;
    for _ in 0..400 {
        let out = Command::new("ip").args(["-n", &lab.gw, "link", "show", GW_IF]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("xdp") {
            attached = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(attached, "portguard run did not attach");
    let (connected, _) = traffic(&lab, 2745, Duration::from_millis(300));
    assert_eq!(connected, 0);
    // Wait until the drops are counted, then for an interval or two to be printed.
    let stats = || {
        let out = Command::new(env!("CARGO_BIN_EXE_portguard"))
            .args(["stats", "--json"])
            .env("PORTGUARD_PIN_ROOT", &root)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["interfaces"][0]["totals"]["dropped"].as_u64().unwrap_or(0)
    };
    for _ in 0..400 {
        if stats() >= 12 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("iface={GW_IF} xdp=native ")), "{stdout}");
    assert!(
        last.contains(&format!("top={}:", lab::outside(true, 1)))
            || last.contains(&format!("{}:", lab::outside(false, 1))),
        "{last}"
    );
    let dropped: u64 = last
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dropped="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dropped >= 12, "{last}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("detached"), "{stderr}");
    // Nothing left attached.
    let link = Command::new("ip").args(["-n", &lab.gw, "link", "show", GW_IF]).output().unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"));
    assert_eq!(guarded.tcp(), 0);
    let (connected, _) = traffic(&lab, 2745, Duration::from_secs(2));
    assert_eq!(connected, 2, "reachable again after detach");
    let _: IpAddr = lab::gw_v4();
    let _ = std::fs::remove_dir(&root);
}
