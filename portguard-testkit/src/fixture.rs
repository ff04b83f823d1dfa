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

/// The binary under test (the caller's `env!("CARGO_BIN_EXE_portguard")`), with a pin root.
#[derive(Clone, Debug)]
pub struct Bin {
    pub path: PathBuf,
    pub root: PathBuf,
}

impl Bin {
    pub fn new(path: impl Into<PathBuf>, root: &Path) -> Bin {
        Bin { path: path.into(), root: root.to_path_buf() }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        c.args(args).env("PORTGUARD_PIN_ROOT", &self.root).env("RUST_LOG", "info");
        c
    }

    /// Runs a verb to completion (outside any lab namespace: pins are visible from anywhere).
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
    bin: PathBuf,
}

impl PinRoot {
    pub fn new(bin: impl Into<PathBuf>, name: &str) -> PinRoot {
        let path = PathBuf::from(format!("/sys/fs/bpf/pgtest-{}", unique(name)));
        PinRoot { path, bin: bin.into() }
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["detach", "--all"])
            .env("PORTGUARD_PIN_ROOT", &self.path)
            .output();
        let _ = std::fs::remove_dir_all(&self.path);
    }
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

    pub fn wait_log(&self, needle: &str) {
        wait_until(needle, || self.log.lock().unwrap().contains(needle));
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
    pub bin: Bin,
    pub lab: lab::Lab,
}

impl Fixture {
    /// `bin`: the caller's `env!("CARGO_BIN_EXE_portguard")`; `prefix`: a few letters naming
    /// the test file, for the namespaces.
    pub fn new(bin: &str, prefix: &str) -> Fixture {
        let lab = lab::Lab::create(&unique(prefix)).expect("creating the lab");
        let pins = PinRoot::new(bin, prefix);
        let bin = Bin::new(bin, &pins.path);
        Fixture { daemons: Vec::new(), pins, bin, lab }
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
        let link = self.pins.path.join(GW_IF).join("link");
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
