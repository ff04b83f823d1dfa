//! "Guarded" is read from the kernel, every time: the interface of that name, in this network
//! namespace, runs our program, through our link, in the mode the kernel says. Nothing portguard
//! remembers (META, a log line, an earlier check) is taken for it.

use std::{fmt, os::fd::AsFd as _};

use portguard_common::{Meta, STATE_DETACHING};

use super::Attached;
use crate::{
    multiprog::{self, Hook, Ours},
    netlink, sys,
};

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
        /// Shared through libxdp's dispatcher: where portguard runs in it, and beside what.
        /// None: the interface runs portguard alone.
        shared: Option<Shared>,
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
            Health::Guarded { mode, pinned, shared, .. } => {
                write!(f, "guarded ({} XDP", mode.as_str())?;
                if let Some(s) = shared {
                    write!(
                        f,
                        "; in libxdp's dispatcher {}, priority {}, {}",
                        s.dispatcher,
                        s.priority,
                        s.company()
                    )?;
                }
                if !pinned {
                    f.write_str("; not pinned: it ends with its owner")?;
                }
                f.write_str(")")
            }
            Health::NotGuarded(why) => write!(f, "NOT GUARDED: {why}"),
        }
    }
}

/// portguard as one program of libxdp's dispatcher, as the kernel runs it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shared {
    /// The dispatcher attached to the interface.
    pub dispatcher: u32,
    /// portguard's position in its run order (0 runs first).
    pub slot: usize,
    pub priority: u32,
    /// XDP actions (`1 << action`) after which the next program runs.
    pub chain_call_actions: u32,
    /// The other programs in the dispatcher, in run order.
    pub others: Vec<Peer>,
}

/// Another program in the dispatcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub slot: usize,
    pub prog_id: u32,
    pub name: String,
    pub priority: u32,
    pub chain_call_actions: u32,
}

impl Shared {
    fn of(d: &multiprog::Dispatcher, slot: usize) -> Shared {
        let ours = &d.components[slot];
        Shared {
            dispatcher: d.prog_id,
            slot,
            priority: ours.priority,
            chain_call_actions: ours.chain_call_actions,
            others: d
                .components
                .iter()
                .filter(|c| c.slot != slot)
                .map(|c| Peer {
                    slot: c.slot,
                    prog_id: c.prog_id,
                    name: c.name.clone(),
                    priority: c.priority,
                    chain_call_actions: c.chain_call_actions,
                })
                .collect(),
        }
    }

    /// "with xdpfilt_alw_all (10)" or "alone".
    pub fn company(&self) -> String {
        if self.others.is_empty() {
            return "alone".into();
        }
        let v: Vec<String> =
            self.others.iter().map(|p| format!("{} ({})", p.name, p.priority)).collect();
        format!("with {}", v.join(", "))
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
    /// The interface runs libxdp's dispatcher, without portguard in it (another libxdp user
    /// rebuilt it without portguard, or portguard's link in it was removed).
    NotInDispatcher { id: u32, others: Vec<String> },
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
            Reason::NotInDispatcher { id, others } if others.is_empty() => {
                write!(f, "interface runs libxdp's dispatcher (program {id}) without portguard")
            }
            Reason::NotInDispatcher { id, others } => write!(
                f,
                "interface runs libxdp's dispatcher (program {id}: {}) without portguard",
                others.join(", ")
            ),
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
            Health::Guarded { mode, prog_id, pinned, shared: None }
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

/// Judges a guard shared through libxdp's dispatcher (`Meta::attach` is ATTACH_MULTIPROG):
/// the device it joined (META's ifindex) still has the guard's name, and the dispatcher
/// attached to it runs portguard's program (`ours`) through a link pinned where the protocol
/// says, replacing a function of that very dispatcher. `held`: the owner's own descriptor of
/// its component's link, (program id, target program id), which keeps it running even when
/// the pin is gone. Runs in the guard's network namespace.
pub fn check_component(meta: &Meta, iface: &str, ours: Ours, held: Option<(u32, u32)>) -> Health {
    if meta.state == STATE_DETACHING {
        return Health::NotGuarded(Reason::Detaching);
    }
    let named = super::ifindex(iface).ok();
    match netlink::name_of(meta.ifindex) {
        Some(n) if n == iface => {}
        Some(to) => return Health::NotGuarded(Reason::Renamed { to }),
        None => {
            return Health::NotGuarded(match named {
                None => Reason::InterfaceGone,
                Some(i) => Reason::Replaced { ifindex: i },
            });
        }
    }
    let d = match multiprog::hook(meta.ifindex) {
        Ok(Hook::Free) => return Health::NotGuarded(Reason::NoProgram),
        Ok(Hook::Dispatcher(d)) => d,
        Ok(Hook::OtherVersion { prog_id, version }) => {
            return Health::NotGuarded(Reason::OtherProgram {
                id: prog_id,
                name: format!("xdp_dispatcher of protocol version {version}"),
            });
        }
        Ok(Hook::Exclusive { prog_id, name }) => {
            return Health::NotGuarded(Reason::OtherProgram { id: prog_id, name });
        }
        Err(e) => return Health::NotGuarded(Reason::Unknown(format!("{e:#}"))),
    };
    let mode = multiprog::component::attached(d.mode);
    let is_ours = |c: &multiprog::Component| match ours {
        Ours::Map(id) => c.map_ids.contains(&id),
        Ours::Program(id) => c.prog_id == id,
    };
    if let Some(i) = d.components.iter().position(|c| c.linked && is_ours(c)) {
        let prog_id = d.components[i].prog_id;
        return Health::Guarded { mode, prog_id, pinned: true, shared: Some(Shared::of(&d, i)) };
    }
    // Not pinned where the protocol says, but the owner's own link runs it there.
    if let Some((prog_id, target)) = held
        && target == d.prog_id
    {
        let slot = d.components.iter().position(|c| c.prog_id == prog_id || c.prog_id == 0);
        let shared = slot.map(|i| Shared::of(&d, i));
        return Health::Guarded { mode, prog_id, pinned: false, shared };
    }
    Health::NotGuarded(Reason::NotInDispatcher {
        id: d.prog_id,
        others: d.components.iter().map(|c| c.name.clone()).collect(),
    })
}
