//! A guard seen through its pins: read its counters, change its settings. Never loads or
//! attaches anything.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow};
use portguard_common::{LAYOUT_VERSION, Meta, Totals, map_names};

use super::Attached;
use crate::{
    counters::Source, error::GuardError, maps::Maps, pins::LINK, pins::Pins, settings::Settings,
    sys, wire,
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

impl View {
    /// Opens the pinned state of a guarded interface.
    pub fn open(pins: &Pins, iface: &str) -> Result<View> {
        let dir = pins.dir(iface);
        if !dir.join(map_names::META).exists() {
            if !pins.mounted() {
                return Err(GuardError::NoBpffs { iface: iface.into() }.into());
            }
            return Err(GuardError::NotGuarded { iface: iface.into(), dir }.into());
        }
        let maps = Maps::open(&dir).map_err(|e| {
            if crate::error::is_permission_denied(&e) { GuardError::NeedsRoot.into() } else { e }
        })?;
        View::from_maps(maps, &dir, iface)
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

    /// The XDP mode recorded at attach time.
    pub fn attached(&self) -> Option<Attached> {
        self.maps.meta().ok().and_then(|m| Attached::from_meta(m.xdp_mode))
    }

    /// Re-reads the settings from the maps (another process may have changed them).
    pub fn refresh_settings(&mut self) -> Result<&Settings> {
        self.settings = wire::read_settings(&self.maps, self.capacity)?;
        self.generation = self.maps.meta()?.generation;
        Ok(&self.settings)
    }

    /// Re-reads the settings if another process changed them since this one last looked.
    pub fn follow_changes(&mut self) -> Result<bool> {
        if self.maps.meta()?.generation == self.generation {
            return Ok(false);
        }
        self.refresh_settings()?;
        Ok(true)
    }

    /// Changes the running configuration in place: no reload, counters kept. Other portguard
    /// processes notice through META's generation.
    pub fn apply(&mut self, new: &Settings) -> Result<()> {
        let old = wire::read_settings(&self.maps, self.capacity)?;
        wire::write_settings(&mut self.maps, &old, new, self.capacity)?;
        self.settings = new.clone();
        let mut meta = self.maps.meta()?;
        meta.generation = meta.generation.wrapping_add(1);
        self.maps.set_meta(&meta)?;
        self.generation = meta.generation;
        Ok(())
    }

    pub fn totals(&self) -> Result<Totals> {
        wire::read_totals(&self.maps)
    }

    pub fn sources(&self) -> Result<Vec<Source>> {
        wire::read_sources(&self.maps)
    }

    /// The id of the program attached through the pinned link.
    pub fn program_id(&self) -> Result<u32> {
        let fd = sys::obj_get(&self.dir.join(LINK))
            .map_err(|e| anyhow!("{}: no pinned link: {e}", self.iface))?;
        Ok(sys::xdp_link_info(fd.as_fd())?.0)
    }

    /// Whether this guard's pinned state is still there (`portguard detach` removes it).
    pub fn still_pinned(&self) -> bool {
        self.dir.join(map_names::META).exists()
    }

    /// Whether the pinned XDP link is still attached to the interface it was made for. It is
    /// not once the interface is deleted (or deleted and created again: a new ifindex).
    pub fn link_alive(&self) -> bool {
        let Ok(meta) = self.maps.meta() else { return false };
        let Ok(fd) = sys::obj_get(&self.dir.join(LINK)) else { return false };
        matches!(sys::xdp_link_info(fd.as_fd()), Ok((_, i)) if i != 0 && i == meta.ifindex)
    }
}
