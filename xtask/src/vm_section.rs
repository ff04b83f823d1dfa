//! The "Router VM" section of BENCHMARKS.md. `cargo xtask vmlab --scenario bench` measures it
//! in QEMU guests and writes bench/vm.md; the section in BENCHMARKS.md is a copy of that file
//! between two markers, put there by both writers of BENCHMARKS.md: the lab (after it writes
//! bench/vm.md) and `cargo xtask bench` (which regenerates everything else and takes the
//! section from bench/vm.md as it is). One source, so the two never disagree; each keeps its
//! own date and commits.

use std::path::Path;

const BEGIN: &str =
    "<!-- router-vm: copied from bench/vm.md (cargo xtask vmlab --scenario bench) -->";
const END: &str = "<!-- /router-vm -->";

/// `benchmarks` (BENCHMARKS.md's text) with its Router VM section made a copy of bench/vm.md
/// under `root`.
pub fn with_router_vm(benchmarks: &str, root: &Path) -> String {
    let section = std::fs::read_to_string(root.join("bench/vm.md")).unwrap_or_else(|_| {
        "## Router VM\n\nNot measured yet: `cargo xtask vmlab --scenario bench` writes it.\n".into()
    });
    splice(benchmarks, BEGIN, END, &section)
}

/// `benchmarks` with the dispatcher's fragment (bench/dispatcher.md, which `cargo xtask bench`
/// writes in the same run) as a section of its own, placed like the Router VM one.
#[allow(dead_code)] // Used by the bench binary only.
pub fn with_dispatcher(benchmarks: &str, root: &Path) -> String {
    let Ok(section) = std::fs::read_to_string(root.join("bench/dispatcher.md")) else {
        return benchmarks.to_owned();
    };
    splice(
        benchmarks,
        "<!-- dispatcher: copied from bench/dispatcher.md (cargo xtask bench) -->",
        "<!-- /dispatcher -->",
        &section,
    )
}

/// `benchmarks` with the section between the markers replaced by `section` (appended if there
/// are no markers yet).
fn splice(benchmarks: &str, begin: &str, end: &str, section: &str) -> String {
    let block = format!("{begin}\n{}\n{end}\n", section.trim_end());
    match (benchmarks.find(begin), benchmarks.find(end)) {
        (Some(b), Some(e)) if b < e => {
            // The block ends with its own newline.
            let after = &benchmarks[e + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{}", &benchmarks[..b], after)
        }
        _ => format!("{}\n\n{block}", benchmarks.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_then_replaces_in_place() {
        let once = splice("# b\n\n## A\n\ntext\n", BEGIN, END, "## Router VM\n\nv1\n");
        assert!(once.starts_with("# b\n\n## A\n\ntext\n\n<!-- router-vm"), "{once}");
        assert!(once.ends_with("v1\n<!-- /router-vm -->\n"), "{once}");
        let twice = splice(&once, BEGIN, END, "## Router VM\n\nv2\n");
        assert_eq!(twice, once.replace("v1", "v2"));
        // What follows the section stays where it was.
        let later = format!("{once}\n## Z\n");
        assert_eq!(
            splice(&later, BEGIN, END, "## Router VM\n\nv3\n"),
            format!("{}\n## Z\n", once.replace("v1", "v3"))
        );
    }
}
