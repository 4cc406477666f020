//! `sgctl apply`: make the kernel enforce a validated model.
//!
//! Two phases, so bad input changes nothing: first everything is compiled
//! (pure, may fail), then the kernel is changed interface by interface —
//! new interfaces attached with their policy already in the maps, attached
//! ones switched to a new generation atomically, interfaces that left the
//! config (attached by an earlier apply of the same file) detached.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    compile::{self, CompiledPolicy},
    conntrack, drift,
    loader::{self, AttachOptions, InitialPolicy},
    lock::{self, StateLock},
    model::{Interface, Model, Side},
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

pub use crate::lock::STATE_DIR;

/// What `sgctl status` and the daemon need that the kernel does not keep.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IfaceState {
    pub side: String,
    pub groups: Vec<String>,
    pub generation: u32,
    /// The config that attached it, by its identity ([`config_identity`]):
    /// only an apply of the same config detaches it when it leaves the config.
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

/// Writes an interface's state (0600, atomically). The error names the file.
fn write_state(id: &IfaceId, state: &IfaceState) -> Result<()> {
    let path = state_path(id);
    crate::private_dir::create_subdir(path.parent().expect("has a parent"))?;
    crate::private_dir::write_state_file(&path, &serde_json::to_vec_pretty(state)?)?;
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

/// Puts back the state file as it was before a failed kernel change.
fn restore_state(id: &IfaceId, previous: Option<&[u8]>) {
    match previous {
        Some(bytes) => {
            if let Err(e) = crate::private_dir::write_state_file(&state_path(id), bytes) {
                log::warn!("{id}: restoring its state file: {e}");
            }
        }
        None => remove_state(id),
    }
}

/// A config's identity: its absolute path with the directory resolved
/// (symlinks, `..`) and the file name kept. Two files with the same relative
/// name in different directories are different configs; a config that is a
/// symlink swapped on update (a Kubernetes ConfigMap volume) keeps its identity.
pub fn config_identity(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    pub attach: AttachOptions,
    /// Also cut tracked flows the new rules no longer allow.
    pub revoke: bool,
    /// Fail, changing nothing, when no interface of the config exists here
    /// (a typo) — `sgctl apply`; the daemon waits for them instead.
    pub require_present: bool,
}

/// What happened to one interface.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub iface: String,
    /// attached | updated | unchanged | reattached | repaired | absent | detached
    pub action: &'static str,
    pub generation: u32,
    pub revoked: usize,
    /// Why it was reattached or repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

enum Step {
    /// Not attached yet: attach with the policy.
    Attach,
    /// Attached but it must be attached anew (other side, new device, hooks
    /// or pins missing): detach, then attach with the policy.
    Reattach { action: &'static str, why: String },
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

/// Applies `model` to the kernel, holding the state lock (waiting for it
/// when another sgctl holds it). Interfaces that do not exist now are
/// reported `absent` (and their stale state removed); `sgctl run` attaches
/// them when they appear.
///
/// # Errors
/// See [`apply_locked`].
pub fn apply(model: &Model, opts: &ApplyOptions) -> Result<Vec<Change>> {
    let purpose = format!(
        "apply {}",
        model
            .file
            .as_deref()
            .map_or("(no file)".into(), |f| f.display().to_string())
    );
    let held = lock::state_lock(&purpose, lock::Wait::Block, |holder| {
        log::warn!("waiting for the state lock ({holder})");
    })?;
    apply_locked(model, opts, &held)
}

/// [`apply`] with the state lock already held: reconciles every interface of
/// the config against the kernel (not only against the state files) —
/// attaches new ones, repairs drifted ones ([`drift`]), switches changed
/// policies atomically — and detaches interfaces this same config attached
/// earlier that have left it.
///
/// # Errors
/// Compiling, reading pinned state, writing state files (the error names the
/// file; that interface is left as it was) or changing the kernel failed;
/// with `require_present`, when no interface of the config exists here.
pub fn apply_locked(model: &Model, opts: &ApplyOptions, _held: &StateLock) -> Result<Vec<Change>> {
    pins::ensure_root()?;
    lock::ensure_state_dir()?;
    let identity = model.file.as_deref().and_then(config_identity);
    // Phase 1: decide and compile everything; nothing in the kernel changes yet.
    let mut plans = Vec::new();
    for iface in &model.interfaces {
        let id = IfaceId::new(&iface.name, iface.netns.as_deref());
        let timeouts_s = compile::timeouts_s(&iface.conntrack);
        let policy_hash = fingerprint(model, iface, &timeouts_s);
        let state = read_state(&id);
        let ifindex = drift::ifindex_of(&id);
        let step = match ifindex {
            None => Step::Absent,
            Some(_) if id.dir().exists() => {
                step_for_attached(&id, iface, state.as_ref(), policy_hash, opts)?
            }
            Some(_) => Step::Attach,
        };
        let generation = match step {
            Step::Update | Step::Unchanged => PolicyMaps::from_pins(&id.dir())
                .and_then(|m| m.next_generation())
                .with_context(|| {
                    format!(
                        "{id}: reading its pinned policy (try `{}` and apply again)",
                        id.detach_command()
                    )
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
    if opts.require_present
        && !plans.is_empty()
        && plans.iter().all(|p| matches!(p.step, Step::Absent))
    {
        bail!(none_present(model, &plans));
    }
    // Phase 2: change the kernel.
    let mut changes = Vec::new();
    for plan in &plans {
        changes.push(carry_out(model, plan, identity.as_deref(), opts)?);
    }
    // Interfaces an earlier apply of this same config attached that have
    // left it. Attachments of other configs (or `sgctl attach`) are not ours.
    for id in pins::attached_ifaces()? {
        let ours = identity.is_some() && read_state(&id).is_some_and(|s| s.config == identity);
        if ours && !plans.iter().any(|p| p.id == id) {
            forget(&id)?;
            changes.push(Change {
                iface: id.to_string(),
                action: "detached",
                generation: 0,
                revoked: 0,
                detail: None,
            });
        }
    }
    Ok(changes)
}

/// What to do with an interface that has a pin directory.
fn step_for_attached(
    id: &IfaceId,
    iface: &Interface,
    state: Option<&IfaceState>,
    policy_hash: u64,
    opts: &ApplyOptions,
) -> Result<Step> {
    let Some(state) = state.filter(|s| s.side == side_name(iface.side)) else {
        return Ok(Step::Reattach {
            action: "reattached",
            why: "attached by `sgctl attach` or for the other side".into(),
        });
    };
    let drifted = drift::check(id, Some(state));
    if !drifted.is_empty() {
        let why: Vec<String> = drifted.iter().map(ToString::to_string).collect();
        return Ok(Step::Reattach {
            action: "repaired",
            why: why.join("; "),
        });
    }
    // The kernel's live generation, not only the state file's: a state file
    // written by an apply that died before installing says nothing.
    let live = PolicyMaps::from_pins(&id.dir())
        .and_then(|m| m.config())
        .with_context(|| {
            format!(
                "{id}: reading its pinned policy (try `{}` and apply again)",
                id.detach_command()
            )
        })?;
    let enforcing = live.flags & sg_common::policy::CONFIG_ENFORCE != 0;
    Ok(
        if !opts.revoke
            && enforcing
            && live.generation == state.generation
            && state.policy_hash == policy_hash
        {
            Step::Unchanged
        } else {
            Step::Update
        },
    )
}

/// The error when no interface of the config exists here.
fn none_present(model: &Model, plans: &[Plan<'_>]) -> String {
    let names: Vec<String> = plans
        .iter()
        .map(|p| match &p.id.netns {
            Some(ns) if !Path::new(crate::netns::NETNS_RUN_DIR).join(ns).exists() => {
                format!("{} (namespace {ns} does not exist)", p.id)
            }
            _ => p.id.to_string(),
        })
        .collect();
    let config = model
        .file
        .as_deref()
        .map_or("the config".into(), |f| f.display().to_string());
    format!(
        "none of the interfaces in {config} exists on this machine: {}; nothing was changed. \
         Check the names (`ip link`, `ip netns list`), or run `sgctl run -c {config}` to attach \
         them when they appear",
        names.join(", ")
    )
}

/// Phase 2 for one interface: the state file is written before the kernel
/// changes and put back when the change fails, so no hook is ever attached
/// without its state (rule names, config) and a failed write changes nothing.
fn carry_out(
    model: &Model,
    plan: &Plan<'_>,
    identity: Option<&Path>,
    opts: &ApplyOptions,
) -> Result<Change> {
    let mut change = Change {
        iface: plan.id.to_string(),
        action: "updated",
        generation: plan.policy.generation,
        revoked: 0,
        detail: None,
    };
    match &plan.step {
        Step::Absent => {
            // A deleted interface takes its links with it; drop the pins.
            if plan.id.dir().exists() {
                forget(&plan.id)?;
            }
            change.action = "absent";
            change.generation = 0;
            return Ok(change);
        }
        Step::Unchanged => {
            change.action = "unchanged";
            change.generation = read_state(&plan.id).map_or(0, |s| s.generation);
            return Ok(change);
        }
        _ => {}
    }
    let previous = std::fs::read(state_path(&plan.id)).ok();
    write_state(&plan.id, &new_state(model, plan, identity))
        .with_context(|| format!("{}: nothing was changed for this interface", plan.id))?;
    let changed = change_kernel(plan, opts, &mut change);
    if let Err(e) = changed {
        match plan.step {
            // The old attachment is gone (or there was none): forget it.
            Step::Attach | Step::Reattach { .. } => remove_state(&plan.id),
            _ => restore_state(&plan.id, previous.as_deref()),
        }
        return Err(e);
    }
    Ok(change)
}

fn change_kernel(plan: &Plan<'_>, opts: &ApplyOptions, change: &mut Change) -> Result<()> {
    match &plan.step {
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
        Step::Attach | Step::Reattach { .. } => {
            if let Step::Reattach { action, why } = &plan.step {
                // The programs must be loaded anew; what is left goes first.
                match loader::detach(&plan.id) {
                    Ok(()) | Err(loader::LoaderError::NotAttached { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                change.action = action;
                change.detail = Some(why.clone());
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
        Step::Absent | Step::Unchanged => unreachable!("handled by the caller"),
    }
    Ok(())
}

fn new_state(model: &Model, plan: &Plan<'_>, identity: Option<&Path>) -> IfaceState {
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
    IfaceState {
        side: side_name(plan.iface.side).into(),
        groups: plan.iface.groups.clone(),
        generation: plan.policy.generation,
        config: identity.map(Path::to_path_buf),
        ifindex: plan.ifindex,
        policy_hash: plan.policy_hash,
        rules,
    }
}

/// Detaches an interface and forgets its state, holding the state lock.
///
/// # Errors
/// The lock or the detach failed (not attached, pins unreadable).
pub fn detach(id: &IfaceId) -> Result<()> {
    let held = lock::state_lock(&format!("detach {id}"), lock::Wait::Block, |holder| {
        log::warn!("waiting for the state lock ({holder})");
    })?;
    detach_locked(id, &held)
}

/// [`detach`] with the state lock already held.
///
/// # Errors
/// The detach failed (not attached, pins unreadable).
pub fn detach_locked(id: &IfaceId, _held: &StateLock) -> Result<()> {
    forget(id)
}

fn forget(id: &IfaceId) -> Result<()> {
    loader::detach(id)?;
    remove_state(id);
    Ok(())
}
