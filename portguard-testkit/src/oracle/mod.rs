//! The kernel as the oracle (issue #12, part 2).
//!
//! The differential fuzzer compares the XDP program with a reference written by the same
//! people; both can share one wrong belief about the stack. Here the judge is Linux itself:
//! every generated case is sent as raw frames through a real veth pair into a gateway
//! namespace with TCP listeners and UDP sockets on the guarded ports and on a control port,
//! and what reached a socket (a datagram read, a SYN answered with a SYN-ACK) is recorded,
//! first without portguard (phase A), then with it attached in drop mode (B), then in count
//! mode (C). The invariant: nothing the kernel delivers to a guarded port gets there through
//! portguard in drop mode, and in count mode every such delivery is matched.
//!
//! - `packet`: datagrams the kernel accepts when valid (transport checksums over the
//!   reassembled datagram, IPv6 options Linux parses, real fragments), each carrying its case
//!   id in its payload and TCP sequence number;
//! - `cases`: the generator (shapes × link layers × mutations), deterministic for a seed;
//! - `netlab`: the lab (portguard's namespace lab, off-link sources routed to a MAC nobody has,
//!   sockets, AF_PACKET injection and capture), `vlan`: VLAN sub-interfaces emulated by a tcx
//!   program, since this kernel has no 802.1Q;
//! - `observe`: attributing datagrams and replies to cases;
//! - `run`: the phases, the check, the report (tables, violation classes with their smallest
//!   reproducer and what the kernel does with it, the reference's disagreements with the
//!   kernel);
//! - `repro`: a minimal reproducer for each class found.
//!
//! What this lab cannot make the kernel deliver, and so cannot check: PPPoE (no CONFIG_PPP
//! here, so no session can exist); frames tagged with a VLAN id other than 0 except through the
//! emulation (no CONFIG_VLAN_8021Q); 0x9100 outer tags (no handler in any kernel); AH (no
//! CONFIG_INET6_AH); segment routing headers (seg6_enabled is 0 by default).

pub mod cases;
pub mod netlab;
pub mod observe;
pub mod packet;
pub mod repro;
pub mod run;
pub mod vlan;
