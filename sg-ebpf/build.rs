//! Rebuild the object when the bpf-linker binary changes (it is an undeclared
//! dependency of linking for bpfel-unknown-none).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // Host builds (clippy, the build-dependency lib) do not link with it.
        Err(_) => println!("cargo:warning=bpf-linker not found; run `cargo xtask setup`"),
    }
}
