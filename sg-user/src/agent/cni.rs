//! The CNI plugin's logic (`sg-cni`, chained after a plugin that creates the
//! container's veth: bridge, ptp). It decides nothing itself: it reads what
//! the runtime and the previous plugin say (environment, network config,
//! `prevResult`), checks that the interface it names really is the host end
//! of the container's veth, and asks the daemon (see
//! [`crate::agent::endpoints`]) to enforce it before the container starts.
//! Spec versions 0.4.0 and 1.0.0 results (podman's CNI backend writes
//! 0.4.0); small serde handling of our own rather than a crate: the plugin
//! reads five fields and must hand `prevResult` on unchanged, which raw JSON
//! does exactly.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use crate::agent::endpoints::{self, DEFAULT_SOCKET, Endpoint, Request};

/// The spec versions whose configs and results this plugin reads.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

pub use crate::model::config::GROUPS_ANNOTATION;

/// How long ADD waits for the daemon (it answers once enforcement is in).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI error: the spec's code, message and details.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// Well-known codes (CNI spec, "Error"), and ours from 100.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_CONFIG: u32 = 4;
    pub const INVALID_ENV: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The daemon refused the request (its message says why).
    pub const REFUSED: u32 = 100;
    /// The interfaces in `prevResult` are not a veth into the container.
    pub const NOT_A_VETH: u32 = 101;
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error document the spec asks for on stdout.
    pub fn to_json(&self, version: &str) -> String {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

/// What the runtime passed in the environment.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`).
    pub args: String,
}

impl Env {
    /// Reads the `CNI_*` variables through `var`.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Env {
        let get = |k: &str| var(k).unwrap_or_default();
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }

    /// A `CNI_ARGS` value (`K8S_POD_NAME`: the container's name under podman).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The plugin's answer: stdout text and exit status.
pub struct Outcome {
    pub stdout: String,
    pub status: i32,
}

/// Runs one plugin invocation. `config` is stdin (the network config).
pub fn run(env: &Env, config: &[u8]) -> Outcome {
    if env.command == "VERSION" {
        return Outcome {
            stdout: json!({
                "cniVersion": "1.0.0",
                "supportedVersions": SUPPORTED_VERSIONS,
            })
            .to_string(),
            status: 0,
        };
    }
    let parsed: Result<Value, _> = serde_json::from_slice(config);
    let version = parsed
        .as_ref()
        .ok()
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .unwrap_or("1.0.0")
        .to_owned();
    let result = parsed
        .map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "the network config is not JSON",
                e.to_string(),
            )
        })
        .and_then(|config| invoke(env, &config, &version));
    match result {
        Ok(stdout) => Outcome { stdout, status: 0 },
        Err(e) => Outcome {
            stdout: e.to_json(&version),
            status: 1,
        },
    }
}

fn invoke(env: &Env, config: &Value, version: &str) -> Result<String, CniError> {
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version} is not supported"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    endpoints::check_container_id(&env.container_id).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            "CNI_CONTAINERID is invalid",
            e.to_string(),
        )
    })?;
    let socket = config
        .get("socket")
        .and_then(Value::as_str)
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    match env.command.as_str() {
        "ADD" => {
            let prev = config.get("prevResult").ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "no prevResult: sg-cni must be chained after a plugin that creates the veth (bridge, ptp)",
                    "",
                )
            })?;
            let endpoint = endpoint(env, config, prev)?;
            ask(&socket, Request::Add { endpoint })?;
            // Later plugins see the previous result unchanged.
            let mut out = prev.clone();
            if let Some(o) = out.as_object_mut() {
                o.insert("cniVersion".into(), Value::String(version.into()));
            }
            Ok(out.to_string())
        }
        "DEL" => {
            ask(
                &socket,
                Request::Del {
                    container_id: env.container_id.clone(),
                },
            )?;
            Ok(String::new())
        }
        "CHECK" => {
            ask(
                &socket,
                Request::Check {
                    container_id: env.container_id.clone(),
                },
            )?;
            Ok(String::new())
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND `{other}` is not one of ADD, DEL, CHECK, VERSION"),
            "",
        )),
    }
}

fn ask(socket: &Path, request: Request) -> Result<(), CniError> {
    let unreachable = match request {
        Request::Add { .. } => {
            "the sgctl daemon is not reachable: the container is not started unprotected"
        }
        Request::Del { .. } => {
            "the sgctl daemon is not reachable: the container's enforcement and membership stay until it runs again (it then forgets containers that are gone)"
        }
        Request::Check { .. } => {
            "the sgctl daemon is not reachable: cannot check the container's enforcement"
        }
    };
    let answer = endpoints::call(socket, &request, DAEMON_TIMEOUT)
        .map_err(|e| CniError::new(code::TRY_AGAIN_LATER, unreachable, e.to_string()))?;
    if answer.ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::REFUSED,
            "the sgctl daemon refused the container",
            answer.error.unwrap_or_default(),
        ))
    }
}

/// The container's own groups: the pod annotation, when the runtime passes
/// one. Without them the daemon decides (its `workloads:`, else the
/// network's groups).
fn annotated_groups(config: &Value) -> Vec<String> {
    config
        .pointer("/runtimeConfig/io.kubernetes.cri.pod-annotations")
        .and_then(|a| a.get(GROUPS_ANNOTATION))
        .and_then(Value::as_str)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The network config's `securityGroups`: every container's groups unless
/// its annotation or the daemon's `workloads:` name others.
fn network_groups(config: &Value) -> Vec<String> {
    config
        .get("securityGroups")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The registration `prevResult` describes: the host end of the
/// container's veth (the interface without `sandbox` whose index is the
/// peer of `CNI_IFNAME` in `CNI_NETNS`: never the bridge, nor another
/// container's veth) and the container's addresses.
fn endpoint(env: &Env, config: &Value, prev: &Value) -> Result<Endpoint, CniError> {
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host_side: Vec<String> = interfaces
        .iter()
        .filter(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let container_peer = peer_ifindex_in(&env.netns, &env.ifname)?;
    let iface = host_side
        .into_iter()
        .find(|name| crate::sys::ifinfo::index_of(name) == Some(container_peer))
        .ok_or_else(|| {
            CniError::new(
                code::NOT_A_VETH,
                "prevResult names no host interface whose peer is the container's",
                format!(
                    "{} in {} is not one end of a veth listed in prevResult (without a sandbox)",
                    env.ifname, env.netns
                ),
            )
        })?;
    let addresses: Vec<IpAddr> = prev
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if addresses.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult gives the container no address",
            "chain sg-cni after a plugin with IPAM (bridge, ptp)",
        ));
    }
    Ok(Endpoint {
        container_id: env.container_id.clone(),
        iface,
        container_netns: env.netns.clone(),
        addresses,
        groups: annotated_groups(config),
        name: env.arg("K8S_POD_NAME").map(str::to_owned),
        network_groups: network_groups(config),
    })
}

/// The ifindex, in this namespace, of the peer of `ifname` in `netns`
/// (asked inside `netns` with an ioctl: /sys would show another namespace).
fn peer_ifindex_in(netns: &str, ifname: &str) -> Result<u32, CniError> {
    let bad = |details: String| {
        CniError::new(
            code::NOT_A_VETH,
            format!("cannot find the peer of {ifname} in {netns}"),
            details,
        )
    };
    let ifname_owned = ifname.to_owned();
    crate::sys::netns::in_netns_path(Path::new(netns), move || {
        crate::sys::ifinfo::veth_peer_index(&ifname_owned)
    })
    .map_err(|e| bad(e.to_string()))?
    .map_err(|e| bad(e.to_string()))?
    .ok_or_else(|| bad(format!("{ifname} is not a veth")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "ctr1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAME=web".into(),
        }
    }

    #[test]
    fn version_lists_the_spec_versions() {
        let out = run(&env("VERSION"), b"");
        assert_eq!(out.status, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let listed: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            listed.contains(&"0.4.0") && listed.contains(&"1.0.0"),
            "{listed:?}"
        );
    }

    #[test]
    fn errors_are_spec_documents() {
        let out = run(
            &env("ADD"),
            br#"{"cniVersion":"0.4.0","name":"n","type":"sg-cni"}"#,
        );
        assert_eq!(out.status, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], code::INVALID_CONFIG);
        assert!(v["msg"].as_str().unwrap().contains("prevResult"), "{v}");
        let out = run(&env("ADD"), b"not json");
        assert_eq!(out.status, 1);
        let out = run(&env("ADD"), br#"{"cniVersion":"9.9.9"}"#);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn the_annotation_and_the_network_groups_are_read_apart() {
        let config = json!({
            "securityGroups": ["sg-net"],
            "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {GROUPS_ANNOTATION: "sg-a, sg-b"}},
        });
        assert_eq!(annotated_groups(&config), ["sg-a", "sg-b"]);
        assert_eq!(network_groups(&config), ["sg-net"]);
        assert!(annotated_groups(&json!({"securityGroups": ["sg-net"]})).is_empty());
        assert!(network_groups(&json!({})).is_empty());
        assert_eq!(env("ADD").arg("K8S_POD_NAME"), Some("web"));
    }

    #[test]
    fn a_daemon_that_is_down_fails_the_add() {
        let config = json!({
            "cniVersion": "1.0.0",
            "socket": "/nonexistent/sg/agent.sock",
        });
        let out = run(&env("DEL"), config.to_string().as_bytes());
        assert_eq!(out.status, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], code::TRY_AGAIN_LATER, "{v}");
    }
}
