//! portguard's userspace: loads the XDP program, configures it through its maps, attaches it,
//! keeps it attached, and reads back what it counted.
//!
//! - `daemon`: the running guards of `portguard run`, kept up every interval.
//! - `guard`: one guarded interface, held as its owner, as a view, or loaded for tests.
//! - `config`: the configuration file and the plan a daemon runs (flags over the file).
//! - `settings`: what an admin asks for (mode, ports, direction, ...), validated.
//! - `wire`: every conversion between those values and the bytes in the maps.
//! - `maps`: reads and writes of the maps, bytes only; `pins`: where they live in bpffs.
//! - `counters`: totals and per-source counters merged over CPUs, rates, the jiffy clock.
//! - `table`: upkeep of the per-source table (what to forget when it fills).
//! - `report`: rendering for people and machines; `text`: plurals and marked cuts;
//!   `notices`: warnings kept in sight above the live table; `json`: the one JSON dialect;
//!   `metrics`: Prometheus; `notify`: systemd.
//! - `check`: which sockets use a guarded port, and which processes own them.
//! - `fingerprint`: what sent a probe (tool rules, p0f signatures, per-source evidence);
//!   `capture`: pcapng files of matched packets.
//! - `tui`: `portguard top`.
//! - `multiprog`: sharing the XDP hook with other programs through libxdp's dispatcher.
//! - `lab`: network namespaces joined by veth pairs, for `portguard lab` and the tests.
//! - `privileges`, `clock`, `error`, `sys`: the capability check, time, typed errors, and the
//!   bpf(2) commands aya does not wrap.

pub mod capture;
pub mod check;
pub mod clock;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod error;
pub mod fingerprint;
pub mod guard;
pub mod json;
pub mod lab;
pub mod maps;
pub mod metrics;
pub mod multiprog;
pub mod netlink;
pub mod netns;
pub mod notices;
pub mod notify;
pub mod pins;
pub mod privileges;
pub mod ranges;
pub mod report;
pub mod settings;
mod sys;
pub mod table;
pub mod text;
pub mod tui;
pub mod wire;
