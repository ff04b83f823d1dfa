//! Guard integrity: what `status` says is what the kernel does, the owner keeps its guard (or
//! says loudly that it cannot), one protocol ends it, only root can touch it, and concurrent
//! operators never lose each other's changes. Each test is an attack or an accident that once
//! worked, run for real: namespaces, veths, bpftool, xdp-filter, another user.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use portguard::lab::{self, GW_IF, Listeners};
use portguard_testkit::{
    Bin, Daemon, Fixture,
    fixture::{PinRoot, unique},
    root_or_skip, tool_or_skip, wait_until,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portguard");

fn fixture() -> Fixture {
    Fixture::new(BIN, "pgi")
}

/// This interface's `status --json` entry.
fn status(bin: &Bin) -> Value {
    let doc = bin.json(&["status", "--json"]);
    Fixture::entry(&doc, GW_IF)
}

/// The program id `ip link` shows on the gateway's interface, if any.
fn xdp_prog(ns: &str, dev: &str) -> Option<u64> {
    let out = Command::new("ip").args(["-n", ns, "-j", "-d", "link", "show", dev]).output().ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &v[0]["xdp"];
    xdp["prog"]["id"].as_u64().or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
}

/// As user nobody, with no capabilities.
fn as_nobody(cmd: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .args(["--bounding-set=-all", cmd])
        .args(args)
        .output()
        .unwrap()
}

fn one_line_error(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    assert!(e.starts_with("portguard: error: ") && e.contains(needle), "{needle}: {e}");
}

// ---- 1. A guard's identity is (network namespace, interface) --------------------------------

/// Two namespaces with an interface of the same name, one pin root: each `run` guards its own
/// namespace's interface, settings and lifetime apart; `status` in each shows its own.
#[test]
fn the_same_name_in_another_namespace_is_another_guard() {
    if !root_or_skip() {
        return;
    }
    let mut a = fixture();
    let a_run = a.run(&["--persist", "--interval", "0.2"]);
    a.wait_guarded();
    let b_lab = lab::Lab::create(&unique("pgib")).unwrap();
    let b_bin = a.bin.in_netns(&b_lab.gw);
    let mut b = Daemon::spawn(&b_bin, &b_lab.gw, &["--mode", "count", "--no-metrics"], &[]);
    b.wait_log("guarding pg-wan");
    assert!(!b.log().contains("already guarded"), "{}", b.log());
    let (sa, sb) = (status(&a.bin), status(&b_bin));
    assert_eq!((sa["mode"].as_str(), sb["mode"].as_str()), (Some("drop"), Some("count")));
    assert_eq!(sa["netns"]["name"], a.lab.gw.as_str());
    assert_eq!(sb["netns"]["name"], b_lab.gw.as_str());
    assert_ne!(sa["netns"]["cookie"], sb["netns"]["cookie"]);
    assert_eq!((sa["guarded"].as_bool(), sb["guarded"].as_bool()), (Some(true), Some(true)));
    assert_eq!(a.bin.json(&["status", "--json"])["interfaces"].as_array().unwrap().len(), 1);
    // B ends and detaches its own; A's guard is untouched: still drop, still dropping.
    b.signal(libc::SIGTERM);
    assert!(b.wait().status.success());
    assert!(xdp_prog(&b_lab.gw, GW_IF).is_none());
    let sa = status(&a.bin);
    assert_eq!((sa["mode"].as_str(), sa["guarded"].as_bool()), (Some("drop"), Some(true)));
    let listeners = Listeners::start(&a.lab.gw, 2745).unwrap();
    a.probe(0, 3);
    wait_until("6 drops in A", || a.dropped() == 6);
    assert_eq!(listeners.udp(), 0);
    a.daemons[a_run].signal(libc::SIGTERM);
    assert!(a.daemons[a_run].wait().status.success());
}

/// The interface is renamed and a new one takes its name: `status` never says "guarded" unless
/// the kernel runs the guard's program on the interface of that name, and the daemon moves the
/// guard to the new interface (the name is what it was told to guard).
#[test]
fn a_renamed_interface_is_never_reported_guarded_and_the_name_is_followed() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--interval", "0.2"]);
    f.wait_guarded();
    let first = status(&f.bin)["program_id"].as_u64().unwrap();
    // SIGSTOP: the check below sees the state before the daemon reacts.
    f.daemons[run].signal(libc::SIGSTOP);
    let ip = |args: &[&str]| {
        let out = Command::new("ip").arg("-n").arg(&f.lab.gw).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["link", "set", GW_IF, "down"]);
    ip(&["link", "set", GW_IF, "name", "pg-old"]);
    ip(&["link", "set", "pg-old", "up"]);
    ip(&["link", "add", GW_IF, "type", "veth", "peer", "name", "pg-new-peer"]);
    ip(&["link", "set", GW_IF, "up"]);
    let s = status(&f.bin);
    assert_eq!(s["guarded"], false, "{s}");
    assert!(s["reason"].as_str().unwrap().contains("renamed to pg-old"), "{s}");
    assert!(xdp_prog(&f.lab.gw, GW_IF).is_none());
    f.daemons[run].signal(libc::SIGCONT);
    f.daemons[run].wait_log("renamed to pg-old; guarding the new pg-wan");
    let s = status(&f.bin);
    assert_eq!(s["guarded"], true, "{s}");
    assert_eq!(xdp_prog(&f.lab.gw, GW_IF), s["program_id"].as_u64());
    assert_eq!(xdp_prog(&f.lab.gw, "pg-old"), None, "the old device lost its guard");
    assert!(s["program_id"].as_u64().unwrap() > 0 && first > 0);
}

// ---- 2. "Guarded" comes from the kernel, every time -----------------------------------------

/// Someone detaches the guard's link with bpftool and another program takes the interface: the
/// daemon, `status`, the metrics and systemd's STATUS all say NOT GUARDED and what runs there,
/// and the daemon, unable to guard again, exits non-zero (so the service manager acts).
#[test]
fn a_detached_link_and_another_program_are_reported_and_fatal() {
    if !root_or_skip() || !tool_or_skip("xdp-filter") || !tool_or_skip("bpftool") {
        return;
    }
    let mut f = fixture();
    let dir = std::env::temp_dir().join(unique("pg-notify-"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // Read as systemd does, all along.
    let notes = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (notes, stop) = (notes.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    notes.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    let run =
        f.run_with_env(&["--interval", "0.2"], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    f.wait_guarded();
    f.daemons[run].signal(libc::SIGSTOP);
    let out = Command::new("bpftool")
        .args(["link", "detach", "pinned"])
        .arg(f.dir.join("link"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let load = |verb: &str| {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", f.lab.gw))
            .args(["xdp-filter", verb, GW_IF])
            .output()
            .unwrap()
    };
    let out = load("load");
    assert!(out.status.success(), "xdp-filter load: {out:?}");
    let other = xdp_prog(&f.lab.gw, GW_IF).expect("xdp-filter's program");
    let s = status(&f.bin);
    assert_eq!(s["guarded"], false);
    let why = s["reason"].as_str().unwrap();
    assert!(why.contains(&format!("interface has program {other} (")), "{why}");
    f.daemons[run].signal(libc::SIGCONT);
    f.daemons[run].wait_log(&format!("NOT GUARDED: interface has program {other}"));
    let scrape = || {
        lab::in_netns(&f.lab.gw, || {
            use std::io::{Read as _, Write as _};
            let mut c = std::net::TcpStream::connect("127.0.0.1:9745").ok()?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
            let mut body = String::new();
            c.read_to_string(&mut body).ok()?;
            Some(body)
        })
        .unwrap()
        .unwrap_or_default()
    };
    // Within the 5 s the daemon tries before giving up, the metric says 0.
    wait_until("portguard_guarded 0", || {
        scrape().contains("portguard_guarded{iface=\"pg-wan\"} 0")
    });
    let out = f.daemons[run].wait();
    let _ = load("unload");
    assert_eq!(out.status.code(), Some(1), "giving up is an error: {out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("could not be guarded again"), "{log}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let notes = notes.lock().unwrap();
    assert!(notes.contains("pg-wan NOT GUARDED (interface has program"), "{notes}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Only the link pin is removed: the owner pins it again (no error loop), and a persistent
/// guard is really left in place on exit.
#[test]
fn a_removed_link_pin_is_pinned_again() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--persist", "--interval", "0.2"]);
    f.wait_guarded();
    std::fs::remove_file(f.dir.join("link")).unwrap();
    f.daemons[run].wait_log("1 of its pins were removed under it: pinned them again");
    assert!(f.dir.join("link").exists());
    thread::sleep(Duration::from_millis(1500));
    f.daemons[run].signal(libc::SIGTERM);
    let out = f.daemons[run].wait();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("pinned them again").count(), 1, "{log}");
    assert!(!log.contains("ERROR") && !log.contains("File exists"), "{log}");
    assert!(log.contains("left pg-wan guarded"), "{log}");
    let s = status(&f.bin);
    assert_eq!(s["guarded"], true, "{s}");
    assert_eq!(xdp_prog(&f.lab.gw, GW_IF), s["program_id"].as_u64());
}

// ---- 3. The daemon never exits 0 while the guard it owns is gone ----------------------------

/// The whole pin directory is deleted under a persistent daemon: it does not take that for a
/// detach; it pins everything again, keeps guarding, and a restart adopts the guard.
#[test]
fn a_deleted_pin_directory_is_put_back() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--persist", "--interval", "0.2"]);
    f.wait_guarded();
    f.probe(0, 2);
    wait_until("4 drops", || f.dropped() == 4);
    std::fs::remove_dir_all(f.dir.parent().unwrap()).unwrap();
    f.daemons[run].wait_log("pinned them again");
    assert!(f.dir.join("META").exists() && f.dir.join("link").exists());
    assert_eq!(status(&f.bin)["guarded"], true);
    assert_eq!(f.dropped(), 4, "the counters are the same maps'");
    f.daemons[run].signal(libc::SIGTERM);
    assert!(f.daemons[run].wait().status.success());
    let next = f.run(&["--persist"]);
    f.daemons[next].wait_log("adopted the guard left on pg-wan");
    f.probe(0, 1);
    wait_until("6 drops", || f.dropped() == 6);
}

/// bpffs is unmounted lazily under the daemon: the pins cannot come back, but the guard holds
/// while the daemon runs; asked to leave it in place, it says it cannot, and exits non-zero.
#[test]
fn a_lazily_unmounted_bpffs_is_not_a_clean_exit() {
    if !root_or_skip() {
        return;
    }
    let mnt = PathBuf::from(format!("/tmp/{}", unique("pgbpf-")));
    std::fs::create_dir_all(&mnt).unwrap();
    let out = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _mnt = Unmount(mnt.clone());
    let lab = lab::Lab::create(&unique("pgiu")).unwrap();
    let bin = Bin::new(BIN, &mnt.join("portguard")).in_netns(&lab.gw);
    let mut d =
        Daemon::spawn(&bin, &lab.gw, &["--persist", "--no-metrics", "--interval", "0.2"], &[]);
    d.wait_log("guarding pg-wan");
    let out = Command::new("umount").arg("-l").arg(&mnt).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    d.wait_log("its pins are gone and cannot be put back");
    thread::sleep(Duration::from_secs(2));
    assert!(xdp_prog(&lab.gw, GW_IF).is_some(), "the guard holds while the daemon runs");
    d.signal(libc::SIGTERM);
    let out = d.wait();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not leave pg-wan guarded"));
}

/// `detach` against a daemon ticking every 50 ms: after detach returns 0 the interface is
/// unguarded and stays so (the daemon never brings it back with fresh maps), and the daemon
/// ends with 3, not 0.
#[test]
fn detach_racing_a_fast_daemon_always_wins() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    for round in 0..12 {
        let run = f.run(&["--interval", "0.05", "--no-metrics"]);
        f.wait_guarded();
        thread::sleep(Duration::from_millis(37 * (round % 4)));
        let out = f.portguard(&["detach", "--iface", GW_IF]);
        assert!(out.status.success(), "round {round}: {out:?}");
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            assert!(xdp_prog(&f.lab.gw, GW_IF).is_none(), "round {round}: guarded again");
            assert!(!f.dir.exists(), "round {round}: pinned again");
            thread::sleep(Duration::from_millis(20));
        }
        let out = f.daemons[run].wait();
        assert_eq!(out.status.code(), Some(3), "round {round}: {out:?}");
    }
}

/// A second `run` watching an owner takes over when the owner is killed, counters kept.
#[test]
fn a_watcher_takes_over_from_a_killed_owner() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let owner = f.run(&["--no-metrics"]);
    f.wait_guarded();
    let watcher = f.run(&["--no-metrics"]);
    f.daemons[watcher].wait_log("already guarded by a running portguard");
    f.probe(0, 2);
    wait_until("4 drops", || f.dropped() == 4);
    f.daemons[owner].signal(libc::SIGKILL);
    f.daemons[owner].wait();
    f.daemons[watcher].wait_log("is gone: this process guards it now");
    let pid = f.daemons[watcher].pid() as u64;
    wait_until("the watcher to own it", || status(&f.bin)["owner_pid"].as_u64() == Some(pid));
    assert_eq!(status(&f.bin)["guarded"], true);
    f.probe(0, 1);
    wait_until("6 drops: counted on top", || f.dropped() == 6);
}

/// Two `run`s started at the same instant: one owns, the other watches; neither fails.
#[test]
fn two_runs_at_once_one_owns_and_one_watches() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    for round in 0..5 {
        let a = f.run(&["--no-metrics", "--duration", "1.5"]);
        let b = f.run(&["--no-metrics", "--duration", "1.5"]);
        let (oa, ob) = (f.daemons[a].wait(), f.daemons[b].wait());
        for o in [&oa, &ob] {
            assert!(o.status.success(), "round {round}: {o:?}");
        }
        let logs = [oa.stderr, ob.stderr].map(|l| String::from_utf8_lossy(&l).into_owned());
        let owners = logs.iter().filter(|l| l.contains("guarding pg-wan")).count();
        let watchers = logs.iter().filter(|l| l.contains("already guarded")).count();
        assert_eq!((owners, watchers), (1, 1), "round {round}: {logs:?}");
        assert!(!f.attached() || f.dir.exists());
        wait_until("the guard to be gone", || !f.attached());
    }
}

// ---- 4. Only root can change the guard, and concurrent operators never lose changes ---------

/// bpffs is 1777: another user creates portguard's directory first. portguard refuses it
/// rather than use (or chmod) a directory someone else owns.
#[test]
fn a_directory_another_user_made_is_refused() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let root = f.pins.path.to_str().unwrap().to_string();
    let out = as_nobody("mkdir", &["-p", &format!("{root}/x")]);
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", f.lab.gw))
        .args([BIN, "run", "--iface", GW_IF, "--no-metrics", "--duration", "1"])
        .env("PORTGUARD_PIN_ROOT", &f.pins.path)
        .output()
        .unwrap();
    one_line_error(&out, 1, "is owned by uid 65534, not root");
    assert!(!f.attached(), "nothing attached");
}

/// Another user can neither remove pins nor lock the guard's directory: both need to open a
/// 0700 directory of root's.
#[test]
fn other_users_cannot_touch_the_pins() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--persist", "--no-metrics"]);
    f.wait_guarded();
    let dir = f.dir.to_str().unwrap().to_string();
    let rm = as_nobody("rm", &["-f", &format!("{dir}/META"), &format!("{dir}/link")]);
    assert!(!rm.status.success(), "{rm:?}");
    let lock = as_nobody("flock", &["-x", "-n", &dir, "true"]);
    assert!(!lock.status.success(), "{lock:?}");
    assert!(f.dir.join("META").exists() && f.dir.join("link").exists());
    let stats = as_nobody(BIN, &["--netns", &f.lab.gw, "stats"]);
    assert_eq!(stats.status.code(), Some(1), "{stats:?}");
    f.daemons[run].signal(libc::SIGTERM);
    assert!(f.daemons[run].wait().status.success());
    assert_eq!(status(&f.bin)["guarded"], true);
}

/// Pins that are not portguard's (no META), or a guard whose map has another layout: refused
/// with one line before anything is loaded, and nothing that is there is removed.
#[test]
fn pins_that_are_not_portguards_are_refused_and_kept() {
    if !root_or_skip() || !tool_or_skip("bpftool") {
        return;
    }
    let mut f = fixture();
    // A map of someone else's where portguard's SOURCES would be, and no META.
    std::fs::create_dir_all(&f.dir).unwrap();
    let foreign = f.dir.join("SOURCES");
    let mk = |path: &Path, value: &str| {
        let out = Command::new("bpftool")
            .args(["map", "create"])
            .arg(path)
            .args(["type", "hash", "key", "16", "value", value, "entries", "16", "name", "other"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    mk(&foreign, "4");
    let out = f.portguard(&["run", "--iface", GW_IF, "--no-metrics", "--duration", "1"]);
    // `portguard --netns X run` enters the namespace itself.
    one_line_error(&out, 1, "no META");
    assert!(foreign.exists(), "someone else's pin is left alone");
    std::fs::remove_file(&foreign).unwrap();
    // A persistent guard whose SOURCES is swapped for a map of another layout.
    let run = f.run(&["--persist", "--no-metrics"]);
    f.wait_guarded();
    f.daemons[run].signal(libc::SIGTERM);
    assert!(f.daemons[run].wait().status.success());
    std::fs::remove_file(f.dir.join("SOURCES")).unwrap();
    mk(&f.dir.join("SOURCES"), "8");
    let out = f.portguard(&["run", "--iface", GW_IF, "--no-metrics", "--duration", "1"]);
    one_line_error(&out, 1, "SOURCES has an unexpected type");
    assert!(f.dir.join("link").exists(), "the live link pin is kept");
    assert!(xdp_prog(&f.lab.gw, GW_IF).is_some(), "and the guard with it");
}

/// `set --mode count` ∥ `set --add-port 3000`, and `set --allow` ∥ `set --add-port`, 50 pairs:
/// every change survives, and the daemon logs each as it sees it.
#[test]
fn concurrent_sets_never_lose_a_change() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--no-metrics", "--interval", "0.2"]);
    f.wait_guarded();
    let spawn = |args: &[&str]| f.bin.cmd(args).stdout(Stdio::null()).spawn().unwrap();
    for round in 0..50 {
        let (a, b): (&[&str], &[&str]) = if round % 2 == 0 {
            (&["set", "--mode", "count"], &["set", "--add-port", "3000"])
        } else {
            (&["set", "--allow", "198.18.0.0/24"], &["set", "--add-port", "3000"])
        };
        let (mut x, mut y) = (spawn(a), spawn(b));
        assert!(x.wait().unwrap().success() && y.wait().unwrap().success(), "round {round}");
        let s = status(&f.bin);
        assert!(s["ports"].as_array().unwrap().contains(&3000.into()), "round {round}: {s}");
        if round % 2 == 0 {
            assert_eq!(s["mode"], "count", "round {round}: {s}");
        } else {
            assert_eq!(s["allow"], serde_json::json!(["198.18.0.0/24"]), "round {round}: {s}");
        }
        let reset = f.portguard(&["set", "--mode", "drop", "--remove-port", "3000"]);
        assert!(reset.status.success(), "{reset:?}");
        if round % 2 == 1 {
            assert!(f.portguard(&["set", "--disallow", "198.18.0.0/24"]).status.success());
        }
    }
    f.daemons[run].wait_log("settings changed by `portguard set` (pid ");
    f.daemons[run].wait_log("ports +3000");
}

// ---- 5. Nothing panics, nothing half-applies -----------------------------------------------

#[test]
fn bad_durations_are_refused_before_anything_is_loaded() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    for d in ["nan", "inf", "-1", "1e300", "0", "soon"] {
        let out = f.portguard(&["run", "--iface", GW_IF, "--no-metrics", "--duration", d]);
        assert_eq!(out.status.code(), Some(2), "--duration {d}: {out:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{out:?}");
        assert!(!f.attached(), "--duration {d} attached something");
        assert!(!f.dir.exists(), "--duration {d} pinned something");
    }
}

#[test]
fn a_closed_pipe_ends_quietly() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let _run = f.run(&["--no-metrics"]);
    f.wait_guarded();
    for verb in ["status", "stats"] {
        let script =
            format!("'{BIN}' --netns {} {verb} | head -c 0; echo ${{PIPESTATUS[0]}}", f.lab.gw);
        let out = Command::new("bash")
            .args(["-c", &script])
            .env("PORTGUARD_PIN_ROOT", &f.pins.path)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(code == "0" || code == "141", "{verb}: exit {code}: {out:?}");
        assert!(out.stderr.is_empty(), "{verb}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_same_interface_twice_is_one_guard() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    // The fixture adds `--iface pg-wan` once already.
    let run = f.run(&["--iface", GW_IF, "--no-metrics", "--interval", "0.2", "--duration", "1"]);
    let out = f.daemons[run].wait();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("guarding pg-wan").count(), 1, "{log}");
    assert!(!log.contains("already guarded"), "{log}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One guard: about five intervals in a second at 0.2 s, not twice that.
    let lines = stdout.lines().filter(|l| l.starts_with("iface=")).count();
    assert!((3..=7).contains(&lines), "{lines} interval lines: {stdout}");
}

/// More prefixes than the allowlist holds: refused before anything is written.
#[test]
fn the_allowlist_takes_all_or_nothing() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let _run = f.run(&["--no-metrics"]);
    f.wait_guarded();
    let cidrs: Vec<String> = (0..1025u32)
        .map(|i| format!("198.{}.{}.{}/32", 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff))
        .collect();
    let mut args = vec!["set"];
    for c in &cidrs {
        args.extend(["--allow", c.as_str()]);
    }
    let out = f.portguard(&args);
    one_line_error(&out, 1, "at most 1024 IPv4 prefixes");
    assert_eq!(status(&f.bin)["allow"], serde_json::json!([]), "nothing was applied");
    let out = f.portguard(&args[..2 * 1024 + 1]);
    assert!(out.status.success(), "1024 fit: {out:?}");
    assert_eq!(status(&f.bin)["allow"].as_array().unwrap().len(), 1024);
}

/// A config file that is a FIFO, or huge: one line, at once, and a running daemon whose file
/// turns into one keeps running on SIGHUP.
#[test]
fn config_files_that_are_not_files_are_refused() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let dir = std::env::temp_dir().join(unique("pg-cfg-"));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let start = Instant::now();
    let out = f.portguard(&["run", "--config", fifo.to_str().unwrap()]);
    one_line_error(&out, 1, "not a regular file");
    let big = dir.join("big.toml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(100 << 20).unwrap();
    let out = f.portguard(&["run", "--config", big.to_str().unwrap()]);
    one_line_error(&out, 1, "more than a config file needs");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // SIGHUP while the file is a FIFO: the daemon says so and keeps ticking.
    let good = dir.join("good.toml");
    std::fs::write(&good, "mode = \"drop\"\n").unwrap();
    let run = f.run(&["--config", good.to_str().unwrap(), "--no-metrics", "--interval", "0.2"]);
    f.wait_guarded();
    std::fs::remove_file(&good).unwrap();
    assert!(Command::new("mkfifo").arg(&good).status().unwrap().success());
    f.daemons[run].signal(libc::SIGHUP);
    f.daemons[run].wait_log("keeping the running configuration");
    let printed = f.daemons[run].out().lines().count();
    wait_until("more intervals after the SIGHUP", || {
        f.daemons[run].out().lines().count() > printed + 2
    });
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn source_table_sizes_are_checked() {
    if !root_or_skip() {
        return;
    }
    let f = fixture();
    let out = f.portguard(&["run", "--iface", GW_IF, "--sources", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("256"), "{out:?}");
    let dir = std::env::temp_dir().join(unique("pg-cfg-"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "sources = 4294967295\n").unwrap();
    let out = f.portguard(&["run", "--iface", GW_IF, "--config", cfg.to_str().unwrap()]);
    one_line_error(&out, 1, "the source table holds 256 to 1048576 entries");
    assert!(!f.attached());
    let _ = std::fs::remove_dir_all(dir);
}

/// A local user holds 1,100 connections to the metrics endpoint: the daemon does not spin, does
/// not run out of descriptors for its own checks (no false alarms), and still answers a scrape.
#[test]
fn metrics_survive_a_local_user_holding_connections() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let run = f.run(&["--interval", "0.5"]);
    f.wait_guarded();
    // This test's own descriptors: 1,100 sockets and the usual.
    let lim = libc::rlimit { rlim_cur: 4096, rlim_max: 4096 };
    // SAFETY: raising this process's own limit (root may).
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let addr: SocketAddr = "127.0.0.1:9745".parse().unwrap();
    wait_until("the endpoint", || {
        lab::in_netns(&f.lab.gw, move || std::net::TcpStream::connect(addr).is_ok()).unwrap()
    });
    let held = lab::in_netns(&f.lab.gw, move || {
        (0..1100).filter_map(|_| std::net::TcpStream::connect(addr).ok()).collect::<Vec<_>>()
    })
    .unwrap();
    assert!(held.len() >= 1000, "{} connections", held.len());
    let pid = f.daemons[run].pid();
    let cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').skip(11).take(2).map(|v| v.parse::<u64>().unwrap()).sum()
    };
    let (c0, t0) = (cpu(), Instant::now());
    thread::sleep(Duration::from_secs(4));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = (cpu() - c0) as f64 / hz / t0.elapsed().as_secs_f64();
    assert!(share < 0.2, "the daemon used {:.0}% of a core", share * 100.0);
    let scraped = lab::in_netns(&f.lab.gw, move || {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        c.read_to_string(&mut body).ok()?;
        Some(body)
    })
    .unwrap();
    drop(held);
    assert!(scraped.is_some_and(|b| b.contains("portguard_guarded{iface=\"pg-wan\"} 1")));
    let log = f.daemons[run].log();
    for alarm in ["went away", "NOT GUARDED", "cannot ask", "ERROR"] {
        assert!(!log.contains(alarm), "{alarm}: {log}");
    }
}

/// Sanity for the fixture this file relies on: the guard's directory is keyed by namespace.
#[test]
fn pins_are_keyed_by_namespace() {
    if !root_or_skip() {
        return;
    }
    let mut f = fixture();
    let _run = f.run(&["--no-metrics"]);
    f.wait_guarded();
    let ns = f.dir.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    assert!(ns.starts_with("netns-"), "{ns}");
    assert_eq!(status(&f.bin)["netns"]["cookie"].as_u64(), ns[6..].parse().ok());
    let _ = PinRoot::new("unused");
}
