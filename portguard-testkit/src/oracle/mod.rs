//! The kernel as the oracle (issue #12, part 2).
pub mod cases;
pub mod netlab;
pub mod observe;
pub mod packet;
pub mod repro;
pub mod run;
pub mod vlan;
