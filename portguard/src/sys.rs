//! The bpf(2) commands aya 0.14 does not wrap, or keeps private: batched map reads (a full
//! source table in a few syscalls instead of two per entry), forced link detach, a pinned
//! object's fd, a program or map by id, and their info, one array lookup (libxdp's dispatcher
//! config), and an extension's link info (which dispatcher a component runs in).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a properly laid out union member for `cmd`, alive for the call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, size_of::<T>())
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads a whole hash map with BPF_MAP_LOOKUP_BATCH. `value_len` is the size of one value as
/// the kernel copies it (for per-CPU maps: possible CPUs × value size rounded up to 8).
/// Returns raw keys and values, `key_len` and `value_len` bytes each.
pub fn lookup_batch(
    fd: BorrowedFd<'_>,
    key_len: usize,
    value_len: usize,
    max_entries: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let chunk = 4096usize.min(max_entries.max(1));
    let mut keys_out = Vec::new();
    let mut values_out = Vec::new();
    let mut keys = vec![0u8; chunk * key_len];
    let mut values = vec![0u8; chunk * value_len];
    // The batch token of a hash map is a bucket index.
    let mut token_in = 0u32;
    let mut token_out = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u32 as u64 },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        keys_out.extend_from_slice(&keys[..n * key_len]);
        values_out.extend_from_slice(&values[..n * value_len]);
        match r {
            Ok(()) => {}
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        first = false;
        token_in = token_out;
    }
    Ok((keys_out, values_out))
}

/// Detaches a link from whatever it is attached to, whoever else holds it (BPF_LINK_DETACH):
/// a pinned link or another process's fd becomes defunct.
pub fn link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    bpf(BPF_LINK_DETACH, &mut Attr { link_fd: fd.as_raw_fd() as u32 })
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The program id and interface index of an XDP link. A link whose interface went away
/// reports ifindex 0.
pub fn xdp_link_info(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 whose xdp member
    // starts with ifindex.
    let mut info = [0u32; 16];
    obj_info(fd, &mut info)?;
    Ok((info[2], info[4]))
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    // Explicit: the kernel rejects non-zero bytes past the last field, and padding is not
    // guaranteed to be zero.
    _pad: u32,
}

fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Opens a pinned object (BPF_OBJ_GET). aya keeps the fds of its links private; portguard
/// needs one for link info and forced detach.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr =
        ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    bpf_fd(BPF_OBJ_GET, &mut attr)
}

/// Pins an object (a map, a link) at `path` (BPF_OBJ_PIN): how an owner puts back pins that
/// were removed under it, from the fds it holds.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr)
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// A bpf(2) command that returns a new fd.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: as in `bpf`.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, size_of::<T>())
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    bpf_fd(cmd, &mut Attr { id, next_id: 0, open_flags: 0 })
}

/// A loaded program by id.
pub fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_PROG_GET_FD_BY_ID, id)
}

fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
}

/// The head of struct bpf_prog_info (include/uapi/linux/bpf.h), up to btf_id: the kernel
/// fills what fits in the length it is given.
#[repr(C)]
#[derive(Default)]
struct RawProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
}
const _: () = assert!(size_of::<RawProgInfo>() == 136);

/// What portguard reads of a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub prog_type: u32,
    pub id: u32,
    pub tag: [u8; 8],
    /// Boot-time nanoseconds.
    pub load_time: u64,
    /// The kernel's copy of the name: at most 15 bytes.
    pub name: String,
    pub map_ids: Vec<u32>,
    pub btf_id: u32,
}

/// The info of a program.
pub fn prog_info(fd: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    let mut map_ids = vec![0u32; 64];
    let mut raw = RawProgInfo {
        nr_map_ids: map_ids.len() as u32,
        map_ids: map_ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    obj_info(fd, &mut raw)?;
    map_ids.truncate((raw.nr_map_ids as usize).min(64));
    let n = raw.name.iter().position(|b| *b == 0).unwrap_or(raw.name.len());
    Ok(ProgInfo {
        prog_type: raw.prog_type,
        id: raw.id,
        tag: raw.tag,
        load_time: raw.load_time,
        name: String::from_utf8_lossy(&raw.name[..n]).into_owned(),
        map_ids,
        btf_id: raw.btf_id,
    })
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

/// BPF_F_RDONLY_PROG: a map the program may only read (libxdp's dispatcher config is one).
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// A map by id.
pub fn map_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_MAP_GET_FD_BY_ID, id)
}

/// The head of struct bpf_map_info.
#[repr(C)]
#[derive(Default)]
struct RawMapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// What portguard reads of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The info of a map.
pub fn map_info(fd: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut raw = RawMapInfo::default();
    obj_info(fd, &mut raw)?;
    Ok(MapInfo {
        id: raw.id,
        key_size: raw.key_size,
        value_size: raw.value_size,
        max_entries: raw.max_entries,
        flags: raw.map_flags,
    })
}

/// The value at `key` in an array map, `value.len()` bytes.
pub fn map_lookup(fd: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = Attr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)
}

/// BPF_LINK_TYPE_TRACING: the link of an freplace (extension) program.
pub const LINK_TYPE_TRACING: u32 = 2;

/// An freplace link's (program id, target program id): the kernel's word on which program an
/// extension replaces a function of. The target is 0 once the link is detached.
pub fn extension_link_info(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 whose tracing member
    // is attach_type, target_obj_id, target_btf_id.
    let mut info = [0u32; 16];
    obj_info(fd, &mut info)?;
    if info[0] != LINK_TYPE_TRACING {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok((info[2], info[5]))
}
