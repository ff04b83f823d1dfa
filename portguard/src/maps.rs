//! The program's maps as userspace holds them: taken from a freshly loaded object, or opened
//! from their pins by any other portguard process. This module only moves bytes in and out;
//! what the bytes mean is `wire.rs`'s business.

use std::{os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
};
use portguard_common::{
    Admission, AllowV4, AllowV6, CapturePace, Config, Fingerprint, FragmentKey, FragmentVerdict,
    Meta, PORT_GUARDED, PORT_TABLE_ENTRIES, SketchBlock, SourceKey, SourceSlot, Totals, map_names,
};

use crate::sys;

pub struct Maps {
    meta: Array<MapData, Meta>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u8>,
    allow_v4: LpmTrie<MapData, AllowV4, u8>,
    allow_v6: LpmTrie<MapData, AllowV6, u8>,
    totals: PerCpuArray<MapData, Totals>,
    sources: HashMap<MapData, SourceKey, SourceSlot>,
    /// Only moved around by the program, but held: a map taken out of the object and dropped
    /// would close the loader's descriptor, which loading another program against the same
    /// maps (an extension) still needs.
    _admission: PerCpuArray<MapData, Admission>,
    _fragments: HashMap<MapData, FragmentKey, FragmentVerdict>,
    _sketch: Array<MapData, SketchBlock>,
    _capture_pace: PerCpuArray<MapData, CapturePace>,
    fingerprints: HashMap<MapData, SourceKey, Fingerprint>,
    /// A second handle on every map, for pinning and for the batched reads aya does not wrap.
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
        Maps::build(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
        })
    }

    fn build(mut get: impl FnMut(&'static str) -> Result<Map>) -> Result<Maps> {
        let mut all = Vec::new();
        let mut take = |name: &'static str| -> Result<Map> {
            let m = get(name)?;
            let data = match &m {
                Map::Array(d)
                | Map::PerCpuArray(d)
                | Map::LpmTrie(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::RingBuf(d) => d,
                _ => bail!("map {name} has an unexpected type"),
            };
            let fd = data.fd().as_fd().try_clone_to_owned()?;
            all.push((name, MapData::from_fd(fd)?));
            Ok(m)
        };
        let meta = typed(map_names::META, take(map_names::META)?)?;
        let config = typed(map_names::CONFIG, take(map_names::CONFIG)?)?;
        let ports = typed(map_names::PORTS, take(map_names::PORTS)?)?;
        let allow_v4 = typed(map_names::ALLOW_V4, take(map_names::ALLOW_V4)?)?;
        let allow_v6 = typed(map_names::ALLOW_V6, take(map_names::ALLOW_V6)?)?;
        let totals = typed(map_names::TOTALS, take(map_names::TOTALS)?)?;
        let sources = typed(map_names::SOURCES, take(map_names::SOURCES)?)?;
        // Typed too, though only moved around: a conversion checks the map's type and its key
        // and value sizes, so pins of another layout are refused here, before a program is
        // loaded against them.
        let _admission = typed(map_names::ADMISSION, take(map_names::ADMISSION)?)?;
        let _fragments = typed(map_names::FRAGMENTS, take(map_names::FRAGMENTS)?)?;
        let _sketch = typed(map_names::SKETCH, take(map_names::SKETCH)?)?;
        let _capture_pace = typed(map_names::CAPTURE_PACE, take(map_names::CAPTURE_PACE)?)?;
        let fingerprints = typed(map_names::FINGERPRINTS, take(map_names::FINGERPRINTS)?)?;
        for ring in [map_names::FEATURES, map_names::CAPTURE] {
            // Read through `ring` when a reader wants them; only their type is checked here.
            let _: RingBuf<MapData> = typed(ring, take(ring)?)?;
        }
        Ok(Maps {
            meta,
            config,
            ports,
            allow_v4,
            allow_v6,
            totals,
            sources,
            _admission,
            _fragments,
            _sketch,
            _capture_pace,
            fingerprints,
            all,
        })
    }

    /// A reader of the ring buffer `name` (FEATURES or CAPTURE). A ring buffer has one reader
    /// position, shared by whoever maps it: callers make sure only one reads at a time (the
    /// owner reads FEATURES; a capture holds the capture lock).
    pub fn ring(&self, name: &str) -> Result<RingBuf<MapData>> {
        let fd = self.raw(name)?.fd().as_fd().try_clone_to_owned()?;
        let data = MapData::from_fd(fd)?;
        RingBuf::try_from(Map::RingBuf(data)).with_context(|| format!("mapping ring buffer {name}"))
    }

    /// Every FINGERPRINTS entry: one batched read where the kernel supports it.
    pub fn fingerprints(&self) -> Result<Vec<(SourceKey, Fingerprint)>> {
        let raw = self.raw(map_names::FINGERPRINTS)?;
        let (ks, vs) = (size_of::<SourceKey>(), size_of::<Fingerprint>());
        let max = raw.info().map(|i| i.max_entries() as usize).unwrap_or(1);
        if let Ok((keys, values)) = sys::lookup_batch(raw.fd().as_fd(), ks, vs, max) {
            return Ok(keys
                .chunks_exact(ks)
                .zip(values.chunks_exact(vs))
                // SAFETY: both are Pod and each chunk holds exactly one.
                .map(|(k, v)| unsafe {
                    (
                        std::ptr::read_unaligned(k.as_ptr() as *const SourceKey),
                        std::ptr::read_unaligned(v.as_ptr() as *const Fingerprint),
                    )
                })
                .collect());
        }
        // An entry removed between listing its key and reading it is simply gone.
        Ok(self.fingerprints.iter().filter_map(Result::ok).collect())
    }

    /// One source's fingerprint, if it has one.
    pub fn fingerprint(&self, key: &SourceKey) -> Option<Fingerprint> {
        self.fingerprints.get(key, 0).ok()
    }

    pub fn set_fingerprint(&mut self, key: &SourceKey, f: &Fingerprint) -> Result<()> {
        self.fingerprints.insert(key, f, 0).context("writing FINGERPRINTS")
    }

    /// Removes a fingerprint; false when there was none.
    pub fn remove_fingerprint(&mut self, key: &SourceKey) -> bool {
        self.fingerprints.remove(key).is_ok()
    }

    /// Another handle on the same maps (the kernel's objects, not copies).
    pub fn duplicate(&self) -> Result<Maps> {
        Maps::build(|name| {
            let fd = self.raw(name)?.fd().as_fd().try_clone_to_owned()?;
            Map::from_map_data(MapData::from_fd(fd)?).with_context(|| format!("map {name}"))
        })
    }

    fn raw(&self, name: &str) -> Result<&MapData> {
        self.all.iter().find(|(n, _)| *n == name).map(|(_, m)| m).context(name.to_string())
    }

    /// The kernel's id of the CONFIG map: the program that uses it is this guard's, whatever
    /// else is known of it (how a dispatcher component is recognised as portguard's).
    pub fn config_id(&self) -> Result<u32> {
        let fd = self.raw(map_names::CONFIG)?.fd().as_fd();
        Ok(sys::map_info(fd).context("reading CONFIG's info")?.id)
    }

    /// Pins the maps missing from `dir` under their own names (those there are left alone).
    /// Returns how many were pinned.
    pub fn pin_missing(&self, dir: &Path) -> Result<usize> {
        let mut n = 0;
        for (name, m) in &self.all {
            let path = dir.join(name);
            if path.exists() {
                continue;
            }
            crate::sys::obj_pin(m.fd().as_fd(), &path)
                .with_context(|| format!("pinning {}", path.display()))?;
            n += 1;
        }
        Ok(n)
    }

    /// The kernel's id of SOURCES: which program is ours (its maps include it).
    pub fn sources_id(&self) -> Result<u32> {
        Ok(self.raw(map_names::SOURCES)?.info()?.id())
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

    pub fn set_config(&mut self, c: Config) -> Result<()> {
        self.config.set(0, c, 0).context("writing CONFIG")
    }

    /// The indices of PORTS set to PORT_GUARDED: one batched read of the 65,536-entry table (a
    /// few syscalls rather than 65,536), entry by entry where the kernel has no batch reads for
    /// arrays.
    pub fn guarded_ports(&self) -> Result<Vec<u16>> {
        let raw = self.raw(map_names::PORTS)?;
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

    pub fn set_port(&mut self, port: u16, guarded: bool) -> Result<()> {
        let v = if guarded { PORT_GUARDED } else { 0 };
        self.ports.set(port as u32, v, 0).context("writing PORTS")
    }

    /// The IPv4 allowlist's entries: (prefix length, address).
    pub fn allow_v4(&self) -> Result<Vec<(u32, AllowV4)>> {
        self.allow_v4
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())).context("reading ALLOW_V4"))
            .collect()
    }

    pub fn allow_v6(&self) -> Result<Vec<(u32, AllowV6)>> {
        self.allow_v6
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())).context("reading ALLOW_V6"))
            .collect()
    }

    pub fn insert_allow_v4(&mut self, len: u32, a: AllowV4) -> Result<()> {
        self.allow_v4.insert(&Key::new(len, a), 1, 0).context("writing ALLOW_V4")
    }

    pub fn insert_allow_v6(&mut self, len: u32, a: AllowV6) -> Result<()> {
        self.allow_v6.insert(&Key::new(len, a), 1, 0).context("writing ALLOW_V6")
    }

    /// Removes an entry; one that is already gone is fine (the goal is its absence).
    pub fn remove_allow_v4(&mut self, len: u32, a: AllowV4) {
        let _ = self.allow_v4.remove(&Key::new(len, a));
    }

    pub fn remove_allow_v6(&mut self, len: u32, a: AllowV6) {
        let _ = self.allow_v6.remove(&Key::new(len, a));
    }

    /// TOTALS of every CPU.
    pub fn totals(&self) -> Result<Vec<Totals>> {
        Ok(self.totals.get(&0, 0).context("reading TOTALS")?.iter().copied().collect())
    }

    /// Every SOURCES entry. One batched read of the whole table where the kernel supports it
    /// (a full 65,536-entry table in tens of milliseconds), else entry by entry. The map is
    /// shared by the CPUs: what is read does not grow with their number.
    pub fn source_slots(&self) -> Result<Vec<(SourceKey, SourceSlot)>> {
        let vsize = size_of::<SourceSlot>().next_multiple_of(8);
        let ksize = size_of::<SourceKey>();
        let raw = self.raw(map_names::SOURCES)?;
        let max = raw.info().map(|i| i.max_entries() as usize).unwrap_or(65_536);
        let mut out = Vec::new();
        match sys::lookup_batch(raw.fd().as_fd(), ksize, vsize, max) {
            Ok((keys, values)) => {
                for (k, v) in keys.chunks_exact(ksize).zip(values.chunks_exact(vsize)) {
                    // SAFETY: SourceKey and SourceSlot are Pod; each chunk holds exactly one.
                    let (key, slot) = unsafe {
                        (
                            std::ptr::read_unaligned(k.as_ptr() as *const SourceKey),
                            std::ptr::read_unaligned(v.as_ptr() as *const SourceSlot),
                        )
                    };
                    out.push((key, slot));
                }
            }
            Err(_) => {
                for entry in self.sources.iter() {
                    // An entry removed between listing its key and reading it is simply gone.
                    let Ok((key, slot)) = entry else { continue };
                    out.push((key, slot));
                }
            }
        }
        Ok(out)
    }

    /// Removes a source; false when it was already gone.
    pub fn remove_source(&mut self, key: &SourceKey) -> bool {
        self.sources.remove(key).is_ok()
    }
}

const _: () = assert!(PORT_TABLE_ENTRIES == 65_536);
