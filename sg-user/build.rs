//! Builds the kernel programs (`sg-ebpf`, target bpfel-unknown-none, nightly
//! with build-std) and leaves the object in OUT_DIR for `include_bytes!`.
//! Needs bpf-linker and nightly's rust-src: `cargo xtask setup` installs both.
fn main() -> anyhow::Result<()> {
    let ebpf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sg-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package {
        name: "sg-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             hint: run `cargo xtask setup` (installs nightly rust-src and bpf-linker)"
        )
    })
}
