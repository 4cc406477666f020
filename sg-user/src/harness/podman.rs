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
