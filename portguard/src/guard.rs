//! One guarded interface: the loaded program, its maps, and its XDP attachment.
//!
//! `Guard::load` loads and configures but does not attach, so that the verdict tests can drive
//! the very same program through BPF_PROG_TEST_RUN. Dropping a `Guard` detaches it.

use std::{collections::BTreeSet, ffi::CString, net::IpAddr};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{ProgramError, Xdp, XdpMode},
};
use portguard_common::{
    AllowV4, AllowV6, Config, DEFAULT_SOURCE_CAPACITY, PORT_GUARDED, PROGRAM_NAME, SourceKey,
    SourceStats, Totals, map_names,
};

use crate::settings::Settings;

/// The XDP object, built by build.rs from portguard-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard"));

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic with a warning.
    Auto,
    /// Native only: fail if the driver has no XDP support.
    Native,
    /// Generic (skb) XDP: works on any interface, after the skb is allocated.
    Generic,
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
        }
    }
}

/// One source's merged counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub addr: IpAddr,
    pub stats: SourceStats,
}

pub struct Guard {
    ebpf: Ebpf,
    settings: Settings,
    /// SOURCES capacity, which the admission budget is derived from.
    capacity: u32,
    /// Set once attached.
    pub iface: Option<String>,
    pub attached: Option<Attached>,
}

/// The ifindex of `iface`, or a one-line error naming it.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| anyhow!("invalid interface name '{iface}'"))?;
    // SAFETY: a NUL-terminated string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("unknown interface '{iface}' (see `ip link` for the interfaces on this host)");
    }
    Ok(idx)
}

impl Guard {
    /// Loads the program (SOURCES holding `sources` entries) and writes `settings` into its
    /// maps. Nothing is attached yet.
    pub fn load(settings: &Settings, sources: u32) -> Result<Guard> {
        if sources == 0 {
            bail!("the source table needs at least 1 entry");
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SOURCES, sources)
            .load(OBJECT)
            .context("loading the XDP object")?;
        let prog: &mut Xdp = program(&mut ebpf)?;
        prog.load().map_err(verifier_error)?;
        let mut guard = Guard {
            ebpf,
            settings: Settings { ports: Vec::new(), allow: Vec::new(), ..settings.clone() },
            capacity: sources,
            iface: None,
            attached: None,
        };
        guard.apply(settings)?;
        Ok(guard)
    }

    /// Loads with the default source capacity.
    pub fn load_default(settings: &Settings) -> Result<Guard> {
        Guard::load(settings, DEFAULT_SOURCE_CAPACITY)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the running configuration in place: no reload, counters kept. Ports and
    /// allowlist entries are added before the old ones are removed and before CONFIG changes,
    /// so no packet sees a state that is neither the old nor the new.
    pub fn apply(&mut self, new: &Settings) -> Result<()> {
        let old = self.settings.clone();
        {
            let mut ports: Array<&mut MapData, u8> = map(&mut self.ebpf, map_names::PORTS)?;
            let want: BTreeSet<u16> = new.ports.iter().copied().collect();
            let had: BTreeSet<u16> = old.ports.iter().copied().collect();
            for p in want.difference(&had) {
                ports.set(*p as u32, PORT_GUARDED, 0).context("writing PORTS")?;
            }
            for p in had.difference(&want) {
                ports.set(*p as u32, 0, 0).context("writing PORTS")?;
            }
        }
        {
            let mut v4: LpmTrie<&mut MapData, AllowV4, u8> =
                map(&mut self.ebpf, map_names::ALLOW_V4)?;
            for c in new.allow.iter().filter(|c| !old.allow.contains(c)) {
                if let IpAddr::V4(a) = c.addr {
                    v4.insert(&Key::new(c.len as u32, a.octets()), 1, 0)
                        .with_context(|| format!("adding {c} to the allowlist"))?;
                }
            }
            for c in old.allow.iter().filter(|c| !new.allow.contains(c)) {
                if let IpAddr::V4(a) = c.addr {
                    v4.remove(&Key::new(c.len as u32, a.octets())).ok();
                }
            }
        }
        {
            let mut v6: LpmTrie<&mut MapData, AllowV6, u8> =
                map(&mut self.ebpf, map_names::ALLOW_V6)?;
            for c in new.allow.iter().filter(|c| !old.allow.contains(c)) {
                if let IpAddr::V6(a) = c.addr {
                    v6.insert(&Key::new(c.len as u32, a.octets()), 1, 0)
                        .with_context(|| format!("adding {c} to the allowlist"))?;
                }
            }
            for c in old.allow.iter().filter(|c| !new.allow.contains(c)) {
                if let IpAddr::V6(a) = c.addr {
                    v6.remove(&Key::new(c.len as u32, a.octets())).ok();
                }
            }
        }
        let mut config: Array<&mut MapData, Config> = map(&mut self.ebpf, map_names::CONFIG)?;
        let cpus =
            aya::util::online_cpus().map_err(|(_, e)| e).context("counting CPUs")?.len() as u32;
        config.set(0, new.config(self.capacity, cpus), 0).context("writing CONFIG")?;
        self.settings = new.clone();
        Ok(())
    }

    /// Attaches to `iface`. With `Auto`, a driver without native XDP gets generic mode and a
    /// warning on stderr.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached> {
        if self.iface.is_some() {
            bail!("already attached");
        }
        let idx = ifindex(iface)?;
        let prog = program(&mut self.ebpf)?;
        let attached = match mode {
            AttachMode::Native => {
                prog.attach_to_if_index(idx, XdpMode::Driver)
                    .map_err(|e| attach_error(iface, "native", e))?;
                Attached::Native
            }
            AttachMode::Generic => {
                prog.attach_to_if_index(idx, XdpMode::Skb)
                    .map_err(|e| attach_error(iface, "generic", e))?;
                Attached::Generic
            }
            AttachMode::Auto => match prog.attach_to_if_index(idx, XdpMode::Driver) {
                Ok(_) => Attached::Native,
                Err(native) => {
                    prog.attach_to_if_index(idx, XdpMode::Skb)
                        .map_err(|e| attach_error(iface, "generic", e))?;
                    log::warn!(
                        "{iface}: native XDP unavailable ({}); running in generic mode, after the \
                         kernel has allocated an skb",
                        root_cause(&native)
                    );
                    Attached::Generic
                }
            },
        };
        self.iface = Some(iface.to_string());
        self.attached = Some(attached);
        Ok(attached)
    }

    /// The program itself, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// The kernel's id for the loaded program.
    pub fn program_id(&mut self) -> Result<u32> {
        Ok(self.program()?.info()?.id())
    }

    /// TOTALS summed over CPUs.
    pub fn totals(&self) -> Result<Totals> {
        let m = self.ebpf.map(map_names::TOTALS).context("TOTALS missing")?;
        let totals: PerCpuArray<&MapData, Totals> = PerCpuArray::try_from(m)?;
        let mut sum = Totals::default();
        for cpu in totals.get(&0, 0).context("reading TOTALS")?.iter() {
            sum.add(cpu);
        }
        Ok(sum)
    }

    /// Every tracked source, its CPUs merged.
    pub fn sources(&self) -> Result<Vec<Source>> {
        let m = self.ebpf.map(map_names::SOURCES).context("SOURCES missing")?;
        let table: PerCpuHashMap<&MapData, SourceKey, SourceStats> = PerCpuHashMap::try_from(m)?;
        let mut out = Vec::new();
        for entry in table.iter() {
            // An entry evicted between listing its key and reading it is simply gone.
            let Ok((key, per_cpu)) = entry else { continue };
            let mut stats = SourceStats::default();
            for cpu in per_cpu.iter() {
                stats.merge(cpu);
            }
            if stats.packets > 0 {
                out.push(Source { addr: address(&key), stats });
            }
        }
        Ok(out)
    }

    /// The underlying object, for the logger and for tests that inspect maps directly.
    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// A SOURCES key as an address.
pub fn address(key: &SourceKey) -> IpAddr {
    match key.as_v4() {
        Some(a) => IpAddr::from(a),
        None => IpAddr::from(key.addr),
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .context("the object has no portguard program")?
        .try_into()
        .context("portguard is not an XDP program")
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.map_mut(name).with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(m).with_context(|| format!("map {name} has an unexpected type"))
}

fn verifier_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!(
                "the kernel rejected the XDP program ({io_error}); verifier log:\n{verifier_log}"
            )
        }
        e => anyhow!(e).context("loading the XDP program"),
    }
}

fn attach_error(iface: &str, mode: &str, e: ProgramError) -> anyhow::Error {
    anyhow!("cannot attach to {iface} in {mode} XDP mode: {}", root_cause(&e))
}

/// The innermost error message: aya wraps syscall errors a few levels deep.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut msg = cur.to_string();
    while let Some(next) = cur.source() {
        msg = next.to_string();
        cur = next;
    }
    msg
}
