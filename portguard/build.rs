use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the XDP program with the nightly toolchain (build-std=core, bpf-linker) and leaves the
/// object in OUT_DIR, where main.rs embeds it.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "portguard-ebpf")
        .ok_or_else(|| anyhow!("portguard-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    let root_dir = manifest_path.parent().context("no parent")?.as_str();
    let ebpf_package = Package { name: name.as_str(), root_dir, ..Default::default() };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}
