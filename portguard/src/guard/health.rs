//! "Guarded" is read from the kernel, every time: the interface of that name, in this network
//! namespace, runs our program, through our link, in the mode the kernel says. Nothing portguard
//! remembers (META, a log line, an earlier check) is taken for it.

use std::{fmt, os::fd::AsFd as _};

use portguard_common::{Meta, STATE_DETACHING};

use super::Attached;
use crate::{netlink, sys};

/// What the kernel says about a guard now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The interface runs portguard's program through the guard's link.
    Guarded {
        mode: Attached,
        prog_id: u32,
        /// The link is pinned (false: only the owner's descriptor keeps it, and it goes with
        /// the owner).
        pinned: bool,
    },
    NotGuarded(Reason),
}

impl Health {
    pub fn is_guarded(&self) -> bool {
        matches!(self, Health::Guarded { .. })
    }

    /// The mode the kernel runs the program in, when it runs it.
    pub fn mode(&self) -> Option<Attached> {
        match self {
            Health::Guarded { mode, .. } => Some(*mode),
            Health::NotGuarded(_) => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Guarded { mode, pinned: true, .. } => {
                write!(f, "guarded ({} XDP)", mode.as_str())
            }
            Health::Guarded { mode, pinned: false, .. } => {
                write!(f, "guarded ({} XDP; not pinned: it ends with its owner)", mode.as_str())
            }
            Health::NotGuarded(why) => write!(f, "NOT GUARDED: {why}"),
        }
    }
}

/// Why a guard is not guarding its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `portguard detach` asked for it.
    Detaching,
    /// No interface of that name in this namespace.
    InterfaceGone,
    /// An interface of that name exists, but it is another device than the one the link was
    /// made for (deleted and created again, as a PPP reconnect does).
    Replaced { ifindex: u32 },
    /// The guarded device has another name now; the name is another device, or none.
    Renamed { to: String },
    /// The link is attached nowhere (`bpftool link detach`, or its interface went away).
    LinkDetached,
    /// Neither a link pin nor a descriptor: nothing attaches the program.
    NoLink,
    /// The interface runs another XDP program.
    OtherProgram { id: u32, name: String },
    /// The interface runs no XDP program at all.
    NoProgram,
    /// The kernel could not be asked.
    Unknown(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Detaching => f.write_str("being detached (portguard detach)"),
            Reason::InterfaceGone => f.write_str("interface gone"),
            Reason::Replaced { ifindex } => {
                write!(f, "the interface was replaced (now ifindex {ifindex}); not guarded yet")
            }
            Reason::Renamed { to } => write!(f, "the guarded device was renamed to {to}"),
            Reason::LinkDetached => f.write_str("its XDP link was detached"),
            Reason::NoLink => f.write_str("no XDP link (its pin is gone)"),
            Reason::OtherProgram { id, name } => {
                write!(f, "interface has program {id} ({name}) attached")
            }
            Reason::NoProgram => f.write_str("interface has no XDP program"),
            Reason::Unknown(e) => write!(f, "cannot tell: {e}"),
        }
    }
}

/// The name of a loaded program, or "?".
pub fn prog_name(id: u32) -> String {
    sys::prog_by_id(id)
        .and_then(|fd| sys::prog_info(fd.as_fd()))
        .map_or_else(|_| "?".into(), |i| if i.name.is_empty() { "?".into() } else { i.name })
}

/// Judges a guard of `iface` from what the kernel says now. `link` is the guard's XDP link
/// (prog id, ifindex) when there is one (the owner's descriptor, or the pin), `pinned` whether
/// the pin is there. Runs in the guard's network namespace.
pub fn check(meta: &Meta, iface: &str, link: Option<(u32, u32)>, pinned: bool) -> Health {
    if meta.state == STATE_DETACHING {
        return Health::NotGuarded(Reason::Detaching);
    }
    let named = super::ifindex(iface).ok();
    let Some((prog_id, link_ifindex)) = link else {
        return Health::NotGuarded(Reason::NoLink);
    };
    if link_ifindex == 0 {
        // Defunct: its device went away, or someone detached it.
        return Health::NotGuarded(match named {
            None => Reason::InterfaceGone,
            Some(i) if i != meta.ifindex => Reason::Replaced { ifindex: i },
            Some(i) => what_runs(i).unwrap_or(Reason::LinkDetached),
        });
    }
    if named != Some(link_ifindex) {
        let to =
            netlink::name_of(link_ifindex).unwrap_or_else(|| format!("ifindex {link_ifindex}"));
        return Health::NotGuarded(Reason::Renamed { to });
    }
    match netlink::query(link_ifindex) {
        Ok(Some(a)) if a.prog_id == prog_id => {
            let mode = match a.mode {
                netlink::Mode::Native => Attached::Native,
                netlink::Mode::Generic => Attached::Generic,
            };
            Health::Guarded { mode, prog_id, pinned }
        }
        Ok(Some(a)) => {
            Health::NotGuarded(Reason::OtherProgram { id: a.prog_id, name: prog_name(a.prog_id) })
        }
        Ok(None) => Health::NotGuarded(Reason::NoProgram),
        Err(e) => Health::NotGuarded(Reason::Unknown(format!("{e:#}"))),
    }
}

/// What runs on interface `ifindex` when it is not ours: another program, or none.
fn what_runs(ifindex: u32) -> Option<Reason> {
    match netlink::query(ifindex) {
        Ok(Some(a)) => Some(Reason::OtherProgram { id: a.prog_id, name: prog_name(a.prog_id) }),
        Ok(None) => Some(Reason::NoProgram),
        Err(_) => None,
    }
}
