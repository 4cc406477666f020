//! `sgctl apply`: make the kernel enforce a validated model.
//!
//! Two phases, so bad input changes nothing: first everything is compiled
//! (pure, may fail) — once per distinct rule set, since interfaces with the
//! same rules share one policy of the host's data plane — then the kernel
//! is changed: each policy installed (a new generation switched atomically,
//! or a new policy id), then each interface's endpoint written (new
//! interfaces before their hooks are linked; moving an interface to another
//! policy is one endpoint update), interfaces that left the config
//! (attached by an earlier apply of the same file) detached, and policies
//! no interface uses any more freed. Interfaces still enforced by the
//! legacy per-interface layout are moved onto the shared data plane in place.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;
use thiserror::Error;

use crate::{
    agent::drift,
    agent::lock::{self, LockError, StateLock},
    agent::state::StateError,
    compile::{self, CompiledPolicy},
    kernel::conntrack,
    kernel::dataplane::Session,
    kernel::loader::{self, AttachOptions, InitialPolicy, LoaderError},
    kernel::pins::{self, IfaceId},
    kernel::policy_maps::PolicyMapError,
    model::{Choice, Interface, Model},
    sys::private_dir::PrivateDirError,
};

/// Why an apply or a detach failed. Each step that changes an interface
/// names it; the cause is the source.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// `require_present` and none of the config's interfaces exist here
    /// (the message lists them and what to check).
    #[error("{0}")]
    NonePresent(String),
    #[error("installing policy {id}")]
    InstallPolicy {
        id: u32,
        #[source]
        source: PolicyMapError,
    },
    /// The state file could not be written before the kernel change.
    #[error("{iface}: nothing was changed for this interface")]
    WriteState {
        iface: IfaceId,
        #[source]
        source: Box<StateError>,
    },
    #[error("attaching {iface}")]
    Attach {
        iface: IfaceId,
        #[source]
        source: Box<LoaderError>,
    },
    #[error("moving {iface} to the host's data plane")]
    Upgrade {
        iface: IfaceId,
        #[source]
        source: Box<LoaderError>,
    },
    #[error("repairing {iface}")]
    Repair {
        iface: IfaceId,
        #[source]
        source: Box<LoaderError>,
    },
    #[error("updating {iface}")]
    Update {
        iface: IfaceId,
        #[source]
        source: Box<LoaderError>,
    },
    #[error("every policy slot of the data plane is in use")]
    PoliciesFull,
    #[error("{iface}: the interface's endpoint vanished")]
    EndpointVanished { iface: IfaceId },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Dir(#[from] PrivateDirError),
    #[error(transparent)]
    State(#[from] StateError),
    /// Not root, or the legacy layout could not be read or removed (the
    /// error says which).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

crate::from_kernel_errors!(ApplyError);

type Result<T, E = ApplyError> = std::result::Result<T, E>;

/// Loads a config for enforcement: like [`crate::model::load_with`], with
/// interface addresses that are not declared discovered from the kernel (so
/// group references resolve to real addresses).
pub fn load(
    path: &std::path::Path,
    attach: &[crate::model::Attachment],
) -> Result<Model, Vec<crate::model::Problem>> {
    load_shared(path, attach, None)
}

/// [`load`] with the groups, prefix lists and members of a shared store.
pub fn load_shared(
    path: &std::path::Path,
    attach: &[crate::model::Attachment],
    shared: Option<&crate::model::source::Shared>,
) -> Result<Model, Vec<crate::model::Problem>> {
    let opts = crate::model::LoadOptions {
        attach,
        discovery: &crate::agent::discover::KernelAddresses,
        shared,
    };
    crate::model::load_with(path, &opts)
}

pub use crate::agent::lock::STATE_DIR;
use crate::agent::state::{
    IfaceState, RuleInfo, config_identity, read_state, remove_state, restore_state, state_path,
    write_state,
};

#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    pub attach: AttachOptions,
    /// Also cut tracked flows the new rules no longer allow.
    pub revoke: bool,
    /// Fail, changing nothing, when no interface of the config exists here
    /// (a typo) — `sgctl apply`; the daemon waits for them instead.
    pub require_present: bool,
}

/// What an apply did to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Newly attached.
    Attached,
    /// Its policy (or settings) changed.
    Updated,
    /// Nothing to do.
    Unchanged,
    /// Attached differently before (other side, `sgctl attach`): attached
    /// as the config says.
    Reattached,
    /// Drifted (hooks or pins missing, new device): repaired.
    Repaired,
    /// Moved from the legacy per-interface layout to the shared data plane.
    Upgraded,
    /// Not present on this machine now.
    Absent,
    /// Left the config: detached.
    Detached,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Attached => "attached",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
            Action::Reattached => "reattached",
            Action::Repaired => "repaired",
            Action::Upgraded => "upgraded",
            Action::Absent => "absent",
            Action::Detached => "detached",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one interface.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub iface: String,
    pub action: Action,
    pub generation: u32,
    pub revoked: usize,
    /// Why it was reattached or repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

enum Step {
    /// Not attached yet: attach with the policy.
    Attach,
    /// Attached by the legacy per-interface layout: move it onto the shared
    /// data plane in place.
    Upgrade { legacy_dir: PathBuf },
    /// Attached but not as set up (other side, `sgctl attach`, new device,
    /// hooks or pins missing): rewrite its endpoint, link what is missing.
    Reattach { action: Action, why: String },
    /// Attached: enforce the (possibly new) policy and settings.
    Update,
    /// Attached with this very policy and these settings already.
    Unchanged,
    /// The interface (or its namespace) does not exist here now.
    Absent,
}

struct Plan<'a> {
    iface: &'a Interface,
    id: IfaceId,
    ifindex: u32,
    step: Step,
    /// Index into the apply's policies.
    policy: usize,
    /// Its state file as found (read once per apply).
    state: Option<IfaceState>,
    /// Its endpoint's settings as found, if it has one.
    endpoint: Option<sg_common::IfaceConfig>,
    timeouts_s: [u64; sg_common::conntrack::TIMEOUT_SLOTS],
}

/// One compiled rule set of this apply and the policy id that carries it.
struct PolicyPlan {
    fingerprint: u64,
    id: u32,
    generation: u32,
    /// Compiled only when installed (or when flows are revoked against it):
    /// an apply that adds one interface to a host of a thousand compiles
    /// the one policy that changed.
    compiled: Option<CompiledPolicy>,
    /// Install it (a new policy, or a new generation of a reused one).
    install: bool,
}

/// Fingerprint of the compiled rules of `iface` (what its policy depends
/// on: its groups and their members); interfaces with equal fingerprints
/// share a policy.
fn rules_fingerprint(model: &Model, iface: &Interface) -> u64 {
    use crate::model::Direction;
    // Never 0: a policy slot with fingerprint 0 was installed by a test or
    // by hand and is shared with nothing.
    compile::rules_fingerprint(
        &compile::rules_from_model(model, iface, Direction::Ingress),
        &compile::rules_from_model(model, iface, Direction::Egress),
    )
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
        tracing::warn!("waiting for the state lock ({holder})");
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
    let mut session = Session::open_or_load(&opts.attach.load_options())?;
    let seen = Seen::read(&session)?;
    // Phase 1: decide and compile everything; nothing in the kernel changes yet.
    let (plans, wanted) = plan_interfaces(model, opts, &session, &seen);
    if opts.require_present
        && !plans.is_empty()
        && plans.iter().all(|p| matches!(p.step, Step::Absent))
    {
        return Err(ApplyError::NonePresent(none_present(model, &plans)));
    }
    let last_issued = session.dp.maps.last_generation()?;
    let policies = plan_policies(model, &plans, &wanted, &seen, last_issued, opts.revoke)?;
    // Phase 2: change the kernel: policies first (the interfaces that use
    // them switch, or are pointed at them below), then new interfaces
    // together, then everything else in order.
    install_policies(&mut session, &policies)?;
    let done = attach_new(
        model,
        opts,
        &mut session,
        &plans,
        &policies,
        identity.as_deref(),
    )?;
    let mut changes = Vec::new();
    for (plan, done) in plans.iter().zip(done) {
        let policy = &policies[plan.policy];
        changes.push(match done {
            Some(change) => change,
            None => carry_out(model, plan, policy, &mut session, identity.as_deref(), opts)?,
        });
    }
    let departed = detach_departed(&mut session, &plans, &seen, identity.as_deref())?;
    // A policy can only fall out of use when an endpoint left it: one moved
    // to another policy, or left the data plane (or one was left unused
    // when it started, by an apply that died halfway).
    let used: std::collections::BTreeSet<u32> =
        seen.endpoints.values().map(|cfg| cfg.policy).collect();
    let stray = seen.live.keys().any(|id| !used.contains(id));
    let moved = stray
        || plans.iter().zip(&changes).any(|(plan, change)| {
            plan.endpoint.is_some_and(|cfg| {
                cfg.policy != policies[plan.policy].id || change.action == Action::Absent
            })
        });
    if moved || !departed.is_empty() {
        free_unused_policies(&mut session)?;
    }
    changes.extend(departed);
    Ok(changes)
}

/// What the data plane holds when an apply starts.
struct Seen {
    legacy: BTreeMap<IfaceId, PathBuf>,
    endpoints: BTreeMap<IfaceId, sg_common::IfaceConfig>,
    live: BTreeMap<u32, sg_common::endpoint::PolicyState>,
}

impl Seen {
    fn read(session: &Session) -> Result<Seen> {
        Ok(Seen {
            legacy: pins::legacy_attachments()?.into_iter().collect(),
            endpoints: session
                .dp
                .endpoints()?
                .into_iter()
                .map(|e| (e.id, e.cfg))
                .collect(),
            live: session.dp.maps.policies()?.into_iter().collect(),
        })
    }
}

/// Phase 1 per interface: what to do with it, and which rule set (by
/// fingerprint, with the interfaces that want it) it needs.
fn plan_interfaces<'m>(
    model: &'m Model,
    opts: &ApplyOptions,
    session: &Session,
    seen: &Seen,
) -> (Vec<Plan<'m>>, Vec<(u64, Vec<IfaceId>)>) {
    let mut plans = Vec::new();
    let mut wanted: Vec<(u64, Vec<IfaceId>)> = Vec::new();
    let ids: Vec<IfaceId> = model
        .interfaces
        .iter()
        .map(|i| IfaceId::new(&i.name, i.netns.as_deref()))
        .collect();
    let ifindexes = drift::ifindexes(&ids);
    let maps_pinned = drift::missing_maps().is_empty();
    // The rules depend only on the groups: one fingerprint per group set.
    let mut fingerprints: std::collections::HashMap<&[String], u64> =
        std::collections::HashMap::new();
    for ((iface, id), ifindex) in model.interfaces.iter().zip(ids).zip(ifindexes) {
        let timeouts_s = compile::timeouts_s(&iface.conntrack);
        let rules = *fingerprints
            .entry(iface.groups.as_slice())
            .or_insert_with(|| rules_fingerprint(model, iface));
        let state = read_state(&id);
        let ep = seen.endpoints.get(&id);
        let step = match (ifindex, ep) {
            (None, _) => Step::Absent,
            (Some(_), Some(_)) if !session.repinned.is_empty() => Step::Reattach {
                action: Action::Repaired,
                why: format!(
                    "pinned maps missing: {} (pinned again from the programs)",
                    session.repinned.join(", ")
                ),
            },
            (Some(_), Some(cfg)) => {
                let policy_live = seen
                    .live
                    .get(&cfg.policy)
                    .is_some_and(|p| p.fingerprint == rules);
                let known = drift::Known {
                    ifindex,
                    has_endpoint: true,
                    maps_pinned,
                };
                let attached = Attached {
                    cfg,
                    policy_live,
                    known,
                };
                step_for_attached(&id, iface, state.as_ref(), &attached, &timeouts_s, opts)
            }
            (Some(_), None) => match seen.legacy.get(&id) {
                Some(dir) => Step::Upgrade {
                    legacy_dir: dir.clone(),
                },
                None => Step::Attach,
            },
        };
        let policy = match wanted.iter().position(|(f, _)| *f == rules) {
            Some(i) => i,
            None => {
                wanted.push((rules, Vec::new()));
                wanted.len() - 1
            }
        };
        if !matches!(step, Step::Absent) {
            wanted[policy].1.push(id.clone());
        }
        plans.push(Plan {
            iface,
            ifindex: ifindex.unwrap_or(0),
            policy,
            state,
            endpoint: ep.copied(),
            timeouts_s,
            id,
            step,
        });
    }
    (plans, wanted)
}

/// Installs the policies this apply changes. The generation numbers are
/// recorded first: a crash after it wastes numbers, never reuses one.
fn install_policies(session: &mut Session, policies: &[PolicyPlan]) -> Result<()> {
    if let Some(last) = policies.iter().rfind(|p| p.install) {
        session.dp.maps.set_last_generation(last.generation)?;
    }
    for p in policies.iter().filter(|p| p.install) {
        let compiled = p.compiled.as_ref().expect("compiled when installed");
        session.dp.maps.select(p.id, None);
        session
            .dp
            .maps
            .install_policy(compiled, p.fingerprint)
            .map_err(|source| ApplyError::InstallPolicy { id: p.id, source })?;
    }
    Ok(())
}

/// Attaches the interfaces new to the data plane, together (their links
/// are created in parallel), each with its state written first. Returns the
/// change per plan (none for the plans left to [`carry_out`]).
fn attach_new(
    model: &Model,
    opts: &ApplyOptions,
    session: &mut Session,
    plans: &[Plan<'_>],
    policies: &[PolicyPlan],
    identity: Option<&Path>,
) -> Result<Vec<Option<Change>>> {
    let mut done: Vec<Option<Change>> = plans.iter().map(|_| None).collect();
    let new: Vec<usize> = (0..plans.len())
        .filter(|&i| matches!(plans[i].step, Step::Attach))
        .collect();
    for &i in &new {
        let plan = &plans[i];
        write_plan_state(plan, &new_state(model, plan, identity))?;
    }
    let items: Vec<loader::AttachItem> = new
        .iter()
        .map(|&i| {
            let plan = &plans[i];
            loader::AttachItem {
                iface: plan.id.clone(),
                opts: AttachOptions {
                    side: plan.iface.side,
                    ..opts.attach
                },
                initial: InitialPolicy::Enforce {
                    policy: policies[plan.policy].id,
                    timeouts_s: plan.timeouts_s,
                },
            }
        })
        .collect();
    let mut failed = None;
    for (&i, result) in new.iter().zip(loader::attach_many(session, &items)) {
        let plan = &plans[i];
        match result {
            Ok(_) => {
                done[i] = Some(Change {
                    iface: plan.id.to_string(),
                    action: Action::Attached,
                    generation: policies[plan.policy].generation,
                    revoked: 0,
                    detail: None,
                });
            }
            Err(e) => {
                remove_state(&plan.id);
                failed.get_or_insert(ApplyError::Attach {
                    iface: plan.id.clone(),
                    source: Box::new(e),
                });
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Detaches the interfaces an earlier apply of this same config attached
/// that have left it. Attachments of other configs (or `sgctl attach`) are
/// not ours.
fn detach_departed(
    session: &mut Session,
    plans: &[Plan<'_>],
    seen: &Seen,
    identity: Option<&Path>,
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    if identity.is_none() {
        return Ok(changes);
    }
    // What was attached when the apply started (under the state lock, so
    // no other apply attached anything since) and is not in the config.
    let planned: std::collections::BTreeSet<&IfaceId> = plans.iter().map(|p| &p.id).collect();
    let departed = (seen.endpoints.keys())
        .chain(seen.legacy.keys())
        .filter(|id| !planned.contains(id));
    for id in departed {
        if read_state(id).is_some_and(|s| s.config.as_deref() == identity) {
            forget_in(session, id)?;
            changes.push(Change {
                iface: id.to_string(),
                action: Action::Detached,
                generation: 0,
                revoked: 0,
                detail: None,
            });
        }
    }
    Ok(changes)
}

/// Chooses a policy id for every rule set of this apply: the live policy
/// with the same rules if there is one; else, when every interface using
/// an existing policy moves to this rule set, that policy (a new generation
/// switches them all at once, as before); else a free id. Then compiles
/// each rule set once.
fn plan_policies(
    model: &Model,
    plans: &[Plan<'_>],
    wanted: &[(u64, Vec<IfaceId>)],
    seen: &Seen,
    last_issued: u32,
    revoke: bool,
) -> Result<Vec<PolicyPlan>> {
    let (endpoints, live) = (&seen.endpoints, &seen.live);
    let mut users: BTreeMap<u32, Vec<&IfaceId>> = BTreeMap::new();
    for (id, cfg) in endpoints {
        if cfg.policy != 0 {
            users.entry(cfg.policy).or_default().push(id);
        }
    }
    let mut claimed: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    // Generations are numbered host-wide (one sequence over all policies),
    // so "generation N" names one policy version on this host.
    // The data plane records the last number handed out: the policy that
    // had the highest may have been freed since.
    let mut last_generation = live
        .values()
        .map(|p| p.generation)
        .max()
        .unwrap_or(0)
        .max(last_issued);
    for (index, (rules, ifaces)) in wanted.iter().enumerate() {
        // 1. The policy the interfaces already share, when all of its users
        //    move here: a new generation switches them at once (what an
        //    edited group does). 2. A live policy with these very rules
        //    (sharing). 3. A free slot.
        let current = ifaces.iter().find_map(|iface| {
            let id = endpoints.get(iface)?.policy;
            (id != 0
                && !claimed.contains(&id)
                && live.contains_key(&id)
                && users
                    .get(&id)
                    .is_some_and(|u| u.iter().all(|user| ifaces.contains(user))))
            .then_some(id)
        });
        let existing = live
            .iter()
            .find(|(id, p)| p.fingerprint == *rules && !claimed.contains(*id))
            .map(|(id, _)| *id);
        let (id, install) = match (current, existing) {
            (Some(id), _) => (id, live.get(&id).is_none_or(|p| p.fingerprint != *rules)),
            (None, Some(id)) => (id, false),
            (None, None) => {
                let free = (1..sg_common::endpoint::MAX_POLICIES)
                    .find(|i| {
                        !live.contains_key(i) && !users.contains_key(i) && !claimed.contains(i)
                    })
                    .ok_or(ApplyError::PoliciesFull)?;
                (free, true)
            }
        };
        claimed.insert(id);
        let generation = match live.get(&id) {
            Some(p) if !install => p.generation,
            _ => {
                // 31 bits are keyed; wrap to 1 (0 means "no policy").
                last_generation = if last_generation >= (1 << 31) - 1 {
                    1
                } else {
                    last_generation + 1
                };
                last_generation
            }
        };
        let first = plans
            .iter()
            .find(|p| p.policy == index)
            .expect("every rule set comes from a plan");
        out.push(PolicyPlan {
            fingerprint: *rules,
            id,
            generation,
            compiled: (install || revoke)
                .then(|| compile::compile_iface(model, first.iface, generation)),
            install,
        });
    }
    Ok(out)
}

/// Frees the policies no endpoint uses any more.
fn free_unused_policies(session: &mut Session) -> Result<()> {
    let used: std::collections::BTreeSet<u32> = session
        .dp
        .maps
        .endpoints()?
        .into_iter()
        .map(|(_, cfg)| cfg.policy)
        .collect();
    for (id, _) in session.dp.maps.policies()? {
        if !used.contains(&id) {
            session.dp.maps.select(id, None);
            session.dp.maps.free_policy()?;
        }
    }
    Ok(())
}

/// What phase 1 found in the kernel for an attached interface.
struct Attached<'a> {
    /// Its endpoint's settings.
    cfg: &'a sg_common::IfaceConfig,
    /// Its policy is live and has the rules the config now compiles to.
    policy_live: bool,
    known: drift::Known,
}

/// What to do with an interface that has an endpoint.
fn step_for_attached(
    id: &IfaceId,
    iface: &Interface,
    state: Option<&IfaceState>,
    seen: &Attached<'_>,
    timeouts_s: &[u64; sg_common::conntrack::TIMEOUT_SLOTS],
    opts: &ApplyOptions,
) -> Step {
    let Attached {
        cfg,
        policy_live,
        known,
    } = *seen;
    let Some(state) = state.filter(|s| s.side == iface.side.name()) else {
        return Step::Reattach {
            action: Action::Reattached,
            why: "attached by `sgctl attach` or for the other side".into(),
        };
    };
    let drifted = drift::check_known(id, Some(state), known);
    if !drifted.is_empty() {
        let why: Vec<String> = drifted.iter().map(ToString::to_string).collect();
        return Step::Reattach {
            action: Action::Repaired,
            why: why.join("; "),
        };
    }
    // The kernel's endpoint and policy, not only the state file: a state
    // file written by an apply that died before changing the kernel says
    // nothing.
    let enforcing = cfg.flags & sg_common::policy::CONFIG_ENFORCE != 0;
    let same_settings = cfg.timeouts_ns == crate::kernel::policy_maps::timeouts_ns(*timeouts_s);
    if !opts.revoke && enforcing && policy_live && same_settings {
        Step::Unchanged
    } else {
        Step::Update
    }
}

/// The error when no interface of the config exists here.
fn none_present(model: &Model, plans: &[Plan<'_>]) -> String {
    let names: Vec<String> = plans
        .iter()
        .map(|p| match &p.id.netns {
            Some(ns)
                if !Path::new(crate::sys::netns::NETNS_RUN_DIR)
                    .join(ns)
                    .exists() =>
            {
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
    policy: &PolicyPlan,
    session: &mut Session,
    identity: Option<&Path>,
    opts: &ApplyOptions,
) -> Result<Change> {
    let mut change = Change {
        iface: plan.id.to_string(),
        action: Action::Updated,
        generation: policy.generation,
        revoked: 0,
        detail: None,
    };
    match &plan.step {
        Step::Absent => {
            // A deleted interface takes its links with it; drop the rest.
            if session.dp.endpoint_of(&plan.id)?.is_some() || plan.id.dir().exists() {
                forget_in(session, &plan.id)?;
            }
            change.action = Action::Absent;
            change.generation = 0;
            return Ok(change);
        }
        Step::Unchanged => {
            change.action = Action::Unchanged;
            write_state_if_changed(model, plan, identity)?;
            return Ok(change);
        }
        Step::Update if switched_in_place(plan, policy, opts) => {
            // Installing the policy's new generation already switched it:
            // the endpoint points at that policy with these settings.
            write_state_if_changed(model, plan, identity)?;
            return Ok(change);
        }
        _ => {}
    }
    let previous = std::fs::read(state_path(&plan.id)).ok();
    write_plan_state(plan, &new_state(model, plan, identity))?;
    let changed = change_kernel(plan, policy, session, opts, &mut change);
    if let Err(e) = changed {
        match plan.step {
            // There was no attachment: forget it.
            Step::Attach => remove_state(&plan.id),
            _ => restore_state(&plan.id, previous.as_deref()),
        }
        return Err(e);
    }
    Ok(change)
}

/// Writes the interface's state file when what it records changed (rule
/// names, groups, side, config), not on every policy change.
fn write_state_if_changed(model: &Model, plan: &Plan<'_>, identity: Option<&Path>) -> Result<()> {
    let state = new_state(model, plan, identity);
    if plan.state.as_ref() != Some(&state) {
        write_plan_state(plan, &state)?;
    }
    Ok(())
}

/// Writes the interface's state file; a failure names the interface (and
/// nothing of it was changed in the kernel yet).
fn write_plan_state(plan: &Plan<'_>, state: &IfaceState) -> Result<()> {
    write_state(&plan.id, state).map_err(|source| ApplyError::WriteState {
        iface: plan.id.clone(),
        source: Box::new(source),
    })
}

/// An update with nothing to do for the interface itself: its endpoint is
/// enforcing through the very policy id this apply installed a new
/// generation of, with the same timeouts, and no flow is to be revoked.
fn switched_in_place(plan: &Plan<'_>, policy: &PolicyPlan, opts: &ApplyOptions) -> bool {
    plan.endpoint.is_some_and(|cfg| {
        cfg.policy == policy.id
            && cfg.flags & sg_common::policy::CONFIG_ENFORCE != 0
            && cfg.timeouts_ns == crate::kernel::policy_maps::timeouts_ns(plan.timeouts_s)
    }) && !opts.revoke
}

fn change_kernel(
    plan: &Plan<'_>,
    policy: &PolicyPlan,
    session: &mut Session,
    opts: &ApplyOptions,
    change: &mut Change,
) -> Result<()> {
    let attach = AttachOptions {
        side: plan.iface.side,
        ..opts.attach
    };
    let initial = InitialPolicy::Enforce {
        policy: policy.id,
        timeouts_s: plan.timeouts_s,
    };
    match &plan.step {
        Step::Attach => {
            change.action = Action::Attached;
            loader::attach_in(session, &plan.id, &attach, initial).map_err(|e| {
                ApplyError::Attach {
                    iface: plan.id.clone(),
                    source: Box::new(e),
                }
            })?;
        }
        Step::Upgrade { legacy_dir } => {
            change.action = Action::Upgraded;
            change.detail = Some(format!(
                "moved from its own programs and maps ({}) to the host's data plane",
                legacy_dir.display()
            ));
            loader::upgrade_legacy(session, &plan.id, legacy_dir, &attach, initial).map_err(
                |e| ApplyError::Upgrade {
                    iface: plan.id.clone(),
                    source: Box::new(e),
                },
            )?;
        }
        Step::Reattach { action, why } => {
            change.action = *action;
            change.detail = Some(why.clone());
            loader::ensure_in(session, &plan.id, &attach, initial).map_err(|e| {
                ApplyError::Repair {
                    iface: plan.id.clone(),
                    source: Box::new(e),
                }
            })?;
        }
        Step::Update => {
            loader::ensure_in(session, &plan.id, &attach, initial).map_err(|e| {
                ApplyError::Update {
                    iface: plan.id.clone(),
                    source: Box::new(e),
                }
            })?;
            // No reclaim of idle entries here: it walks the host-wide table,
            // once per updated interface (a group change on a container host
            // updates hundreds). The data path ignores expired entries and
            // reclaims them itself when a table fills; `sgctl run` collects
            // them periodically.
            if opts.revoke {
                let cfg = session
                    .dp
                    .endpoint_of(&plan.id)?
                    .map(|e| e.cfg)
                    .ok_or_else(|| ApplyError::EndpointVanished {
                        iface: plan.id.clone(),
                    })?;
                let compiled = policy.compiled.as_ref().expect("compiled to revoke");
                change.revoked = conntrack::revoke(&plan.id, &cfg, compiled)?;
            }
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
        side: plan.iface.side.name().into(),
        groups: plan.iface.groups.clone(),
        config: identity.map(Path::to_path_buf),
        ifindex: plan.ifindex,
        rules,
    }
}

/// Detaches an interface and forgets its state, holding the state lock.
///
/// # Errors
/// The lock or the detach failed (not attached, pins unreadable).
pub fn detach(id: &IfaceId) -> Result<()> {
    let held = lock::state_lock(&format!("detach {id}"), lock::Wait::Block, |holder| {
        tracing::warn!("waiting for the state lock ({holder})");
    })?;
    detach_locked(id, &held)
}

/// [`detach`] with the state lock already held.
///
/// # Errors
/// The detach failed (not attached, pins unreadable).
pub fn detach_locked(id: &IfaceId, _held: &StateLock) -> Result<()> {
    loader::detach(id)?;
    remove_state(id);
    if let Some(mut dp) = crate::kernel::dataplane::DataPlane::open()? {
        let used: std::collections::BTreeSet<u32> = dp
            .maps
            .endpoints()?
            .into_iter()
            .map(|(_, cfg)| cfg.policy)
            .collect();
        for (pid, _) in dp.maps.policies()? {
            if !used.contains(&pid) {
                dp.maps.select(pid, None);
                dp.maps.free_policy()?;
            }
        }
    }
    Ok(())
}

fn forget_in(session: &mut Session, id: &IfaceId) -> Result<()> {
    let legacy = id.legacy_dir();
    if legacy.exists() {
        pins::remove_legacy_dir(&legacy)?;
    }
    match loader::detach_in(session, id) {
        Ok(()) | Err(loader::LoaderError::NotAttached { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    remove_state(id);
    Ok(())
}
