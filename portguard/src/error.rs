//! The errors callers act on, typed. Everything else travels as `anyhow` context.

use std::path::PathBuf;

/// Why a guard cannot be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The interface has no pinned portguard state under the pin root.
    #[error("{iface} is not guarded by portguard (no pinned state in {})", dir.display())]
    NotGuarded { iface: String, dir: PathBuf },
    /// bpffs is not mounted, so nothing is guarded.
    #[error("{iface} is not guarded (bpffs is not mounted at /sys/fs/bpf, so nothing is)")]
    NoBpffs { iface: String },
    /// The pinned maps exist but this process may not open them.
    #[error("reading portguard's pinned maps needs root (or CAP_BPF): run it with sudo")]
    NeedsRoot,
    /// The pinned maps were made by a portguard with another map layout.
    #[error(
        "the maps pinned in {} have layout version {found}, this portguard uses {ours}: run \
         `portguard detach` to start afresh (counters are lost)",
        dir.display()
    )]
    Layout { dir: PathBuf, found: u32, ours: u32 },
    /// No interface of that name in this network namespace.
    #[error("unknown interface '{0}' (see `ip link` for the interfaces on this host)")]
    UnknownInterface(String),
}

/// A command line that asks for something contradictory or impossible, found after clap has
/// parsed it. It exits 2 like clap's own usage errors, pointing at the verb's `--help`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A usage error with this message.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

/// Whether an error (anywhere in its chain) is the kernel refusing access.
pub fn is_permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::PermissionDenied
                || matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        })
    })
}
