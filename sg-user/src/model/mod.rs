//! The security-group policy model, in user space and free of aya: configs
//! (native YAML, AWS JSON), validation with quotas, the linter and the
//! reference evaluator. Semantics: `DESIGN.md` §1 (AWS behaviour).
//!
//! ```no_run
//! use sg_user::model::{self, eval::{self, PacketDesc}, Direction};
//! let m = model::load(std::path::Path::new("examples/web-tier.yaml")).map_err(|p| p.len())?;
//! let iface = m.interface("eth0@web1").expect("in the config");
//! for r in m.rules_for(iface, Direction::Ingress) {
//!     println!("{} {} {:?} {:?} tracked(tcp)={}", r.id, r.protocol, r.l4, r.peers, r.is_tracked(6));
//! }
//! let d = eval::decide(&m, iface, Direction::Ingress, &PacketDesc::tcp("198.18.7.1".parse().unwrap(), 443));
//! assert!(d.allowed);
//! # Ok::<(), usize>(())
//! ```
//!
//! The compiler (config → kernel maps) should use [`Model::rules_for`] per
//! interface and direction; kernel tests compare packet verdicts with
//! [`eval::decide`] and [`eval::Conntrack`].

pub mod aws;
pub mod config;
pub mod diag;
pub mod eval;
pub mod lint;
pub mod source;
pub mod text;
pub mod types;
pub mod validate;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

pub use config::Attachment;
pub use diag::{Problem, Severity};
pub use types::{
    Choice, ConntrackTimeouts, Direction, Group, Interface, L4Match, Origin, Peer, PortRange,
    PrefixList, Protocol, Quotas, ResolvedRule, Rule, RuleId, Side, Tracking,
};

/// Finds the addresses of an interface that declares none (`addresses:`
/// omitted). The kernel side implements this with netlink; offline there is
/// [`Offline`].
pub trait AddressSource {
    /// The interface's addresses, or `None` when they cannot be found
    /// (e.g. the interface does not exist on this machine).
    fn addresses(&self, iface: &Interface) -> Option<Vec<IpAddr>>;
}

/// Discovery that finds nothing: for offline `validate`/`check`/`lint`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offline;

impl AddressSource for Offline {
    fn addresses(&self, _iface: &Interface) -> Option<Vec<IpAddr>> {
        None
    }
}

/// Fixed addresses by interface key (`NAME` or `NAME@NETNS`); handy in tests.
impl AddressSource for BTreeMap<String, Vec<IpAddr>> {
    fn addresses(&self, iface: &Interface) -> Option<Vec<IpAddr>> {
        self.get(&iface.key()).cloned()
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Model {
    /// The file it was loaded from.
    pub file: Option<PathBuf>,
    /// Groups, in config order.
    pub groups: Vec<Group>,
    /// Prefix lists, sorted by id.
    pub prefix_lists: Vec<PrefixList>,
    /// Interfaces, in config order.
    pub interfaces: Vec<Interface>,
    /// `members:` by group id.
    pub members: BTreeMap<String, Vec<IpAddr>>,
    /// Quotas in force.
    pub quotas: Quotas,
    /// Warnings found while loading (the config is still valid).
    pub warnings: Vec<Problem>,
    /// Discovered addresses by interface key.
    discovered: BTreeMap<String, Vec<IpAddr>>,
    /// Resolved rules by interface key: [ingress, egress]. Interfaces with
    /// the same groups share one resolution (a container host has a few
    /// group sets and hundreds of interfaces).
    resolved: BTreeMap<String, std::sync::Arc<[Vec<ResolvedRule>; 2]>>,
}

/// Options for [`load_with`].
pub struct LoadOptions<'a> {
    /// Extra interfaces (`--attach IFACE[@NETNS]=sg-1,sg-2`).
    pub attach: &'a [Attachment],
    /// Address discovery for interfaces that declare none.
    pub discovery: &'a dyn AddressSource,
    /// Groups, prefix lists and members from a shared store.
    pub shared: Option<&'a source::Shared>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self {
            attach: &[],
            discovery: &Offline,
            shared: None,
        }
    }
}

/// Loads and validates a config file of either format, offline.
///
/// # Errors
/// Every problem found (warnings included) if any is an error.
pub fn load(path: &Path) -> Result<Model, Vec<Problem>> {
    load_with(path, &LoadOptions::default())
}

/// Loads and validates a config file with attachments and address discovery.
///
/// # Errors
/// Every problem found (warnings included) if any is an error.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Model, Vec<Problem>> {
    let mut doc = source::load_doc(path, opts.attach)?;
    if let Some(shared) = opts.shared {
        source::merge_shared(&mut doc, shared)?;
    }
    validate::build(&doc, opts.discovery)
}

/// Parses and validates config text of either format (no `import:`).
///
/// # Errors
/// Every problem found (warnings included) if any is an error.
pub fn from_str(text: &str, attach: &[Attachment]) -> Result<Model, Vec<Problem>> {
    let (mut doc, imports) = source::parse_text(text, None)?;
    if !imports.is_empty() {
        return Err(vec![Problem::error(
            "`import:` needs a file to be relative to",
            "load the config from a file (model::load)",
        )]);
    }
    doc.interfaces.extend(attach.iter().map(Attachment::to_raw));
    validate::build(&doc, &Offline)
}

impl Model {
    /// The group with this id.
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// The prefix list with this id.
    pub fn prefix_list(&self, id: &str) -> Option<&PrefixList> {
        self.prefix_lists.iter().find(|p| p.id == id)
    }

    /// The interface named `NAME@NETNS`, or `NAME` when exactly one
    /// interface has that name (in any namespace).
    pub fn interface(&self, key: &str) -> Option<&Interface> {
        if let Some(i) = self.interfaces.iter().find(|i| i.key() == key) {
            return Some(i);
        }
        let mut same_name = self.interfaces.iter().filter(|i| i.name == key);
        match (same_name.next(), same_name.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        }
    }

    /// Addresses of an interface: declared, else discovered, else none.
    pub fn interface_addresses<'a>(&'a self, iface: &'a Interface) -> &'a [IpAddr] {
        iface
            .addresses
            .as_deref()
            .or_else(|| self.discovered.get(&iface.key()).map(Vec::as_slice))
            .unwrap_or(&[])
    }

    /// The addresses a reference to group `id` stands for: every address of
    /// every interface the group is attached to, plus its `members:`. Sorted,
    /// deduplicated.
    pub fn group_addresses(&self, id: &str) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .interfaces
            .iter()
            .filter(|i| i.groups.iter().any(|g| g == id))
            .flat_map(|i| self.interface_addresses(i).iter().copied())
            .chain(self.members.get(id).into_iter().flatten().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The CIDRs a peer stands for (sorted, deduplicated).
    pub fn peer_cidrs(&self, peer: &Peer) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = match peer {
            Peer::Cidr(n) => vec![*n],
            Peer::PrefixList(id) => self
                .prefix_list(id)
                .map(|p| p.cidrs.clone())
                .unwrap_or_default(),
            Peer::Group(id) => self
                .group_addresses(id)
                .into_iter()
                .map(IpNet::from)
                .collect(),
        };
        v.sort();
        v.dedup();
        v
    }

    /// The rules in force on `iface` for `direction`: every rule of every
    /// attached group, peers expanded, tracking decided. Order: groups as
    /// attached, rules as written. Union semantics: order does not matter.
    ///
    /// # Panics
    /// Never for interfaces of this model; an interface of another model
    /// yields nothing.
    pub fn rules_for<'a>(
        &'a self,
        iface: &Interface,
        direction: Direction,
    ) -> impl Iterator<Item = &'a ResolvedRule> {
        let idx = match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        self.resolved
            .get(&iface.key())
            .map(|r| r[idx].as_slice())
            .unwrap_or(&[])
            .iter()
    }

    /// Re-runs address discovery (e.g. after interfaces changed) and
    /// re-resolves every interface's rules. Adds a warning for each interface
    /// whose addresses matter (a rule references one of its groups) but are
    /// neither declared nor discovered.
    pub fn rediscover(&mut self, discovery: &dyn AddressSource) {
        self.discovered.clear();
        self.warnings.retain(|w| w.field != Some("addresses"));
        let referenced: std::collections::BTreeSet<&str> = self
            .groups
            .iter()
            .flat_map(|g| g.ingress.iter().chain(&g.egress))
            .filter_map(|r| match &r.peer {
                Peer::Group(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let mut warnings = vec![];
        for i in &self.interfaces {
            if i.addresses.is_some() {
                continue;
            }
            match discovery.addresses(i) {
                Some(a) => {
                    self.discovered.insert(i.key(), a);
                }
                None => {
                    if let Some(g) = i.groups.iter().find(|g| referenced.contains(g.as_str())) {
                        warnings.push(
                            Problem::warning(
                                format!(
                                    "no addresses declared and none discovered (the interface may not exist here); rules that reference {g} will not match its traffic"
                                ),
                                "add `addresses: [...]` to the interface, or attach it on the machine where it exists",
                            )
                            .at(&i.origin)
                            .iface(&i.key())
                            .field("addresses"),
                        );
                    }
                }
            }
        }
        self.warnings.extend(warnings);
        self.resolve();
    }

    fn resolve(&mut self) {
        // Each group's addresses once (not once per rule per interface).
        let addresses: BTreeMap<&str, std::sync::Arc<[IpNet]>> = self
            .groups
            .iter()
            .map(|g| {
                let v = self.group_addresses(&g.id).into_iter().map(IpNet::from);
                let mut v: Vec<IpNet> = v.collect();
                v.sort();
                v.dedup();
                (g.id.as_str(), v.into())
            })
            .collect();
        let mut by_groups: BTreeMap<&[String], std::sync::Arc<[Vec<ResolvedRule>; 2]>> =
            BTreeMap::new();
        let mut out = BTreeMap::new();
        for iface in &self.interfaces {
            let rules = by_groups
                .entry(iface.groups.as_slice())
                .or_insert_with(|| {
                    std::sync::Arc::new(self.resolve_groups(&iface.groups, &addresses))
                })
                .clone();
            out.insert(iface.key(), rules);
        }
        self.resolved = out;
    }

    /// The rules in force for an interface in `groups`: [ingress, egress].
    fn resolve_groups(
        &self,
        groups: &[String],
        addresses: &BTreeMap<&str, std::sync::Arc<[IpNet]>>,
    ) -> [Vec<ResolvedRule>; 2] {
        let attached: Vec<&Group> = groups.iter().filter_map(|id| self.group(id)).collect();
        let mut both: [Vec<ResolvedRule>; 2] = [vec![], vec![]];
        for (slot, dir) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let opposite: Vec<&Rule> = attached
                .iter()
                .flat_map(|g| g.rules(dir.opposite()))
                .collect();
            // Does the opposite direction allow all of `proto` (on all ports)
            // to the /0 of the same family as `world`?
            let opens_all = |proto: Protocol, world: &IpNet| {
                opposite.iter().any(|o| {
                    o.peer == Peer::Cidr(*world)
                        && (o.protocol == Protocol::All
                            || (o.protocol == proto && o.l4 == L4Match::Ports(PortRange::ALL)))
                })
            };
            for g in &attached {
                for r in g.rules(dir) {
                    let mut tracking = Tracking::default();
                    if let Peer::Cidr(world) = &r.peer
                        && world.prefix_len() == 0
                    {
                        let (tcp, udp) = match r.protocol {
                            Protocol::Tcp => (true, false),
                            Protocol::Udp => (false, true),
                            Protocol::All => (true, true),
                            _ => (false, false),
                        };
                        tracking.untracked_tcp = tcp && opens_all(Protocol::Tcp, world);
                        tracking.untracked_udp = udp && opens_all(Protocol::Udp, world);
                    }
                    let peers = match &r.peer {
                        Peer::Group(id) => addresses.get(id.as_str()).cloned().unwrap_or_default(),
                        other => self.peer_cidrs(other).into(),
                    };
                    both[slot].push(ResolvedRule {
                        id: r.id.clone(),
                        group: g.id.clone(),
                        direction: dir,
                        protocol: r.protocol,
                        l4: r.l4,
                        peers,
                        tracking,
                        description: r.description.clone(),
                    });
                }
            }
        }
        both
    }

    /// Total number of rules written (both directions, all groups).
    pub fn rule_count(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.ingress.len() + g.egress.len())
            .sum()
    }
}
