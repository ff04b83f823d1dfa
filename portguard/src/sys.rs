//! The two bpf(2) commands aya 0.14 does not wrap: batched map reads (a full source table in a
//! few syscalls instead of two per entry) and forced link detach.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
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
    let mut info = [0u64; 8];
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: [u64; 8] and [u32; 16] are the same 64 bytes, and every bit pattern is valid.
    let words: [u32; 16] = unsafe { std::mem::transmute(info) };
    Ok((words[2], words[4]))
}

const BPF_OBJ_GET: libc::c_long = 7;

/// Opens a pinned object (BPF_OBJ_GET). aya keeps the fds of its links private; portguard
/// needs one for link info and forced detach.
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // Explicit: the kernel rejects non-zero bytes past the last field, and padding is not
        // guaranteed to be zero.
        _pad: u32,
    }
    let mut attr =
        Attr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: as in `bpf`, and the returned fd is new and ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut Attr as *mut libc::c_void,
            size_of::<Attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}
