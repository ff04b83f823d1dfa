//! libxdp's dispatcher program (version 2 of the protocol): its configuration, where its object
//! file is, loading a new one, and reading the one attached to an interface.
//!
//! The dispatcher is libxdp's own compiled object, `xdp-dispatcher.o` (Debian: package libxdp1,
//! `/usr/lib/<triplet>/bpf/`). portguard loads that very file, so that what it attaches is
//! byte for byte what libxdp would attach, and any libxdp user recognises it.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, EbpfLoader, programs::Xdp};

use crate::sys;

/// The dispatcher's program name, which libxdp checks before treating a program as one.
pub const PROGRAM: &str = "xdp_dispatcher";
/// `xdp_dispatcher_config::magic`.
pub const MAGIC: u8 = 236;
/// The protocol version this implements (libxdp 1.2 to 1.6 all speak version 2).
pub const VERSION: u8 = 2;
/// What an empty slot returns; always a chain-call action, so a vacated slot passes through.
pub const RETVAL: u32 = 31;
/// Slots in a dispatcher.
pub const MAX_PROGS: usize = 10;
/// libxdp's object file name.
pub const OBJECT: &str = "xdp-dispatcher.o";
/// libxdp's override of the object directory (honoured here too).
pub const OBJECT_PATH_ENV: &str = "LIBXDP_OBJECT_PATH";

/// `struct xdp_dispatcher_config` (libxdp's prog_dispatcher.h), the dispatcher's frozen
/// .rodata. The verifier prunes every slot past `num_progs_enabled`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub magic: u8,
    pub dispatcher_version: u8,
    pub num_progs_enabled: u8,
    pub is_xdp_frags: u8,
    /// Per slot: a bitmap of the XDP actions that continue to the next slot.
    pub chain_call_actions: [u32; MAX_PROGS],
    pub run_prios: [u32; MAX_PROGS],
    /// Per slot: BPF_F_XDP_HAS_FRAGS if the component was loaded with it.
    pub program_flags: [u32; MAX_PROGS],
}
const _: () = assert!(size_of::<Config>() == 124);

// SAFETY: plain integers with no padding (asserted above).
unsafe impl aya::Pod for Config {}

// The config is libxdp's struct, not one of portguard's maps, so its bytes are read here rather
// than in `wire.rs` (which holds portguard's own map contract).
impl Config {
    /// A config of `n` enabled slots with nothing in them yet (no chain-call actions, priority
    /// 0): what `build` fills in, and what a compatibility check or a cost measurement loads.
    pub fn empty(n: u8) -> Config {
        Config {
            magic: MAGIC,
            dispatcher_version: VERSION,
            num_progs_enabled: n,
            ..Default::default()
        }
    }

    fn from_bytes(b: &[u8; 124]) -> Config {
        let word = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let array = |base: usize| std::array::from_fn(|i| word(base + 4 * i));
        Config {
            magic: b[0],
            dispatcher_version: b[1],
            num_progs_enabled: b[2],
            is_xdp_frags: b[3],
            chain_call_actions: array(4),
            run_prios: array(44),
            program_flags: array(84),
        }
    }
}

/// Where libxdp's dispatcher object is: `$LIBXDP_OBJECT_PATH`, else the directories
/// distributions install it in.
pub fn object_path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(OBJECT_PATH_ENV) {
        let p = Path::new(&dir).join(OBJECT);
        if p.exists() {
            return Ok(p);
        }
        bail!("{OBJECT} is not in ${OBJECT_PATH_ENV} ({})", p.display());
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Debian and Ubuntu: /usr/lib/<multiarch triplet>/bpf.
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        let mut multiarch: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("-linux-"))
            .map(|e| e.path().join("bpf"))
            .collect();
        multiarch.sort();
        dirs.extend(multiarch);
    }
    dirs.extend(["/usr/lib/bpf", "/usr/lib64/bpf", "/usr/local/lib/bpf"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(OBJECT)).find(|p| p.exists()).ok_or_else(|| {
        anyhow!(
            "libxdp's dispatcher ({OBJECT}) is not installed: sharing an interface with other \
             XDP programs needs it (Debian: apt-get install libxdp1)"
        )
    })
}

/// A freshly loaded dispatcher (not attached yet).
pub struct Loaded {
    /// Keeps the program (and its frozen config map) alive until it is attached and pinned.
    pub ebpf: Ebpf,
    pub id: u32,
}

impl Loaded {
    pub fn program(&mut self) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM)
            .context("the dispatcher object has no xdp_dispatcher program")?
            .try_into()
            .context("xdp_dispatcher is not an XDP program")
    }
}

/// Loads libxdp's dispatcher with `config` in its read-only data.
pub fn load(config: &Config) -> Result<Loaded> {
    let path = object_path()?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let ebpf = EbpfLoader::new().override_global("conf", config, true).load(&bytes).with_context(
        || format!("loading {} (a libxdp dispatcher of another version?)", path.display()),
    )?;
    let mut d = Loaded { ebpf, id: 0 };
    let prog = d.program()?;
    prog.load().map_err(|e| {
        anyhow!("the kernel refused libxdp's dispatcher: {}", super::root_cause(&e))
    })?;
    d.id = prog.info()?.id();
    Ok(d)
}

/// A dispatcher found attached to an interface.
pub struct Found {
    pub fd: OwnedFd,
    pub info: sys::ProgInfo,
    pub config: Config,
}

/// What is attached, seen through libxdp's eyes.
pub enum Kind {
    Dispatcher(Found),
    /// A dispatcher of another protocol version: libxdp itself refuses to change it.
    OtherVersion {
        id: u32,
        version: u8,
    },
    /// Any other XDP program: the hook is taken exclusively.
    Other {
        id: u32,
        name: String,
    },
}

/// Classifies the program `id` as libxdp does (`check_dispatcher_version`): named
/// xdp_dispatcher, one map of one read-only 124-byte value starting with the magic.
pub fn inspect(id: u32) -> Result<Kind> {
    let fd = sys::prog_by_id(id).with_context(|| format!("opening XDP program {id}"))?;
    let info = sys::prog_info(fd.as_fd()).with_context(|| format!("reading XDP program {id}"))?;
    if info.name != PROGRAM || info.map_ids.len() != 1 {
        return Ok(Kind::Other { id, name: info.name });
    }
    let map = sys::map_by_id(info.map_ids[0]).context("opening the dispatcher's config map")?;
    let m = sys::map_info(map.as_fd())?;
    if m.key_size != 4 || m.max_entries != 1 || m.flags & sys::BPF_F_RDONLY_PROG == 0 {
        return Ok(Kind::Other { id, name: info.name });
    }
    let mut value = vec![0u8; m.value_size as usize];
    sys::map_lookup(map.as_fd(), 0, &mut value).context("reading the dispatcher's config")?;
    let version =
        if value.first() == Some(&MAGIC) { value.get(1).copied().unwrap_or(0) } else { 1 };
    if version != VERSION || value.len() != size_of::<Config>() {
        return Ok(Kind::OtherVersion { id, version });
    }
    let config = Config::from_bytes(value[..].try_into().expect("124 bytes"));
    Ok(Kind::Dispatcher(Found { fd, info, config }))
}
