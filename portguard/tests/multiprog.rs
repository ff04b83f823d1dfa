//! portguard sharing an interface with xdp-filter (Debian's xdp-tools) through libxdp's
//! multi-program dispatcher, end to end in the lab's namespaces: real TCP and UDP over the
//! veth, both start orders, each detached in turn, a restart under a steady stream, a
//! dispatcher rebuilt without portguard and an interface that goes away and comes back, and
//! what `status` says of it all.
//!
//! Needs root, bpffs, xdp-tools and libxdp1 (`cargo xtask setup`), and a kernel that runs
//! freplace (extension) programs. Where the kernel refuses them, as libxdp's own compatibility
//! check finds (`multiprog::support`), the sharing tests say so in one line and pass without
//! checking anything, and the tests of what portguard does on such a kernel run instead.
//! `cargo xtask vmlab --scenario multiprog` runs this file in the router VM lab's Debian guests,
//! where they all run (and `cargo xtask test` in its 6.1 guest).
//!
//! Every test removes, however it ends: its daemons, xdp-filter (through xdp-filter), whatever
//! is left attached to the interface, the libxdp pins of every dispatcher the interface had,
//! its pin root and its namespaces. xdp-filter keeps one host-wide state (its maps under
//! /sys/fs/bpf/xdp-filter, a lock file in /run), so the tests that touch the hook run one at a
//! time.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::{Command, Output},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use portguard::{
    lab::{self, GW_IF, Listeners},
    multiprog::{self, Hook, Support, dispatcher},
    netlink,
};
use portguard_testkit::{Fixture, root_or_skip, tool_or_skip};
use serde_json::Value;

/// One test at a time touches a hook and xdp-filter's host-wide state.
static SERIAL: Mutex<()> = Mutex::new(());

/// The port xdp-filter is told to drop (portguard guards 2745).
const FILTERED: u16 = 2746;
/// Ordinary traffic.
const SERVICE: u16 = 8080;
/// Generous: under emulation (the VM lab's guests) everything is slow, and loading the program
/// (the verifier) slowest of all: a start can take half a minute there.
const PATIENCE: Duration = Duration::from_secs(180);

/// Polls `cond` until it holds, or panics naming `what` after PATIENCE (testkit's
/// `wait_until` gives up sooner than an emulated guest may need).
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the kernel runs extensions (libxdp's own check): the serial lock if so; None, with
/// one line saying why, if the kernel refuses them. A check that cannot run at all (libxdp's
/// dispatcher object missing) is a failure, not a skip.
fn sharing_or_skip() -> Option<MutexGuard<'static, ()>> {
    if !root_or_skip() || !tool_or_skip("xdp-filter") {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    match multiprog::support().expect("libxdp's compatibility check") {
        Support::Yes => Some(serial),
        Support::Refused(why) if std::env::var_os(REQUIRE_SHARING).is_some() => {
            panic!("{REQUIRE_SHARING} is set, and {why}")
        }
        Support::Refused(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Set where the kernel is known to run extensions (the VM lab's multiprog scenario sets it in
/// the Debian guest): a refusal there is a failure, never a skip.
const REQUIRE_SHARING: &str = "PORTGUARD_REQUIRE_SHARING";

/// The opposite: the serial lock on a kernel that refuses extensions; None (one line) where
/// it runs them, for the tests of what portguard does on such a kernel.
fn refusing_kernel() -> Option<(MutexGuard<'static, ()>, String)> {
    if !root_or_skip() {
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    match multiprog::support().expect("libxdp's compatibility check") {
        Support::Refused(why) => Some((serial, why)),
        Support::Yes => {
            eprintln!("not applicable: this kernel runs extensions (the sharing tests run)");
            None
        }
    }
}

/// The lab and its portguard, plus the libxdp state of the gateway's interface, all removed
/// when dropped.
struct Shared {
    f: Fixture,
    ifindex: u32,
    /// Dispatchers seen on the interface: their pin directories are removed at the end.
    seen: Mutex<BTreeSet<(u32, u32)>>,
}

impl Shared {
    fn new() -> Shared {
        let f = Fixture::new(env!("CARGO_BIN_EXE_portguard"), "pgmp");
        let ifindex =
            lab::in_netns(&f.lab.gw, || portguard::guard::ifindex(GW_IF)).unwrap().unwrap();
        Shared { f, ifindex, seen: Mutex::default() }
    }

    fn ifindex_now(&self) -> u32 {
        lab::in_netns(&self.f.lab.gw, || portguard::guard::ifindex(GW_IF)).unwrap().unwrap()
    }

    /// What holds the hook, from inside the namespace.
    fn hook(&self) -> Hook {
        let i = self.ifindex_now();
        let h = lab::in_netns(&self.f.lab.gw, move || multiprog::hook(i)).unwrap().unwrap();
        if let Hook::Dispatcher(d) = &h {
            self.seen.lock().unwrap().insert((i, d.prog_id));
        }
        h
    }

    /// The names of the dispatcher's programs in run order.
    fn chain(&self) -> Vec<String> {
        match self.hook() {
            Hook::Dispatcher(d) => d.components.iter().map(|c| c.name.clone()).collect(),
            _ => Vec::new(),
        }
    }

    fn wait_chain(&self, want: &[&str]) {
        let deadline = Instant::now() + PATIENCE;
        while self.chain() != want {
            assert!(
                Instant::now() < deadline,
                "chain is {:?}, want {want:?}; logs: {}",
                self.chain(),
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.f.daemons.iter().map(|d| d.log()).collect::<Vec<_>>().join("\n---\n")
    }

    /// An xdp-tools command (xdp-filter, xdp-loader) in the gateway namespace (network only:
    /// bpffs stays visible). xdp-filter serialises itself host-wide with a lock file: another
    /// user's run is waited out.
    fn xdp(&self, tool: &str, args: &[&str]) -> Output {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.f.lab.gw))
                .arg(tool)
                .args(args)
                .output()
                .unwrap();
            self.hook();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || !err.contains("Already held by pid") {
                return out;
            }
            assert!(Instant::now() < deadline, "{tool} stayed locked: {err}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn xdp_ok(&self, tool: &str, args: &[&str]) -> String {
        let out = self.xdp(tool, args);
        assert!(
            out.status.success(),
            "{tool} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// xdp-filter loaded, dropping TCP and UDP to FILTERED.
    fn xdp_filter(&self) {
        self.xdp_ok("xdp-filter", &["load", GW_IF]);
        self.xdp_ok("xdp-filter", &["port", &FILTERED.to_string()]);
    }

    /// `portguard run` in the gateway namespace; returns its index once it is guarding.
    fn run(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["--interval", "0.2", "--no-metrics"];
        args.extend_from_slice(extra);
        let i = self.f.run(&args);
        let d = &self.f.daemons[i];
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = d.log();
            if log.contains("guarding ") || log.contains("adopted the guard") {
                return i;
            }
            assert!(Instant::now() < deadline, "portguard run did not start guarding: {log}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until daemon `i` has logged `needle`; on a timeout the panic shows its log.
    fn wait_log(&self, i: usize, needle: &str) {
        let d = &self.f.daemons[i];
        let deadline = Instant::now() + PATIENCE;
        while !d.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the log line '{needle}'; the log:\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to a `run`, and its exit, which must be clean; its log is returned.
    fn stop(&mut self, i: usize) -> String {
        let d = &mut self.f.daemons[i];
        d.signal(libc::SIGTERM);
        let out = d.wait();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "portguard run failed: {log}");
        log
    }

    /// The gateway's entry in `status --json` (validated against its schema).
    fn status(&self) -> Value {
        Fixture::entry(&self.f.json(&["status", "--json"]), GW_IF)
    }

    /// portguard's component's program id, as `status` reads it from the kernel.
    fn ours(&self) -> Option<u64> {
        let s = self.status();
        (s["guarded"] == true && s["attach"] == "multiprog").then(|| s["program_id"].as_u64())?
    }

    /// One TCP connect over IPv4 and IPv6, and `udp` datagrams each: how many connected.
    fn probe(&self, port: u16, udp: u32, timeout: Duration) -> u32 {
        let mut connected = 0;
        for v6 in [false, true] {
            let gw = if v6 { lab::gw_v6() } else { lab::gw_v4() };
            let src = lab::outside(v6, 1);
            let dst = SocketAddr::new(gw, port);
            if lab::tcp_connect(&self.f.lab.out, src, dst, timeout).unwrap() {
                connected += 1;
            }
            lab::udp_send(&self.f.lab.out, src, dst, udp, 64).unwrap();
        }
        connected
    }

    /// Both guards at work at once: 2745 dropped (and counted by portguard), FILTERED dropped
    /// (by xdp-filter), SERVICE delivered.
    fn check_both(&self, l: &Ports) {
        let before = self.f.dropped();
        assert_eq!(self.probe(2745, 5, Duration::from_millis(500)), 0, "TCP to 2745 got through");
        assert_eq!(self.probe(FILTERED, 5, Duration::from_millis(500)), 0, "TCP to {FILTERED}");
        l.service_works(self);
        thread::sleep(Duration::from_millis(200));
        assert_eq!((l.guarded.tcp(), l.guarded.udp()), (0, 0), "something reached 2745");
        assert_eq!((l.filtered.tcp(), l.filtered.udp()), (0, 0), "something reached {FILTERED}");
        // Two SYNs (or more, with retransmissions) and 10 datagrams, counted by portguard.
        let deadline = Instant::now() + PATIENCE;
        while self.f.dropped() < before + 12 {
            assert!(Instant::now() < deadline, "portguard counted {} drops", self.f.dropped());
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// No libxdp directory of this interface's dispatchers is left.
    fn no_dispatcher_dirs(&self) -> Vec<String> {
        let i = self.ifindex_now();
        let prefix = format!("dispatch-{i}-");
        std::fs::read_dir(multiprog::state_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The daemons first: a running owner would join again what is removed below.
        self.f.daemons.clear();
        let gw = self.f.lab.gw.clone();
        if let Ok(i) = lab::in_netns(&gw, || portguard::guard::ifindex(GW_IF)).unwrap_or(Ok(0))
            && i != 0
        {
            if let Ok(Ok(Hook::Dispatcher(d))) = lab::in_netns(&gw, move || multiprog::hook(i)) {
                self.seen.get_mut().unwrap_or_else(|e| e.into_inner()).insert((i, d.prog_id));
            }
            // xdp-filter's own state (its pins, its program directory) goes through xdp-filter.
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{gw}"))
                .args(["xdp-filter", "unload", GW_IF])
                .output();
            // Whatever is left attached (netlink, either mode).
            let _ = lab::in_netns(&gw, move || {
                for flags in [netlink::XDP_FLAGS_DRV_MODE, netlink::XDP_FLAGS_SKB_MODE] {
                    let _ = netlink::set(i, None, flags, None);
                }
            });
        }
        for (i, id) in self.seen.get_mut().unwrap_or_else(|e| e.into_inner()).iter() {
            multiprog::remove_pin_dir(&multiprog::pin_dir(*i, *id));
        }
        // Then the fixture: its pin root, its namespaces.
    }
}

/// Listeners on the guarded, the filtered and the ordinary port.
struct Ports {
    guarded: Listeners,
    filtered: Listeners,
    service: Listeners,
}

impl Ports {
    fn start(s: &Shared) -> Ports {
        Ports {
            guarded: Listeners::start(&s.f.lab.gw, 2745).unwrap(),
            filtered: Listeners::start(&s.f.lab.gw, FILTERED).unwrap(),
            service: Listeners::start(&s.f.lab.gw, SERVICE).unwrap(),
        }
    }

    /// Ordinary TCP and UDP, over IPv4 and IPv6, are delivered.
    fn service_works(&self, s: &Shared) {
        let (tcp, udp) = (self.service.tcp(), self.service.udp());
        assert_eq!(s.probe(SERVICE, 5, PATIENCE), 2, "ordinary TCP must be delivered");
        let deadline = Instant::now() + PATIENCE;
        while self.service.tcp() < tcp + 2 || self.service.udp() < udp + 10 {
            assert!(Instant::now() < deadline, "ordinary UDP must be delivered");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `xdp-loader status` lists both, portguard at priority 5 chaining on XDP_PASS.
fn assert_loader_lists_both(s: &Shared) {
    let status = s.xdp_ok("xdp-loader", &["status", GW_IF]);
    let line = |name: &str| status.lines().find(|l| l.contains(name)).map(str::to_owned);
    let pg =
        line(" portguard ").unwrap_or_else(|| panic!("xdp-loader lists no portguard: {status}"));
    assert!(pg.contains("XDP_PASS") && pg.split_whitespace().nth(1) == Some("5"), "{pg}");
    assert!(line("xdpfilt_").is_some(), "xdp-loader lists no xdp-filter: {status}");
    assert!(line("xdp_dispatcher").is_some(), "{status}");
}

/// `status` says what the kernel runs: shared, at its priority, beside xdp-filter.
fn assert_status_shared(s: &Shared, with: &[&str]) {
    let st = s.status();
    assert_eq!(st["guarded"], true, "{st}");
    assert_eq!(st["attach"], "multiprog", "{st}");
    assert_eq!(st["priority"], multiprog::DEFAULT_PRIORITY, "{st}");
    let Hook::Dispatcher(d) = s.hook() else { panic!("no dispatcher") };
    assert_eq!(st["dispatcher_id"], d.prog_id, "{st}");
    let others: Vec<&str> =
        st["shared_with"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(others, with, "{st}");
    let text = String::from_utf8_lossy(&s.f.portguard(&["status"]).stdout).into_owned();
    assert!(text.contains("shared in libxdp's dispatcher"), "{text}");
}

#[test]
fn multiprog_where_the_kernel_refuses_extensions_fails_cleanly() {
    let Some((_serial, why)) = refusing_kernel() else { return };
    let mut s = Shared::new();
    let i = s.f.run(&["--attach", "multiprog", "--no-metrics"]);
    let out = s.f.daemons[i].wait();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one line: {log}");
    assert!(errors[0].contains("refuses XDP extension (freplace) programs"), "{log}");
    assert!(why.contains("refuses"), "{why}");
    // Nothing attached, nothing pinned, no dispatcher left behind.
    assert!(!s.f.attached(), "something is attached");
    assert!(!s.f.dir.exists(), "the guard's directory is left");
    assert_eq!(s.no_dispatcher_dirs(), Vec::<String>::new());
    // Exclusive still works, and auto takes the free interface alone.
    let i = s.run(&[]);
    let st = s.status();
    assert_eq!((&st["guarded"], &st["attach"]), (&Value::Bool(true), &Value::from("exclusive")));
    assert!(st["priority"].is_null() && st["shared_with"].as_array().unwrap().is_empty());
    s.stop(i);
}

/// `--attach auto` on an interface where a libxdp dispatcher runs: it joins it where the kernel
/// runs extensions; where it refuses them it says exactly why it cannot share, and leaves the
/// dispatcher as it was.
#[test]
fn auto_beside_a_libxdp_dispatcher() {
    if !root_or_skip() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let support = multiprog::support().expect("libxdp's compatibility check");
    let mut s = Shared::new();
    // A dispatcher of libxdp's own object, attached as libxdp attaches it (netlink), with no
    // program in it yet.
    let i = s.ifindex;
    lab::in_netns(&s.f.lab.gw, move || {
        let mut d = dispatcher::load(&dispatcher::Config::empty(0)).unwrap();
        let fd = d.program().unwrap().fd().unwrap().try_clone().unwrap();
        use std::os::fd::AsFd as _;
        netlink::set(i, Some(fd.as_fd()), netlink::XDP_FLAGS_UPDATE_IF_NOEXIST, None).unwrap();
    })
    .unwrap();
    let Hook::Dispatcher(before) = s.hook() else { panic!("no dispatcher attached") };
    match support {
        Support::Refused(_) => {
            let r = s.f.run(&["--no-metrics"]);
            let out = s.f.daemons[r].wait();
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let log = String::from_utf8_lossy(&out.stderr);
            let line = log.lines().find(|l| l.contains("error")).unwrap_or_default().to_string();
            for words in [
                format!("runs libxdp's multi-program dispatcher (program {}", before.prog_id),
                "refuses XDP extension (freplace) programs".into(),
                "does not replace the dispatcher".into(),
            ] {
                assert!(line.contains(&words), "{words}: {log}");
            }
            assert_eq!(s.hook(), Hook::Dispatcher(before), "the dispatcher was changed");
            assert!(!s.f.dir.exists(), "the guard's directory is left");
        }
        Support::Yes => {
            let r = s.run(&[]);
            s.wait_chain(&["portguard"]);
            assert_ne!(s.hook(), Hook::Dispatcher(before), "joined: a new dispatcher");
            assert_status_shared(&s, &[]);
            s.stop(r);
            assert_eq!(s.hook(), Hook::Free, "the last one out takes the dispatcher with it");
        }
    }
}

/// On a kernel that refuses extensions, libxdp loads xdp-filter alone (no dispatcher):
/// `--attach auto` says it cannot share that, and xdp-filter keeps the hook.
#[test]
fn auto_beside_xdp_filter_loaded_alone() {
    let Some((_serial, _)) = refusing_kernel() else { return };
    if !tool_or_skip("xdp-filter") {
        return;
    }
    let mut s = Shared::new();
    s.xdp_filter();
    let Hook::Exclusive { prog_id, name } = s.hook() else {
        panic!("xdp-filter is in a dispatcher on a kernel that refuses extensions")
    };
    let r = s.f.run(&["--no-metrics"]);
    let out = s.f.daemons[r].wait();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("already has XDP program {prog_id} ({name}) attached on its own")),
        "{log}"
    );
    assert_eq!(s.hook(), Hook::Exclusive { prog_id, name }, "xdp-filter keeps the hook");
}

#[test]
fn xdp_filter_first_then_portguard_each_detached_in_turn() {
    let Some(_serial) = sharing_or_skip() else { return };
    let mut s = Shared::new();
    let l = Ports::start(&s);
    s.xdp_filter();
    assert_eq!(s.chain(), ["xdpfilt_alw_all"]);
    // auto: a libxdp dispatcher is there, so portguard joins it, ahead of xdp-filter.
    let run = s.run(&[]);
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    assert_loader_lists_both(&s);
    assert_status_shared(&s, &["xdpfilt_alw_all"]);
    s.check_both(&l);
    // No fingerprints or captures in a dispatcher (the kernel refuses a tail call between an
    // extension and an XDP program): said once, and the sources carry no label.
    let log = s.f.daemons[run].log();
    assert!(
        log.contains("no copy-out program (it cannot be tail-called from a program in libxdp's")
            && log.contains("guarding without fingerprints or captures"),
        "{log}"
    );
    let doc = s.f.json(&["stats", "--json"]);
    let sources = Fixture::entry(&doc, GW_IF)["sources"].as_array().cloned().unwrap_or_default();
    assert!(!sources.is_empty() && sources.iter().all(|src| src["fingerprint"].is_null()));
    // Settings change in place, as always: in count mode 2745 gets through (xdp-filter lets
    // it), then is dropped again.
    assert!(s.f.portguard(&["set", "--mode", "count"]).status.success());
    assert_eq!(s.probe(2745, 5, PATIENCE), 2, "count mode lets TCP to 2745 through");
    until("the datagrams to 2745 delivered", || l.guarded.udp() >= 10);
    assert!(s.f.portguard(&["set", "--mode", "drop"]).status.success());
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0, "drop mode again");

    // portguard leaves; xdp-filter stays and keeps working; 2745 is reachable again.
    let log = s.stop(run);
    assert!(log.contains("detached"), "{log}");
    s.wait_chain(&["xdpfilt_alw_all"]);
    assert_eq!(s.probe(FILTERED, 3, Duration::from_millis(500)), 0);
    assert_eq!(s.probe(2745, 0, PATIENCE), 2, "2745 reachable once portguard left");
    l.service_works(&s);
    assert!(!s.f.dir.exists(), "portguard's pins are gone");

    // Now the other way round: portguard back, then xdp-filter leaves, portguard stays.
    let run = s.run(&["--attach", "multiprog"]);
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    s.xdp_ok("xdp-filter", &["unload", GW_IF]);
    s.wait_chain(&["portguard"]);
    assert!(s.ours().is_some(), "libxdp carried portguard's own program over");
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0);
    assert_eq!(s.probe(FILTERED, 0, PATIENCE), 2, "xdp-filter is gone");
    s.stop(run);
    assert_eq!(s.hook(), Hook::Free, "the last one out takes the dispatcher with it");
    assert_eq!(s.no_dispatcher_dirs(), Vec::<String>::new());
}

#[test]
fn portguard_first_then_xdp_filter_each_detached_in_turn() {
    let Some(_serial) = sharing_or_skip() else { return };
    let mut s = Shared::new();
    let l = Ports::start(&s);
    let run = s.run(&["--attach", "multiprog", "--persist"]);
    s.wait_chain(&["portguard"]);
    // xdp-filter loads after: libxdp rebuilds the dispatcher and carries portguard over, from
    // its pinned program, with its priority, ahead of itself.
    s.xdp_filter();
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    assert_loader_lists_both(&s);
    s.check_both(&l);
    // The owner follows its program into the rebuilt dispatcher: still guarded, pinned.
    thread::sleep(Duration::from_millis(1500));
    assert_status_shared(&s, &["xdpfilt_alw_all"]);
    assert!(!s.f.daemons[run].log().contains("NOT GUARDED"), "{}", s.logs());
    // Left in place (--persist): still in the chain with nobody running.
    s.stop(run);
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    s.check_both(&l);
    assert_status_shared(&s, &["xdpfilt_alw_all"]);

    // xdp-filter leaves first: portguard stays, alone in the dispatcher.
    s.xdp_ok("xdp-filter", &["unload", GW_IF]);
    s.wait_chain(&["portguard"]);
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0);
    assert_eq!(s.probe(FILTERED, 0, PATIENCE), 2);
    // xdp-filter back, then `portguard detach`: xdp-filter alone keeps working.
    s.xdp_filter();
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    let out = s.f.portguard(&["detach", "--iface", GW_IF]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.chain(), ["xdpfilt_alw_all"]);
    assert!(!s.f.dir.exists(), "portguard's pins are gone");
    assert_eq!(s.probe(FILTERED, 0, Duration::from_millis(500)), 0);
    assert_eq!(s.probe(2745, 0, PATIENCE), 2);
    l.service_works(&s);
}

/// `--persist`, then a new run adopts the guard: its program replaces the old one in one swap
/// of the dispatcher, under a steady stream to 2745, and nothing gets through.
#[test]
fn restart_in_a_dispatcher_lets_nothing_through() {
    let Some(_serial) = sharing_or_skip() else { return };
    let mut s = Shared::new();
    let l = Ports::start(&s);
    s.xdp_filter();
    let mut run = s.run(&["--persist"]);
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    let first = s.ours().unwrap();
    // A steady, bounded stream: one datagram every 2 ms for as long as the restarts take.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let stream = {
        let (out, stop, sent) = (s.f.lab.out.clone(), stop.clone(), sent.clone());
        thread::spawn(move || {
            lab::in_netns(&out, move || {
                let src = SocketAddr::new(lab::outside(false, 2), 0);
                let sock = std::net::UdpSocket::bind(src).unwrap();
                let dst = SocketAddr::new(lab::gw_v4(), 2745);
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(300) {
                    if sock.send_to(b"bagle", dst).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            })
            .unwrap()
        })
    };
    let mut ids = vec![first];
    for _ in 0..3 {
        s.stop(run);
        run = s.run(&["--persist"]);
        s.wait_log(run, "adopted");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(id) = s.ours()
                && !ids.contains(&id)
            {
                ids.push(id);
                break;
            }
            assert!(Instant::now() < deadline, "the new run did not adopt the guard");
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(s.chain(), ["portguard", "xdpfilt_alw_all"]);
    }
    // xdp-filter kept working throughout.
    assert_eq!(s.probe(FILTERED, 3, Duration::from_millis(500)), 0);
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap();
    thread::sleep(Duration::from_millis(200));
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 100, "the stream sent {sent}");
    assert_eq!(l.guarded.udp(), 0, "{} of {sent} datagrams got through a restart", l.guarded.udp());
    assert_eq!(l.filtered.udp(), 0);
    // Counters were kept across the restarts: every datagram is counted.
    assert!(s.f.dropped() >= sent, "dropped {} of {sent}", s.f.dropped());
    s.stop(run);
    let out = s.f.portguard(&["detach", "--iface", GW_IF]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.chain(), ["xdpfilt_alw_all"]);
}

/// The owner keeps its place: a dispatcher rebuilt without portguard (xdp-loader unloading its
/// program) is joined again, and so is the interface when it comes back; a program that takes
/// the hook alone is not replaced.
#[test]
fn upkeep_joins_again_after_a_rebuild_and_a_returning_interface() {
    let Some(_serial) = sharing_or_skip() else { return };
    let mut s = Shared::new();
    s.xdp_filter();
    let run = s.run(&[]);
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    let ours = s.ours().unwrap();
    // Another libxdp user rebuilds the dispatcher without portguard.
    s.xdp_ok("xdp-loader", &["unload", GW_IF, "--id", &ours.to_string()]);
    s.wait_log(run, "rebuilt without portguard: joined it again");
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0);
    // The interface goes away (xdp-filter with it) and comes back: portguard alone again.
    s.xdp_ok("xdp-filter", &["unload", GW_IF]);
    s.wait_chain(&["portguard"]);
    s.f.lab.unplug().unwrap();
    s.wait_log(run, "went away");
    s.f.lab.plug().unwrap();
    s.wait_log(run, "guarding it again");
    s.wait_chain(&["portguard"]);
    assert_status_shared(&s, &[]);
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0);
    assert_eq!(s.no_dispatcher_dirs().len(), 1, "{:?}", s.no_dispatcher_dirs());
    // `portguard detach` while it runs: out of the dispatcher (the last one out: the hook is
    // free), pins removed, and the owner lets go with status 3 instead of joining again.
    let out = s.f.portguard(&["detach", "--iface", GW_IF]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.hook(), Hook::Free);
    let out = s.f.daemons[run].wait();
    assert_eq!(out.status.code(), Some(3), "{}", s.logs());
    assert_eq!(s.hook(), Hook::Free, "joined again after a detach");
    assert!(!s.f.dir.exists(), "portguard's pins are left");
    assert_eq!(s.no_dispatcher_dirs(), Vec::<String>::new());
}

/// Pins removed under the owner are put back (libxdp needs them to carry portguard over), a
/// dispatcher detached by hand is joined again, and a program that takes the hook alone is not
/// replaced: the daemon says so and exits 1.
#[test]
fn upkeep_puts_pins_back_joins_again_and_never_replaces_another_program() {
    let Some(_serial) = sharing_or_skip() else { return };
    let mut s = Shared::new();
    s.xdp_filter();
    let run = s.run(&[]);
    s.wait_chain(&["portguard", "xdpfilt_alw_all"]);
    let Hook::Dispatcher(d) = s.hook() else { panic!("no dispatcher") };
    let slot = d.components.iter().position(|c| c.name == "portguard").unwrap();
    let pins = [
        d.pin_dir().join(format!("prog{slot}-link")),
        d.pin_dir().join(format!("prog{slot}-prog")),
        s.f.dir.join(portguard_common::map_names::TOTALS),
    ];
    for p in &pins {
        std::fs::remove_file(p).unwrap();
    }
    s.wait_log(run, "pinned them again");
    until("every pin back", || pins.iter().all(|p| p.exists()));
    // libxdp carries it over from those pins: xdp-filter leaves, portguard stays.
    s.xdp_ok("xdp-filter", &["unload", GW_IF]);
    s.wait_chain(&["portguard"]);
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0);

    // The dispatcher detached by hand (`ip link set dev pg-wan xdp off`): joined again.
    let Hook::Dispatcher(d) = s.hook() else { panic!("no dispatcher") };
    let (i, flag) = (s.ifindex_now(), d.mode.flag());
    lab::in_netns(&s.f.lab.gw, move || netlink::set(i, None, flag, None).unwrap()).unwrap();
    s.wait_log(run, "attached again");
    s.wait_chain(&["portguard"]);
    assert_eq!(s.probe(2745, 5, Duration::from_millis(500)), 0);

    // Another program takes the hook alone (replacing the dispatcher outright, as `ip link set
    // dev pg-wan xdp obj ...` does): portguard does not take it back.
    lab::in_netns(&s.f.lab.gw, move || {
        let bytes = std::fs::read(dispatcher::object_path().unwrap()).unwrap();
        let mut obj = aya::Ebpf::load(&bytes).unwrap();
        let p: &mut aya::programs::Xdp = obj.program_mut("xdp_pass").unwrap().try_into().unwrap();
        p.load().unwrap();
        use std::os::fd::AsFd as _;
        netlink::set(i, Some(p.fd().unwrap().as_fd()), flag, None).unwrap();
    })
    .unwrap();
    let Hook::Exclusive { prog_id, .. } = s.hook() else { panic!("xdp_pass is not attached") };
    let out = s.f.daemons[run].wait();
    assert_eq!(out.status.code(), Some(1), "{}", s.logs());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("program {prog_id} (xdp_pass) attached")), "{log}");
    assert_eq!(s.hook(), Hook::Exclusive { prog_id, name: "xdp_pass".into() }, "replaced");
}
