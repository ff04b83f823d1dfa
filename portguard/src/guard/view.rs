//! A guard seen through its pins: read its counters, change its settings, ask the kernel whether
//! it guards. Never loads or attaches anything.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use portguard_common::{ALLOWLIST_CAPACITY, LAYOUT_VERSION, Meta, Totals, map_names};

use super::{Attached, Kind, health};
use crate::{
    counters::{Source, SourceAddr},
    error::GuardError,
    fingerprint::Label,
    maps::Maps,
    multiprog::Ours,
    pins::{self, LINK, Pins},
    settings::Settings,
    sys,
    wire::{self, Consumers},
};

pub struct View {
    pub(crate) maps: Maps,
    dir: PathBuf,
    iface: String,
    /// The settings as last read from (or written to) the maps.
    settings: Settings,
    /// META's generation when the settings were last read.
    generation: u32,
    capacity: u32,
}

/// A change of the settings as the maps saw it: what they were, what they are, and who made it.
pub struct Changed {
    pub old: Settings,
    pub new: Settings,
    /// The pid and `CHANGE_*` that META records for the change.
    pub by: u32,
    pub how: u8,
}

impl View {
    /// Opens the pinned state of `iface` in the calling thread's network namespace.
    pub fn open(pins: &Pins, iface: &str) -> Result<View> {
        let dir = pins.dir(iface)?;
        if !dir.join(map_names::META).exists() {
            if !pins.mounted() {
                return Err(GuardError::NoBpffs { iface: iface.into() }.into());
            }
            return Err(GuardError::NotGuarded { iface: iface.into(), dir }.into());
        }
        View::open_dir(&dir, iface)
    }

    /// Opens the pinned state in `dir` (any namespace's). A guard that is being attached at
    /// this very moment (its maps pinned, META not written yet) is waited for, briefly.
    pub fn open_dir(dir: &Path, iface: &str) -> Result<View> {
        for _ in 0..40 {
            pins::contents(dir)?;
            let maps = Maps::open(dir).map_err(|e| {
                if crate::error::is_permission_denied(&e) {
                    GuardError::NeedsRoot.into()
                } else {
                    e
                }
            })?;
            if maps.meta()?.layout != 0 {
                return View::from_maps(maps, dir, iface);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("{iface} is being attached by another portguard: try again")
    }

    /// A view over maps this process already holds (an owner's).
    pub(crate) fn from_maps(maps: Maps, dir: &Path, iface: &str) -> Result<View> {
        let meta = maps.meta()?;
        if meta.layout != LAYOUT_VERSION {
            return Err(GuardError::Layout {
                dir: dir.to_path_buf(),
                found: meta.layout,
                ours: LAYOUT_VERSION,
            }
            .into());
        }
        let settings = wire::read_settings(&maps, meta.capacity)?;
        Ok(View {
            maps,
            dir: dir.to_path_buf(),
            iface: iface.to_string(),
            settings,
            generation: meta.generation,
            capacity: meta.capacity,
        })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace's directory, whose lock serialises changes.
    fn ns_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// SOURCES capacity.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn meta(&self) -> Result<Meta> {
        self.maps.meta()
    }

    /// The XDP mode recorded at attach time (what the kernel says is in `health`).
    pub fn attached(&self) -> Option<Attached> {
        self.maps.meta().ok().and_then(|m| Attached::from_meta(m.xdp_mode))
    }

    /// Re-reads the settings from the maps (another process may have changed them).
    pub fn refresh_settings(&mut self) -> Result<&Settings> {
        self.settings = wire::read_settings(&self.maps, self.capacity)?;
        self.generation = self.maps.meta()?.generation;
        Ok(&self.settings)
    }

    /// Re-reads the settings if another process changed them since this one last looked, and
    /// says what changed and who changed it.
    pub fn follow_changes(&mut self) -> Result<Option<Changed>> {
        let meta = self.maps.meta()?;
        if meta.generation == self.generation {
            return Ok(None);
        }
        let old = self.settings.clone();
        self.refresh_settings()?;
        Ok(Some(Changed { old, new: self.settings.clone(), by: meta.changed_by, how: meta.change }))
    }

    /// Changes the settings in place (no reload, counters kept): under the namespace's lock,
    /// reads what the maps hold now, lets `change` edit it, and writes the result, so that
    /// concurrent changes by other processes are applied on top of each other, never lost.
    /// `how` (`CHANGE_*`) is recorded in META with this process's pid.
    pub fn update(
        &mut self,
        how: u8,
        change: impl FnOnce(&mut Settings) -> Result<()>,
    ) -> Result<Changed> {
        let _lock = pins::lock(self.ns_dir())?;
        let old = wire::read_settings(&self.maps, self.capacity)?;
        let mut new = old.clone();
        change(&mut new)?;
        check_capacity(&new)?;
        wire::write_settings(&mut self.maps, &old, &new, self.capacity)?;
        let mut meta = self.maps.meta()?;
        meta.generation = meta.generation.wrapping_add(1);
        meta.changed_by = std::process::id();
        meta.change = how;
        self.maps.set_meta(&meta)?;
        self.generation = meta.generation;
        self.settings = new.clone();
        Ok(Changed { old, new, by: meta.changed_by, how })
    }

    pub fn totals(&self) -> Result<Totals> {
        wire::read_totals(&self.maps)
    }

    pub fn sources(&self) -> Result<Vec<Source>> {
        wire::read_sources(&self.maps)
    }

    /// The fingerprints the owner published, by source.
    pub fn fingerprints(&self) -> Result<std::collections::HashMap<SourceAddr, Label>> {
        wire::read_fingerprints(&self.maps)
    }

    /// What the readers of the ring buffers ask of the program now.
    pub fn consumers(&self) -> Result<Consumers> {
        Ok(Consumers::of(&self.maps.config()?))
    }

    /// Changes what this process, as a reader of the ring buffers, asks of the program
    /// (CFG_FEATURES, CFG_CAPTURE_* and their numbers), under the namespace's lock so that no
    /// change of the settings writes CONFIG in between. Not a change of the settings: nobody
    /// is told, and META's generation stays.
    pub fn set_consumers(&mut self, change: impl FnOnce(&mut Consumers)) -> Result<()> {
        let ns_dir = self.ns_dir().to_path_buf();
        change_consumers(&mut self.maps, &ns_dir, change)
    }

    /// A second handle on the guard's maps, for a reader that outlives this view's borrow (a
    /// capture).
    pub fn maps_again(&self) -> Result<Maps> {
        self.maps.duplicate()
    }

    /// The pinned link's (program id, ifindex), when it is pinned.
    pub fn pinned_link(&self) -> Option<(u32, u32)> {
        self.read_pinned_link().ok().flatten()
    }

    /// The pinned link's (program id, ifindex); Ok(None) when there is no pin, Err when the
    /// kernel could not be asked (out of descriptors, say): not the same as absent.
    pub(crate) fn read_pinned_link(&self) -> std::io::Result<Option<(u32, u32)>> {
        match sys::obj_get(&self.dir.join(LINK)) {
            Ok(fd) => sys::xdp_link_info(fd.as_fd()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What the kernel says about this guard now, from its pins. Runs in the guard's network
    /// namespace.
    pub fn health(&self) -> health::Health {
        let meta = match self.maps.meta() {
            Ok(m) => m,
            Err(e) => return health::Health::NotGuarded(health::Reason::Unknown(format!("{e:#}"))),
        };
        match Kind::from_meta(meta.attach) {
            Kind::Exclusive => {
                let link = self.pinned_link();
                health::check(&meta, &self.iface, link, link.is_some())
            }
            Kind::Multiprog => match self.maps.config_id() {
                Ok(id) => health::check_component(&meta, &self.iface, Ours::Map(id), None),
                Err(e) => health::Health::NotGuarded(health::Reason::Unknown(format!("{e:#}"))),
            },
        }
    }

    /// How the guard holds its interface's hook, as recorded when it was attached.
    pub fn kind(&self) -> Kind {
        self.maps.meta().map_or(Kind::Exclusive, |m| Kind::from_meta(m.attach))
    }

    /// Whether this guard's pinned state is still there (`portguard detach` removes it).
    pub fn still_pinned(&self) -> bool {
        self.dir.join(map_names::META).exists()
    }

    /// Whether a live portguard owns this guard.
    pub fn owned(&self) -> bool {
        pins::owned(&self.dir)
    }

    /// Whether the kernel runs a copy-out program for this guard (one that uses its CONFIG):
    /// there is none where the kernel refused it (before 5.18), and none once the process
    /// that loaded it is gone.
    pub fn copies(&self) -> Result<bool> {
        let config = self.maps.config_id()?;
        for p in aya::programs::loaded_programs() {
            let Ok(p) = p else { continue };
            if p.name_as_str() == Some(portguard_common::COPY_PROGRAM_NAME)
                && p.map_ids().ok().flatten().is_some_and(|ids| ids.contains(&config))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Changes what a reader asks of the program in CONFIG (see `View::set_consumers`), under the
/// lock of the namespace directory `ns_dir`.
pub fn change_consumers(
    maps: &mut Maps,
    ns_dir: &Path,
    change: impl FnOnce(&mut Consumers),
) -> Result<()> {
    let _lock = pins::lock(ns_dir)?;
    let mut c = maps.config()?;
    let mut k = Consumers::of(&c);
    change(&mut k);
    k.apply(&mut c);
    maps.set_config(c)
}

/// The allowlist tries hold ALLOWLIST_CAPACITY prefixes per family: a change that would need
/// more is refused before anything is written (all or nothing).
pub fn check_capacity(s: &Settings) -> Result<()> {
    let v4 = s.allow.iter().filter(|c| c.addr.is_ipv4()).count();
    let v6 = s.allow.len() - v4;
    for (family, n) in [("IPv4", v4), ("IPv6", v6)] {
        if n > ALLOWLIST_CAPACITY as usize {
            bail!(
                "the allowlist holds at most {ALLOWLIST_CAPACITY} {family} prefixes; this change \
                 would make {n}: nothing was changed"
            );
        }
    }
    Ok(())
}
