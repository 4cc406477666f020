//! `sgctl apply`: make the kernel enforce a validated model.
//!
//! Two phases, so bad input changes nothing: first everything is compiled
//! (pure, may fail), then the kernel is changed interface by interface —
//! new interfaces attached with their policy already in the maps, attached
//! ones switched to a new generation atomically, interfaces that left the
//! config (attached by an earlier apply of the same file) detached.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    compile::{self, CompiledPolicy},
    conntrack,
    loader::{self, AttachOptions, InitialPolicy},
    model::{Interface, Model, Side},
    netns::in_netns,
    pins::{self, IfaceId},
    policy_maps::PolicyMaps,
};

/// Loads a config for enforcement: like [`crate::model::load_with`], with
/// interface addresses that are not declared discovered from the kernel (so
/// group references resolve to real addresses).
pub fn load(
    path: &std::path::Path,
    attach: &[crate::model::Attachment],
) -> Result<Model, Vec<crate::model::Problem>> {
    let opts = crate::model::LoadOptions {
        attach,
        discovery: &crate::discover::KernelAddresses,
    };
    crate::model::load_with(path, &opts)
}

/// Where `sgctl` keeps what the kernel cannot: rule names and settings of
/// each attached interface (tmpfs: gone at reboot, like the pins).
pub const STATE_DIR: &str = "/run/sgctl";

/// What `sgctl status` and the daemon need that the kernel does not keep.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IfaceState {
    pub side: String,
    pub groups: Vec<String>,
    pub generation: u32,
    pub config: Option<PathBuf>,
    /// The interface's index when it was attached: a different index now
    /// means it was deleted and created again, and must be attached anew.
    pub ifindex: u32,
    /// Fingerprint of the compiled rules and timeouts; an unchanged policy
    /// is not installed again.
    pub policy_hash: u64,
    /// Rule hash → what the rule is.
    pub rules: BTreeMap<u32, RuleInfo>,
}

/// A rule as `sgctl status` and the metrics name it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: String,
    pub group: String,
    pub description: Option<String>,
}

fn state_path(id: &IfaceId) -> PathBuf {
    let scope = match &id.netns {
        None => "host".to_string(),
        Some(ns) => format!("netns-{ns}"),
    };
    PathBuf::from(STATE_DIR)
        .join(scope)
        .join(format!("{}.json", id.iface))
}

pub fn read_state(id: &IfaceId) -> Option<IfaceState> {
    let text = std::fs::read_to_string(state_path(id)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(id: &IfaceId, state: &IfaceState) -> Result<()> {
    let path = state_path(id);
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn remove_state(id: &IfaceId) {
    let path = state_path(id);
    let _ = std::fs::remove_file(&path);
    if let Some(scope) = path.parent() {
        // Fails harmlessly while other interfaces of the scope remain.
        let _ = std::fs::remove_dir(scope);
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    pub attach: AttachOptions,
    /// Also cut tracked flows the new rules no longer allow.
    pub revoke: bool,
}

/// What happened to one interface.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub iface: String,
    /// attached | updated | unchanged | reattached | absent | detached
    pub action: &'static str,
    pub generation: u32,
    pub revoked: usize,
}

enum Step {
    /// Not attached yet (or must be attached anew): attach with the policy.
    Attach { reattach: bool },
    /// Attached: install the policy as a new generation.
    Update,
    /// Attached with this very policy already.
    Unchanged,
    /// The interface (or its namespace) does not exist here now.
    Absent,
}

struct Plan<'a> {
    iface: &'a Interface,
    id: IfaceId,
    ifindex: u32,
    step: Step,
    policy: CompiledPolicy,
    policy_hash: u64,
    timeouts_s: [u64; sg_common::conntrack::TIMEOUT_SLOTS],
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Host => "host",
        Side::Peer => "peer",
    }
}

/// The interface's index in its namespace, if both exist.
fn ifindex_of(id: &IfaceId) -> Option<u32> {
    let name = std::ffi::CString::new(id.iface.as_str()).ok()?;
    // SAFETY: a valid C string; if_nametoindex only reads it.
    let index = in_netns(id.netns.as_deref(), || unsafe {
        libc::if_nametoindex(name.as_ptr())
    })
    .ok()?;
    (index != 0).then_some(index)
}

fn fingerprint(model: &Model, iface: &Interface, timeouts_s: &[u64]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for direction in [
        crate::model::Direction::Ingress,
        crate::model::Direction::Egress,
    ] {
        format!("{:?}", compile::rules_from_model(model, iface, direction)).hash(&mut h);
    }
    timeouts_s.hash(&mut h);
    h.finish()
}

/// Applies `model` to the kernel. Interfaces that do not exist now are
/// reported `absent` (and their stale state removed); `sgctl run` attaches
/// them when they appear.
pub fn apply(model: &Model, opts: &ApplyOptions) -> Result<Vec<Change>> {
    pins::ensure_bpffs()?;
    // Phase 1: decide and compile everything; nothing in the kernel changes yet.
    let mut plans = Vec::new();
    for iface in &model.interfaces {
        let id = IfaceId::new(&iface.name, iface.netns.as_deref());
        let timeouts_s = compile::timeouts_s(&iface.conntrack);
        let policy_hash = fingerprint(model, iface, &timeouts_s);
        let state = read_state(&id);
        let ifindex = ifindex_of(&id);
        let pinned = id.dir().exists();
        let step = match ifindex {
            None => Step::Absent,
            Some(index) if pinned => {
                let same_side = state
                    .as_ref()
                    .is_some_and(|s| s.side == side_name(iface.side));
                let same_device = state.as_ref().is_some_and(|s| s.ifindex == index);
                if !same_side || !same_device {
                    Step::Attach { reattach: true }
                } else if !opts.revoke
                    && state.as_ref().is_some_and(|s| s.policy_hash == policy_hash)
                {
                    Step::Unchanged
                } else {
                    Step::Update
                }
            }
            Some(_) => Step::Attach { reattach: false },
        };
        let generation = match step {
            Step::Update | Step::Unchanged => PolicyMaps::from_pins(&id.dir())
                .and_then(|m| m.next_generation())
                .with_context(|| {
                    format!("{id}: reading its pinned policy (try `sgctl detach --iface {}` and apply again)", iface.name)
                })?,
            _ => 1,
        };
        plans.push(Plan {
            iface,
            ifindex: ifindex.unwrap_or(0),
            policy: compile::compile_iface(model, iface, generation),
            policy_hash,
            timeouts_s,
            id,
            step,
        });
    }
    // Phase 2: change the kernel.
    let mut changes = Vec::new();
    for plan in &plans {
        let mut change = Change {
            iface: plan.id.to_string(),
            action: "updated",
            generation: plan.policy.generation,
            revoked: 0,
        };
        match plan.step {
            Step::Absent => {
                // A deleted interface takes its links with it; drop the pins.
                if plan.id.dir().exists() {
                    detach(&plan.id)?;
                }
                change.action = "absent";
                change.generation = 0;
                changes.push(change);
                continue;
            }
            Step::Unchanged => {
                change.action = "unchanged";
                change.generation = read_state(&plan.id).map_or(0, |s| s.generation);
                changes.push(change);
                continue;
            }
            Step::Update => {
                let mut maps = PolicyMaps::from_pins(&plan.id.dir())?;
                maps.install(&plan.policy, plan.timeouts_s)?;
                // A good moment to reclaim what idled out (the data path already
                // ignores it; this frees room in the table).
                let cfg = maps.config()?;
                conntrack::reclaim_expired(&plan.id, &cfg)
                    .with_context(|| format!("{}: reclaiming expired connections", plan.id))?;
                if opts.revoke {
                    change.revoked = conntrack::revoke(&plan.id, &cfg, &plan.policy)
                        .with_context(|| format!("{}: revoking flows", plan.id))?;
                }
            }
            Step::Attach { reattach } => {
                if reattach {
                    // New device or other side: the programs must be loaded anew.
                    loader::detach(&plan.id)?;
                    change.action = "reattached";
                } else {
                    change.action = "attached";
                }
                let attach = AttachOptions {
                    side: plan.iface.side,
                    ..opts.attach
                };
                loader::attach(
                    &plan.id,
                    &attach,
                    InitialPolicy::Enforce {
                        policy: &plan.policy,
                        timeouts_s: plan.timeouts_s,
                    },
                )
                .with_context(|| format!("attaching {}", plan.id))?;
            }
        }
        let rules = model
            .rules_for(plan.iface, crate::model::Direction::Ingress)
            .chain(model.rules_for(plan.iface, crate::model::Direction::Egress))
            .map(|r| {
                let info = RuleInfo {
                    id: r.id.to_string(),
                    group: r.group.clone(),
                    description: r.description.clone(),
                };
                (compile::rule_hash(&info.id), info)
            })
            .collect();
        write_state(
            &plan.id,
            &IfaceState {
                side: side_name(plan.iface.side).into(),
                groups: plan.iface.groups.clone(),
                generation: plan.policy.generation,
                config: model.file.clone(),
                ifindex: plan.ifindex,
                policy_hash: plan.policy_hash,
                rules,
            },
        )?;
        changes.push(change);
    }
    // Interfaces an earlier apply of this same config attached that have
    // left it. Attachments of other configs (or `sgctl attach`) are not ours.
    for id in pins::attached_ifaces()? {
        let ours = model.file.is_some() && read_state(&id).is_some_and(|s| s.config == model.file);
        if ours && !plans.iter().any(|p| p.id == id) {
            loader::detach(&id)?;
            remove_state(&id);
            changes.push(Change {
                iface: id.to_string(),
                action: "detached",
                generation: 0,
                revoked: 0,
            });
        }
    }
    Ok(changes)
}

/// Detaches an interface and forgets its state.
pub fn detach(id: &IfaceId) -> Result<()> {
    loader::detach(id)?;
    remove_state(id);
    Ok(())
}
