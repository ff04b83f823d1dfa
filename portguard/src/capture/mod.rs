//! Captures of matched packets, for "show me the packets".
//!
//! - `pcapng`: the file writer (one interface block per guarded interface, a comment with the
//!   verdict and the source's label on every packet), size-based rotation, and the
//!   `--count` / `--per-source` budget.
//!
//! The `portguard capture` verb and the daemon's feed are wired up by the CLI (not here): they
//! open a `Rotating` (or a plain `Writer`) with one `Interface` per guarded interface, ask the
//! `Budget` before each packet, and pass `comment(verdict, label, evidence)` with it.

pub mod pcapng;

pub use pcapng::{Budget, Interface, Rotating, Writer, comment};
