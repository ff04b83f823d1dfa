use which::which;

fn main() {
    // Rebuild when bpf-linker changes: cargo does not track the linker binary itself.
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    // bpf-linker does the final code generation. Without this, every 2-byte header field is
    // read as two byte loads, shifted and or-ed: the verifier accepts unaligned packet loads on
    // the architectures XDP runs on, so one load will do.
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
