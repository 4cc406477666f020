//! The linter: the seed article's best practices and what AWS security
//! tooling commonly flags. Each finding has a stable id (`SG001`…), a
//! severity, the group/rule/interface it concerns and a one-line fix.
//!
//! | id | name | severity |
//! |---|---|---|
//! | SG001 | admin-port-open-to-world (22, 3389 from 0.0.0.0/0 or ::/0) | error |
//! | SG002 | database-port-open-to-world ([`DATABASE_PORTS`]) | error |
//! | SG003 | large-port-range (more than [`LintOptions::max_port_range`] ports) | warning |
//! | SG004 | all-traffic-open-to-world (inbound, all protocols) | error |
//! | SG005 | default-group-in-use (attached to a workload interface) | warning |
//! | SG006 | shadowed-rule (a broader rule of the same group covers it) | warning |
//! | SG007 | reference-to-unused-group (no interface, no members: matches nothing) | warning |
//! | SG008 | inconsistent-family-exposure (open to one family's world, not the other's) | warning |
//! | SG009 | pmtud-blocked (talks to the world, no inbound ICMP "fragmentation needed"/"packet too big") | info |
//! | SG010 | unused-group (not attached, not referenced) | info |
//!
//! Ids are append-only: a retired check keeps its number.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::{
    Model,
    eval::PacketDesc,
    types::{Direction, Group, Interface, L4Match, Peer, PortRange, Protocol, Rule, RuleId},
};

/// Administration ports that must not be open to the world.
pub const ADMIN_PORTS: &[(u16, &str)] = &[(22, "SSH"), (3389, "RDP")];

/// Database ports that must not be open to the world.
pub const DATABASE_PORTS: &[(u16, &str)] = &[
    (1433, "SQL Server"),
    (1521, "Oracle"),
    (3306, "MySQL"),
    (5432, "PostgreSQL"),
    (6379, "Redis"),
    (9042, "Cassandra"),
    (9200, "Elasticsearch"),
    (11211, "Memcached"),
    (27017, "MongoDB"),
];

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LintSeverity {
    /// Worth knowing.
    Info,
    /// Probably not what you want.
    Warning,
    /// Exposes something that should not be exposed.
    Error,
}

impl fmt::Display for LintSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id, e.g. `SG001`.
    pub id: &'static str,
    /// Stable name, e.g. `admin-port-open-to-world`.
    pub name: &'static str,
    /// Severity.
    pub severity: LintSeverity,
    /// The group concerned.
    pub group: Option<String>,
    /// The rule direction concerned.
    pub direction: Option<Direction>,
    /// The rule concerned.
    pub rule: Option<RuleId>,
    /// The interface concerned.
    pub interface: Option<String>,
    /// What was found.
    pub message: String,
    /// What to change.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{} {}]: ", self.severity, self.id, self.name)?;
        let mut ctx = vec![];
        if let Some(i) = &self.interface {
            ctx.push(format!("interface {i}"));
        }
        if let Some(g) = &self.group {
            ctx.push(format!("group {g}"));
        }
        if let Some(r) = &self.rule {
            ctx.push(format!("rule {r}"));
        }
        if !ctx.is_empty() {
            write!(f, "{}: ", ctx.join(", "))?;
        }
        write!(f, "{}; fix: {}", self.message, self.fix)
    }
}

/// Linter settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LintOptions {
    /// A TCP/UDP rule opening more ports than this is a large range (SG003).
    pub max_port_range: u32,
}

impl Default for LintOptions {
    fn default() -> Self {
        Self {
            max_port_range: 1000,
        }
    }
}

/// A check's stable identity.
#[derive(Clone, Copy, Debug)]
struct Check(&'static str, &'static str, LintSeverity);

const ADMIN_PORT: Check = Check("SG001", "admin-port-open-to-world", LintSeverity::Error);
const DATABASE_PORT: Check = Check("SG002", "database-port-open-to-world", LintSeverity::Error);
const LARGE_RANGE: Check = Check("SG003", "large-port-range", LintSeverity::Warning);
const ALL_TRAFFIC: Check = Check("SG004", "all-traffic-open-to-world", LintSeverity::Error);
const DEFAULT_GROUP: Check = Check("SG005", "default-group-in-use", LintSeverity::Warning);
const SHADOWED: Check = Check("SG006", "shadowed-rule", LintSeverity::Warning);
const UNUSED_REFERENCE: Check = Check("SG007", "reference-to-unused-group", LintSeverity::Warning);
const INCONSISTENT_FAMILY: Check = Check(
    "SG008",
    "inconsistent-family-exposure",
    LintSeverity::Warning,
);
const PMTUD: Check = Check("SG009", "pmtud-blocked", LintSeverity::Info);
const UNUSED_GROUP: Check = Check("SG010", "unused-group", LintSeverity::Info);

impl Check {
    fn finding(self, message: String, fix: String) -> Finding {
        Finding {
            id: self.0,
            name: self.1,
            severity: self.2,
            group: None,
            direction: None,
            rule: None,
            interface: None,
            message,
            fix,
        }
    }
}

fn finding(
    check: Check,
    g: &Group,
    dir: Direction,
    r: &Rule,
    message: String,
    fix: String,
) -> Finding {
    Finding {
        group: Some(g.id.clone()),
        direction: Some(dir),
        rule: Some(r.id.clone()),
        ..check.finding(message, fix)
    }
}

/// Whether `o` allows every packet `r` allows (same group and direction).
fn covers(o: &Rule, r: &Rule) -> bool {
    let proto = o.protocol == Protocol::All || (o.protocol == r.protocol && o.l4.covers(&r.l4));
    let peer = match (&o.peer, &r.peer) {
        (Peer::Cidr(a), Peer::Cidr(b)) => a.contains(b),
        (a, b) => a == b,
    };
    proto && peer
}

fn exposed_ports(r: &Rule) -> Option<PortRange> {
    match (r.protocol, r.l4) {
        (Protocol::Tcp | Protocol::Udp, L4Match::Ports(p)) => Some(p),
        _ => None,
    }
}

/// Runs every check. Findings are sorted: most severe first, then by id.
pub fn lint(model: &Model, opts: &LintOptions) -> Vec<Finding> {
    let mut out = vec![];
    let attached = |id: &str| {
        model
            .interfaces
            .iter()
            .any(|i| i.groups.iter().any(|g| g == id))
    };
    // Without interfaces (e.g. plain AWS JSON) "unused" checks say nothing useful.
    let has_interfaces = !model.interfaces.is_empty();
    for g in &model.groups {
        for dir in [Direction::Ingress, Direction::Egress] {
            let rules = g.rules(dir);
            for i in 0..rules.len() {
                let rule = RuleAt {
                    group: g,
                    dir,
                    rules,
                    index: i,
                };
                lint_rule(model, opts, &rule, has_interfaces, &attached, &mut out);
            }
            if dir == Direction::Ingress {
                inconsistent_family(g, rules, &mut out);
            }
        }
        let referenced = model
            .groups
            .iter()
            .flat_map(|o| o.ingress.iter().chain(&o.egress))
            .any(|r| r.peer == Peer::Group(g.id.clone()));
        if has_interfaces && !attached(&g.id) && !referenced {
            out.push(Finding {
                group: Some(g.id.clone()),
                ..UNUSED_GROUP.finding(
                    "attached to no interface and referenced by no rule".to_owned(),
                    "attach it or remove it".to_owned(),
                )
            });
        }
    }
    for iface in &model.interfaces {
        lint_interface(model, iface, &mut out);
    }
    out.sort_by(|a, b| {
        b.severity.cmp(&a.severity).then_with(|| {
            (a.id, &a.interface, &a.group, &a.rule).cmp(&(b.id, &b.interface, &b.group, &b.rule))
        })
    });
    out
}

/// One rule, with the rules of its group and direction it is checked against.
struct RuleAt<'m> {
    group: &'m Group,
    dir: Direction,
    rules: &'m [Rule],
    index: usize,
}

/// The checks of one rule: admin/database ports and all traffic open to
/// the world, large ranges, shadowed rules, references to unused groups.
fn lint_rule(
    model: &Model,
    opts: &LintOptions,
    at: &RuleAt<'_>,
    has_interfaces: bool,
    attached: &dyn Fn(&str) -> bool,
    out: &mut Vec<Finding>,
) {
    let (g, dir, rules, i) = (at.group, at.dir, at.rules, at.index);
    let r = &rules[i];
    if dir == Direction::Ingress && r.peer.is_world() {
        if let Some(p) = exposed_ports(r) {
            for (list, check, what) in [
                (ADMIN_PORTS, ADMIN_PORT, "administration"),
                (DATABASE_PORTS, DATABASE_PORT, "database"),
            ] {
                for (port, svc) in list.iter().filter(|(port, _)| p.contains(*port)) {
                    out.push(finding(
                        check,
                        g,
                        dir,
                        r,
                        format!("{what} port {port} ({svc}) is open to {} over {}", r.peer, r.protocol),
                        "allow it only from the addresses that need it (an office prefix list, a bastion /32) or from a group".to_owned(),
                    ));
                }
            }
        }
        if r.protocol == Protocol::All {
            out.push(finding(
                ALL_TRAFFIC,
                g,
                dir,
                r,
                format!("all protocols and ports are open to {}", r.peer),
                "allow only the protocols and ports the service needs".to_owned(),
            ));
        }
    }
    if let Some(p) = exposed_ports(r)
        && p.len() > opts.max_port_range
        && !matches!(r.peer, Peer::Group(_))
    {
        out.push(finding(
            LARGE_RANGE,
            g,
            dir,
            r,
            format!(
                "{} {} ports ({}) are open to {}",
                p.len(),
                r.protocol,
                p,
                r.peer
            ),
            format!(
                "open only the ports in use (threshold: {} ports)",
                opts.max_port_range
            ),
        ));
    }
    if let Some(o) = rules
        .iter()
        .enumerate()
        .find(|(j, o)| *j != i && covers(o, r))
        .map(|(_, o)| o)
    {
        out.push(finding(
            SHADOWED,
            g,
            dir,
            r,
            format!("rule {} already allows everything this rule allows", o.id),
            "remove this rule, or narrow the broader one".to_owned(),
        ));
    }
    if has_interfaces
        && let Peer::Group(id) = &r.peer
        && !attached(id)
        && model.members.get(id).is_none_or(Vec::is_empty)
    {
        out.push(finding(
            UNUSED_REFERENCE,
            g,
            dir,
            r,
            format!("group {id} is attached to no interface and has no members, so this rule matches nothing"),
            format!("attach {id} to the interfaces it stands for, or list them under `members: {{ {id}: [...] }}`"),
        ));
    }
}

/// The checks of one interface: the default group attached, path MTU
/// discovery blocked.
fn lint_interface(model: &Model, iface: &Interface, out: &mut Vec<Finding>) {
    let key = iface.key();
    if let Some(g) = iface
        .groups
        .iter()
        .filter_map(|id| model.group(id))
        .find(|g| g.is_default())
    {
        out.push(Finding {
            group: Some(g.id.clone()),
            interface: Some(key.clone()),
            ..DEFAULT_GROUP.finding(
                "the default group is attached to a workload interface".to_owned(),
                "create a group for this workload with only the rules it needs and attach that instead".to_owned(),
            )
        });
    }
    for (world, probe, what) in [
        (
            "0.0.0.0/0",
            PacketDesc::icmp("0.0.0.0".parse().expect("const"), 3, 4),
            "ICMP type 3 code 4 (fragmentation needed)",
        ),
        (
            "::/0",
            PacketDesc::icmp("::".parse().expect("const"), 2, 0),
            "ICMPv6 type 2 (packet too big)",
        ),
    ] {
        let world: IpNet = world.parse().expect("const");
        // Talks to the world in either direction (replies to world clients need PMTUD too).
        let talks_to_world = [Direction::Ingress, Direction::Egress]
            .into_iter()
            .any(|d| model.rules_for(iface, d).any(|r| r.peers.contains(&world)));
        let pmtud_ok = model.rules_for(iface, Direction::Ingress).any(|r| {
            r.peers.contains(&world)
                && r.protocol.matches(probe.proto)
                && r.l4.matches(None, probe.icmp)
        });
        if talks_to_world && !pmtud_ok {
            out.push(Finding {
                direction: Some(Direction::Ingress),
                interface: Some(key.clone()),
                ..PMTUD.finding(
                    format!("talks to {world} but does not allow inbound {what} from {world}; path MTU discovery will break"),
                    format!("add an ingress rule for {what} from {world}"),
                )
            });
        }
    }
}

/// SG008: the group opens some inbound traffic to both `0.0.0.0/0` and `::/0`,
/// but this rule's traffic only to one of them.
fn inconsistent_family(g: &Group, rules: &[Rule], out: &mut Vec<Finding>) {
    let open = |v4: bool| -> Vec<&Rule> {
        rules
            .iter()
            .filter(|r| matches!(r.peer, Peer::Cidr(n) if n.prefix_len() == 0 && matches!(n, IpNet::V4(_)) == v4))
            .collect()
    };
    let (o4, o6) = (open(true), open(false));
    if o4.is_empty() || o6.is_empty() {
        return;
    }
    for (these, others, fam, other_fam) in
        [(&o4, &o6, "IPv4", "::/0"), (&o6, &o4, "IPv6", "0.0.0.0/0")]
    {
        for r in these.iter() {
            // ICMP and ICMPv6 differ in numbering; any ICMP rule counts as a counterpart.
            let counterpart = |o: &&&Rule| {
                o.protocol == Protocol::All
                    || (r.protocol.is_icmp() && o.protocol.is_icmp())
                    || (o.protocol == r.protocol && o.l4.covers(&r.l4))
            };
            if !others.iter().any(|o| counterpart(&o)) {
                out.push(finding(
                    INCONSISTENT_FAMILY,
                    g,
                    Direction::Ingress,
                    r,
                    format!("open to the {fam} world but not to {other_fam}, while the group does open other traffic to {other_fam}"),
                    format!("add the same rule for {other_fam}, or remove this one if the service is not public"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(yaml: &str, opts: &LintOptions) -> Vec<(&'static str, Option<String>)> {
        let m = crate::model::from_str(yaml, &[]).unwrap_or_else(|p| panic!("{p:#?}"));
        lint(&m, opts)
            .into_iter()
            .map(|f| (f.id, f.rule.map(|r| r.0)))
            .collect()
    }

    /// [`ids`] with the default options.
    fn default_ids(yaml: &str) -> Vec<(&'static str, Option<String>)> {
        ids(yaml, &LintOptions::default())
    }

    fn has(found: &[(&'static str, Option<String>)], id: &str, rule: Option<&str>) -> bool {
        found
            .iter()
            .any(|(i, r)| *i == id && (rule.is_none() || r.as_deref() == rule))
    }

    const IFACE: &str =
        "interfaces:\n  - { name: e0, security_groups: [g], addresses: [198.18.0.1] }\n";

    #[test]
    fn world_exposure_checks() {
        let f = default_ids(&format!(
            "security_groups:\n  - id: g\n    ingress:\n      - {{ protocol: tcp, ports: \"20-23\", cidr: 0.0.0.0/0 }}\n      - {{ protocol: tcp, ports: 3389, cidr: 198.18.0.0/15 }}\n      - {{ protocol: tcp, ports: 5432, cidr: \"::/0\" }}\n      - {{ protocol: all, cidr: \"::/0\" }}\n{IFACE}"
        ));
        assert!(has(&f, "SG001", Some("g/in/tcp:20-23/0.0.0.0/0")), "{f:?}");
        assert!(
            !has(&f, "SG001", Some("g/in/tcp:3389/198.18.0.0/15")),
            "restricted RDP is fine: {f:?}"
        );
        assert!(has(&f, "SG002", Some("g/in/tcp:5432/::/0")), "{f:?}");
        assert!(has(&f, "SG004", Some("g/in/all/::/0")), "{f:?}");
        // The all-protocols rule shadows the ::/0 postgres rule.
        assert!(has(&f, "SG006", Some("g/in/tcp:5432/::/0")), "{f:?}");
    }

    #[test]
    fn large_ranges_use_the_threshold_and_skip_group_references() {
        let y = format!(
            "security_groups:\n  - id: g\n    ingress:\n      - {{ protocol: udp, ports: \"1000-2000\", cidr: 198.18.0.0/15 }}\n      - {{ protocol: tcp, group: g }}\n{IFACE}"
        );
        assert!(has(
            &default_ids(&y),
            "SG003",
            Some("g/in/udp:1000-2000/198.18.0.0/15")
        ));
        assert!(!has(
            &ids(
                &y,
                &LintOptions {
                    max_port_range: 1001
                }
            ),
            "SG003",
            None
        ));
        assert!(!has(&default_ids(&y), "SG003", Some("g/in/tcp:all/sg:g")));
    }

    #[test]
    fn shadowing_needs_full_cover() {
        let y = format!(
            "security_groups:\n  - id: g\n    ingress:\n      - {{ protocol: tcp, ports: \"80-90\", cidr: 198.18.0.0/15 }}\n      - {{ protocol: tcp, ports: 85, cidr: 198.18.1.0/24 }}\n      - {{ protocol: tcp, ports: 95, cidr: 198.18.1.0/24 }}\n      - {{ protocol: udp, ports: 85, cidr: 198.18.1.0/24 }}\n      - {{ protocol: icmp, icmp_type: 3, cidr: 198.18.0.0/15 }}\n      - {{ protocol: icmp, icmp_type: 3, icmp_code: 4, cidr: 198.18.0.0/15 }}\n{IFACE}"
        );
        let f = default_ids(&y);
        let shadowed: Vec<&str> = f
            .iter()
            .filter(|(i, _)| *i == "SG006")
            .filter_map(|(_, r)| r.as_deref())
            .collect();
        assert_eq!(
            shadowed,
            ["g/in/icmp:3.4/198.18.0.0/15", "g/in/tcp:85/198.18.1.0/24"]
        );
    }

    #[test]
    fn default_group_unused_groups_and_dead_references() {
        let f = default_ids(
            "security_groups:\n  - id: default\n    ingress: [{ protocol: all, group: default }]\n  - id: lonely\n  - id: ref\n    ingress: [{ protocol: tcp, ports: 1, group: nobody }]\n  - id: nobody\ninterfaces:\n  - { name: e0, addresses: [198.18.0.1] }\n  - { name: e1, security_groups: [ref], addresses: [198.18.0.2] }\n",
        );
        assert!(has(&f, "SG005", None), "{f:?}");
        assert!(has(&f, "SG010", None), "{f:?}");
        assert!(has(&f, "SG007", Some("ref/in/tcp:1/sg:nobody")), "{f:?}");
        let unused: Vec<_> = f.iter().filter(|(i, _)| *i == "SG010").collect();
        assert_eq!(unused.len(), 1, "only `lonely`: {f:?}");
    }

    #[test]
    fn inconsistent_family_and_pmtud() {
        let f = default_ids(&format!(
            "security_groups:\n  - id: g\n    ingress:\n      - {{ protocol: tcp, ports: 443, cidr: 0.0.0.0/0 }}\n      - {{ protocol: tcp, ports: 443, cidr: \"::/0\" }}\n      - {{ protocol: tcp, ports: 80, cidr: 0.0.0.0/0 }}\n      - {{ protocol: icmp, icmp_type: 3, icmp_code: 4, cidr: 0.0.0.0/0 }}\n    egress: []\n{IFACE}"
        ));
        assert!(has(&f, "SG008", Some("g/in/tcp:80/0.0.0.0/0")), "{f:?}");
        assert!(!has(&f, "SG008", Some("g/in/tcp:443/0.0.0.0/0")), "{f:?}");
        let pmtud: Vec<_> = f.iter().filter(|(i, _)| *i == "SG009").collect();
        assert_eq!(
            pmtud.len(),
            1,
            "IPv6 lacks packet-too-big; IPv4 is fine: {f:?}"
        );
    }

    #[test]
    fn findings_sort_by_severity_and_display_their_fix() {
        let m = crate::model::from_str(
            &format!("security_groups:\n  - id: g\n    ingress:\n      - {{ protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }}\n      - {{ protocol: tcp, ports: \"1-5000\", cidr: 198.18.0.0/15 }}\n{IFACE}"),
            &[],
        )
        .unwrap();
        let f = lint(&m, &LintOptions::default());
        assert!(
            f.windows(2).all(|w| w[0].severity >= w[1].severity),
            "{f:#?}"
        );
        let text = f[0].to_string();
        assert!(
            text.starts_with("error[SG001 admin-port-open-to-world]") && text.contains("fix:"),
            "{text}"
        );
    }
}
