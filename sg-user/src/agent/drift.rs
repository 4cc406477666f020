//! Drift: where the kernel no longer matches what sgctl set up for an
//! interface — a hook or pin removed out of band, the interface deleted and
//! created again, its namespace deleted. `sgctl apply` repairs what it finds
//! (the interface is attached anew, policy written before the hooks), `sgctl
//! status` shows it with the command that repairs or removes it.

use std::path::Path;

use crate::{
    agent::state::IfaceState,
    kernel::loader::STATE_MAPS,
    kernel::pins::{self, IfaceId},
    kernel::policy_maps::POLICY_MAPS,
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
    let index = crate::kernel::loader::in_iface_netns(id, || unsafe {
        libc::if_nametoindex(name.as_ptr())
    })
    .ok()?;
    (index != 0).then_some(index)
}

/// How the pinned interface `id` differs from what was set up; empty when it
/// is intact. `state` is what `apply` recorded (none for `sgctl attach`).
pub fn check(id: &IfaceId, state: Option<&IfaceState>) -> Vec<Drift> {
    check_with(id, state, None)
}

/// What a caller checking many interfaces already knows (`sgctl apply`).
#[derive(Clone, Copy, Debug)]
pub struct Known {
    /// The interface's index now (`None`: it or its namespace is gone).
    pub ifindex: Option<u32>,
    pub has_endpoint: bool,
    /// Every map pin of the data plane is in place.
    pub maps_pinned: bool,
}

/// [`check`] with what the caller knows: no namespace entered, no map pin
/// looked at.
pub fn check_known(id: &IfaceId, state: Option<&IfaceState>, known: Known) -> Vec<Drift> {
    if let Some(ns) = &id.netns
        && known.ifindex.is_none()
        && id.namespace_gone()
    {
        return vec![Drift::NamespaceGone { netns: ns.clone() }];
    }
    let Some(ifindex) = known.ifindex else {
        return vec![Drift::InterfaceGone];
    };
    let mut found: Vec<Drift> = recreated(state, ifindex).into_iter().collect();
    found.extend(hooks_missing(id));
    if !known.maps_pinned {
        found.push(Drift::PinsMissing {
            names: missing_maps(),
        });
    } else if !known.has_endpoint {
        found.push(Drift::EndpointMissing);
    }
    found
}

/// The interface has another index than the one it was attached under.
fn recreated(state: Option<&IfaceState>, ifindex: u32) -> Option<Drift> {
    state
        .filter(|s| s.ifindex != 0 && s.ifindex != ifindex)
        .map(|s| Drift::Recreated {
            attached_ifindex: s.ifindex,
            ifindex,
        })
}

/// Map pins of the data plane that are missing.
pub fn missing_maps() -> Vec<String> {
    POLICY_MAPS
        .iter()
        .chain(STATE_MAPS.iter())
        .filter(|m| !Path::new(pins::MAPS_DIR).join(m).exists())
        .map(|m| m.to_string())
        .collect()
}

/// Hooks missing from the interface's link directory.
fn hooks_missing(id: &IfaceId) -> Vec<Drift> {
    ["ingress", "egress"]
        .into_iter()
        .filter(|direction| !crate::kernel::loader::has_link_pin(id, direction))
        .map(|direction| Drift::HookMissing { direction })
        .collect()
}

/// The indexes of `ids` now: one visit per namespace.
pub fn ifindexes(ids: &[IfaceId]) -> Vec<Option<u32>> {
    let mut out = vec![None; ids.len()];
    let mut by_ns: std::collections::BTreeMap<
        (Option<&str>, crate::kernel::pins::NsIdent),
        Vec<usize>,
    > = std::collections::BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        by_ns
            .entry((id.netns.as_deref(), id.ns))
            .or_default()
            .push(i);
    }
    for (_, members) in by_ns {
        // One ioctl per interface: a link dump (if_nameindex) fills every
        // link's attributes and costs ~10× more on a namespace of 2,000
        // veth ends.
        let found = crate::kernel::loader::in_iface_netns(&ids[members[0]], || {
            (members.iter())
                .map(|&i| crate::sys::ifinfo::index_of(&ids[i].iface))
                .collect::<Vec<_>>()
        });
        if let Ok(found) = found {
            for (&i, index) in members.iter().zip(found) {
                out[i] = index;
            }
        }
    }
    out
}

/// [`check`], told whether the interface has an endpoint (`None`: look it up).
pub fn check_with(
    id: &IfaceId,
    state: Option<&IfaceState>,
    has_endpoint: Option<bool>,
) -> Vec<Drift> {
    if let Some(ns) = &id.netns
        && id.namespace_gone()
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
    let mut found: Vec<Drift> = recreated(state, ifindex).into_iter().collect();
    found.extend(missing_pins_with(id, has_endpoint));
    found
}

/// Hooks missing from the interface's pin directory, maps missing from the
/// data plane, and a missing endpoint.
pub fn missing_pins(id: &IfaceId) -> Vec<Drift> {
    missing_pins_with(id, None)
}

fn missing_pins_with(id: &IfaceId, has_endpoint: Option<bool>) -> Vec<Drift> {
    let mut found = hooks_missing(id);
    let maps = missing_maps();
    if !maps.is_empty() {
        found.push(Drift::PinsMissing { names: maps });
    } else if !has_endpoint.unwrap_or_else(|| crate::kernel::loader::endpoint(id).is_ok()) {
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
