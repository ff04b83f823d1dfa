//! The systemd notification protocol (sd_notify), spoken directly: a datagram of `KEY=value`
//! lines to the Unix socket named by $NOTIFY_SOCKET. Outside systemd there is no socket and
//! every call does nothing.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace) and $WATCHDOG_USEC
    /// (honoured only when $WATCHDOG_PID is unset or ours).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            let addr = match p.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt as _;
                    SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => SocketAddr::from_pathname(&p).ok()?,
            };
            let sock = UnixDatagram::unbound().ok()?;
            // A notify socket nobody reads fills up; the daemon must not block on it (its
            // guard upkeep runs on the same thread). Such a message is dropped instead.
            sock.set_nonblocking(true).ok()?;
            Some((sock, addr))
        });
        let ours = std::env::var("WATCHDOG_PID")
            .map_or(true, |p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            log::debug!("sd_notify: {e}");
        }
    }

    /// Every configured interface is guarded.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\nMAINPID={}", one_line(status), std::process::id()));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn reloading(&self) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime fills the timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often to ping the watchdog: half its timeout, as systemd recommends.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real NOTIFY_SOCKET: a datagram socket this test listens on.
    #[test]
    fn speaks_to_a_real_notify_socket() {
        let dir = std::env::temp_dir().join(format!("pg-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(30)),
        };
        let mut buf = [0u8; 512];
        n.ready("guarding eth1\n(native)");
        let len = listener.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("READY=1\nSTATUS=guarding eth1 (native)\nMAINPID="), "{msg}");
        n.watchdog();
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        n.reloading();
        let len = listener.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..len]).unwrap().starts_with("RELOADING=1\nMONOTONIC_USEC=")
        );
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(15)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn outside_systemd_nothing_happens() {
        let n = Notifier { target: None, watchdog: None };
        n.ready("x");
        n.stopping();
        assert_eq!(n.watchdog_period(), None);
    }
}
