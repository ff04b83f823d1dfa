//! One guarded interface, held in one of three ways:
//!
//! - [`Loaded`]: the program and its maps, loaded but attached nowhere. The verdict tests and
//!   the benchmarks drive it through BPF_PROG_TEST_RUN.
//! - [`Owner`]: the process that attached the program to an interface and keeps it there. Its
//!   state is pinned under [`Pins`](crate::pins::Pins) so that every portguard process can see
//!   and change it, and so that it outlives the process when asked to. If the interface is
//!   already guarded (a previous run left it in place, or was killed), the new program
//!   atomically replaces the old one on the same link, reusing its maps: no packet is ever
//!   unguarded and no counter is lost. The program holds the interface alone through a
//!   bpf_link, or shares it as one program of libxdp's dispatcher ([`Kind`], see `multiprog`);
//!   every promise holds for both.
//! - [`View`]: any other process (`stats`, `set`, `top`, a second `run`) reading or changing a
//!   guard through its pins. It never loads or attaches anything.

mod attach;
pub mod health;
mod loaded;
mod owner;
mod probe;
pub mod view;

use std::ffi::CString;

pub use attach::{AttachMode, Attached, Kind, Share};
pub use health::{Health, Peer, Reason, Shared};
pub use loaded::Loaded;
pub use owner::{Acquired, Owner, Upkeep, detach_pinned};
pub use view::{Changed, View};

use crate::error::GuardError;

/// The ifindex of `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32, GuardError> {
    let unknown = || GuardError::UnknownInterface(iface.to_string());
    let c = CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: a NUL-terminated string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 || iface.contains('/') {
        return Err(unknown());
    }
    Ok(idx)
}
