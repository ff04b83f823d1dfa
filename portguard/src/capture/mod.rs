//! Captures of matched packets, for "show me the packets".
//!
//! - `pcapng`: the file writer (one interface block per guarded interface, a comment with the
//!   verdict and the source's label on every packet), size-based rotation, and the
//!   `--count` / `--per-source` budget;
//! - `session`: a capture in progress: the guards' CAPTURE ring buffers read into a file,
//!   under each guard's capture lock. `portguard capture` runs one, and so does the daemon
//!   when `[capture]` names a directory.

pub mod pcapng;
pub mod session;

pub use pcapng::{Budget, Interface, Rotating, Writer, comment};
pub use session::{Options, Session, Sink, Written};

/// `[capture]`'s defaults: rotate at 64 MiB, keep 5 old files, the first 10 packets of each
/// new source, at most 1,000 packets a second.
pub const DEFAULT_SIZE_MIB: u64 = 64;
pub const DEFAULT_FILES: usize = 5;
pub const DEFAULT_PER_SOURCE: u16 = 10;
pub const DEFAULT_RATE: u32 = 1_000;
/// Bytes kept of each packet: all the program copies (portguard-common's CAPTURE_SNAP).
pub const MAX_SNAPLEN: u32 = portguard_common::CAPTURE_SNAP as u32;
