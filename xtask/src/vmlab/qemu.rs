//! One guest: QEMU (TCG) started inside the lab's namespace with a multi-queue virtio-net NIC
//! on the lab's tap and the serial console on its stdio, and the host's half of the runner's
//! line protocol (agent.rs). Every wait has a deadline; dropping a [`Vm`] kills QEMU.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Arch,
    lab::{GUEST_MAC, Lab, TAP, mac_str},
};

pub struct Spec<'a> {
    pub arch: Arch,
    pub cpus: u32,
    /// Queue pairs of the NIC (and queues of the tap).
    pub queues: u32,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// Where the serial transcript and QEMU's stderr go.
    pub dir: &'a Path,
    /// Share the host's root with the guest, read-only over 9p (tag `host`): for running a
    /// host-built test binary, with the host's tools, in the guest's kernel.
    pub host_root: bool,
}

impl Spec<'_> {
    /// Room for per-CPU maps (about 3 MiB per CPU with the default table) and RX rings.
    pub fn mem_mb(&self) -> u32 {
        // A test binary from the host runs daemons, xdp-filter and a page cache of its files.
        if self.host_root { 2048 } else { 384 + 16 * self.cpus }
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(120 + 8 * u64::from(self.cpus))
    }

    pub fn command(&self) -> Command {
        let q = self.queues;
        let (bin, machine, cpu, console) = match self.arch {
            Arch::X86_64 => ("qemu-system-x86_64", "pc", "max", "ttyS0"),
            // cortex-a72: -cpu max emulates pointer authentication, slow under TCG.
            Arch::Aarch64 => ("qemu-system-aarch64", "virt", "cortex-a72", "ttyAMA0"),
        };
        let mut c = Command::new(bin);
        c.args(["-M", machine, "-accel", "tcg,thread=multi,tb-size=512", "-cpu", cpu])
            .args(["-smp", &self.cpus.to_string(), "-m", &self.mem_mb().to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-kernel"])
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", &format!("console={console} panic=-1 loglevel=4 rdinit=/init")])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off,queues={q}"),
                "-device",
                &format!(
                    "virtio-net-pci,netdev=n0,mq=on,vectors={},mac={},romfile=",
                    2 * q + 2,
                    mac_str(&GUEST_MAC)
                ),
            ]);
        if self.host_root {
            c.args([
                "-virtfs",
                "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            ]);
        }
        c
    }
}

/// What one command in the guest printed, and how it ended.
#[derive(Debug, Default)]
pub struct Output {
    /// The exit code, or "timeout" / "signal".
    pub code: String,
    pub out: Vec<String>,
    pub err: Vec<String>,
    pub ms: u64,
}

impl Output {
    pub fn stdout(&self) -> String {
        self.out.join("\n")
    }
}

enum Line {
    Pgvm(String),
    Eof,
}

pub struct Vm {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Line>,
    next_id: u64,
    /// `PGVM hello` fields (release, cpus, nic, rx_queues, ...).
    pub hello: BTreeMap<String, String>,
    /// From QEMU's start to the runner's hello.
    pub boot: Duration,
    /// `PGVM rc-error` lines of the guest's startup.
    pub rc_errors: Vec<String>,
    pub transcript: PathBuf,
}

impl Vm {
    pub fn boot(lab: &Lab, spec: &Spec) -> Result<Vm> {
        std::fs::create_dir_all(spec.dir)?;
        let transcript = spec.dir.join("serial.log");
        let stderr = File::create(spec.dir.join("qemu.log"))?;
        let mut cmd = spec.command();
        let ns = lab.ns_fd();
        // SAFETY: only async-signal-safe calls between fork and exec: setns into the lab's
        // namespace (the tap lives there) and a parent-death signal, so QEMU cannot outlive
        // this process even if it is killed.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", crate::util::describe(&cmd)))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        let mut log = File::create(&transcript)?;
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log.write_all(&buf);
                        let l = String::from_utf8_lossy(&buf);
                        let l = l.trim_end_matches(['\r', '\n']);
                        if let Some(i) = l.find("PGVM ") {
                            let _ = tx.send(Line::Pgvm(l[i + 5..].to_string()));
                        }
                    }
                }
            }
            let _ = tx.send(Line::Eof);
        });
        let mut vm = Vm {
            child,
            stdin,
            lines: rx,
            next_id: 1,
            hello: BTreeMap::new(),
            boot: Duration::ZERO,
            rc_errors: Vec::new(),
            transcript,
        };
        let deadline = start + spec.boot_timeout();
        loop {
            let l = vm.next_line(deadline, "the guest's runner to start")?;
            if let Some(rest) = l.strip_prefix("hello ") {
                vm.hello = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                break;
            } else if let Some(e) = l.strip_prefix("rc-error ") {
                vm.rc_errors.push(e.to_string());
            }
        }
        vm.boot = start.elapsed();
        Ok(vm)
    }

    fn next_line(&mut self, deadline: Instant, what: &str) -> Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(Line::Pgvm(l)) => Ok(l),
            Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                bail!(
                    "the guest stopped while waiting for {what} (QEMU: {}); {}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    self.tail()
                )
            }
            Err(RecvTimeoutError::Timeout) => {
                bail!("timed out waiting for {what}; {}", self.tail())
            }
        }
    }

    /// The end of the serial transcript, for error messages.
    pub fn tail(&self) -> String {
        let t = std::fs::read_to_string(&self.transcript).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "serial console in {} ends with:\n  {}",
            self.transcript.display(),
            lines[from..].join("\n  ")
        )
    }

    fn request(&mut self, kind: &str, timeout: Duration) -> Result<Output> {
        let id = self.next_id;
        self.next_id += 1;
        let line = format!("{id} {} {kind}\n", timeout.as_secs_f64());
        // The console's line buffer holds 4095 bytes.
        if line.len() > 3000 {
            bail!("a guest command is too long ({} bytes)", line.len());
        }
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        // Emulation is slow and the console is a UART: leave the guest's own deadline room.
        let deadline = Instant::now() + timeout + Duration::from_secs(60);
        let mut o = Output::default();
        let prefix = format!("{id} ");
        loop {
            let what = format!("the guest to finish `{kind}`");
            let l = self.next_line(deadline, &what)?;
            let Some(rest) = l.strip_prefix(&prefix) else { continue };
            if let Some(t) = rest.strip_prefix("o ") {
                o.out.push(t.to_string());
            } else if rest == "o" {
                o.out.push(String::new());
            } else if let Some(t) = rest.strip_prefix("e ") {
                o.err.push(t.to_string());
            } else if let Some(t) = rest.strip_prefix("exit ") {
                let mut w = t.split_whitespace();
                o.code = w.next().unwrap_or("").to_string();
                o.ms = w
                    .next()
                    .and_then(|m| m.strip_prefix("ms="))
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                return Ok(o);
            }
        }
    }

    /// Runs a shell command in the guest; whatever its exit code.
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> Result<Output> {
        self.request(&format!("sh {cmd}"), timeout)
    }

    /// Runs a shell command in the guest that must succeed; its stdout.
    pub fn ok(&mut self, cmd: &str) -> Result<String> {
        let o = self.sh(cmd, Duration::from_secs(60))?;
        if o.code != "0" {
            bail!("in the guest, `{cmd}` exited {}: {}", o.code, o.err.join(" / "));
        }
        Ok(o.stdout())
    }

    /// What the guest's listeners received so far, by protocol, port and family.
    pub fn counts(&mut self) -> Result<BTreeMap<String, u64>> {
        let o = self.request("counts", Duration::from_secs(10))?;
        Ok(o.stdout()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect())
    }

    /// Asks the runner to power the guest off and waits for QEMU to exit.
    pub fn end(mut self, status: i32) -> Result<()> {
        self.stdin.write_all(format!("0 1 end {status}\n").as_bytes())?;
        self.stdin.flush()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let l = self.next_line(deadline, "the guest's end line")?;
            if l.starts_with("end ") {
                break;
            }
        }
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!("QEMU exited {st}");
                }
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("the guest did not power off")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
