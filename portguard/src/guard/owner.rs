//! The process that attached the program to an interface and keeps it there.

use std::{
    os::fd::AsFd as _,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use portguard_common::{LAYOUT_VERSION, map_names};

use super::{AttachMode, Attached, View, attach::attach_to, ifindex, loaded::Program};
use crate::{
    counters::Source,
    pins::{self, LINK, Lock, Pins},
    settings::Settings,
    sys, table, wire,
};

/// What `acquire` found.
pub enum Acquired {
    /// Nothing was there: attached afresh.
    Attached(Owner),
    /// A guard was left in place: its program was replaced in place, its counters kept.
    Adopted(Owner),
    /// Another live portguard (this pid) owns it: watching only.
    Watching(View, u32),
}

pub struct Owner {
    program: Program,
    view: View,
    /// The XDP link; pinned as `link` in the guard's directory.
    _link: FdLink,
    /// Held for as long as this process owns the guard (the kernel drops it when the process
    /// dies, however it dies).
    _lock: Lock,
    attached: Attached,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Owner {
    /// Guards `iface` with pinned state: attaches afresh, adopts a guard left in place
    /// (replacing its program atomically, keeping its counters and, when `settings` is None,
    /// its settings), or watches one that another live portguard owns.
    pub fn acquire(
        pins: &Pins,
        iface: &str,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
    ) -> Result<Acquired> {
        let idx = ifindex(iface)?;
        pins.prepare(true)?;
        let dir = pins.dir(iface);
        pins::create_private_dir(&dir)?;
        let Some(lock) = pins::try_lock(&dir)? else {
            let v = View::open(pins, iface)?;
            let owner = v.meta().map(|m| m.owner_pid).unwrap_or(0);
            return Ok(Acquired::Watching(v, owner));
        };
        let link_path = dir.join(LINK);
        let live = sys::obj_get(&link_path)
            .and_then(|fd| sys::xdp_link_info(fd.as_fd()))
            .is_ok_and(|(_, i)| i == idx);
        let live_link =
            if live { PinnedLink::from_pin(&link_path).ok().map(FdLink::from) } else { None };
        if live_link.is_none() && link_path.exists() {
            // The interface went away (or was replaced) since: the link is defunct. The maps,
            // and their counters, are reused below.
            std::fs::remove_file(&link_path).ok();
        }
        let had_maps = dir.join(map_names::META).exists();
        if had_maps {
            // Refuse maps of another layout before anything is loaded against them.
            View::open(pins, iface)?;
        }
        match Owner::attach_pinned(&dir, iface, idx, settings, capacity, mode, live_link, lock) {
            Ok((o, true)) => Ok(Acquired::Adopted(o)),
            Ok((o, false)) => Ok(Acquired::Attached(o)),
            Err(e) => {
                if !had_maps {
                    // A fresh attempt that failed leaves nothing behind.
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attach_pinned(
        dir: &Path,
        iface: &str,
        idx: u32,
        settings: Option<&Settings>,
        capacity: u32,
        mode: AttachMode,
        live_link: Option<FdLink>,
        lock: Lock,
    ) -> Result<(Owner, bool)> {
        let (mut program, mut maps) = Program::load(capacity, Some(dir))?;
        let mut meta = maps.meta()?;
        let adopting = meta.layout == LAYOUT_VERSION;
        // The table may be an existing one of another size: the budget follows what it is.
        let capacity = if adopting { meta.capacity } else { capacity };
        let old = if adopting { wire::read_settings(&maps, capacity)? } else { Settings::empty() };
        let new = settings.cloned().unwrap_or_else(|| old.clone());
        wire::write_settings(&mut maps, &old, &new, capacity)?;
        let prog = program.xdp()?;
        let (link, attached) = match live_link {
            Some(fd) => {
                // Atomic replacement (BPF_LINK_UPDATE): the old program runs until the new one
                // does.
                let xdp = XdpLink::try_from(fd).context("the pinned link is not an XDP link")?;
                let id =
                    prog.attach_to_link(xdp).context("replacing the program on the pinned link")?;
                let link = FdLink::try_from(prog.take_link(id)?).context("taking the link")?;
                let was = Attached::from_meta(meta.xdp_mode).unwrap_or(Attached::Native);
                if matches!(
                    (mode, was),
                    (AttachMode::Native, Attached::Generic)
                        | (AttachMode::Generic, Attached::Native)
                ) {
                    log::warn!(
                        "{iface}: kept its {} XDP attachment (changing mode needs `portguard detach` first)",
                        was.as_str()
                    );
                }
                (link, was)
            }
            None => {
                let (id, attached) = attach_to(prog, iface, idx, mode)?;
                let link = FdLink::try_from(prog.take_link(id)?)
                    .map_err(|_| anyhow!("{iface}: the kernel attached XDP without a bpf_link; pinning needs Linux 5.9 or later"))?;
                let pinned = link.pin(dir.join(LINK)).context("pinning the XDP link")?;
                (FdLink::from(pinned), attached)
            }
        };
        let fresh_meta = meta.layout != LAYOUT_VERSION;
        meta.layout = LAYOUT_VERSION;
        meta.ifindex = idx;
        meta.capacity = capacity;
        meta.xdp_mode = attached.meta();
        meta.owner_pid = std::process::id();
        meta.generation = meta.generation.wrapping_add(1);
        if fresh_meta || meta.since_unix == 0 {
            meta.since_unix = now_unix();
        }
        maps.set_meta(&meta)?;
        let view = View::from_maps(maps, dir, iface)?;
        Ok((Owner { program, view, _link: link, _lock: lock, attached }, adopting))
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn view_mut(&mut self) -> &mut View {
        &mut self.view
    }

    pub fn attached(&self) -> Attached {
        self.attached
    }

    /// Ends ownership. `keep`: the program stays attached with its pins, for the next portguard
    /// to adopt. Otherwise it is detached and its pins removed.
    pub fn release(mut self, keep: bool) -> Result<()> {
        if keep {
            let mut meta = self.view.maps.meta()?;
            meta.owner_pid = 0;
            return self.view.maps.set_meta(&meta);
        }
        let dir = self.view.dir().to_path_buf();
        if let Ok(fd) = sys::obj_get(&dir.join(LINK))
            && let Err(e) = sys::link_detach(fd.as_fd())
            && self.view.link_alive()
        {
            // A defunct link (its interface gone) has nothing to detach; a live one must go.
            return Err(e).context("detaching the XDP link");
        }
        pins::remove_guard(&dir)
    }

    /// Gives up ownership without detaching, keeping a view of the pinned state (when the
    /// interface went away and is to be acquired again).
    pub fn into_view(self) -> View {
        self.view
    }

    /// Makes room in the source table when it is nearly full; `sources` is a fresh read of
    /// it. Returns how many sources were forgotten.
    pub fn make_room(&mut self, sources: &[Source]) -> usize {
        let capacity = self.view.capacity();
        table::forget(&mut self.view.maps, sources, capacity)
    }

    /// The attached program itself, e.g. to fill its table through BPF_PROG_TEST_RUN in tests.
    pub fn program(&mut self) -> Result<&mut aya::programs::Xdp> {
        self.program.xdp()
    }

    /// Passes what the program logged since the last call to the `log` crate.
    pub fn flush_log(&mut self) {
        self.program.flush_log();
    }
}

/// Detaches the guard pinned for `iface`, whoever owns it, and removes its pins.
pub fn detach_pinned(pins: &Pins, iface: &str) -> Result<()> {
    let dir = pins.dir(iface);
    if !dir.join(map_names::META).exists() {
        return Err(crate::error::GuardError::NotGuarded { iface: iface.into(), dir }.into());
    }
    if let Ok(fd) = sys::obj_get(&dir.join(LINK)) {
        // A defunct link (its interface gone) has nothing left to detach.
        let _ = sys::link_detach(fd.as_fd());
    }
    pins::remove_guard(&dir)
}
