//! The `portguard` binary run as an admin runs it: verbs against a pin root of the test's own,
//! and `portguard run` inside a lab's gateway namespace, its output collected as it comes.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use portguard::lab::{self, GW_IF};
use serde_json::Value;

use crate::wait_until;

static N: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: namespaces, pin roots and temp dirs of tests that
/// run side by side never meet.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The binary under test (the caller's `env!("CARGO_BIN_EXE_portguard")`), with a pin root,
/// acting on the guards of one network namespace.
#[derive(Clone, Debug)]
pub struct Bin {
    pub path: PathBuf,
    pub root: PathBuf,
    /// The namespace verbs act in (`--netns`); None: the test's own.
    pub netns: Option<String>,
}

impl Bin {
    pub fn new(path: impl Into<PathBuf>, root: &Path) -> Bin {
        Bin { path: path.into(), root: root.to_path_buf(), netns: None }
    }

    /// The same binary and root, acting in namespace `netns`.
    pub fn in_netns(&self, netns: &str) -> Bin {
        Bin { netns: Some(netns.to_string()), ..self.clone() }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        if let Some(ns) = &self.netns {
            c.args(["--netns", ns]);
        }
        c.args(args).env("PORTGUARD_PIN_ROOT", &self.root).env("RUST_LOG", "info");
        c
    }

    /// Runs a verb to completion, in this Bin's namespace.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running portguard")
    }

    /// Runs a verb that prints one JSON document; it must succeed, and the document must
    /// match the verb's published schema.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.output(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let doc = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"));
        if let Some(name) = crate::schema::name_for(args) {
            crate::schema::validate(name, &doc);
        }
        doc
    }

    /// `stats --json`, or None while nothing is guarded yet (or it fails: a restart may be
    /// replacing the guard).
    pub fn stats(&self) -> Option<Value> {
        let out = self.output(&["stats", "--json"]);
        if !out.status.success() {
            return None;
        }
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        crate::schema::validate("stats", &doc);
        (!doc["interfaces"].as_array()?.is_empty()).then_some(doc)
    }
}

/// A pin root of a test's own under /sys/fs/bpf; whatever is guarded there is detached and
/// the directory removed when it is dropped, however the test ends.
pub struct PinRoot {
    pub path: PathBuf,
}

impl PinRoot {
    pub fn new(name: &str) -> PinRoot {
        PinRoot { path: PathBuf::from(format!("/sys/fs/bpf/pgtest-{}", unique(name))) }
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        remove_root(&self.path);
    }
}

/// Detaches every guard pinned under a pin root, whatever its namespace (which may be gone
/// already, so not through `portguard detach`), then removes the root.
pub fn remove_root(root: &Path) {
    for link in links_under(root) {
        let _ = Command::new("bpftool").args(["link", "detach", "pinned"]).arg(&link).output();
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Every pinned `link` below `dir`.
fn links_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "link") {
            out.push(p);
        } else if p.is_dir() {
            out.extend(links_under(&p));
        }
    }
    out
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let sink = buf.clone();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    buf
}

/// `portguard run` in a network namespace, in the background. Killed when dropped.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    out: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `portguard run --iface pg-wan ARGS` in namespace `netns`, with `env` added.
    /// nsenter exec()s into portguard, so the child's pid is portguard's.
    pub fn spawn(bin: &Bin, netns: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{netns}"))
            .arg(&bin.path)
            .args(["run", "--iface", GW_IF])
            .args(args)
            .env("PORTGUARD_PIN_ROOT", &bin.root)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawning portguard run");
        let log = collect(child.stderr.take().unwrap());
        let out = collect(child.stdout.take().unwrap());
        Daemon { child, log, out, status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// What it logged (stderr) so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What it printed (stdout) so far.
    pub fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until it has logged `needle`; on a timeout the panic shows what it did log.
    pub fn wait_log(&self, needle: &str) {
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(needle, || self.log.lock().unwrap().contains(needle))
        }));
        if found.is_err() {
            panic!("timed out waiting for the log line '{needle}'; the log:\n{}", self.log());
        }
    }

    /// Waits for it to exit; the output is everything it wrote.
    pub fn wait(&mut self) -> Output {
        let status = match self.status {
            Some(s) => s,
            None => {
                let s = self.child.wait().expect("waiting for portguard");
                self.status = Some(s);
                s
            }
        };
        // The reader threads end at EOF, a moment after the exit.
        thread::sleep(Duration::from_millis(100));
        Output { status, stdout: self.out().into_bytes(), stderr: self.log().into_bytes() }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A lab (gateway and outside namespaces), a pin root, and the daemons a test starts there.
/// Dropped in that order reversed: daemons killed, pins detached, namespaces deleted.
pub struct Fixture {
    pub daemons: Vec<Daemon>,
    pub pins: PinRoot,
    /// Verbs act in the gateway's namespace.
    pub bin: Bin,
    /// The gateway interface's pin directory.
    pub dir: PathBuf,
    pub lab: lab::Lab,
}

impl Fixture {
    /// `bin`: the caller's `env!("CARGO_BIN_EXE_portguard")`; `prefix`: a few letters naming
    /// the test file, for the namespaces.
    pub fn new(bin: &str, prefix: &str) -> Fixture {
        let lab = lab::Lab::create(&unique(prefix)).expect("creating the lab");
        let pins = PinRoot::new(prefix);
        let bin = Bin::new(bin, &pins.path).in_netns(&lab.gw);
        let ns = lab::in_netns(&lab.gw, portguard::netns::Netns::current)
            .expect("entering the gateway's namespace")
            .expect("the gateway's namespace");
        let dir = pins.path.join(ns.key()).join(GW_IF);
        Fixture { daemons: Vec::new(), pins, bin, dir, lab }
    }

    /// `portguard run --iface pg-wan ARGS` in the gateway namespace; returns its index.
    pub fn run(&mut self, args: &[&str]) -> usize {
        self.run_with_env(args, &[])
    }

    pub fn run_with_env(&mut self, args: &[&str], env: &[(&str, &str)]) -> usize {
        self.daemons.push(Daemon::spawn(&self.bin, &self.lab.gw, args, env));
        self.daemons.len() - 1
    }

    pub fn portguard(&self, args: &[&str]) -> Output {
        self.bin.output(args)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        self.bin.json(args)
    }

    /// This interface's entry in a `stats --json` or `status --json` document.
    pub fn entry(doc: &Value, iface: &str) -> Value {
        doc["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["iface"] == iface))
            .cloned()
            .unwrap_or_else(|| panic!("no {iface} in {doc}"))
    }

    pub fn dropped(&self) -> u64 {
        let doc = self.json(&["stats", "--json"]);
        Fixture::entry(&doc, GW_IF)["totals"]["dropped"].as_u64().unwrap()
    }

    /// The owner pid `status` reports, if any.
    pub fn owner(&self) -> Option<u64> {
        let doc = self.json(&["status", "--json"]);
        doc["interfaces"].as_array()?.iter().find(|i| i["iface"] == GW_IF)?["owner_pid"].as_u64()
    }

    /// Waits until the guard's link is pinned.
    pub fn wait_guarded(&self) {
        let link = self.dir.join("link");
        wait_until("the guard's link to be pinned", || link.exists());
    }

    /// Whether the kernel shows an XDP program on the gateway's interface.
    pub fn attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.lab.gw, "link", "show", GW_IF])
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    /// `datagrams` UDP datagrams to 2745 from outside host `host`, over IPv4 and over IPv6.
    pub fn probe(&self, host: u8, datagrams: u32) {
        for v6 in [false, true] {
            let gw = if v6 { lab::gw_v6() } else { lab::gw_v4() };
            lab::udp_send(
                &self.lab.out,
                lab::outside(v6, host),
                SocketAddr::new(gw, 2745),
                datagrams,
                64,
            )
            .expect("sending probes");
        }
    }
}
