//! portguard as one component of libxdp's dispatcher: what the guard (`guard::Owner`,
//! `guard::health`, `detach`) asks of the protocol.
//!
//! A guard shared this way has its usual directory (META and the maps, no `link`): the
//! interface runs libxdp's dispatcher (attached through netlink), and portguard's program is
//! pinned by the protocol in the dispatcher's directory, beside the other components. Whether
//! it guards is read from the kernel: the dispatcher attached to the interface has a component
//! whose pinned link replaces a function of that very dispatcher and whose program uses the
//! guard's CONFIG map.

use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::Extension;
use portguard_common::PROGRAM_NAME;

use super::{DEFAULT_CHAIN_CALL_ACTIONS, Dispatcher, Hook, Joining, Mode, Ours};
use crate::guard::{AttachMode, Attached};

/// Where portguard's component now runs.
pub struct Joined {
    /// The dispatcher's mode (an existing dispatcher keeps its own).
    pub mode: Attached,
    pub dispatcher: u32,
    pub slot: usize,
    /// This process's descriptor of the component's link.
    pub link: OwnedFd,
    /// portguard components (an earlier program on the same maps) replaced in the same swap.
    pub replaced: Vec<u32>,
}

pub fn attached(m: Mode) -> Attached {
    match m {
        Mode::Native => Attached::Native,
        Mode::Generic => Attached::Generic,
    }
}

/// Joins the dispatcher on `ifindex` with `ext` (loaded by `Program::load_extension`), or
/// creates one when the hook is free; a component that is `ours` already (the program of an
/// earlier portguard on the same maps) is replaced in the same atomic swap. `mode` applies
/// when there is no dispatcher yet.
pub fn join(
    ext: &mut Extension,
    iface: &str,
    ifindex: u32,
    ours: Ours,
    priority: u32,
    mode: AttachMode,
) -> Result<Joined> {
    let joining = Joining {
        ext,
        name: PROGRAM_NAME,
        priority,
        chain_call_actions: DEFAULT_CHAIN_CALL_ACTIONS,
    };
    let wanted = match mode {
        AttachMode::Auto => None,
        AttachMode::Native => Some(Mode::Native),
        AttachMode::Generic => Some(Mode::Generic),
    };
    let changed = super::join(ifindex, ours, joining, wanted).with_context(|| iface.to_string())?;
    let d = changed.dispatcher.ok_or_else(|| anyhow!("{iface}: no dispatcher after joining"))?;
    let (slot, link) =
        changed.joined.ok_or_else(|| anyhow!("{iface}: portguard is not in the new dispatcher"))?;
    if let Some(w) = wanted
        && w != d.mode
    {
        log::warn!(
            "{iface}: joined the dispatcher already attached in {} XDP mode (--xdp-mode applies \
             only to a new one)",
            attached(d.mode).as_str()
        );
    }
    Ok(Joined {
        mode: attached(d.mode),
        dispatcher: d.prog_id,
        slot,
        link,
        replaced: changed.replaced,
    })
}

/// Removes portguard's component (`ours`) from `ifindex`'s dispatcher, the other programs
/// staying; the last one out takes the dispatcher with it. A dispatcher directory of that
/// interface that still holds it but is attached nowhere (its interface went away) is removed.
pub fn leave(ifindex: u32, ours: Ours) -> Result<()> {
    if ifindex == 0 {
        return Ok(());
    }
    // A device that is gone has nothing attached; its dispatcher's directory may be left.
    if crate::netlink::name_of(ifindex).is_some() {
        super::leave(ifindex, ours)?;
    }
    for dir in super::pinned_in(ours) {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut parts = name.trim_start_matches("dispatch-").split('-').map(str::parse::<u32>);
        if let (Some(Ok(i)), Some(Ok(id))) = (parts.next(), parts.next())
            && i == ifindex
        {
            super::clean_stale(i, id)?;
        }
    }
    Ok(())
}

/// Why `--attach auto` cannot share an interface that runs libxdp's dispatcher `d`, when this
/// kernel refuses extensions (`why`): one line, naming what runs there.
pub fn cannot_share(iface: &str, d: &Dispatcher, why: &str) -> anyhow::Error {
    let names: Vec<String> =
        d.components.iter().map(|c| format!("{} (priority {})", c.name, c.priority)).collect();
    anyhow!(
        "{iface} runs libxdp's multi-program dispatcher (program {}, with {}): portguard would \
         join it, but {why}; it cannot share the interface, and it does not replace the \
         dispatcher",
        d.prog_id,
        if names.is_empty() { "no programs".into() } else { names.join(", ") }
    )
}

/// What holds `ifindex`'s hook, for `--attach auto` to decide: Some(dispatcher) to join, None
/// to take it alone (free), or an error naming what is there when it can be neither.
pub fn auto(iface: &str, ifindex: u32) -> Result<Option<Dispatcher>> {
    match super::hook(ifindex)? {
        Hook::Free => Ok(None),
        Hook::Dispatcher(d) => Ok(Some(d)),
        Hook::OtherVersion { prog_id, version } => bail!(
            "{iface} runs a libxdp dispatcher of protocol version {version} (program {prog_id}), \
             which this portguard does not speak: portguard does not replace another program"
        ),
        Hook::Exclusive { prog_id, name } => bail!(
            "{iface} already has XDP program {prog_id} ({name}) attached on its own, not through \
             libxdp's dispatcher: portguard does not replace another program"
        ),
    }
}
