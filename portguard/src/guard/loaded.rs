//! The program and its maps, loaded into the kernel but attached nowhere.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{Extension, ProgramError, Xdp},
};
use portguard_common::{
    COARSE_CLOCK_GLOBAL, COPY_MAP_NAME, COPY_PROGRAM_NAME, DEFAULT_SOURCE_CAPACITY, PROGRAM_NAME,
    Totals, map_names,
};

use crate::{
    counters::Source,
    maps::Maps,
    settings::Settings,
    wire::{self, Consumers},
};

/// The XDP object, built by build.rs from portguard-ebpf.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard"));

/// A loaded program: the object, and the copy-out program's slot.
pub(crate) struct Program {
    ebpf: Ebpf,
    /// The copy-out program's slot (portguard-ebpf/src/copy.rs), held for as long as the
    /// program is: the kernel empties a program array nobody holds. None where the kernel
    /// refused the copy-out program: the guard works, without fingerprints or captures.
    copy: Option<ProgramArray<MapData>>,
}

impl Program {
    /// Loads the object, SOURCES holding `capacity` entries, its maps pinned in (or reused from)
    /// `dir` when given.
    pub(crate) fn load(capacity: u32, dir: Option<&Path>) -> Result<(Program, Maps)> {
        let mut ebpf = loader(capacity, dir)?.load(OBJECT).context("loading the XDP object")?;
        xdp(&mut ebpf)?.load().map_err(verifier_error)?;
        let copy = Program::copy(&mut ebpf);
        Program::finish(ebpf, copy)
    }

    /// Loads the object with its program as an extension (BPF_PROG_TYPE_EXT), to run as a
    /// component of libxdp's dispatcher; the maps as for `load`.
    ///
    /// The kernel verifies an extension against a target, so the program is loaded against a
    /// scratch dispatcher (libxdp's compatibility check does the same); joining then attaches
    /// it to the real one, which the kernel allows for any target with the same BTF signature.
    /// Verifying up front means a refusal happens before anything on the interface is touched.
    pub(crate) fn load_extension(capacity: u32, dir: &Path) -> Result<(Program, Maps)> {
        use crate::multiprog::dispatcher;
        let mut loader = loader(capacity, Some(dir))?;
        loader.extension(PROGRAM_NAME);
        let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
        // No copy-out program: the kernel wants every program that uses a program array, the
        // caller of the tail call included, to be of one type, and an extension is not an XDP
        // program to it (Linux 6.1: EINVAL filling the slot after the extension, EINVAL loading
        // the extension after the slot was filled). The tail call finds an empty slot and the
        // packet goes on as if nothing was asked.
        copy_refused(&anyhow!("it cannot be tail-called from a program in libxdp's dispatcher"));
        let mut scratch = dispatcher::load(&dispatcher::Config::empty(0))?;
        let target = scratch.program()?.fd()?.try_clone()?;
        extension(&mut ebpf)?.load(target, dispatcher::PROGRAM).map_err(|e| {
            let why = crate::multiprog::load_error(&e);
            match crate::multiprog::support() {
                Ok(crate::multiprog::Support::Refused(r)) => anyhow!("{r}"),
                _ => anyhow!("the kernel rejected portguard's program as an XDP extension: {why}"),
            }
        })?;
        Program::finish(ebpf, None)
    }

    /// The copy-out program in its slot, or None (said once) where the kernel refuses it.
    fn copy(ebpf: &mut Ebpf) -> Option<ProgramArray<MapData>> {
        Program::load_copy(ebpf)
            .context("this kernel refuses it: it needs bpf_xdp_load_bytes, Linux 5.18")
            .inspect_err(copy_refused)
            .ok()
    }

    /// What both loads share once the programs are in the kernel: the maps taken.
    fn finish(mut ebpf: Ebpf, copy: Option<ProgramArray<MapData>>) -> Result<(Program, Maps)> {
        let maps = Maps::take(&mut ebpf)?;
        Ok((Program { ebpf, copy }, maps))
    }

    /// The copy-out program, loaded into its slot.
    fn load_copy(ebpf: &mut Ebpf) -> Result<ProgramArray<MapData>> {
        let copy: &mut Xdp = ebpf
            .program_mut(COPY_PROGRAM_NAME)
            .context("the object has no copy-out program")?
            .try_into()
            .context("the copy-out program is not an XDP program")?;
        copy.load().map_err(verifier_error)?;
        let copy_fd = copy.fd().context("the copy-out program's descriptor")?.try_clone()?;
        let mut slot: ProgramArray<MapData> = ebpf
            .take_map(COPY_MAP_NAME)
            .context("the object has no COPY map")?
            .try_into()
            .context("COPY is not a program array")?;
        slot.set(0, &copy_fd, 0).context("filling COPY")?;
        Ok(slot)
    }

    /// Whether the copy-out program runs (fingerprints and captures are possible).
    pub(crate) fn copies(&self) -> bool {
        self.copy.is_some()
    }

    pub(crate) fn xdp(&mut self) -> Result<&mut Xdp> {
        xdp(&mut self.ebpf)
    }

    /// The program loaded as an extension (`load_extension`).
    pub(crate) fn extension(&mut self) -> Result<&mut Extension> {
        extension(&mut self.ebpf)
    }

    /// The loaded program's id.
    pub(crate) fn id(&mut self) -> Result<u32> {
        let info = match self.ebpf.program_mut(PROGRAM_NAME) {
            Some(aya::programs::Program::Extension(p)) => p.info(),
            Some(aya::programs::Program::Xdp(p)) => p.info(),
            _ => bail!("the object has no portguard program"),
        };
        Ok(info.context("reading the program's info")?.id())
    }
}

/// The loader both loads start from: SOURCES holding `capacity` entries, the clock this kernel
/// has (see portguard-ebpf/src/clock.rs), the maps pinned in (or reused from) `dir` when given.
fn loader(capacity: u32, dir: Option<&Path>) -> Result<EbpfLoader<'static>> {
    if capacity == 0 {
        bail!("the source table needs at least 1 entry");
    }
    static COARSE: [u8; 2] = [0, 1];
    let coarse_clock = &COARSE[usize::from(super::probe::coarse_clock())];
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map_names::SOURCES, capacity);
    loader.override_global(COARSE_CLOCK_GLOBAL, coarse_clock, true);
    if let Some(dir) = dir {
        for name in map_names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok(loader)
}

/// Says once per process why no copy-out program runs (Linux 5.10 lacks `bpf_xdp_load_bytes`,
/// 5.18; a guard in libxdp's dispatcher cannot tail-call it): the guard drops and counts as
/// always, without fingerprints or captures.
fn copy_refused(e: &anyhow::Error) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let first = format!("{e:#}");
        let first = first.lines().next().unwrap_or_default();
        let first = first.split("; verifier log").next().unwrap_or(first).to_owned();
        log::warn!("no copy-out program ({first}): guarding without fingerprints or captures");
    });
}

fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .context("the object has no portguard program")?
        .try_into()
        .context("portguard is not an XDP program")
}

fn extension(ebpf: &mut Ebpf) -> Result<&mut Extension> {
    ebpf.program_mut(PROGRAM_NAME)
        .context("the object has no portguard program")?
        .try_into()
        .context("portguard's program was not loaded as an extension")
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

/// The program with fresh, unpinned maps holding `settings`: for BPF_PROG_TEST_RUN.
pub struct Loaded {
    program: Program,
    maps: Maps,
    settings: Settings,
    capacity: u32,
}

impl Loaded {
    /// Loads the program (SOURCES holding `capacity` entries) and writes `settings`.
    pub fn new(settings: &Settings, capacity: u32) -> Result<Loaded> {
        let (program, maps) = Program::load(capacity, None)?;
        let mut l = Loaded { program, maps, settings: Settings::empty(), capacity };
        l.apply(settings)?;
        Ok(l)
    }

    /// Loads with the default source capacity.
    pub fn with_defaults(settings: &Settings) -> Result<Loaded> {
        Loaded::new(settings, DEFAULT_SOURCE_CAPACITY)
    }

    /// The program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        self.program.xdp()
    }

    pub fn apply(&mut self, settings: &Settings) -> Result<()> {
        wire::write_settings(&mut self.maps, &self.settings, settings, self.capacity)?;
        self.settings = settings.clone();
        Ok(())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn totals(&self) -> Result<Totals> {
        wire::read_totals(&self.maps)
    }

    pub fn sources(&self) -> Result<Vec<Source>> {
        wire::read_sources(&self.maps)
    }

    /// Makes room in the source table as an owner does (see `table`).
    pub fn make_room(&mut self, sources: &[Source]) -> usize {
        crate::table::forget(&mut self.maps, sources, self.capacity)
    }

    /// What the program is asked to copy out (CFG_FEATURES, CFG_CAPTURE_*), as a reader would.
    pub fn set_consumers(&mut self, c: Consumers) -> Result<()> {
        let mut config = self.maps.config()?;
        c.apply(&mut config);
        self.maps.set_config(config)
    }

    /// The maps, for what tests and benchmarks read beyond the counters (the ring buffers).
    pub fn maps(&mut self) -> &mut Maps {
        &mut self.maps
    }
}
