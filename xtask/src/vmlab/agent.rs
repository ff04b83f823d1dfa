//! The lab's runner inside the guest (std only: built with rustc for the guest's musl target,
//! and also compiled into xtask so clippy and the unit tests see it). busybox init starts it on
//! the console after /etc/pgvm/rc; it counts what reaches the guest's ports, runs what the host
//! asks, and reports in lines the host parses.
//!
//! Protocol, one line each way over the serial console:
//! - host → guest: `<id> <timeout-seconds> sh <shell command>`, `<id> <timeout> counts`, or
//!   `<id> <timeout> end <status>`.
//! - guest → host: `PGVM hello key=value ...` once; per command `PGVM <id> o <line>` (stdout),
//!   `PGVM <id> e <line>` (stderr) and `PGVM <id> exit <code|timeout> ms=<elapsed>` last; after
//!   `end`, the sentinel `PGVM end status=<n>` and a power-off.

use std::{
    io::{self, BufRead as _, BufReader, Read, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// The ports whose deliveries the runner counts: the guarded one and an ordinary one.
pub const PORTS: [u16; 2] = [2745, 8080];

static OUT: Mutex<()> = Mutex::new(());

/// Deliveries by [protocol (0 udp, 1 tcp)][port index][family (0 v4, 1 v6)].
static COUNTS: [[[AtomicU64; 2]; 2]; 2] =
    [const { [const { [const { AtomicU64::new(0) }; 2] }; 2] }; 2];

fn say(line: &str) {
    let _g = OUT.lock();
    let mut o = io::stdout().lock();
    let clean: String = line.chars().filter(|c| *c != '\r').collect();
    let _ = writeln!(o, "{clean}");
    let _ = o.flush();
}

fn family(a: &SocketAddr) -> usize {
    match a.ip() {
        IpAddr::V4(_) => 0,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => 0,
        IpAddr::V6(_) => 1,
    }
}

/// One UDP and one TCP listener per counted port, dual-stack.
fn listen() {
    for (pi, port) in PORTS.into_iter().enumerate() {
        match UdpSocket::bind(("::", port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port))) {
            Ok(s) => {
                thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((_, from)) = s.recv_from(&mut buf) {
                        COUNTS[0][pi][family(&from)].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Err(e) => say(&format!("PGVM agent-error udp {port}: {e}")),
        }
        match TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port))) {
            Ok(l) => {
                thread::spawn(move || {
                    for c in l.incoming().flatten() {
                        if let Ok(from) = c.peer_addr() {
                            COUNTS[1][pi][family(&from)].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            Err(e) => say(&format!("PGVM agent-error tcp {port}: {e}")),
        }
    }
}

/// `udp2745_v4=0 udp2745_v6=0 tcp2745_v4=0 ...`
pub fn counts_line() -> String {
    let mut out = Vec::new();
    for (proto, name) in ["udp", "tcp"].into_iter().enumerate() {
        for (pi, port) in PORTS.into_iter().enumerate() {
            for (fam, f) in ["v4", "v6"].into_iter().enumerate() {
                out.push(format!(
                    "{name}{port}_{f}={}",
                    COUNTS[proto][pi][fam].load(Ordering::Relaxed)
                ));
            }
        }
    }
    out.join(" ")
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn hello() -> String {
    let nic = read_trim("/run/pgvm-nic");
    let rx = std::fs::read_dir(format!("/sys/class/net/{nic}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(0);
    let cpus = read_trim("/proc/cpuinfo").lines().filter(|l| l.starts_with("processor")).count();
    let mem_kb = read_trim("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "PGVM hello release={} machine={} cpus={cpus} nic={nic} rx_queues={rx} mem_kb={mem_kb} uptime={}",
        read_trim("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH,
        read_trim("/proc/uptime").split_whitespace().next().unwrap_or("?"),
    )
}

/// A parsed host request.
#[derive(Debug, PartialEq)]
pub enum Request {
    Sh { id: u64, timeout: Duration, cmd: String },
    Counts { id: u64 },
    End { status: i32 },
}

pub fn parse(line: &str) -> Option<Request> {
    let mut it = line.trim().splitn(4, ' ');
    let id: u64 = it.next()?.parse().ok()?;
    let timeout = Duration::from_secs_f64(it.next()?.parse().ok()?);
    match it.next()? {
        "sh" => Some(Request::Sh { id, timeout, cmd: it.next()?.to_string() }),
        "counts" => Some(Request::Counts { id }),
        "end" => Some(Request::End { status: it.next().and_then(|s| s.parse().ok()).unwrap_or(0) }),
        _ => None,
    }
}

fn pipe_lines(r: impl Read + Send + 'static, kind: char, tx: mpsc::Sender<(char, String)>) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s =
                        String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                    if tx.send((kind, s)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(('.', String::new()));
    });
}

/// Runs `sh -c cmd` in a process group of its own, forwarding its output line by line; kills
/// the group at the deadline.
fn run_sh(id: u64, timeout: Duration, cmd: &str) {
    let start = Instant::now();
    let child = Command::new("/bin/sh")
        .args(["-c", cmd])
        .env("PATH", "/bin:/sbin:/usr/sbin:/usr/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            say(&format!("PGVM {id} e spawn: {e}"));
            say(&format!("PGVM {id} exit 127 ms=0"));
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    pipe_lines(child.stdout.take().unwrap(), 'o', tx.clone());
    pipe_lines(child.stderr.take().unwrap(), 'e', tx);
    let mut open = 2;
    let mut code: Option<String> = None;
    let mut exited_at = None;
    let mut last_line = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(('.', _)) => open -= 1,
            Ok((k, l)) => {
                say(&format!("PGVM {id} {k} {l}"));
                last_line = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open = 0,
        }
        if code.is_none() {
            if let Ok(Some(st)) = child.try_wait() {
                code = Some(st.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()));
                exited_at = Some(Instant::now());
            } else if start.elapsed() > timeout {
                let _ = Command::new("kill").args(["-9", &format!("-{}", child.id())]).status();
                let _ = child.kill();
                let _ = child.wait();
                code = Some("timeout".into());
                exited_at = Some(Instant::now());
            }
        }
        // A background process that kept the pipes open must not hold the answer back: once
        // the command has exited and its output has gone quiet for half a second, it is done.
        let quiet = Duration::from_millis(500);
        if let Some(t) = exited_at
            && (open == 0 || (t.elapsed() > quiet && last_line.elapsed() > quiet))
        {
            break;
        }
    }
    say(&format!("PGVM {id} exit {} ms={}", code.unwrap(), start.elapsed().as_millis()));
}

pub fn main() {
    // The console echoes what the host types unless told not to.
    let _ = Command::new("stty").arg("-echo").status();
    let _ = Command::new("dmesg").args(["-n", "1"]).status();
    listen();
    say(&hello());
    let stdin = io::stdin();
    let mut line = Vec::new();
    let mut lock = stdin.lock();
    loop {
        line.clear();
        match lock.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => thread::sleep(Duration::from_millis(100)),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).to_string();
        match parse(&text) {
            Some(Request::Sh { id, timeout, cmd }) => run_sh(id, timeout, &cmd),
            Some(Request::Counts { id }) => {
                say(&format!("PGVM {id} o {}", counts_line()));
                say(&format!("PGVM {id} exit 0 ms=0"));
            }
            Some(Request::End { status }) => {
                say(&format!("PGVM end status={status}"));
                let _ = Command::new("sync").status();
                let _ = Command::new("poweroff").arg("-f").status();
                thread::sleep(Duration::from_secs(3600));
            }
            None if text.trim().is_empty() => {}
            None => say(&format!("PGVM agent-error unparsed: {}", text.trim())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse("7 2.5 sh portguard status --json\n"),
            Some(Request::Sh {
                id: 7,
                timeout: Duration::from_millis(2500),
                cmd: "portguard status --json".into()
            })
        );
        assert_eq!(parse("8 1 counts"), Some(Request::Counts { id: 8 }));
        assert_eq!(parse("9 1 end 1"), Some(Request::End { status: 1 }));
        assert_eq!(parse("go"), None);
        assert!(counts_line().starts_with("udp2745_v4=0 udp2745_v6=0 udp8080_v4=0"));
    }
}
