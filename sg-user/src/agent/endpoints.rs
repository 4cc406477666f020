//! Workload endpoints registered by a container runtime (through the CNI
//! plugin and the daemon): a container's host-side veth, protected as
//! `side: peer`, whose addresses are members of its groups.
//!
//! The daemon is their one writer. Each registration is a file of its own in
//! the state directory (`endpoints/CONTAINER_ID.json`, written atomically,
//! 0600), so a daemon killed at any moment leaves every registration either
//! complete or absent, and a restarted daemon enforces exactly what was
//! registered. Registrations enter the model as attachments: they are
//! validated with the config (unknown groups, quotas) like any interface.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    model::{Attachment, config::WorkloadRef, types::Side},
    sys::private_dir,
};

/// Where `sg-cni` finds the daemon unless its config names a socket.
pub const DEFAULT_SOCKET: &str = "/run/sgctl/agent.sock";

/// The largest request the daemon reads (an endpoint is a few hundred bytes).
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;

/// What a runtime's plugin asks the daemon, one JSON line per connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Enforce `endpoint` and add its addresses to its groups; answered once
    /// both are in the kernel.
    Add { endpoint: Endpoint },
    /// Forget the container: detach its interface, remove its addresses
    /// from its groups. Succeeds when it is not registered.
    Del { container_id: String },
    /// Whether the container's enforcement is in place.
    Check { container_id: String },
}

impl Request {
    /// The command and container id, for logs.
    pub fn summary(&self) -> String {
        match self {
            Request::Add { endpoint } => format!("ADD {}", endpoint.container_id),
            Request::Del { container_id } => format!("DEL {container_id}"),
            Request::Check { container_id } => format!("CHECK {container_id}"),
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
        }
    }
}

/// Sends `request` to the daemon at `socket` and waits up to `timeout` for
/// its answer.
///
/// # Errors
/// The daemon is not reachable (the message says so and names the socket),
/// or answered something unreadable.
pub fn call(
    socket: &Path,
    request: &Request,
    timeout: std::time::Duration,
) -> io::Result<Response> {
    use std::io::{BufRead as _, Write as _};
    let unreachable = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "the sgctl daemon is not reachable at {}: {e}; start it with `sgctl run -c FILE --socket {}`",
                socket.display(),
                socket.display()
            ),
        )
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    serde_json::from_str(&answer).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the daemon at {} answered `{}`: {e}",
                socket.display(),
                answer.trim()
            ),
        )
    })
}

/// One registered workload endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The runtime's container id (`CNI_CONTAINERID`): the registration's key.
    pub container_id: String,
    /// The host side of the container's veth, in the daemon's namespace.
    pub iface: String,
    /// The container's network namespace (`CNI_NETNS`).
    pub container_netns: String,
    /// The container's addresses (the previous plugin's `ips`).
    pub addresses: Vec<IpAddr>,
    /// Its own security groups (the pod annotation); when empty the
    /// daemon's `workloads:` decide by `name`, else `network_groups`.
    pub groups: Vec<String>,
    /// The container's name when the runtime gave one (`K8S_POD_NAME`).
    #[serde(default)]
    pub name: Option<String>,
    /// The network config's `securityGroups`.
    #[serde(default)]
    pub network_groups: Vec<String>,
}

impl Endpoint {
    /// The interface this endpoint adds to the model: its veth, protected
    /// from the host side, with its addresses declared (so they are members
    /// of its groups wherever a rule references them).
    pub fn attachment(&self) -> Attachment {
        Attachment {
            iface: self.iface.clone(),
            netns: None,
            groups: self.groups.clone(),
            side: Some(Side::Peer),
            addresses: self.addresses.clone(),
            source: Some(format!("CNI endpoint {}", self.container_id)),
            workload: Some(WorkloadRef {
                name: self.name.clone(),
                network_groups: self.network_groups.clone(),
            }),
        }
    }
}

impl Endpoint {
    /// Whether the container is gone: its host veth no longer exists in
    /// this namespace and its namespace's path no longer exists. Both, so
    /// that a daemon that cannot see the runtime's namespace paths (another
    /// mount namespace) never forgets a live container.
    pub fn is_gone(&self) -> bool {
        crate::sys::ifinfo::index_of(&self.iface).is_none()
            && !Path::new(&self.container_netns).exists()
    }
}

/// The registered container whose veth is `iface` (in the daemon's
/// namespace), in any config's registrations under `state_dir`: what
/// `sgctl status` shows beside the veth's name.
pub fn container_on(state_dir: &Path, iface: &str) -> Option<Endpoint> {
    std::fs::read_dir(state_dir)
        .ok()?
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("endpoints-"))
        .filter_map(|d| Registry::open(&d.path()).ok()?.list().ok())
        .flatten()
        .find(|e| e.iface == iface)
}

/// Why a container id cannot name a registration.
#[derive(Debug, thiserror::Error)]
#[error(
    "container id `{0}`: expected 1–256 letters, digits, `-`, `_` or `.`, not starting with `.` (the CNI spec's rule)"
)]
pub struct BadContainerId(pub String);

/// Checks a container id before it becomes a file name: the CNI spec allows
/// only letters, digits, `-`, `_` and `.`, so no id can name a path outside
/// the registrations' directory.
///
/// # Errors
/// The id breaks that rule.
pub fn check_container_id(id: &str) -> Result<(), BadContainerId> {
    if crate::sys::is_plain_name(id, 256) {
        Ok(())
    } else {
        Err(BadContainerId(id.to_owned()))
    }
}

/// The registrations on disk.
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registrations kept in `dir`, creating it (root-owned, 0700) when
    /// missing.
    ///
    /// # Errors
    /// The directory cannot be created or trusted.
    pub fn open(dir: &Path) -> Result<Registry, private_dir::PrivateDirError> {
        private_dir::ensure(dir)?;
        Ok(Registry {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.json"))
    }

    /// Every registration, by container id. A file that cannot be read is an
    /// error naming it (enforcing less than was registered is not an
    /// option); leftover temporary files are passed over.
    ///
    /// # Errors
    /// Reading the directory or a registration failed.
    pub fn list(&self) -> io::Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read(&path)?;
            let endpoint: Endpoint = serde_json::from_slice(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {e}; remove the file if the container is gone",
                        path.display()
                    ),
                )
            })?;
            out.push(endpoint);
        }
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(out)
    }

    /// The registration of `container_id`, if any.
    ///
    /// # Errors
    /// The id is invalid, or the file cannot be read.
    pub fn get(&self, container_id: &str) -> io::Result<Option<Endpoint>> {
        check_container_id(container_id).map_err(io::Error::other)?;
        match std::fs::read(self.path(container_id)) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records `endpoint` (replacing a registration of the same container).
    ///
    /// # Errors
    /// The id is invalid, or writing failed.
    pub fn put(&self, endpoint: &Endpoint) -> io::Result<()> {
        check_container_id(&endpoint.container_id).map_err(io::Error::other)?;
        let bytes = serde_json::to_vec_pretty(endpoint).map_err(io::Error::other)?;
        private_dir::write_state_file(&self.path(&endpoint.container_id), &bytes)
    }

    /// Removes the registrations' directory when nothing is registered (a
    /// stopping daemon leaves no empty directory per config behind).
    pub fn remove_dir_if_empty(&self) {
        // `remove_dir` refuses a directory that is not empty.
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Forgets `container_id`; true when it was registered. Removing what is
    /// not there succeeds (a runtime may DEL twice).
    ///
    /// # Errors
    /// The id is invalid, or removing failed.
    pub fn remove(&self, container_id: &str) -> io::Result<bool> {
        check_container_id(container_id).map_err(io::Error::other)?;
        match std::fs::remove_file(self.path(container_id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(id: &str) -> Endpoint {
        Endpoint {
            container_id: id.into(),
            iface: "veth1234".into(),
            container_netns: "/run/netns/netns-1".into(),
            addresses: vec!["198.18.101.2".parse().unwrap()],
            groups: vec!["sg-web".into()],
            name: Some("web".into()),
            network_groups: vec![],
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-endpoints-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn container_ids_cannot_name_paths() {
        for good in ["abc123", "a-b_c.d", &"f".repeat(64)] {
            assert!(check_container_id(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b", "é", &"f".repeat(257)] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn registrations_survive_a_new_registry_and_removing_twice_succeeds() {
        // The registry's directory must be root-owned (see `private_dir`).
        crate::require_root!();
        let dir = scratch("persist");
        let reg = Registry::open(&dir).expect("open");
        reg.put(&web("c1")).unwrap();
        reg.put(&web("c0")).unwrap();
        // A daemon restarted: a new registry over the same directory.
        let again = Registry::open(&dir).expect("reopen");
        let ids: Vec<String> = again
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.container_id)
            .collect();
        assert_eq!(ids, ["c0", "c1"]);
        assert_eq!(again.get("c1").unwrap(), Some(web("c1")));
        assert!(again.remove("c1").unwrap());
        assert!(!again.remove("c1").unwrap(), "second DEL: nothing to do");
        assert_eq!(again.get("c1").unwrap(), None);
        assert!(again.put(&web("../escape")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_endpoint_is_a_peer_side_interface_with_its_addresses() {
        let yaml = "security_groups:\n  - id: sg-web\n    ingress:\n      - { protocol: tcp, ports: 80, group: sg-web }\n";
        let model = crate::model::from_str(yaml, &[web("c1").attachment()]).expect("valid");
        let iface = &model.interfaces[0];
        assert_eq!(iface.name, "veth1234");
        assert_eq!(iface.side, Side::Peer);
        assert_eq!(
            iface.addresses.as_deref(),
            Some(&["198.18.101.2".parse::<IpAddr>().unwrap()][..])
        );
        let unknown = Endpoint {
            groups: vec!["sg-nope".into()],
            ..web("c2")
        };
        let problems =
            crate::model::from_str(yaml, &[unknown.attachment()]).expect_err("unknown group");
        assert!(
            problems
                .iter()
                .any(|p| p.to_string().contains("sg-nope")
                    && p.to_string().contains("CNI endpoint c2")),
            "{problems:#?}"
        );
    }

    #[test]
    fn groups_come_from_the_endpoint_then_workloads_then_the_network() {
        let yaml = "security_groups:\n  - { id: sg-web, ingress: [] }\n  - { id: sg-db, ingress: [] }\n  - { id: sg-net, ingress: [] }\nworkloads:\n  - { name: db-*, security_groups: [sg-db] }\n  - { name: '*', security_groups: [sg-web] }\n";
        let groups_of = |e: Endpoint| {
            crate::model::from_str(yaml, &[e.attachment()])
                .expect("valid")
                .interfaces[0]
                .groups
                .clone()
        };
        let named = |name: Option<&str>, own: &[&str], net: &[&str]| Endpoint {
            name: name.map(str::to_owned),
            groups: own.iter().map(|g| (*g).to_owned()).collect(),
            network_groups: net.iter().map(|g| (*g).to_owned()).collect(),
            ..web("c1")
        };
        assert_eq!(groups_of(named(Some("db-1"), &["sg-net"], &[])), ["sg-net"]);
        assert_eq!(groups_of(named(Some("db-1"), &[], &["sg-net"])), ["sg-db"]);
        assert_eq!(groups_of(named(Some("web"), &[], &["sg-net"])), ["sg-web"]);
        assert_eq!(groups_of(named(None, &[], &["sg-net"])), ["sg-net"]);
        // Nothing names a group and there is no `default`: refused, saying how to fix it.
        let bare = "security_groups:\n  - { id: sg-web, ingress: [] }\n";
        let problems = crate::model::from_str(bare, &[named(Some("web"), &[], &[]).attachment()])
            .expect_err("no groups");
        assert!(
            problems.iter().any(|p| p
                .to_string()
                .contains("container web has no security groups")
                && p.to_string().contains("workloads:")),
            "{problems:#?}"
        );
        // A workload naming an unknown group is an error of the config.
        let typo =
            "security_groups: []\nworkloads:\n  - { name: web, security_groups: [sg-nope] }\n";
        let problems = crate::model::from_str(typo, &[]).expect_err("unknown group");
        assert!(
            problems.iter().any(|p| p.to_string().contains("sg-nope")),
            "{problems:#?}"
        );
    }
}
