//! `portguard check`: has anything on this host (or in one network namespace) claimed a
//! guarded port? Lists TCP sockets in any state and bound UDP sockets whose local or remote
//! port is guarded, with the processes that own them.
//!
//! - `sockdiag`: the sockets, from the kernel over NETLINK_SOCK_DIAG.
//! - `procs`: socket inode → processes, from /proc/<pid>/fd; uid → user name.
//!
//! The JSON form of [`Report`] is a stable interface: fields are only ever added.

pub mod procs;
pub mod sockdiag;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// What `scan` found.
///
/// JSON fields:
/// - `ports` (array of integers): the guarded ports looked for, ascending.
/// - `netns` (string or null): the network namespace inspected, null for the caller's own.
/// - `clean` (bool): true when `sockets` is empty.
/// - `sockets` (array of [`Socket`]): what uses a guarded port.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Report {
    pub ports: Vec<u16>,
    pub netns: Option<String>,
    pub clean: bool,
    pub sockets: Vec<Socket>,
}

/// One socket whose local or remote port is guarded.
///
/// JSON fields:
/// - `protocol`: "tcp" or "udp".
/// - `family`: "ipv4" or "ipv6".
/// - `state`: for TCP "listen", "syn-sent", "syn-recv", "new-syn-recv", "established",
///   "fin-wait-1", "fin-wait-2", "close-wait", "closing", "last-ack", "time-wait" or "close";
///   for UDP "unconnected" (bound, receives from anyone) or "connected".
///   An unknown kernel state is "state-N".
/// - `local_address`, `remote_address` (strings): IP addresses as the kernel reports them;
///   the remote of a listener or unconnected UDP socket is the unspecified address.
/// - `local_port`, `remote_port` (integers): the remote port is 0 when there is no peer.
/// - `inode` (integer): the socket's inode; 0 when no file refers to it any more.
/// - `uid` (integer), `user` (string): the socket's owner; `user` is the number as text when
///   the user database does not know the uid.
/// - `processes` (array): each `{"pid": integer, "name": string, "cmdline": string}` holding
///   a descriptor on the socket (`name` from /proc/<pid>/comm, `cmdline` with arguments
///   joined by spaces, empty for kernel threads).
/// - `owner_visible` (bool): false when no owning process was found.
/// - `owner_note` (string or null): why not, when `owner_visible` is false.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Socket {
    pub protocol: Protocol,
    pub family: Family,
    pub state: String,
    pub local_address: IpAddr,
    pub local_port: u16,
    pub remote_address: IpAddr,
    pub remote_port: u16,
    pub inode: u64,
    pub uid: u32,
    pub user: String,
    pub processes: Vec<Process>,
    pub owner_visible: bool,
    pub owner_note: Option<String>,
}

/// A process holding a socket. See [`Socket`] for the JSON fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub cmdline: String,
}

/// The guarded protocols' own type: a socket is TCP or UDP as a guard's protocol is.
pub use crate::settings::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a kernel socket state (include/net/tcp_states.h).
pub fn state_name(protocol: Protocol, state: u8) -> String {
    let name = match (protocol, state) {
        // UDP borrows TCP's numbers: ESTABLISHED after connect(), CLOSE otherwise.
        (Protocol::Udp, 1) => "connected",
        (Protocol::Udp, 7) => "unconnected",
        (Protocol::Udp, _) => return format!("state-{state}"),
        (Protocol::Tcp, 1) => "established",
        (Protocol::Tcp, 2) => "syn-sent",
        (Protocol::Tcp, 3) => "syn-recv",
        (Protocol::Tcp, 4) => "fin-wait-1",
        (Protocol::Tcp, 5) => "fin-wait-2",
        (Protocol::Tcp, 6) => "time-wait",
        (Protocol::Tcp, 7) => "close",
        (Protocol::Tcp, 8) => "close-wait",
        (Protocol::Tcp, 9) => "last-ack",
        (Protocol::Tcp, 10) => "listen",
        (Protocol::Tcp, 11) => "closing",
        (Protocol::Tcp, 12) => "new-syn-recv",
        (Protocol::Tcp, _) => return format!("state-{state}"),
    };
    name.to_string()
}

/// Checks a network namespace name as `ip netns` would accept it: a plain file name under
/// /run/netns, so a name can never reach another path.
pub fn validate_netns(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("invalid network namespace name {name:?}");
    }
    let path = Path::new("/run/netns").join(name);
    if !path.exists() {
        bail!("network namespace {name} not found (no {})", path.display());
    }
    Ok(())
}

/// Lists the sockets using any of `ports` as local or remote port, in network namespace
/// `netns` (a name under /run/netns) or, when None, in the caller's own. Processes are looked
/// up across the whole host.
pub fn scan(ports: &[u16], netns: Option<&str>) -> Result<Report> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        bail!("no port to check");
    }
    if ports.contains(&0) {
        bail!("port 0 cannot be guarded (ports are 1..=65535)");
    }
    let kernel = match netns {
        Some(ns) => {
            validate_netns(ns)?;
            // Only this thread enters the namespace; the process stays where it is.
            crate::lab::in_netns(ns, sockdiag::dump_all)
                .with_context(|| format!("entering network namespace {ns}"))??
        }
        None => sockdiag::dump_all()?,
    };
    let matching: Vec<sockdiag::KernelSocket> = kernel
        .into_iter()
        .filter(|s| ports.contains(&s.local.port()) || ports.contains(&s.remote.port()))
        .collect();
    let inodes: HashSet<u64> =
        matching.iter().map(|s| u64::from(s.inode)).filter(|&i| i != 0).collect();
    let owners = procs::owners(Path::new("/proc"), &inodes);
    let unknown = if owners.denied > 0 {
        "unknown: not allowed to read other processes' descriptors; run as root"
    } else {
        "unknown: not visible from this host's /proc"
    };
    let mut users = std::collections::HashMap::new();
    let mut sockets: Vec<Socket> = matching
        .into_iter()
        .map(|k| {
            let inode = u64::from(k.inode);
            let processes = if inode == 0 {
                Vec::new()
            } else {
                owners.by_inode.get(&inode).cloned().unwrap_or_default()
            };
            let owner_note = match (processes.is_empty(), inode) {
                (false, _) => None,
                // TIME-WAIT and orphaned sockets belong to the kernel, not to a process.
                (true, 0) => Some("none: closed, held by the kernel".into()),
                (true, _) => Some(unknown.to_string()),
            };
            let user = users.entry(k.uid).or_insert_with(|| procs::user_name(k.uid)).clone();
            Socket {
                protocol: k.protocol,
                family: k.family,
                state: state_name(k.protocol, k.state),
                local_address: k.local.ip(),
                local_port: k.local.port(),
                remote_address: k.remote.ip(),
                remote_port: k.remote.port(),
                inode,
                uid: k.uid,
                user,
                owner_visible: !processes.is_empty(),
                processes,
                owner_note,
            }
        })
        .collect();
    sockets.sort_by_key(|s| {
        (
            s.protocol.as_str(),
            s.family.as_str(),
            s.local_port,
            s.local_address,
            s.remote_port,
            s.remote_address,
            s.inode,
        )
    });
    Ok(Report { ports, netns: netns.map(str::to_string), clean: sockets.is_empty(), sockets })
}

impl Socket {
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.local_address, self.local_port)
    }
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_address, self.remote_port)
    }
}
