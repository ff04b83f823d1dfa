//! What the kernel charges for a program's maps: the `memlock:` line of each map fd's fdinfo,
//! which is the kernel's own estimate of the map's memory (per-CPU values included).

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result};
use aya::{maps::MapInfo, programs::ProgramInfo};

pub struct MapMem {
    pub name: String,
    pub max_entries: u32,
    pub bytes: u64,
}

/// Every map `prog` uses, in the order the kernel lists them.
pub fn of_program(prog: &ProgramInfo) -> Result<Vec<MapMem>> {
    let ids = prog.map_ids().context("listing the program's maps")?.unwrap_or_default();
    of_ids(ids)
}

/// The maps of portguard's program and of its copy-out program (the one loaded with it, found
/// by the CONFIG map they share): FEATURES, CAPTURE and their state are the second's alone.
pub fn of_portguard(prog: &ProgramInfo) -> Result<Vec<MapMem>> {
    let mut ids = prog.map_ids().context("listing the program's maps")?.unwrap_or_default();
    let shares = |p: &ProgramInfo| {
        p.name_as_str() == Some(portguard_common::COPY_PROGRAM_NAME)
            && p.map_ids().ok().flatten().is_some_and(|m| m.iter().any(|id| ids.contains(id)))
    };
    let copy = aya::programs::loaded_programs().filter_map(Result::ok).find(|p| shares(p));
    if let Some(copy) = copy {
        for id in copy.map_ids().ok().flatten().unwrap_or_default() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    of_ids(ids)
}

fn of_ids(ids: Vec<u32>) -> Result<Vec<MapMem>> {
    let mut out = Vec::new();
    for id in ids {
        let info = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
        let fd = info.fd().with_context(|| format!("opening map {id}"))?;
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let bytes = text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no memlock line in {path}"))?;
        out.push(MapMem {
            name: info.name_as_str().unwrap_or("?").to_string(),
            max_entries: info.max_entries(),
            bytes,
        });
    }
    Ok(out)
}
