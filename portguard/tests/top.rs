//! `portguard top` driven as a person would: a real guard pinned under a private bpffs root in a
//! namespace lab, real probes from an outside host, and the binary running in a detached tmux
//! session whose screen is read back with capture-pane. Needs root and tmux.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use portguard::{
    guard::{Acquired, AttachMode, Owner, View},
    lab::{self, GW_IF, Lab},
    pins::Pins,
    settings::{Mode, Settings},
};
use portguard_common::DEFAULT_SOURCE_CAPACITY;
use portguard_testkit::{frames::Frame, root_or_skip, wait_until};

static N: AtomicU32 = AtomicU32::new(0);
const BIN: &str = env!("CARGO_BIN_EXE_portguard");
const NOTHING: &str = "nothing is guarded: start `portguard run --iface IFACE`";
/// A second guarded interface in the gateway namespace: a veth whose peer stays in the same
/// namespace, so no traffic ever reaches it.
const LAN_IF: &str = "pg-lan";

/// Everything one test made: removed in `Drop`, also when an assertion fails half-way.
struct Fixture {
    name: String,
    root: PathBuf,
    guards: Vec<Owner>,
    /// Released before the lab goes (its interfaces take the links with them).
    lab: Option<Lab>,
    sessions: Vec<String>,
    /// The `portguard top` processes started, to make sure none outlives the test.
    pids: Vec<u32>,
}

impl Fixture {
    /// A pin root of its own and, with `guarded`, a lab whose `pg-wan` is guarded (drop mode).
    fn new(guarded: bool) -> Fixture {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("pgtop{pid}-{n}");
        ensure_bpffs();
        let root = PathBuf::from(format!("/sys/fs/bpf/pgtest-top-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut f = Fixture {
            name,
            root,
            guards: Vec::new(),
            lab: None,
            sessions: Vec::new(),
            pids: Vec::new(),
        };
        if guarded {
            f.lab = Some(Lab::create(&f.name).unwrap());
            f.guard(GW_IF);
        }
        f
    }

    fn lab(&self) -> &Lab {
        self.lab.as_ref().unwrap()
    }

    fn pins(&self) -> Pins {
        Pins::new(&self.root)
    }

    /// Guards `iface` in the gateway namespace with pinned state under this fixture's root.
    fn guard(&mut self, iface: &'static str) {
        let pins = self.pins();
        let acquired = lab::in_netns(&self.lab().gw, move || {
            Owner::acquire(
                &pins,
                iface,
                Some(&Settings::default()),
                DEFAULT_SOURCE_CAPACITY,
                AttachMode::Auto,
            )
        })
        .unwrap()
        .unwrap();
        let Acquired::Attached(g) = acquired else { panic!("{iface} was guarded already") };
        self.guards.push(g);
    }

    /// A second interface beside `pg-wan`, guarded too.
    fn second_interface(&mut self) {
        let gw = self.lab().gw.clone();
        let peer = format!("{LAN_IF}-p");
        for args in [
            vec!["-n", &gw, "link", "add", LAN_IF, "type", "veth", "peer", "name", &peer],
            vec!["-n", &gw, "link", "set", LAN_IF, "up"],
            vec!["-n", &gw, "link", "set", &peer, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        self.guard(LAN_IF);
    }

    /// `count` UDP datagrams to 2745 from the `n`th outside host.
    fn udp(&self, v6: bool, n: u8, count: u32) {
        let gw = if v6 { lab::gw_v6() } else { lab::gw_v4() };
        let lab = self.lab();
        lab::udp_send(&lab.out, lab::outside(v6, n), SocketAddr::new(gw, 2745), count, 100)
            .unwrap();
    }

    /// 198.18.0.3 sends 30 datagrams and one connection attempt (31 packets), 198.18.0.2 sends
    /// 5, 2001:db8:0:3::2 (counted as 2001:db8:0:3::/64) sends 3.
    fn probes(&self) {
        self.udp(false, 1, 30);
        let lab = self.lab();
        let dst = SocketAddr::new(lab::gw_v4(), 2745);
        let connected =
            lab::tcp_connect(&lab.out, lab::outside(false, 1), dst, Duration::from_millis(300))
                .unwrap();
        assert!(!connected, "the connection attempt to 2745 must be dropped");
        self.udp(false, 0, 5);
        self.udp(true, 1, 3);
        let g = &self.guards[0];
        wait_until("the program to count the probes", || g.view().totals().unwrap().matched >= 39);
    }

    fn tmux(&self, args: &[&str]) -> Output {
        // A server of our own: no user config, and nothing shared with anyone's sessions.
        Command::new("tmux")
            .args(["-L", &self.name, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts `portguard top ARGS` in a `w`×`h` session; returns the session name.
    fn top(&mut self, w: u16, h: u16, args: &str) -> String {
        let s = format!("{}-{}", self.name, self.sessions.len());
        let netns = self.lab.as_ref().map(|l| format!("--netns {} ", l.gw)).unwrap_or_default();
        let cmd =
            format!("exec env PORTGUARD_PIN_ROOT={} {BIN} {netns}top {args}", self.root.display());
        let out = self.tmux(&[
            "new-session",
            "-d",
            "-s",
            &s,
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
            &cmd,
            ";",
            "set-option",
            "-t",
            &s,
            "remain-on-exit",
            "on",
        ]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        self.sessions.push(s.clone());
        // `exec` in the command: the pane's process is portguard itself.
        self.pids.push(self.pane(&s, "#{pane_pid}").parse().unwrap());
        s
    }

    fn screen(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", s]).stdout).into_owned()
    }

    /// The screen once `ok` holds for it; fails naming `what` (and showing the last screen).
    fn wait_screen(&self, s: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(what, || {
                last = self.screen(s);
                ok(&last)
            })
        }));
        if ready.is_err() {
            panic!("timed out waiting for {what}; the screen:\n{last}");
        }
        last
    }

    fn keys(&self, s: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", s];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success());
    }

    /// A tmux format for the session's pane, e.g. `#{pane_pid}`.
    fn pane(&self, s: &str, fmt: &str) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", s, fmt]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The exit status of the top in session `s` once it exited ("0"), or "signal N". Read
    /// from /proc while it is a zombie (field 52, `exit_code`): tmux has been seen to leave an
    /// exited pane process unreaped for many seconds, so its #{pane_dead_status} cannot be
    /// waited for.
    fn wait_exit(&self, s: &str) -> String {
        let i = self.sessions.iter().position(|x| x == s).unwrap();
        let pid = self.pids[i];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) => {
                    let rest = &stat[stat.rfind(')').unwrap() + 2..];
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // fields[0] is field 3 (state); field 52 is fields[49].
                    if fields[0] == "Z" {
                        let status: i32 = fields[49].parse().unwrap();
                        return if status & 0x7f == 0 {
                            ((status >> 8) & 0xff).to_string()
                        } else {
                            format!("signal {}", status & 0x7f)
                        };
                    }
                }
                // Reaped: tmux has the status.
                Err(_) => return self.pane(s, "#{pane_dead_status}"),
            }
            assert!(Instant::now() < deadline, "top did not exit:\n{}", self.screen(s));
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn mode(&self) -> Mode {
        let pins = self.pins();
        lab::in_netns(&self.lab().gw, move || View::open(&pins, GW_IF).unwrap().settings().mode)
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for s in &self.sessions {
            let _ = self.tmux(&["kill-session", "-t", s]);
        }
        // Closing the terminal ends top (see `hang_up_ends_it`); should it not, it must not
        // outlive the test.
        for pid in &self.pids {
            if !exits_within(*pid, Duration::from_secs(3)) {
                // SAFETY: a signal to a process this fixture started and that is still running.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
        for g in self.guards.drain(..) {
            let _ = g.release(false);
        }
        let _ = std::fs::remove_dir_all(&self.root);
        // The lab goes last, with the field.
    }
}

/// Whether `pid` is gone (or no longer portguard: the pid was reused) within `timeout`.
fn exits_within(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("portguard"));
        if !alive {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn ensure_bpffs() {
    if !Pins::new("/sys/fs/bpf").mounted() {
        let out = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).output().unwrap();
        assert!(out.status.success(), "mounting bpffs: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The screen line that mentions `addr` as a whole address.
fn line_of<'a>(screen: &'a str, addr: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.split_whitespace().any(|w| w.trim_matches('│') == addr))
}

/// Whether rows for both addresses are on the screen, `a` above `b`.
fn before(screen: &str, a: &str, b: &str) -> bool {
    let at = |addr: &str| screen.lines().position(|l| l.split_whitespace().any(|w| w == addr));
    matches!((at(a), at(b)), (Some(x), Some(y)) if x < y)
}

#[test]
fn shows_the_sources_and_follows_the_keys() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    f.probes();
    let s = f.top(100, 30, "");
    // A rate needs two refreshes.
    // Waiting for everything at once: a capture can catch a frame half drawn.
    let screen = f.wait_screen(&s, "the sources with a rate", |sc| {
        line_of(sc, "198.18.0.3").is_some_and(|l| l.contains("/s") && l.contains("probing 2745"))
            && line_of(sc, &lab::outside_source(true, 1)).is_some()
    });
    eprintln!("{screen}");
    assert!(screen.contains("pg-wan"), "{screen}");
    assert!(screen.contains("action drop"), "{screen}");
    assert!(screen.contains("ports 2745"), "{screen}");
    let row = line_of(&screen, "198.18.0.3").unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert!(cols.contains(&"31"), "31 packets: {row}");
    assert!(cols.iter().any(|c| c.ends_with("/s")), "a rate: {row}");
    assert!(row.contains("probing 2745"), "{row}");
    assert!(!row.contains('*'), "probes sent before top started are not new: {row}");
    assert!(line_of(&screen, &lab::outside_source(true, 1)).is_some(), "{screen}");
    for word in ["seen", "matched", "dropped", "allowed", "malformed", "fragments followed"] {
        assert!(screen.contains(word), "{word}: {screen}");
    }

    // A source that appears while top runs is marked new.
    f.udp(false, 2, 2);
    let screen = f.wait_screen(&s, "the new source", |sc| line_of(sc, "198.18.0.4").is_some());
    let row = line_of(&screen, "198.18.0.4").unwrap();
    assert!(row.contains("* 198.18.0.4"), "marked new: {row}");

    // Sort: packets (31 before 5), then rate, last seen, address (.2 before .3), packets again.
    f.wait_screen(&s, "sort by packets", |sc| before(sc, "198.18.0.3", "198.18.0.2"));
    f.keys(&s, &["s"]);
    f.wait_screen(&s, "sort by rate", |sc| sc.contains("sort: rate"));
    f.keys(&s, &["s"]);
    f.wait_screen(&s, "sort by last seen", |sc| sc.contains("sort: last seen"));
    f.keys(&s, &["s"]);
    f.wait_screen(&s, "sort by address", |sc| {
        sc.contains("sort: address") && before(sc, "198.18.0.2", "198.18.0.3")
    });
    f.keys(&s, &["s"]);
    f.wait_screen(&s, "sort by packets", |sc| sc.contains("sort: packets"));

    // Filter: typed, applied on Enter, cleared with Esc.
    f.keys(&s, &["/", "0", ".", "2"]);
    let screen = f.wait_screen(&s, "the filter prompt", |sc| sc.contains("filter:  0.2"));
    assert!(line_of(&screen, "198.18.0.3").is_some(), "not applied before Enter: {screen}");
    f.keys(&s, &["Enter"]);
    f.wait_screen(&s, "the filter", |sc| {
        line_of(sc, "198.18.0.3").is_none()
            && line_of(sc, &lab::outside_source(true, 1)).is_none()
            && line_of(sc, "198.18.0.2").is_some()
            && sc.contains("sources: 1 of 4 match \"0.2\"")
    });
    f.keys(&s, &["/", "Escape"]);
    f.wait_screen(&s, "the filter cleared", |sc| {
        line_of(sc, "198.18.0.3").is_some() && line_of(sc, &lab::outside_source(true, 1)).is_some()
    });

    // Help, then any key closes it.
    f.keys(&s, &["?"]);
    f.wait_screen(&s, "the help", |sc| sc.contains("this help; any key closes it"));
    f.keys(&s, &["x"]);
    f.wait_screen(&s, "the help closed", |sc| !sc.contains("this help"));

    f.keys(&s, &["q"]);
    assert_eq!(f.wait_exit(&s), "0");
    assert!(!f.screen(&s).contains("portguard top"), "the alternate screen is left");
}

#[test]
fn i_cycles_the_interfaces() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    f.second_interface();
    f.probes();
    let s = f.top(100, 30, "");
    // Sorted: pg-lan first, with nothing knocking.
    f.wait_screen(&s, "pg-lan, no sources", |sc| {
        sc.contains("pg-lan (1/2)") && sc.contains("no sources yet")
    });
    f.keys(&s, &["i"]);
    let screen = f.wait_screen(&s, "pg-wan", |sc| {
        sc.contains("pg-wan (2/2)") && line_of(sc, "198.18.0.3").is_some()
    });
    assert!(line_of(&screen, "198.18.0.3").unwrap().split_whitespace().any(|c| c == "31"));
    f.keys(&s, &["i"]);
    f.wait_screen(&s, "pg-lan again", |sc| sc.contains("pg-lan (1/2)"));
    f.keys(&s, &["q"]);
    assert_eq!(f.wait_exit(&s), "0");

    // --iface picks the first one shown.
    let s = f.top(100, 30, "--iface pg-wan");
    f.wait_screen(&s, "pg-wan first", |sc| sc.contains("pg-wan (2/2)"));
}

#[test]
fn m_switches_drop_and_count_after_asking() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    f.probes();
    let s = f.top(100, 30, "");
    f.wait_screen(&s, "drop mode", |sc| sc.contains("action drop"));
    f.keys(&s, &["m"]);
    f.wait_screen(&s, "the question", |sc| sc.contains("Switch pg-wan to count?"));
    f.keys(&s, &["n"]);
    f.wait_screen(&s, "the answer", |sc| sc.contains("pg-wan: mode unchanged"));
    assert_eq!(f.mode(), Mode::Drop);

    f.keys(&s, &["m"]);
    f.wait_screen(&s, "the question", |sc| sc.contains("Switch pg-wan to count?"));
    f.keys(&s, &["y"]);
    let screen = f.wait_screen(&s, "count mode", |sc| sc.contains("pg-wan: now count"));
    assert!(screen.contains("action count"), "{screen}");
    assert_eq!(f.mode(), Mode::Count);
    // The switch is real: probes are counted now, not dropped.
    let g = &f.guards[0];
    let before = g.view().totals().unwrap();
    f.udp(false, 1, 4);
    wait_until("counted, not dropped", || {
        let t = g.view().totals().unwrap();
        t.matched >= before.matched + 4 && t.dropped == before.dropped
    });

    f.keys(&s, &["m"]);
    f.wait_screen(&s, "the question", |sc| sc.contains("Switch pg-wan to drop?"));
    f.keys(&s, &["y"]);
    f.wait_screen(&s, "drop mode", |sc| sc.contains("pg-wan: now drop"));
    assert_eq!(f.mode(), Mode::Drop);

    // Another portguard switching it shows within a refresh or two.
    let pins = f.pins();
    lab::in_netns(&f.lab().gw, move || {
        let mut other = View::open(&pins, GW_IF).unwrap();
        other.update(portguard_common::CHANGE_SET, |s| {
            s.mode = Mode::Count;
            Ok(())
        })
    })
    .unwrap()
    .unwrap();
    f.wait_screen(&s, "count mode from elsewhere", |sc| sc.contains("action count"));
    f.keys(&s, &["q"]);
    assert_eq!(f.wait_exit(&s), "0");
}

#[test]
fn fits_80x24_and_resizes() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    f.probes();
    let s = f.top(80, 24, "");
    // The footer is drawn last: with it on screen, the frame is complete.
    let screen = f.wait_screen(&s, "the sources with a rate", |sc| {
        line_of(sc, "198.18.0.3").is_some_and(|l| l.contains("/s"))
            && sc.lines().nth(23).is_some_and(|l| l.contains("q quit"))
    });
    eprintln!("{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].contains("portguard top") && lines[0].contains("pg-wan"), "{screen}");
    assert!(screen.contains("ADDRESS") && screen.contains("DIRECTION"), "{screen}");
    assert!(screen.contains("probing 2745"), "{screen}");
    assert!(lines[23].contains("q quit"), "the footer on the last line: {screen}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80));

    f.tmux(&["resize-window", "-t", &s, "-x", "50", "-y", "12"]);
    f.wait_screen(&s, "too small", |sc| sc.contains("terminal too small: 60×15 needed"));
    f.tmux(&["resize-window", "-t", &s, "-x", "100", "-y", "30"]);
    f.wait_screen(&s, "full size again", |sc| {
        line_of(sc, "198.18.0.3").is_some()
            && !sc.contains("too small")
            && sc.lines().nth(29).is_some_and(|l| l.contains("q quit"))
    });
}

/// A long IPv6 source (admitted through BPF_PROG_TEST_RUN, no packet leaves the program): at
/// 80×24 its address is cut in the middle with a mark; at 200×50 it shows whole, with the
/// columns a narrow screen leaves out (SYNs, protocols); at 60×15 the direction stays readable.
#[test]
fn columns_follow_the_width() {
    if !root_or_skip() {
        return;
    }
    use aya::programs::{TestRun as _, TestRunOptions};
    const LONG: &str = "2001:db8:7:0:1234:5678:9abc:4";
    let mut f = Fixture::new(true);
    f.probes();
    // One row per IPv6 address, not per /64: the whole address is the row's name.
    f.guards[0]
        .view_mut()
        .update(portguard_common::CHANGE_SET, |s| {
            s.v6_prefix = 128;
            Ok(())
        })
        .unwrap();
    let src: std::net::Ipv6Addr = LONG.parse().unwrap();
    let std::net::IpAddr::V6(gw) = lab::gw_v6() else { unreachable!() };
    let frame = Frame::tcp6(src.octets(), gw.octets(), 40_000, 2745).build();
    for _ in 0..40 {
        let opts = TestRunOptions { data_in: Some(&frame), ..Default::default() };
        f.guards[0].program().unwrap().test_run(opts).unwrap();
    }
    let narrow = f.top(80, 24, "");
    let screen = f.wait_screen(&narrow, "the long address, cut", |sc| {
        // Cut in the middle: its start and its end, joined by the mark.
        let cut = |w: &str| {
            w.split_once('…').is_some_and(|(a, b)| {
                a.len() >= 4 && !b.is_empty() && LONG.starts_with(a) && LONG.ends_with(b)
            })
        };
        sc.lines().any(|l| l.split_whitespace().any(|w| cut(w.trim_matches('│'))))
            && sc.lines().nth(23).is_some_and(|l| l.contains("q quit"))
    });
    eprintln!("{screen}");
    assert!(!screen.contains(LONG), "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80));

    let wide = f.top(200, 50, "");
    let screen = f.wait_screen(&wide, "the long address, whole", |sc| {
        line_of(sc, LONG).is_some() && sc.contains("SYNS")
    });
    eprintln!("{screen}");
    let head = screen.lines().find(|l| l.contains("ADDRESS")).unwrap();
    for col in ["PACKETS", "RATE", "BYTES", "SYNS", "PROTO", "FIRST", "LAST", "DIRECTION"] {
        assert!(head.contains(col), "{col}: {head}");
    }
    let row = line_of(&screen, LONG).unwrap();
    assert!(row.contains("40") && row.contains("tcp"), "40 packets over TCP: {row}");

    let small = f.top(60, 15, "");
    let screen =
        f.wait_screen(&small, "the table at 60 columns", |sc| line_of(sc, "198.18.0.3").is_some());
    eprintln!("{screen}");
    assert!(line_of(&screen, "198.18.0.3").unwrap().contains("probing 2745"), "{screen}");
}

/// Naming an interface that is not guarded is an error, as for every other verb.
#[test]
fn an_unguarded_iface_is_an_error() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    let s = f.top(100, 30, "--iface nosuch");
    assert_eq!(f.wait_exit(&s), "1");
    // The whole pane, history included, wrapped lines joined: the error may have been written
    // before the pane took its final size.
    let out = f.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", &s]);
    let screen: String = String::from_utf8_lossy(&out.stdout).lines().collect();
    assert!(screen.contains("portguard: error: nosuch is not guarded by portguard"), "{screen}");
}

#[test]
fn too_small_at_40x10() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    let s = f.top(40, 10, "");
    f.wait_screen(&s, "too small", |sc| sc.contains("terminal too small: 60×15 needed"));
    f.keys(&s, &["q"]);
    assert_eq!(f.wait_exit(&s), "0");
}

#[test]
fn nothing_guarded() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(false);
    let s = f.top(100, 30, "");
    f.wait_screen(&s, "the message", |sc| sc.contains(NOTHING));
    f.keys(&s, &["q"]);
    assert_eq!(f.wait_exit(&s), "0");

    // Not on a terminal: the message and exit code 1.
    let out = Command::new(BIN).arg("top").env("PORTGUARD_PIN_ROOT", &f.root).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(NOTHING), "{err}");
}

#[test]
fn sigterm_restores_the_terminal() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    let s = f.top(100, 30, "");
    f.wait_screen(&s, "the view", |sc| sc.contains("portguard top"));
    let pid = f.pane(&s, "#{pane_pid}");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(f.wait_exit(&s), "0");
    assert!(!f.screen(&s).contains("portguard top"), "the alternate screen is left");
}

/// Its terminal going away (tmux kill-session, a dropped ssh connection) ends it: no process
/// is left behind spinning on a dead terminal.
#[test]
fn hang_up_ends_it() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    let s = f.top(100, 30, "");
    f.wait_screen(&s, "the view", |sc| sc.contains("portguard top"));
    let pid: u32 = f.pane(&s, "#{pane_pid}").parse().unwrap();
    assert!(f.tmux(&["kill-session", "-t", &s]).status.success());
    assert!(exits_within(pid, Duration::from_secs(3)), "top outlived its terminal");
}

/// The share of a core that process `pid` used over `secs` seconds, from /proc/PID/stat.
fn cpu_share(pid: &str, secs: u64) -> f64 {
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the command name in parentheses: field 14 utime, 15 stime (clock ticks).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest.split(' ').skip(11).take(2).map(|v| v.parse().unwrap()).collect();
        f[0] + f[1]
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), ticks());
    thread::sleep(Duration::from_secs(secs));
    let (t1, c1) = (Instant::now(), ticks());
    (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64()
}

/// Under half a percent of a core at the default 1 s refresh (README: "under 0.5%"), measured
/// over 20 s once it runs (the startup reads the settings once, which is not what this is
/// about). /proc counts in ticks of 10 ms: 20 s resolve 0.05%.
#[test]
fn cpu_under_half_a_percent() {
    if !root_or_skip() {
        return;
    }
    let mut f = Fixture::new(true);
    f.probes();
    let s = f.top(100, 30, "");
    f.wait_screen(&s, "the sources with a rate", |sc| {
        line_of(sc, "198.18.0.3").is_some_and(|l| l.contains("/s"))
    });
    let share = cpu_share(&f.pane(&s, "#{pane_pid}"), 20);
    eprintln!("portguard top, 3 sources: {:.2}% of a core at 1 s refresh", share * 100.0);
    assert!(share < 0.005, "{:.2}% of a core", share * 100.0);
}

/// Under 2% (README: "under 2%") with the source table full (65,536 entries, filled through
/// BPF_PROG_TEST_RUN: no packet leaves the program), where one read of the table costs tens of
/// ms: it is then read every few ticks, and the view says so.
#[test]
fn cpu_under_two_percent_with_a_full_table() {
    if !root_or_skip() {
        return;
    }
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut f = Fixture::new(true);
    let g = &mut f.guards[0];
    // Admit every new source at once rather than a few thousand per second.
    g.view_mut()
        .update(portguard_common::CHANGE_SET, |s| {
            s.admit_per_slice = Some(1 << 20);
            Ok(())
        })
        .unwrap();
    for i in 0..DEFAULT_SOURCE_CAPACITY {
        let src = [198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let frame = Frame::udp4(src, [198, 18, 0, 1], 40_000, 2745).build();
        let opts = TestRunOptions { data_in: Some(&frame), ..Default::default() };
        g.program().unwrap().test_run(opts).unwrap();
    }
    let tracked = g.view().sources().unwrap().len();
    assert!(tracked > 60_000, "{tracked} sources");
    let s = f.top(100, 30, "");
    f.wait_screen(&s, "the spaced reads", |sc| sc.contains("read every"));
    let share = cpu_share(&f.pane(&s, "#{pane_pid}"), 20);
    eprintln!("portguard top, {tracked} sources: {:.2}% of a core at 1 s refresh", share * 100.0);
    assert!(share < 0.02, "{:.2}% of a core", share * 100.0);
}
