//! Drift: where the kernel no longer matches what sgctl set up for an
//! interface — a hook or pin removed out of band, the interface deleted and
//! created again, its namespace deleted. `sgctl apply` repairs what it finds
//! (the interface is attached anew, policy written before the hooks), `sgctl
//! status` shows it with the command that repairs or removes it.

use std::path::Path;

use crate::{
    apply::IfaceState,
    loader::STATE_MAPS,
    pins::{self, IfaceId},
    policy_maps::POLICY_MAPS,
};

/// One way an attached interface has drifted from what sgctl set up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// Its named namespace was deleted (`ip netns del`): the interface and
    /// its hooks are gone, only the pins are left.
    NamespaceGone { netns: String },
    /// The interface does not exist any more.
    InterfaceGone,
    /// The interface was deleted and created again: the hooks went with the
    /// old device, the new one is not enforced.
    Recreated { attached_ifindex: u32, ifindex: u32 },
    /// A hook's link pin is missing: that direction is not enforced.
    HookMissing { direction: &'static str },
    /// Pinned maps are missing: sgctl cannot update or read the policy.
    PinsMissing { names: Vec<String> },
    /// The data plane has no endpoint for the interface: its hooks drop
    /// everything (fail closed).
    EndpointMissing,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::NamespaceGone { netns } => write!(f, "namespace {netns} was deleted"),
            Drift::InterfaceGone => write!(f, "the interface no longer exists"),
            Drift::Recreated {
                attached_ifindex,
                ifindex,
            } => write!(
                f,
                "the interface was created again (index {attached_ifindex} → {ifindex}) and is not enforced"
            ),
            Drift::HookMissing { direction } => {
                write!(
                    f,
                    "the {direction} hook is missing: {direction} is not enforced"
                )
            }
            Drift::PinsMissing { names } => write!(f, "pinned maps missing: {}", names.join(", ")),
            Drift::EndpointMissing => write!(
                f,
                "the data plane has no endpoint for it: its hooks drop all its traffic"
            ),
        }
    }
}

impl Drift {
    /// True when the interface itself is gone (nothing to repair, only the
    /// leftovers to remove).
    pub fn is_gone(&self) -> bool {
        matches!(self, Drift::NamespaceGone { .. } | Drift::InterfaceGone)
    }
}

/// The interface's index in its namespace, if both exist.
pub fn ifindex_of(id: &IfaceId) -> Option<u32> {
    let name = std::ffi::CString::new(id.iface.as_str()).ok()?;
    // SAFETY: a valid C string; if_nametoindex only reads it.
    let index =
        crate::loader::in_iface_netns(id, || unsafe { libc::if_nametoindex(name.as_ptr()) })
            .ok()?;
    (index != 0).then_some(index)
}

/// How the pinned interface `id` differs from what was set up; empty when it
/// is intact. `state` is what `apply` recorded (none for `sgctl attach`).
pub fn check(id: &IfaceId, state: Option<&IfaceState>) -> Vec<Drift> {
    check_with(id, state, None)
}

/// [`check`], told whether the interface has an endpoint (`None`: look it up).
pub fn check_with(
    id: &IfaceId,
    state: Option<&IfaceState>,
    has_endpoint: Option<bool>,
) -> Vec<Drift> {
    if let Some(ns) = &id.netns
        && crate::pins::NsIdent::named(ns).ok() != Some(id.ns)
    {
        return vec![Drift::NamespaceGone { netns: ns.clone() }];
    }
    if id.netns.is_none() && id.netns_path().is_err() {
        return vec![Drift::NamespaceGone {
            netns: format!("netns:{}", id.ns.ino),
        }];
    }
    let Some(ifindex) = ifindex_of(id) else {
        return vec![Drift::InterfaceGone];
    };
    let mut found = Vec::new();
    if let Some(s) = state
        && s.ifindex != 0
        && s.ifindex != ifindex
    {
        found.push(Drift::Recreated {
            attached_ifindex: s.ifindex,
            ifindex,
        });
    }
    found.extend(missing_pins_with(id, has_endpoint));
    found
}

/// Hooks missing from the interface's pin directory, maps missing from the
/// data plane, and a missing endpoint.
pub fn missing_pins(id: &IfaceId) -> Vec<Drift> {
    missing_pins_with(id, None)
}

fn missing_pins_with(id: &IfaceId, has_endpoint: Option<bool>) -> Vec<Drift> {
    let names: Vec<String> = std::fs::read_dir(id.dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut found = Vec::new();
    for direction in ["ingress", "egress"] {
        let prefix = format!("{}{direction}-", pins::LINK_PREFIX);
        if !names.iter().any(|n| n.starts_with(&prefix)) {
            found.push(Drift::HookMissing { direction });
        }
    }
    let maps: Vec<String> = POLICY_MAPS
        .iter()
        .chain(STATE_MAPS.iter())
        .filter(|m| !Path::new(pins::MAPS_DIR).join(m).exists())
        .map(|m| m.to_string())
        .collect();
    if !maps.is_empty() {
        found.push(Drift::PinsMissing { names: maps });
    } else if !has_endpoint.unwrap_or_else(|| crate::loader::endpoint(id).is_ok()) {
        found.push(Drift::EndpointMissing);
    }
    found
}

/// The one command that repairs `drift` of `id` (or removes its leftovers).
pub fn fix_command(id: &IfaceId, state: Option<&IfaceState>, drift: &[Drift]) -> String {
    let detach = id.detach_command();
    if drift.iter().any(Drift::is_gone) {
        return detach;
    }
    match state.and_then(|s| s.config.as_ref()) {
        Some(config) => format!("sgctl apply -c {}", config.display()),
        // Attached by `sgctl attach` (observe mode): no config to re-apply.
        None => format!("{detach} && sgctl attach {}", id.cli_args()),
    }
}
