//! AWS `describe-security-groups` JSON in, native YAML out.
//!
//! One AWS permission bundles (protocol, ports) with several peers; it
//! becomes one rule per peer. Fields the model does not use (OwnerId, VpcId,
//! Tags, ...) and unknown fields are ignored. Prefix lists appear only as
//! ids in this JSON: each referenced one becomes an empty placeholder (with a
//! warning) until the native config defines its CIDRs.

use std::{collections::BTreeMap, path::Path};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Model,
    config::{Doc, RawGroup, RawPrefixList, RawRule, RawRules, RawText, Scalar},
    types::{Direction, L4Match, Origin, Peer, PortRange, Protocol},
    validate::{Problem, default_egress, parse_cidr},
};

/// `aws ec2 describe-security-groups` output (the parts the model uses).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsDescribe {
    /// The groups.
    #[serde(default)]
    pub security_groups: Vec<AwsGroup>,
}

/// One security group.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsGroup {
    /// `sg-…`.
    pub group_id: Option<String>,
    /// Name.
    pub group_name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Inbound permissions.
    #[serde(default)]
    pub ip_permissions: Vec<AwsPermission>,
    /// Outbound permissions; absent = the AWS default (all outbound).
    pub ip_permissions_egress: Option<Vec<AwsPermission>>,
}

/// One permission: (protocol, ports) × peers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsPermission {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `-1` or a number as a string.
    pub ip_protocol: Option<Scalar>,
    /// First port, or ICMP type (-1 = any).
    pub from_port: Option<Scalar>,
    /// Last port, or ICMP code (-1 = any).
    pub to_port: Option<Scalar>,
    /// IPv4 peers.
    #[serde(default)]
    pub ip_ranges: Vec<AwsIpRange>,
    /// IPv6 peers.
    #[serde(default)]
    pub ipv6_ranges: Vec<AwsIpv6Range>,
    /// Prefix-list peers.
    #[serde(default)]
    pub prefix_list_ids: Vec<AwsPrefixListId>,
    /// Group peers.
    #[serde(default)]
    pub user_id_group_pairs: Vec<AwsGroupPair>,
}

/// `IpRanges[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsIpRange {
    /// CIDR.
    pub cidr_ip: Option<Scalar>,
    /// Description.
    pub description: Option<Scalar>,
}

/// `Ipv6Ranges[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsIpv6Range {
    /// CIDR.
    pub cidr_ipv6: Option<Scalar>,
    /// Description.
    pub description: Option<Scalar>,
}

/// `PrefixListIds[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsPrefixListId {
    /// `pl-…`.
    pub prefix_list_id: Option<Scalar>,
    /// Description.
    pub description: Option<Scalar>,
}

/// `UserIdGroupPairs[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AwsGroupPair {
    /// `sg-…`.
    pub group_id: Option<Scalar>,
    /// Description.
    pub description: Option<Scalar>,
}

/// Where a permission is and what [`perm_rules`] reports into.
struct PermCtx<'a> {
    path: &'a str,
    file: Option<&'a Path>,
    group: Option<&'a str>,
    direction: Direction,
    problems: &'a mut Vec<Problem>,
}

impl PermCtx<'_> {
    fn origin(&self, sub: Option<String>) -> Origin {
        Origin {
            file: self.file.map(Path::to_path_buf),
            line: None,
            path: Some(match sub {
                Some(sub) => format!("{}.{sub}", self.path),
                None => self.path.to_owned(),
            }),
        }
    }

    fn error(&mut self, sub: Option<String>, field: &'static str, message: String, fix: &str) {
        let mut p = Problem::error(message, fix)
            .at(&self.origin(sub))
            .field(field);
        p.direction = Some(self.direction);
        if let Some(g) = self.group {
            p = p.group(g);
        }
        self.problems.push(p);
    }
}

/// AWS's own words when TCP/UDP ports are missing or -1 (EC2 API,
/// InvalidParameterValue).
const AWS_TCP_UDP_PORTS: &str =
    "Invalid value 'Must specify both from and to ports with TCP/UDP.' for portRange";

fn perm_rules(
    p: &AwsPermission,
    cx: &mut PermCtx,
    pls: &mut BTreeMap<String, Origin>,
) -> Vec<RawRule> {
    let proto_text = p.ip_protocol.as_ref().map(Scalar::text).unwrap_or_default();
    let protocol = Protocol::parse(&proto_text);
    let (from, to) = (
        p.from_port.as_ref().and_then(Scalar::as_int),
        p.to_port.as_ref().and_then(Scalar::as_int),
    );
    let (mut ports, mut icmp_type, mut icmp_code) = (None, None, None);
    match protocol {
        Some(pr) if pr.has_ports() => {
            ports = match (from, to) {
                // A value that is not a number: pass it on for validation to report.
                (None, _) if p.from_port.as_ref().is_some_and(|v| *v != Scalar::Null) => {
                    p.from_port.clone()
                }
                (_, None) if p.to_port.as_ref().is_some_and(|v| *v != Scalar::Null) => {
                    p.to_port.clone()
                }
                (Some(a), Some(b)) if a >= 0 && b >= 0 && a == b => Some(Scalar::Int(a)),
                (Some(a), Some(b)) if a >= 0 && b >= 0 => Some(Scalar::Str(format!("{a}-{b}"))),
                // Missing, or -1 (which means "any" only for ICMP): AWS refuses it.
                _ => {
                    cx.error(
                        None,
                        "FromPort",
                        format!(
                            "{pr} with FromPort {} and ToPort {}: {AWS_TCP_UDP_PORTS}",
                            p.from_port.as_ref().map_or("(none)".into(), Scalar::text),
                            p.to_port.as_ref().map_or("(none)".into(), Scalar::text)
                        ),
                        "give FromPort and ToPort from 0-65535 (0 and 65535 for every port), or IpProtocol \"-1\" for every protocol",
                    );
                    None
                }
            };
        }
        Some(pr) if pr.is_icmp() => {
            icmp_type = p.from_port.clone();
            icmp_code = p.to_port.clone();
        }
        // all / other numbers: AWS ignores FromPort/ToPort.
        _ => {}
    }
    let base = RawRule {
        protocol: p.ip_protocol.clone().or(Some(Scalar::Null)),
        ports,
        icmp_type,
        icmp_code,
        ..RawRule::default()
    };
    let mut out = vec![];
    // CidrIp holds IPv4 only, CidrIpv6 IPv6 only; AWS refuses the other family.
    let family =
        |cx: &mut PermCtx, sub: String, key: &'static str, cidr: &Option<Scalar>, v6: bool| {
            if let Some(Ok(n)) = cidr.as_ref().and_then(Scalar::as_str).map(parse_cidr)
                && matches!(n, IpNet::V6(_)) != v6
            {
                let (want, other) = if v6 {
                    ("IPv6", "IpRanges[].CidrIp")
                } else {
                    ("IPv4", "Ipv6Ranges[].CidrIpv6")
                };
                cx.error(
                    Some(sub),
                    key,
                    format!("CIDR block {n} is malformed: {key} takes an {want} CIDR"),
                    &format!("move it to {other}"),
                );
            }
        };
    for (i, r) in p.ip_ranges.iter().enumerate() {
        let sub = format!("IpRanges[{i}]");
        family(cx, sub.clone(), "CidrIp", &r.cidr_ip, false);
        out.push(RawRule {
            cidr: r.cidr_ip.clone().or(Some(Scalar::Null)),
            description: r.description.clone().map(RawText::from),
            origin: cx.origin(Some(sub)),
            ..base.clone()
        });
    }
    for (i, r) in p.ipv6_ranges.iter().enumerate() {
        let sub = format!("Ipv6Ranges[{i}]");
        family(cx, sub.clone(), "CidrIpv6", &r.cidr_ipv6, true);
        out.push(RawRule {
            cidr: r.cidr_ipv6.clone().or(Some(Scalar::Null)),
            description: r.description.clone().map(RawText::from),
            origin: cx.origin(Some(sub)),
            ..base.clone()
        });
    }
    for (i, r) in p.prefix_list_ids.iter().enumerate() {
        let o = cx.origin(Some(format!("PrefixListIds[{i}]")));
        if let Some(id) = &r.prefix_list_id {
            pls.entry(id.text()).or_insert_with(|| o.clone());
        }
        out.push(RawRule {
            prefix_list: r.prefix_list_id.clone(),
            description: r.description.clone().map(RawText::from),
            origin: o,
            ..base.clone()
        });
    }
    for (i, r) in p.user_id_group_pairs.iter().enumerate() {
        out.push(RawRule {
            group: r.group_id.clone(),
            description: r.description.clone().map(RawText::from),
            origin: cx.origin(Some(format!("UserIdGroupPairs[{i}]"))),
            ..base.clone()
        });
    }
    out
}

/// Blanks out commas that directly precede a closing `}` or `]` (outside
/// strings). They are not JSON, but the AWS CLI documentation's own
/// describe-security-groups examples have them, and people paste those.
/// Positions are kept, so error lines still point at the right place.
fn without_trailing_commas(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' => {
                let next = bytes[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
                if matches!(next, Some(b'}' | b']')) {
                    out[i] = b' ';
                }
            }
            _ => {}
        }
    }
    String::from_utf8(out).expect("only an ASCII byte was replaced")
}

/// Parses AWS JSON into a raw document.
///
/// # Errors
/// A problem with line and column for malformed JSON or wrong value types.
pub fn parse(text: &str, file: Option<&Path>) -> Result<Doc, Vec<Problem>> {
    let text = without_trailing_commas(text.trim_start_matches('\u{feff}'));
    let d: AwsDescribe = serde_json::from_str(&text).map_err(|e| {
        let mut p = Problem::error(
            format!("cannot read the AWS JSON: {e}"),
            "give the unmodified output of `aws ec2 describe-security-groups` (JSON)",
        )
        .in_file(file);
        p.origin.line = Some(e.line() as u64).filter(|l| *l > 0);
        vec![p]
    })?;
    let mut doc = Doc {
        file: file.map(Path::to_path_buf),
        ..Doc::default()
    };
    let mut pls: BTreeMap<String, Origin> = BTreeMap::new();
    let mut problems = vec![];
    for (gi, g) in d.security_groups.iter().enumerate() {
        let path = format!("SecurityGroups[{gi}]");
        let mut list =
            |v: &[AwsPermission], key: &str, direction, pls: &mut BTreeMap<String, Origin>| {
                let mut out = vec![];
                for (pi, p) in v.iter().enumerate() {
                    let mut cx = PermCtx {
                        path: &format!("{path}.{key}[{pi}]"),
                        file,
                        group: g.group_id.as_deref(),
                        direction,
                        problems: &mut problems,
                    };
                    out.extend(perm_rules(p, &mut cx, pls));
                }
                out
            };
        let ingress = RawRules::List(list(
            &g.ip_permissions,
            "IpPermissions",
            Direction::Ingress,
            &mut pls,
        ));
        let egress = match &g.ip_permissions_egress {
            None => RawRules::Omitted,
            Some(v) => RawRules::List(list(v, "IpPermissionsEgress", Direction::Egress, &mut pls)),
        };
        doc.groups.push(RawGroup {
            id: g.group_id.clone().map(Scalar::Str),
            name: g.group_name.clone().map(|n| Scalar::Str(n).into()),
            description: g.description.clone().map(|d| Scalar::Str(d).into()),
            ingress,
            egress,
            origin: Origin {
                file: file.map(Path::to_path_buf),
                line: None,
                path: Some(path),
            },
        });
    }
    for (id, origin) in pls {
        doc.prefix_lists.push(RawPrefixList {
            id: Some(Scalar::Str(id)),
            placeholder: true,
            origin,
            ..RawPrefixList::default()
        });
    }
    doc.problems = problems;
    Ok(doc)
}

// ---- native YAML out -------------------------------------------------------

#[derive(Serialize)]
struct OutConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prefix_lists: Vec<OutPrefixList>,
    security_groups: Vec<OutGroup>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<OutInterface>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    members: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quotas: Option<OutQuotas>,
}

#[derive(Serialize)]
struct OutQuotas {
    groups: u32,
    rules_per_group: u32,
    groups_per_interface: u32,
    rules_per_interface: u32,
}

#[derive(Serialize)]
struct OutPrefixList {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_entries: Option<u32>,
    cidrs: Vec<String>,
}

#[derive(Serialize)]
struct OutGroup {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    ingress: Vec<OutRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<Vec<OutRule>>,
}

#[derive(Serialize)]
struct OutRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<OutPorts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix_list: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

/// A single port as a number, a range as "N-M".
#[derive(Serialize)]
#[serde(untagged)]
enum OutPorts {
    One(u16),
    Range(String),
}

#[derive(Serialize)]
struct OutInterface {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<&'static str>,
    security_groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conntrack: Option<OutConntrack>,
}

#[derive(Serialize)]
struct OutConntrack {
    tcp_established: u32,
    udp_stream: u32,
    udp: u32,
}

fn out_rule(r: &super::types::Rule, group: &str, dir: super::types::Direction) -> OutRule {
    let derived = super::types::RuleId::derive(group, dir, r.protocol, &r.l4, &r.peer);
    let (ports, icmp_type, icmp_code) = match r.l4 {
        L4Match::Ports(p) if p == PortRange::ALL => (None, None, None),
        L4Match::Ports(p) if p.from == p.to => (Some(OutPorts::One(p.from)), None, None),
        L4Match::Ports(p) => (Some(OutPorts::Range(p.to_string())), None, None),
        L4Match::Icmp {
            icmp_type,
            icmp_code,
        } => (None, icmp_type, icmp_code),
        L4Match::Any => (None, None, None),
    };
    let (mut cidr, mut prefix_list, mut grp) = (None, None, None);
    match &r.peer {
        Peer::Cidr(n) => cidr = Some(n.to_string()),
        Peer::PrefixList(id) => prefix_list = Some(id.clone()),
        Peer::Group(id) => grp = Some(id.clone()),
    }
    OutRule {
        id: (r.id != derived).then(|| r.id.0.clone()),
        protocol: r.protocol.to_string(),
        ports,
        icmp_type,
        icmp_code,
        cidr,
        prefix_list,
        group: grp,
        description: r.description.clone(),
    }
}

fn out_prefix_list(p: &super::types::PrefixList) -> OutPrefixList {
    OutPrefixList {
        id: p.id.clone(),
        max_entries: p.max_entries,
        cidrs: p.cidrs.iter().map(ToString::to_string).collect(),
    }
}

fn out_group(g: &super::types::Group) -> OutGroup {
    use super::types::Direction;
    let default = default_egress(&g.id, &g.origin);
    let egress_is_default = g.egress.len() == default.len()
        && g.egress.iter().zip(&default).all(|(a, b)| {
            a.protocol == b.protocol
                && a.peer == b.peer
                && a.description == b.description
                && a.id == b.id
        });
    OutGroup {
        id: g.id.clone(),
        name: g.name.clone(),
        description: g.description.clone(),
        ingress: g
            .ingress
            .iter()
            .map(|r| out_rule(r, &g.id, Direction::Ingress))
            .collect(),
        egress: (!egress_is_default).then(|| {
            g.egress
                .iter()
                .map(|r| out_rule(r, &g.id, Direction::Egress))
                .collect()
        }),
    }
}

/// A group as one native-config entry in JSON (which native YAML reads):
/// how the shared store keeps it. Loading it gives the same group.
///
/// # Errors
/// Only if JSON serialization fails.
pub fn group_json(g: &super::types::Group) -> serde_json::Result<String> {
    serde_json::to_string(&out_group(g))
}

/// A prefix list as one native-config entry in JSON (see [`group_json`]).
///
/// # Errors
/// Only if JSON serialization fails.
pub fn prefix_list_json(p: &super::types::PrefixList) -> serde_json::Result<String> {
    serde_json::to_string(&out_prefix_list(p))
}

/// Writes a model as native YAML. Loading the output gives the same model
/// (same groups, rules, rule ids, prefix lists, interfaces, members, quotas).
///
/// # Errors
/// Only if YAML serialization fails.
pub fn to_native_yaml(model: &Model) -> Result<String, serde_saphyr::ser::Error> {
    let out = OutConfig {
        prefix_lists: model.prefix_lists.iter().map(out_prefix_list).collect(),
        security_groups: model.groups.iter().map(out_group).collect(),
        interfaces: model
            .interfaces
            .iter()
            .map(|i| OutInterface {
                name: i.name.clone(),
                netns: i.netns.clone(),
                side: (i.side == super::types::Side::Peer).then_some("peer"),
                security_groups: i.groups.clone(),
                addresses: i
                    .addresses
                    .as_ref()
                    .map(|v| v.iter().map(ToString::to_string).collect()),
                conntrack: (i.conntrack != super::types::ConntrackTimeouts::default()).then_some(
                    OutConntrack {
                        tcp_established: i.conntrack.tcp_established,
                        udp_stream: i.conntrack.udp_stream,
                        udp: i.conntrack.udp,
                    },
                ),
            })
            .collect(),
        members: model
            .members
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(ToString::to_string).collect()))
            .collect(),
        quotas: (model.quotas != super::types::Quotas::default()).then_some(OutQuotas {
            groups: model.quotas.groups,
            rules_per_group: model.quotas.rules_per_group,
            groups_per_interface: model.quotas.groups_per_interface,
            rules_per_interface: model.quotas.rules_per_interface,
        }),
    };
    serde_saphyr::to_string(&out)
}
