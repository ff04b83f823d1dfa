//! portguard's userspace: loads the XDP program, configures it through its maps, attaches it,
//! and reads back what it counted.
//!
//! - `guard`: load, configure and attach the program (one `Guard` per interface).
//! - `settings`: what an admin asks for (mode, ports, direction, ...) and its validation.
//! - `counters`: reading TOTALS and SOURCES, merged across CPUs.
//! - `report`: rendering counters for people and for machines.
//! - `privileges`: the capability check that runs before anything is loaded.
//! - `lab`: network namespaces joined by veth pairs, for the built-in lab and the tests.
//! - `check`: which sockets use a guarded port, and which processes own them.
//! - `tui`: `portguard top`, the live full-screen view over the pinned maps.
//! - `clock`: turning the program's monotonic timestamps into ages and wall-clock times.
//! - `frames`: hand-built frames; `fuzz`: random and mutated ones from the same shapes.
//! - `reference`: the verdict semantics as plain Rust, which the differential test compares
//!   with the program.
//! - `fingerprint`: what sent a probe (tool rules, p0f signatures, per-source evidence);
//!   `capture`: pcapng files of matched packets.

pub mod capture;
pub mod check;
pub mod clock;
pub mod config;
pub mod counters;
pub mod fingerprint;
pub mod frames;
pub mod fuzz;
pub mod guard;
pub mod lab;
pub mod maps;
pub mod metrics;
pub mod notify;
pub mod pins;
pub mod privileges;
pub mod reference;
pub mod report;
pub mod settings;
mod sys;
pub mod tui;
