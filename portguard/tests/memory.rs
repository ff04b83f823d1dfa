//! The per-source table's memory as documented (`table::memory`, quoted in README.md and
//! packaging/portguard.toml) against the kernel's own figure: `memlock` in the map's fdinfo.

use portguard::{guard::Loaded, settings::Settings, table};
use portguard_testkit::root_or_skip;

/// memlock of this process's map of `map_type` with `max_entries`, from /proc/self/fdinfo.
fn memlock(map_type: u32, max_entries: u32) -> Option<u64> {
    for fd in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string())
        };
        if field("map_type:") == Some(map_type.to_string())
            && field("max_entries:") == Some(max_entries.to_string())
        {
            return field("memlock:")?.parse().ok();
        }
    }
    None
}

/// BPF_MAP_TYPE_HASH.
const HASH: u32 = 1;

#[test]
fn the_documented_formula_is_the_kernels_figure() {
    if !root_or_skip() {
        return;
    }
    let cpus = table::possible_cpus().unwrap();
    // Capacities that are not powers of two too: the kernel rounds the buckets up.
    let mut figures = Vec::new();
    for capacity in [1000u32, 3000, 65536, 100_000] {
        let g = Loaded::new(&Settings::default(), capacity).unwrap();
        let kernel = memlock(HASH, capacity).expect("the SOURCES map's fdinfo");
        drop(g);
        let ours = table::memory(capacity, cpus);
        eprintln!("capacity {capacity}, {cpus} CPUs: kernel {kernel} bytes, formula {ours}");
        figures.push((kernel, ours));
    }
    // What grows with the table is exact; the map's own structure may differ by a few hundred
    // bytes between kernel builds.
    for w in figures.windows(2) {
        assert_eq!(w[1].0 - w[0].0, w[1].1 - w[0].1, "{figures:?}");
    }
    for (kernel, ours) in &figures {
        assert!(kernel.abs_diff(*ours) <= 1024, "{figures:?}");
    }
    // The README's round figure for the default table: 136 bytes a source, whatever the CPUs.
    let per_source = 136 * 65536;
    assert!(table::memory(65536, cpus).abs_diff(per_source) < 64 * 1024);
    assert!(table::memory(65536, 64).abs_diff(per_source) < 64 * 1024);
}
