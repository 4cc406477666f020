//! `cargo xtask image`: the sidecar image, built without a registry.
//!
//! A static `sgctl` (musl target, eBPF object embedded by sg-user's build
//! script) and busybox go into `rootfs/` of a build context next to
//! `deploy/sidecar/Containerfile` (`FROM scratch`); `podman build` tags it.

use std::{os::unix::fs::symlink, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::setup::{self, MUSL_TARGET};

/// The tag the README recipe and the podman sidecar test use.
pub const DEFAULT_TAG: &str = "localhost/sgctl:dev";
const CONTAINERFILE: &str = "deploy/sidecar/Containerfile";
/// busybox-static's binary (setup installs the package).
const BUSYBOX: &str = "/bin/busybox";

pub fn build(tag: &str) -> Result<()> {
    let started = Instant::now();
    crate::cargo(&[
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "--package",
        "sg-user",
        "--bin",
        "sgctl",
    ])
    .with_context(|| {
        format!("building the static sgctl; is the {MUSL_TARGET} target installed (`cargo xtask setup`)?")
    })?;
    let sgctl = crate::target_dir()
        .join(MUSL_TARGET)
        .join("release")
        .join("sgctl");
    let context = crate::target_dir().join("sidecar-image");
    fill_context(&context, &sgctl)?;
    let previous = image_id(tag);
    let mut cmd = setup::podman();
    cmd.args([
        "build",
        "--quiet",
        "--network",
        "none",
        "--tag",
        tag,
        "--file",
    ])
    .arg(context.join("Containerfile"))
    .arg(&context);
    let out = cmd
        .output()
        .context("could not start `podman build` (`cargo xtask setup` installs podman)")?;
    if !out.status.success() {
        bail!(
            "`podman build --tag {tag} {}` failed: {}",
            context.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The image this tag named before (and its layers) would linger untagged.
    if let Some(old) = previous.filter(|old| image_id(tag).as_ref() != Some(old)) {
        let _ = setup::podman().args(["image", "rm", &old]).output();
    }
    let size = setup::podman()
        .args(["image", "inspect", "--format", "{{.Size}}", tag])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    eprintln!(
        "image: {tag} built in {:.0?} ({:.1} MB; from {})",
        started.elapsed(),
        size as f64 / 1e6,
        context.display()
    );
    Ok(())
}

fn image_id(tag: &str) -> Option<String> {
    let out = setup::podman()
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !id.is_empty()).then_some(id)
}

/// `<context>/Containerfile` and `<context>/rootfs/{usr/bin/sgctl, bin/busybox
/// and its applets, etc/sg, run, tmp}`, rebuilt from scratch each time.
fn fill_context(context: &Path, sgctl: &Path) -> Result<()> {
    if context.exists() {
        std::fs::remove_dir_all(context)
            .with_context(|| format!("removing the old build context {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    for dir in ["usr/bin", "bin", "etc/sg", "run", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))
            .with_context(|| format!("creating {}", rootfs.join(dir).display()))?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(
        crate::workspace_root().join(CONTAINERFILE),
        context.join("Containerfile"),
    )
    .with_context(|| format!("copying {CONTAINERFILE}"))?;
    let dest = rootfs.join("usr/bin/sgctl");
    std::fs::copy(sgctl, &dest).with_context(|| format!("copying {}", sgctl.display()))?;
    // Symbols are most of the binary; strip comes with the C toolchain
    // that links Rust programs, but an unstripped sgctl works too.
    match Command::new("strip").arg(&dest).status() {
        Ok(s) if s.success() => {}
        _ => eprintln!("image: `strip` failed or is missing; the image keeps sgctl's symbols"),
    }
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (`cargo xtask setup`)");
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in busybox_applets()? {
        // `sh`, `ls`, `ip`, `nc` …: enough to look around with `podman exec`.
        let link = rootfs.join("bin").join(&applet);
        if !link.exists() {
            symlink("busybox", &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(())
}

fn busybox_applets() -> Result<Vec<String>> {
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running `{BUSYBOX} --list`"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_string)
        .collect())
}
