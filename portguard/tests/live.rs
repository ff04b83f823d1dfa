//! `portguard run`'s own output as an admin sees it: the live table on a real terminal (tmux,
//! read back with capture-pane) at 80×24 and 200×50, with its warnings kept above the table;
//! and the `key=value` lines in a pipe, which a script must be able to split.

use std::process::{Command, Output};

use portguard::{
    counters::SourceAddr,
    lab::{self, GW_IF, Listeners},
};
use portguard_testkit::{Fixture, fixture::unique, root_or_skip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_portguard");

/// A tmux server of the test's own, killed with it.
struct Tmux {
    server: String,
    /// The processes in its panes: waited for when it is killed, so that they are gone before
    /// the fixture removes their pins.
    pids: std::cell::RefCell<Vec<i32>>,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux { server: unique("pglive"), pids: Default::default() }
    }

    fn pane_pid(&self, s: &str) -> i32 {
        let out = self.cmd(&["display-message", "-p", "-t", s, "#{pane_pid}"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.server, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `cmd` in a detached `w`×`h` session named `s`.
    fn start(&self, s: &str, w: u16, h: u16, cmd: &str) {
        let out = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            s,
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
            cmd,
        ]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        self.pids.borrow_mut().push(self.pane_pid(s));
    }

    fn screen(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", s]).stdout).into_owned()
    }

    fn wait_screen(&self, s: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(what, || {
                last = self.screen(s);
                ok(&last)
            })
        }));
        if found.is_err() {
            panic!("timed out waiting for {what}; the screen:\n{last}");
        }
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        // A live view ends when its terminal goes (`hang_up_ends_the_live_view`); should one
        // not, it must not outlive the test.
        for pid in self.pids.borrow().iter() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            // SAFETY: signal 0 only asks whether the process exists; SIGKILL goes to a process
            // this test started, still running after its terminal went away.
            while unsafe { libc::kill(*pid, 0) } == 0 {
                if std::time::Instant::now() > deadline {
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// A second `portguard run --mode count` on a terminal, beside a running owner and a local
/// listener on 2745: its two warnings (only watching, so --mode is ignored; a local socket on
/// the guarded port) stay above the table refresh after refresh, and the table fits.
#[test]
fn the_live_table_fits_and_keeps_its_warnings() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(BIN, "pgl");
    let _listeners = Listeners::start(&f.lab.gw, 2745).unwrap();
    f.run(&["--interval", "0.2", "--no-metrics"]);
    f.wait_guarded();
    for host in 0..5 {
        f.probe(host, 2 + host as u32);
    }
    let tmux = Tmux::new();
    for (s, w, h) in [("narrow", 80u16, 24u16), ("wide", 200, 50)] {
        let cmd = format!(
            "exec nsenter --net=/run/netns/{} env PORTGUARD_PIN_ROOT={} RUST_LOG=info {BIN} run \
             --iface {GW_IF} --mode count --interval 0.1 --metrics 127.0.0.1:0",
            f.lab.gw,
            f.pins.path.display()
        );
        tmux.start(s, w, h, &cmd);
        let ready = |sc: &str| {
            sc.contains("already guarded by a running portguard")
                && sc.contains("this host uses a guarded port")
                && sc.contains("198.18.0.6")
                && sc.contains(&lab::outside_source(true, 4))
        };
        tmux.wait_screen(s, "the warnings and the table", ready);
        // Twenty refreshes later, the warnings are still there.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let screen = tmux.wait_screen(s, "the warnings and the table, still", ready);
        eprintln!("{w}×{h}:\n{screen}");
        let lines: Vec<&str> = screen.lines().collect();
        assert!(lines.len() <= h as usize);
        assert!(lines.iter().all(|l| l.chars().count() <= w as usize), "{screen}");
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
        // Notices first, then the interface, its totals and its table: nothing wrapped.
        assert!(at("! ").unwrap() < at(&format!("{GW_IF} (native XDP)")).unwrap(), "{screen}");
        // Warnings are wrapped, not cut: the part that matters is at the end.
        let flat = screen.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("its settings are unchanged"), "{screen}");
        assert!(screen.contains("seen ") && screen.contains("untracked "), "{screen}");
        assert!(screen.contains("probing 2745"), "{screen}");
        let head = lines.iter().find(|l| l.contains("SOURCE")).unwrap();
        if w >= 200 {
            for col in ["BYTES", "SYNS", "PROTO", "FIRST"] {
                assert!(head.contains(col), "{col} at {w} columns: {head}");
            }
        }
    }
}

/// In a pipe, one `key=value` line per interval: the namespace has a key of its own, and the
/// top sources split at their last colon (IPv6 in brackets). New sources are counted in words.
#[test]
fn the_lines_in_a_pipe_can_be_split() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(BIN, "pgl");
    let run = f.run(&["--interval", "0.2", "--no-metrics"]);
    f.wait_guarded();
    f.probe(1, 1);
    f.probe(2, 3);
    wait_until("a line with the top sources", || {
        f.daemons[run].out().lines().any(|l| l.contains("top=") && l.contains("sources=4"))
    });
    let out = f.daemons[run].out();
    let line = out.lines().rev().find(|l| l.contains("sources=4")).unwrap();
    assert!(
        line.split(' ').all(|kv| kv.split_once('=').is_some_and(|(k, _)| !k.is_empty())),
        "{line}"
    );
    let top = line.split(' ').find_map(|kv| kv.strip_prefix("top=")).unwrap();
    let mut seen = Vec::new();
    for entry in top.split(',') {
        let (addr, n) = entry.rsplit_once(':').unwrap();
        let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
        let addr: SourceAddr = addr.parse().unwrap_or_else(|_| panic!("{entry}"));
        seen.push((addr.to_string(), n.parse::<u64>().unwrap()));
    }
    // The IPv6 host is counted under its /64.
    let v6 = lab::outside_source(true, 2);
    assert!(seen.contains(&(v6.clone(), 3)), "{top}");
    assert!(top.contains(&format!("[{v6}]:3")), "{top}");
    let log = f.daemons[run].out() + &f.daemons[run].log();
    // "1 packet", then the line ends or the source's label follows.
    let counted = "198.18.0.3 probing 2745 (udp), 1 packet";
    assert!(
        log.lines().any(|l| l.ends_with(counted) || l.contains(&format!("{counted}: "))),
        "{log}"
    );
}

/// A warning whose condition ends leaves the screen: the interface went away (the notice
/// appears above the table) and came back (it goes).
#[test]
fn a_warning_leaves_when_it_stops_being_true() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new(BIN, "pgl");
    let tmux = Tmux::new();
    let cmd = format!(
        "exec nsenter --net=/run/netns/{} env PORTGUARD_PIN_ROOT={} {BIN} run --iface {GW_IF} \
         --interval 0.1 --no-metrics",
        f.lab.gw,
        f.pins.path.display()
    );
    tmux.start("gone", 80, 24, &cmd);
    tmux.wait_screen("gone", "the table", |sc| sc.contains(&format!("{GW_IF} (native XDP)")));
    f.lab.unplug().unwrap();
    tmux.wait_screen("gone", "the notice", |sc| sc.contains(&format!("! {GW_IF} went away")));
    f.lab.plug().unwrap();
    let screen = tmux.wait_screen("gone", "the notice gone", |sc| {
        !sc.contains("went away") && sc.contains(&format!("{GW_IF} (native XDP)"))
    });
    assert!(!screen.contains("! "), "{screen}");
}

/// Its terminal going away (a closed window, a dropped ssh session) ends the live view: SIGHUP
/// means "reload" to `run`, so the next redraw failing is what stops it; nothing is left
/// guarding unseen, with nobody to stop it.
#[test]
fn hang_up_ends_the_live_view() {
    if !root_or_skip() {
        return;
    }
    let f = Fixture::new(BIN, "pgl");
    let tmux = Tmux::new();
    let cmd = format!(
        "exec nsenter --net=/run/netns/{} env PORTGUARD_PIN_ROOT={} {BIN} run --iface {GW_IF} \
         --interval 0.1 --no-metrics",
        f.lab.gw,
        f.pins.path.display()
    );
    tmux.start("hup", 80, 24, &cmd);
    tmux.wait_screen("hup", "the table", |sc| sc.contains(&format!("{GW_IF} (native XDP)")));
    let pid = tmux.pane_pid("hup");
    assert!(tmux.cmd(&["kill-server"]).status.success());
    // SAFETY: kill with signal 0 only asks whether the process exists.
    wait_until("run to end with its terminal", || unsafe { libc::kill(pid, 0) } != 0);
    assert!(!f.attached(), "it released its guard as on SIGTERM");
}
