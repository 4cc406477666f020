//! podman with its CNI backend and `sg-cni`, for the container tests and
//! the container benchmark: a containers.conf that keeps the project's
//! settings but looks up plugins and network configs in directories of the
//! caller's (so /etc stays untouched), and `sg-cni` chained last in the
//! conflist podman writes.

use std::{io, path::Path};

/// `project` (the text of deploy/podman/containers.conf) with podman's CNI
/// plugin and network-config directories set to `plugins` (searched before
/// the distribution's) and `net_d`.
pub fn containers_conf_with_cni_dirs(project: &str, plugins: &Path, net_d: &Path) -> String {
    project.replace(
        "[network]\n",
        &format!(
            "[network]\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
            plugins.display(),
            net_d.display()
        ),
    )
}

/// Appends `{"type": "sg-cni", "socket": socket}` to the plugins of the
/// conflist podman wrote for `network` under `net_d`.
///
/// # Errors
/// The conflist cannot be read, parsed or written.
pub fn chain_sg_cni(net_d: &Path, network: &str, socket: &Path) -> io::Result<()> {
    let path = net_d.join(format!("{network}.conflist"));
    let mut list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path)?).map_err(io::Error::other)?;
    list["plugins"]
        .as_array_mut()
        .ok_or_else(|| io::Error::other(format!("{}: no plugins", path.display())))?
        .push(serde_json::json!({"type": "sg-cni", "socket": socket}));
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&list).map_err(io::Error::other)?,
    )
}

/// A rootfs of busybox-static's binary and `applets` (links to it), packed
/// as `dir/rootfs.tar` for `podman import` (an image without a registry).
///
/// # Errors
/// `/bin/busybox` is missing (`cargo xtask setup` installs busybox-static),
/// or building or packing the rootfs failed.
pub fn busybox_rootfs_tar(dir: &Path, applets: &[&str]) -> io::Result<std::path::PathBuf> {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("/bin/busybox (busybox-static; `cargo xtask setup` installs it): {e}"),
        )
    })?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let tar = dir.join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "tar of the busybox rootfs failed ({status})"
        )));
    }
    Ok(tar)
}
