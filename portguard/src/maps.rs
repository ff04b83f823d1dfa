//! The program's maps as userspace holds them: taken from a freshly loaded object, or opened
//! from their pins by any other portguard process. Everything that reads or writes a map goes
//! through here.

use std::{collections::BTreeSet, net::IpAddr, os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use portguard_common::{
    ACTION_DROP, AllowV4, AllowV6, Config, DIR_DST, DIR_SRC, EVICT_ABOVE_PERCENT,
    EVICT_DOWN_TO_PERCENT, LAYOUT_VERSION, Meta, PORT_GUARDED, PORT_TABLE_ENTRIES, PROTO_TCP,
    PROTO_UDP, SourceKey, SourceSlot, SourceStats, Totals, map_names,
};

use crate::{
    settings::{Cidr, Direction, Mode, Protocol, Settings},
    sys,
};

/// One source's merged counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub addr: IpAddr,
    pub stats: SourceStats,
}

pub struct Maps {
    meta: Array<MapData, Meta>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u8>,
    allow_v4: LpmTrie<MapData, AllowV4, u8>,
    allow_v6: LpmTrie<MapData, AllowV6, u8>,
    totals: PerCpuArray<MapData, Totals>,
    sources: PerCpuHashMap<MapData, SourceKey, SourceSlot>,
    /// Every map, for pinning.
    all: Vec<(&'static str, MapData)>,
}

fn typed<T>(name: &str, m: Map) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// Takes the maps out of a loaded object (the program keeps its own references).
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        Maps::build(|name| {
            ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the object"))
        })
    }

    /// Opens the maps pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Maps> {
        let maps = Maps::build(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
        })?;
        let meta = maps.meta()?;
        if meta.layout != LAYOUT_VERSION {
            bail!(
                "the maps pinned in {} have layout version {}, this portguard uses {}: run \
                 `portguard detach` to start afresh (counters are lost)",
                dir.display(),
                meta.layout,
                LAYOUT_VERSION
            );
        }
        Ok(maps)
    }

    fn build(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Maps> {
        let mut all = Vec::new();
        // A second handle on every map, for pinning and fd access.
        let mut keep = |name: &'static str, m: &Map| -> Result<()> {
            let data = match m {
                Map::Array(d)
                | Map::PerCpuArray(d)
                | Map::LpmTrie(d)
                | Map::PerCpuLruHashMap(d)
                | Map::PerCpuHashMap(d)
                | Map::LruHashMap(d) => d,
                _ => bail!("map {name} has an unexpected type"),
            };
            let fd = data.fd().as_fd().try_clone_to_owned()?;
            all.push((name, MapData::from_fd(fd)?));
            Ok(())
        };
        let mut take = |name: &'static str| -> Result<Map> {
            let m = get(name)?;
            keep(name, &m)?;
            Ok(m)
        };
        let meta = typed(map_names::META, take(map_names::META)?)?;
        let config = typed(map_names::CONFIG, take(map_names::CONFIG)?)?;
        let ports = typed(map_names::PORTS, take(map_names::PORTS)?)?;
        let allow_v4 = typed(map_names::ALLOW_V4, take(map_names::ALLOW_V4)?)?;
        let allow_v6 = typed(map_names::ALLOW_V6, take(map_names::ALLOW_V6)?)?;
        let totals = typed(map_names::TOTALS, take(map_names::TOTALS)?)?;
        let sources = typed(map_names::SOURCES, take(map_names::SOURCES)?)?;
        take(map_names::ADMISSION)?;
        take(map_names::FRAGMENTS)?;
        Ok(Maps { meta, config, ports, allow_v4, allow_v6, totals, sources, all })
    }

    /// Pins every map into `dir` under its own name.
    pub fn pin(&self, dir: &Path) -> Result<()> {
        for (name, m) in &self.all {
            let path = dir.join(name);
            if path.exists() {
                continue;
            }
            m.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }

    pub fn meta(&self) -> Result<Meta> {
        self.meta.get(&0, 0).context("reading META")
    }

    pub fn set_meta(&mut self, meta: &Meta) -> Result<()> {
        self.meta.set(0, *meta, 0).context("writing META")
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("reading CONFIG")
    }

    /// The settings the maps hold now.
    pub fn settings(&self) -> Result<Settings> {
        let c = self.config()?;
        let ports = self.guarded_ports()?;
        let mut allow = Vec::new();
        for k in self.allow_v4.keys() {
            let k = k.context("reading ALLOW_V4")?;
            allow.push(Cidr { addr: IpAddr::from(k.data()), len: k.prefix_len() as u8 });
        }
        for k in self.allow_v6.keys() {
            let k = k.context("reading ALLOW_V6")?;
            allow.push(Cidr { addr: IpAddr::from(k.data()), len: k.prefix_len() as u8 });
        }
        allow.sort_by_key(|c| (c.addr, c.len));
        let mut protocols = Vec::new();
        if c.protocols & PROTO_TCP != 0 {
            protocols.push(Protocol::Tcp);
        }
        if c.protocols & PROTO_UDP != 0 {
            protocols.push(Protocol::Udp);
        }
        Ok(Settings {
            mode: if c.action == ACTION_DROP { Mode::Drop } else { Mode::Count },
            ports,
            protocols,
            direction: match (c.direction & DIR_DST != 0, c.direction & DIR_SRC != 0) {
                (true, true) => Direction::Both,
                (false, true) => Direction::Src,
                _ => Direction::Dst,
            },
            allow,
            // A budget other than the one derived from the table is an override to keep.
            admit_per_slice: {
                let cpus = aya::util::online_cpus().map_or(1, |c| c.len()) as u32;
                let derived = portguard_common::admit_per_slice(self.meta()?.capacity, cpus);
                (self.meta()?.capacity != 0 && c.admit_per_slice != derived)
                    .then_some(c.admit_per_slice)
            },
        })
    }

    /// The guarded ports: one batched read of the 65,536-entry table (a few syscalls rather than
    /// 65,536), entry by entry where the kernel has no batch reads for arrays.
    fn guarded_ports(&self) -> Result<Vec<u16>> {
        let raw = &self.all.iter().find(|(n, _)| *n == map_names::PORTS).context("PORTS")?.1;
        if let Ok((keys, values)) =
            sys::lookup_batch(raw.fd().as_fd(), 4, 1, PORT_TABLE_ENTRIES as usize)
            && values.len() == PORT_TABLE_ENTRIES as usize
        {
            let mut ports = Vec::new();
            for (k, v) in keys.chunks_exact(4).zip(values.iter()) {
                if *v == PORT_GUARDED {
                    let idx = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]);
                    ports.push(u16::try_from(idx).context("PORTS has an index past 65535")?);
                }
            }
            return Ok(ports);
        }
        let mut ports = Vec::new();
        for (port, v) in self.ports.iter().enumerate() {
            if v.context("reading PORTS")? == PORT_GUARDED {
                ports.push(port as u16);
            }
        }
        Ok(ports)
    }

    /// Moves the maps from `old` to `new` settings in place: no reload, counters kept. Ports
    /// and allowlist entries are added before old ones are removed and before CONFIG changes.
    pub fn apply(&mut self, old: &Settings, new: &Settings, capacity: u32) -> Result<()> {
        let want: BTreeSet<u16> = new.ports.iter().copied().collect();
        let had: BTreeSet<u16> = old.ports.iter().copied().collect();
        for p in want.difference(&had) {
            self.ports.set(*p as u32, PORT_GUARDED, 0).context("writing PORTS")?;
        }
        for c in new.allow.iter().filter(|c| !old.allow.contains(c)) {
            let r = match c.addr {
                IpAddr::V4(a) => self.allow_v4.insert(&Key::new(c.len as u32, a.octets()), 1, 0),
                IpAddr::V6(a) => self.allow_v6.insert(&Key::new(c.len as u32, a.octets()), 1, 0),
            };
            r.with_context(|| format!("adding {c} to the allowlist"))?;
        }
        let cpus = aya::util::online_cpus().map_err(|(_, e)| e).context("counting CPUs")?.len();
        self.config.set(0, new.config(capacity, cpus as u32), 0).context("writing CONFIG")?;
        for p in had.difference(&want) {
            self.ports.set(*p as u32, 0, 0).context("writing PORTS")?;
        }
        for c in old.allow.iter().filter(|c| !new.allow.contains(c)) {
            // Already gone is fine: the goal is its absence.
            let _ = match c.addr {
                IpAddr::V4(a) => self.allow_v4.remove(&Key::new(c.len as u32, a.octets())),
                IpAddr::V6(a) => self.allow_v6.remove(&Key::new(c.len as u32, a.octets())),
            };
        }
        Ok(())
    }

    /// TOTALS summed over CPUs.
    pub fn totals(&self) -> Result<Totals> {
        let mut sum = Totals::default();
        for cpu in self.totals.get(&0, 0).context("reading TOTALS")?.iter() {
            sum.add(cpu);
        }
        Ok(sum)
    }

    /// Every tracked source, its CPUs merged. One batched read of the whole table where the
    /// kernel supports it (a full 65,536-entry table in tens of milliseconds), else entry by
    /// entry.
    pub fn sources(&self) -> Result<Vec<Source>> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let vsize = size_of::<SourceSlot>().next_multiple_of(8);
        let ksize = size_of::<SourceKey>();
        let raw = &self.all.iter().find(|(n, _)| *n == map_names::SOURCES).context("SOURCES")?.1;
        let fd = raw.fd().as_fd();
        let max = raw.info().map(|i| i.max_entries() as usize).unwrap_or(65_536);
        let mut out = Vec::new();
        match sys::lookup_batch(fd, ksize, vsize * cpus, max) {
            Ok((keys, values)) => {
                for (k, v) in keys.chunks_exact(ksize).zip(values.chunks_exact(vsize * cpus)) {
                    let mut key = SourceKey::default();
                    key.addr.copy_from_slice(k);
                    let slots: Vec<SourceSlot> = v
                        .chunks_exact(vsize)
                        // SAFETY: SourceSlot is Pod; the chunk holds at least its size.
                        .map(|c| unsafe {
                            std::ptr::read_unaligned(c.as_ptr() as *const SourceSlot)
                        })
                        .collect();
                    let stats = SourceStats::merge(&slots, None);
                    if stats.packets > 0 {
                        out.push(Source { addr: address(&key), stats });
                    }
                }
            }
            Err(_) => {
                for entry in self.sources.iter() {
                    // An entry evicted between listing its key and reading it is simply gone.
                    let Ok((key, per_cpu)) = entry else { continue };
                    let slots: Vec<SourceSlot> = per_cpu.iter().copied().collect();
                    let stats = SourceStats::merge(&slots, None);
                    if stats.packets > 0 {
                        out.push(Source { addr: address(&key), stats });
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Maps {
    /// Makes room in a table fuller than EVICT_ABOVE_PERCENT of `capacity`: removes the sources
    /// seen least recently until it is EVICT_DOWN_TO_PERCENT full. `sources` is a fresh read of
    /// the table. Returns how many were removed.
    pub fn make_room(&mut self, sources: &[Source], capacity: u32) -> Result<usize> {
        let cap = capacity as usize;
        if sources.len() * 100 <= cap * EVICT_ABOVE_PERCENT as usize {
            return Ok(0);
        }
        let keep = cap * EVICT_DOWN_TO_PERCENT as usize / 100;
        let mut by_age: Vec<&Source> = sources.iter().collect();
        by_age.sort_by_key(|s| s.stats.last_seen_ns);
        let excess = sources.len().saturating_sub(keep);
        let mut removed = 0;
        for s in &by_age[..excess] {
            let key = match s.addr {
                IpAddr::V4(a) => SourceKey::v4(a.octets()),
                IpAddr::V6(a) => SourceKey { addr: a.octets() },
            };
            // Already gone (another portguard made room too) is fine.
            if self.sources.remove(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A SOURCES key as an address.
pub fn address(key: &SourceKey) -> IpAddr {
    match key.as_v4() {
        Some(a) => IpAddr::from(a),
        None => IpAddr::from(key.addr),
    }
}

const _: () = assert!(PORT_TABLE_ENTRIES == 65_536);
