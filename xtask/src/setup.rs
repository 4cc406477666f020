//! `cargo xtask setup`: everything the project needs on a Debian machine,
//! idempotent. Each step says what it does; each failure names the missing
//! piece and the command that fixes it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Debian packages the project uses (tests, demo, benchmarks).
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "iperf3",
    "nftables",
    "iptables",
    "xdp-tools",
    "bpftool",
    "iputils-ping",
    "tcpdump",
    "ethtool",
    // etcd-client's build compiles etcd's protobuf definitions.
    "protobuf-compiler",
    // The many-hosts tests and benchmark start a real etcd on loopback.
    "etcd-server",
    "etcd-client",
];

/// Debian packages for the podman tests (sidecar, CNI), the container
/// benchmark and `cargo xtask image`
/// (DESIGN.md §3): podman 4.3 with CNI plugins and runc, and a static
/// busybox whose files make the test's app image.
pub const CONTAINER_PACKAGES: &[&str] = &[
    "podman",
    "containernetworking-plugins",
    "runc",
    "busybox-static",
];

/// The podman configuration this project uses, relative to the workspace
/// root; commands get it through `CONTAINERS_CONF` (see [`containers_conf`]).
pub const CONTAINERS_CONF: &str = "deploy/podman/containers.conf";

/// The Rust target of the static `sgctl` in the sidecar image.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// bpf-linker must link against the LLVM of the nightly that builds sg-ebpf.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn step(msg: &str) {
    eprintln!("setup: {msg}");
}

/// True when every part of the toolchain is present (cheap checks only).
pub fn toolchain_ready() -> bool {
    bpf_linker_works()
        && rust_src_installed()
        && missing_packages(PACKAGES).is_empty()
        && podman_ready()
}

/// The container part: packages present, our containers.conf in place,
/// `podman` runs, the musl target installed.
pub fn podman_ready() -> bool {
    missing_packages(CONTAINER_PACKAGES).is_empty()
        && containers_conf().is_file()
        && podman_version().is_ok()
        && musl_target_installed()
}

/// The absolute path of [`CONTAINERS_CONF`].
pub fn containers_conf() -> PathBuf {
    crate::workspace_root().join(CONTAINERS_CONF)
}

/// A `podman` command with the project's containers.conf.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", containers_conf());
    cmd
}

pub fn run() -> Result<()> {
    let root = is_root();
    if !root {
        step(
            "not running as root: packages, bpffs and the kernel tests need root (run `sudo cargo xtask setup`)",
        );
    }
    install_packages(PACKAGES, "debian packages", root)?;
    install_rust_src()?;
    install_bpf_linker()?;
    check_kernel(root)?;
    // Last: the core toolchain above is usable even when this part fails.
    install_packages(CONTAINER_PACKAGES, "container packages", root)?;
    check_podman(root)?;
    install_musl_target()?;
    step("done: toolchain, packages, podman and kernel features are ready");
    Ok(())
}

fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|pkg| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn install_packages(packages: &[&'static str], what: &str, root: bool) -> Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        step(&format!("{what} present ({})", packages.join(" ")));
        return Ok(());
    }
    if !root {
        bail!(
            "missing packages: {}; install them with `sudo apt-get update && sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(&format!("installing {} (apt-get)", missing.join(" ")));
    run_cmd(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {}", missing.join(" ")),
    )
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn install_rust_src() -> Result<()> {
    if rust_src_installed() {
        step("nightly rust-src present");
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
    run_cmd(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src --toolchain nightly",
    )
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

/// A directory whose lib/ holds nightly's libLLVM under the names the
/// bpf-linker build (libLLVM.so) and its runtime loader (the soname) look for.
fn llvm_prefix() -> Result<PathBuf> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly --print sysroot`: is the nightly toolchain installed?")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("rust"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.*-rust-* under {}; the nightly toolchain ships it (reinstall nightly's rustc component)",
                lib.display()
            )
        })?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".local/share/sg-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let soname = llvm.file_name().expect("a file");
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.display()))?;
    }
    Ok(prefix)
}

fn install_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        step(&format!(
            "bpf-linker {BPF_LINKER_VERSION} present and working"
        ));
        return Ok(());
    }
    let prefix = llvm_prefix()?;
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM ({}) — about a minute",
        prefix.display()
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ])
            .env("LLVM_PREFIX", &prefix)
            .env("LLVM_SYS_221_PREFIX", &prefix),
        "cargo install bpf-linker",
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails; is ~/.cargo/bin on PATH? \
             check `ldd $(which bpf-linker)` for a missing libLLVM"
        );
    }
    Ok(())
}

fn podman_version() -> Result<String> {
    let out = podman()
        .arg("--version")
        .output()
        .context("could not start `podman --version`")?;
    if !out.status.success() {
        bail!(
            "`podman --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// podman runs with our containers.conf and picked its runtime and network
/// backend from it (a typo there would silently fall back to crun).
fn check_podman(root: bool) -> Result<()> {
    let conf = containers_conf();
    if !conf.is_file() {
        bail!(
            "{} is missing; it is part of the repository (git checkout -- {CONTAINERS_CONF})",
            conf.display()
        );
    }
    let version = podman_version()?;
    if !root {
        step(&format!(
            "{version} installed; the sidecar test and `cargo xtask image` need root"
        ));
        return Ok(());
    }
    let out = podman()
        .args([
            "info",
            "--format",
            "{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}}",
        ])
        .output()
        .context("could not start `podman info`")?;
    let info = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "`CONTAINERS_CONF={} podman info` failed: {}",
            conf.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if info != "runc cni" {
        bail!(
            "podman uses runtime and network backend `{info}`, expected `runc cni` from {}; \
             is CONTAINERS_CONF overridden, or runc/containernetworking-plugins missing?",
            conf.display()
        );
    }
    step(&format!(
        "{version} ready (runtime runc, network backend cni, CONTAINERS_CONF={})",
        conf.display()
    ));
    Ok(())
}

fn musl_target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == MUSL_TARGET)
        })
}

fn install_musl_target() -> Result<()> {
    if musl_target_installed() {
        step(&format!("rust target {MUSL_TARGET} present (static sgctl)"));
        return Ok(());
    }
    step(&format!(
        "adding rust target {MUSL_TARGET} (the sidecar image's static sgctl)"
    ));
    run_cmd(
        Command::new("rustup").args(["target", "add", MUSL_TARGET]),
        &format!("rustup target add {MUSL_TARGET}"),
    )
}

fn check_kernel(root: bool) -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("/sys/kernel/btf/vmlinux is missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y");
    }
    step("kernel BTF present (/sys/kernel/btf/vmlinux)");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        step("bpffs mounted at /sys/fs/bpf");
    } else if root {
        step("mounting bpffs at /sys/fs/bpf");
        run_cmd(
            Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
            "mount -t bpf bpf /sys/fs/bpf",
        )?;
    } else {
        step("bpffs is not mounted; as root run `mount -t bpf bpf /sys/fs/bpf`");
    }
    Ok(())
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{what}`"))?;
    if !status.success() {
        bail!(
            "`{what}` failed ({status}); run it by hand to see why, then `cargo xtask setup` again"
        );
    }
    Ok(())
}
