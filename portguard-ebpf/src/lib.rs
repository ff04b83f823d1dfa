#![no_std]
// This file exists so that portguard's build.rs can depend on this crate and be rebuilt when it
// changes; the program itself is the `portguard` binary in main.rs.
