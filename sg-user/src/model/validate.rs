//! Validation: turns a raw [`Doc`] into a [`Model`], collecting every
//! problem instead of stopping at the first. Each [`Problem`] names the file,
//! line (YAML) or JSON path (AWS), group, direction, rule index and field,
//! and says what to change.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
};

use ipnet::IpNet;

pub use super::diag::{Problem, Severity};
use super::{
    AddressSource, Model,
    config::{
        Doc, GROUPS_ANNOTATION, RawGroup, RawInterface, RawRule, RawRules, RawText, Scalar, TextAt,
        WorkloadRef,
    },
    types::{
        ConntrackTimeouts, Direction, Group, Interface, L4Match, Origin, Peer, PortRange,
        PrefixList, Protocol, Quotas, Rule, RuleId, Side,
    },
};

/// Ids of groups, prefix lists, interfaces and namespaces: printable, no
/// whitespace, no `/` or `@` (rule ids and `--attach` use those as separators).
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars().all(|c| {
            // Invisible characters would make an id look like another id.
            !c.is_whitespace() && !super::text::is_unsafe(c) && !matches!(c, '/' | '@' | '=' | ',')
        })
}

/// Longest description or group name AWS accepts, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 255;

/// The characters AWS allows in rule and group descriptions and group
/// names (EC2 API): `a-zA-Z0-9`, space and `._-:/()#,@[]+=&;{}!$*`.
pub fn is_description_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c)
}

/// Checks a description (or group name) as AWS does: at most 255
/// characters from [`is_description_char`]. `at` is where the value is
/// written, when known.
///
/// # Errors
/// A message that names the first bad character (escaped), its position in
/// the value and, when known, its line and column in the file; and a fix.
pub fn check_description(
    what: &str,
    value: &str,
    at: Option<TextAt>,
) -> Result<(), (String, String)> {
    let allowed = "letters a-z A-Z, digits, space and ._-:/()#,@[]+=&;{}!$*";
    let n = value.chars().count();
    if let Some((i, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !is_description_char(*c))
    {
        let shown: String = if super::text::is_unsafe(c) {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        // The column in the file when the value is written on one line
        // as is (plain) or in quotes without escapes.
        let (at_char, after) = match at {
            Some(a) if a.source_len == n as u64 && !value.contains('\n') => (
                format!(" at line {}, column {}", a.line, a.column + i as u64),
                String::new(),
            ),
            Some(a) if a.source_len == n as u64 + 2 && !value.contains('\n') => (
                format!(" at line {}, column {}", a.line, a.column + 1 + i as u64),
                String::new(),
            ),
            Some(a) => (
                String::new(),
                format!(
                    " (the {what} starts at line {}, column {})",
                    a.line, a.column
                ),
            ),
            None => (String::new(), String::new()),
        };
        return Err((
            format!(
                "character {} `{shown}` (U+{:04X}){at_char} is not allowed{after}",
                i + 1,
                u32::from(c),
            ),
            format!("AWS allows at most {MAX_DESCRIPTION_CHARS} characters from: {allowed}"),
        ));
    }
    if n > MAX_DESCRIPTION_CHARS {
        return Err((
            format!("{n} characters, more than the {MAX_DESCRIPTION_CHARS} AWS allows"),
            format!("shorten it to at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Linux interface names: 1–15 bytes, no `/`, whitespace or `:` (IFNAMSIZ).
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':' && b != b'@' && b != b'=')
}

/// The first IPv4 octet written with a leading zero (`010`), in an IPv4
/// address or the dotted tail of an IPv6 one. Such addresses are ambiguous:
/// `ping` and `inet_aton` read `010` as octal (8), others as decimal (10).
fn leading_zero_octet(addr: &str) -> Option<&str> {
    let dotted = addr.rsplit(':').next().unwrap_or(addr);
    if !dotted.contains('.') {
        return None;
    }
    dotted
        .split('.')
        .find(|o| o.len() > 1 && o.starts_with('0') && o.bytes().all(|b| b.is_ascii_digit()))
}

/// The problem with an address written with a leading zero in an octet.
fn leading_zero_problem(written: &str, octet: &str) -> (String, String) {
    let decimal = octet.trim_start_matches('0');
    let decimal = if decimal.is_empty() { "0" } else { decimal };
    let octal = u8::from_str_radix(octet, 8)
        .ok()
        .filter(|n| n.to_string() != decimal)
        .map(|n| format!(", or {n} if the octal value was meant"))
        .unwrap_or_default();
    (
        format!(
            "{written}: octet {octet} has a leading zero, which is ambiguous (ping and inet_aton read it as octal, other tools as decimal)"
        ),
        format!("write the octet as {decimal}{octal}"),
    )
}

/// Parses an address strictly: no leading zeros in IPv4 octets, no
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`), which no packet carries.
///
/// # Errors
/// A message and a fix.
pub fn parse_addr(s: &str) -> Result<IpAddr, (String, String)> {
    let t = s.trim();
    if let Some(octet) = leading_zero_octet(t) {
        return Err(leading_zero_problem(t, octet));
    }
    match t.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) if a.to_ipv4_mapped().is_some() => Err((
            format!("{t} is an IPv4-mapped IPv6 address, which IPv4 packets never carry"),
            format!(
                "write the IPv4 address {}",
                a.to_ipv4_mapped().expect("checked")
            ),
        )),
        Ok(a) => Ok(a),
        Err(_) => Err((
            format!("{s:?} is not an IP address"),
            "write a plain address such as 198.18.0.10 or 2001:db8::10 (no prefix length)"
                .to_owned(),
        )),
    }
}

/// Parses a CIDR, explaining exactly what is wrong with a bad one.
///
/// # Errors
/// A message and a fix: not a CIDR, an address without prefix, host bits set
/// (naming the canonical network), a leading zero in an IPv4 octet, an
/// IPv4-mapped IPv6 network.
pub fn parse_cidr(s: &str) -> Result<IpNet, (String, String)> {
    let t = s.trim();
    if let Some(octet) = leading_zero_octet(t.split('/').next().unwrap_or(t)) {
        return Err(leading_zero_problem(t, octet));
    }
    match t.parse::<IpNet>() {
        Ok(IpNet::V6(n)) if n.prefix_len() >= 96 && n.addr().to_ipv4_mapped().is_some() => {
            let v4 = n.addr().to_ipv4_mapped().expect("checked");
            Err((
                format!(
                    "{t} is an IPv4-mapped IPv6 network (::ffff:a.b.c.d), which no packet carries: IPv4 traffic is matched by IPv4 rules"
                ),
                format!("write the IPv4 CIDR {v4}/{}", n.prefix_len() - 96),
            ))
        }
        Ok(n) if n.trunc() == n => Ok(n),
        Ok(n) => {
            let host = match n.addr() {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            Err((
                format!("host bits set in {t}"),
                format!(
                    "write {} for the network, or {host} for the one host",
                    n.trunc()
                ),
            ))
        }
        Err(_) => match parse_addr(t) {
            Ok(IpAddr::V4(a)) => Err((
                format!("{t} is an address, not a CIDR"),
                format!("write {a}/32"),
            )),
            Ok(IpAddr::V6(a)) => Err((
                format!("{t} is an address, not a CIDR"),
                format!("write {a}/128"),
            )),
            Err(_) => Err((
                format!("{s:?} is not a CIDR"),
                "write an IPv4 or IPv6 network such as 198.18.0.0/15 or 2001:db8::/32".to_owned(),
            )),
        },
    }
}

struct Ctx<'a> {
    problems: Vec<Problem>,
    file: Option<&'a Path>,
}

impl Ctx<'_> {
    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }
}

fn text(s: &Option<Scalar>) -> Option<String> {
    match s {
        None | Some(Scalar::Null) => None,
        Some(v) => Some(v.text()),
    }
}

/// A description or name: its text, after checking it as AWS does (the
/// problem made by `problem`, on the value's own line when known).
fn free_text(
    cx: &mut Ctx,
    raw: &Option<RawText>,
    what: &str,
    problem: impl FnOnce(String, String) -> Problem,
) -> Option<String> {
    let raw = raw.as_ref().filter(|t| t.value != Scalar::Null)?;
    let value = raw.value.text();
    if let Err((m, f)) = check_description(what, &value, raw.at) {
        let mut p = problem(m, f);
        if let Some(at) = raw.at {
            p.origin.line = Some(at.line);
        }
        cx.push(p);
    }
    Some(value)
}

/// Reads an optional integer field within `lo..=hi`.
fn int_in(v: &Option<Scalar>, lo: i128, hi: i128) -> Result<Option<i128>, String> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(s) => match s.as_int() {
            Some(i) if (lo..=hi).contains(&i) => Ok(Some(i)),
            Some(i) => Err(format!("{i} is out of range {lo}..={hi}")),
            None => Err(format!("{s} is not a whole number")),
        },
    }
}

fn parse_ports(v: &Scalar) -> Result<PortRange, (String, String)> {
    let fix = || "write a port 0-65535, a range \"N-M\" with N <= M, or `all`".to_owned();
    let one = |s: &str| -> Result<u16, (String, String)> {
        match s.trim().parse::<i128>() {
            Ok(n) if (0..=65535).contains(&n) => Ok(n as u16),
            Ok(n) => Err((format!("port {n} is out of range 0-65535"), fix())),
            Err(_) => Err((format!("{s:?} is not a port number"), fix())),
        }
    };
    match v {
        Scalar::Int(n) => one(&n.to_string()).map(PortRange::single),
        Scalar::Str(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("all") {
                return Ok(PortRange::ALL);
            }
            // "N-M"; a leading '-' is a negative number, not a range.
            match t.get(1..).and_then(|rest| rest.find('-')).map(|i| i + 1) {
                Some(i) => {
                    let (a, b) = (one(&t[..i])?, one(&t[i + 1..])?);
                    if a > b {
                        Err((
                            format!("port range {t} runs backwards"),
                            format!("write {b}-{a}"),
                        ))
                    } else {
                        Ok(PortRange { from: a, to: b })
                    }
                }
                None => one(t).map(PortRange::single),
            }
        }
        other => Err((format!("{other} is not a port"), fix())),
    }
}

fn parse_protocol(v: &Scalar) -> Option<Protocol> {
    match v {
        Scalar::Int(-1) => Some(Protocol::All),
        Scalar::Int(n) => u8::try_from(*n).ok().map(Protocol::from_number),
        Scalar::Str(s) => Protocol::parse(s),
        _ => None,
    }
}

struct RuleCtx<'a> {
    group: &'a str,
    dir: Direction,
    idx: usize,
    origin: &'a Origin,
}

impl RuleCtx<'_> {
    fn err(&self, field: &'static str, msg: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem::error(msg, fix)
            .at(self.origin)
            .group(self.group)
            .rule(self.dir, self.idx)
            .field(field)
    }
}

/// Checks one rule's own fields (references are checked later, once all ids are known).
fn parse_rule(cx: &mut Ctx, rc: &RuleCtx, raw: &RawRule) -> Option<Rule> {
    let before = cx.problems.len();
    let protocol = rule_protocol(cx, rc, raw);
    let l4 = protocol.map_or(L4Match::Any, |p| rule_l4(cx, rc, raw, p));
    let peer = rule_peer(cx, rc, raw);
    family_mismatch(cx, rc, protocol, peer.as_ref());
    let explicit_id = match &raw.id {
        None | Some(Scalar::Null) => None,
        Some(v) => {
            let t = v.text();
            if t.is_empty()
                || t.chars()
                    .any(|c| c.is_whitespace() || super::text::is_unsafe(c))
            {
                cx.push(rc.err(
                    "id",
                    format!("rule id {v} is empty or has whitespace or invisible characters"),
                    "use an id like sgr-0123 or web-https",
                ));
            }
            Some(RuleId(t))
        }
    };
    let description = free_text(cx, &raw.description, "description", |m, f| {
        rc.err("description", m, f)
    });
    if cx.problems[before..].iter().any(Problem::is_error) {
        return None;
    }
    let (protocol, peer) = (protocol?, peer?);
    let id = explicit_id.unwrap_or_else(|| RuleId::derive(rc.group, rc.dir, protocol, &l4, &peer));
    Some(Rule {
        id,
        protocol,
        l4,
        peer,
        description,
        origin: rc.origin.clone(),
        index: rc.idx,
    })
}

/// The rule's protocol (an error when missing or unknown).
fn rule_protocol(cx: &mut Ctx, rc: &RuleCtx, raw: &RawRule) -> Option<Protocol> {
    match &raw.protocol {
        None | Some(Scalar::Null) => {
            cx.push(rc.err(
                "protocol",
                "the rule has no protocol",
                "add `protocol:` (tcp, udp, icmp, icmpv6, all, -1 or a number 0-255)",
            ));
            None
        }
        Some(v) => {
            let p = parse_protocol(v);
            if p.is_none() {
                cx.push(rc.err(
                    "protocol",
                    format!("unknown protocol {v}"),
                    "use tcp, udp, icmp, icmpv6, all, -1 or an IANA protocol number 0-255",
                ));
            }
            p
        }
    }
}

/// What the rule matches beyond the protocol: ports for TCP/UDP, type and
/// code for ICMP; fields that do not apply to the protocol are errors.
fn rule_l4(cx: &mut Ctx, rc: &RuleCtx, raw: &RawRule, p: Protocol) -> L4Match {
    let mut l4 = L4Match::Any;
    let ports = raw.ports.as_ref().filter(|v| **v != Scalar::Null);
    if p.has_ports() {
        l4 = L4Match::Ports(PortRange::ALL);
        if let Some(v) = ports {
            match parse_ports(v) {
                Ok(r) => l4 = L4Match::Ports(r),
                Err((m, f)) => cx.push(rc.err("ports", m, f)),
            }
        }
    } else if let Some(v) = ports {
        let fix = if p.is_icmp() {
            "remove `ports`; ICMP rules use `icmp_type` and `icmp_code`".to_owned()
        } else {
            format!("remove `ports` (protocol {p} has no ports), or use tcp or udp")
        };
        cx.push(rc.err(
            "ports",
            format!("ports {v} given for protocol {p}, which has none"),
            fix,
        ));
    }
    let ty = int_in(&raw.icmp_type, -1, 255);
    let code = int_in(&raw.icmp_code, -1, 255);
    if p.is_icmp() {
        let ty = ty.unwrap_or_else(|m| {
            cx.push(rc.err("icmp_type", m, "use an ICMP type 0-255, or -1 for any"));
            None
        });
        let code = code.unwrap_or_else(|m| {
            cx.push(rc.err("icmp_code", m, "use an ICMP code 0-255, or -1 for any"));
            None
        });
        let ty = ty.filter(|t| *t >= 0).map(|t| t as u8);
        let code = code.filter(|c| *c >= 0).map(|c| c as u8);
        if ty.is_none() && code.is_some() {
            cx.push(rc.err(
                "icmp_code",
                "an ICMP code without a type (type -1 means any type and forces code -1)",
                "add `icmp_type:` for this code, or remove `icmp_code`",
            ));
        }
        l4 = L4Match::Icmp {
            icmp_type: ty,
            icmp_code: code,
        };
    } else {
        for (field, v) in [("icmp_type", &raw.icmp_type), ("icmp_code", &raw.icmp_code)] {
            if v.as_ref().is_some_and(|v| *v != Scalar::Null) {
                cx.push(rc.err(
                    field,
                    format!("`{field}` given for protocol {p}"),
                    format!("remove `{field}`, or use protocol icmp or icmpv6"),
                ));
            }
        }
    }
    l4
}

/// The rule's one peer: a CIDR, a prefix list or a group.
fn rule_peer(cx: &mut Ctx, rc: &RuleCtx, raw: &RawRule) -> Option<Peer> {
    let given: Vec<(&'static str, String)> = [
        ("cidr", &raw.cidr),
        ("prefix_list", &raw.prefix_list),
        ("group", &raw.group),
    ]
    .into_iter()
    .filter_map(|(k, v)| text(v).map(|t| (k, t)))
    .collect();
    match given.as_slice() {
        [] => {
            cx.push(rc.err(
                "cidr",
                "the rule has no peer",
                "add exactly one of `cidr:`, `prefix_list:` or `group:`",
            ));
            None
        }
        [(kind, v)] => match *kind {
            "cidr" => match parse_cidr(v) {
                Ok(n) => Some(Peer::Cidr(n)),
                Err((m, f)) => {
                    cx.push(rc.err("cidr", m, f));
                    None
                }
            },
            "prefix_list" => Some(Peer::PrefixList(v.clone())),
            _ => Some(Peer::Group(v.clone())),
        },
        many => {
            let names: Vec<&str> = many.iter().map(|(k, _)| *k).collect();
            cx.push(rc.err(
                names[1],
                format!("the rule has several peers ({})", names.join(", ")),
                "keep exactly one peer per rule; write one rule per peer",
            ));
            None
        }
    }
}

/// Warns about an ICMP rule whose peer is of the other address family.
fn family_mismatch(cx: &mut Ctx, rc: &RuleCtx, protocol: Option<Protocol>, peer: Option<&Peer>) {
    if let (Some(Protocol::Icmp), Some(Peer::Cidr(IpNet::V6(_)))) = (protocol, peer) {
        cx.push(
            Problem::warning(
                "protocol icmp (IPv4 ICMP) with an IPv6 peer matches nothing",
                "use protocol icmpv6 for IPv6 peers",
            )
            .at(rc.origin)
            .group(rc.group)
            .rule(rc.dir, rc.idx)
            .field("protocol"),
        );
    }
    if let (Some(Protocol::Icmpv6), Some(Peer::Cidr(IpNet::V4(_)))) = (protocol, peer) {
        cx.push(
            Problem::warning(
                "protocol icmpv6 with an IPv4 peer matches nothing",
                "use protocol icmp for IPv4 peers",
            )
            .at(rc.origin)
            .group(rc.group)
            .rule(rc.dir, rc.idx)
            .field("protocol"),
        );
    }
}

/// The AWS default outbound rules: all protocols to 0.0.0.0/0 and ::/0.
pub fn default_egress(group: &str, origin: &Origin) -> Vec<Rule> {
    ["0.0.0.0/0", "::/0"]
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let peer = Peer::Cidr(c.parse().expect("constant CIDR"));
            Rule {
                id: RuleId::derive(
                    group,
                    Direction::Egress,
                    Protocol::All,
                    &L4Match::Any,
                    &peer,
                ),
                protocol: Protocol::All,
                l4: L4Match::Any,
                peer,
                description: Some("default: all outbound".to_owned()),
                origin: origin.clone(),
                index,
            }
        })
        .collect()
}

fn quotas(cx: &mut Ctx, raw: &super::config::RawQuotas) -> Quotas {
    let mut q = Quotas::default();
    let origin = Origin {
        file: cx.file.map(Path::to_path_buf),
        line: None,
        path: Some("quotas".to_owned()),
    };
    let fields: [(&'static str, &Option<Scalar>, &mut u32, i128); 4] = [
        ("groups", &raw.groups, &mut q.groups, 1_000_000),
        (
            "rules_per_group",
            &raw.rules_per_group,
            &mut q.rules_per_group,
            1000,
        ),
        (
            "groups_per_interface",
            &raw.groups_per_interface,
            &mut q.groups_per_interface,
            i128::from(Quotas::MAX_GROUPS_PER_INTERFACE),
        ),
        (
            "rules_per_interface",
            &raw.rules_per_interface,
            &mut q.rules_per_interface,
            100_000,
        ),
    ];
    for (name, v, slot, max) in fields {
        match int_in(v, 1, max) {
            Ok(Some(n)) => *slot = n as u32,
            Ok(None) => {}
            Err(m) => cx.push(
                Problem::error(
                    format!("quotas.{name}: {m}"),
                    format!("use a number 1..={max}"),
                )
                .at(&origin)
                .field(name),
            ),
        }
    }
    let product = u64::from(q.groups_per_interface) * u64::from(q.rules_per_group);
    if product > u64::from(q.rules_per_interface) {
        cx.push(
            Problem::error(
                format!(
                    "groups_per_interface × rules_per_group = {} × {} = {product} exceeds rules_per_interface {}",
                    q.groups_per_interface, q.rules_per_group, q.rules_per_interface
                ),
                "lower groups_per_interface or rules_per_group (AWS keeps the product at most 1000)",
            )
            .at(&origin),
        );
    }
    q
}

/// Quota weight of a rule: (IPv4, IPv6).
fn rule_weight(rule: &Rule, pls: &BTreeMap<String, PrefixList>) -> (u64, u64) {
    match &rule.peer {
        Peer::Cidr(IpNet::V4(_)) => (1, 0),
        Peer::Cidr(IpNet::V6(_)) => (0, 1),
        Peer::Group(_) => (1, 1),
        Peer::PrefixList(id) => match pls.get(id) {
            None => (0, 0),
            Some(pl) => {
                let w = u64::from(pl.quota_weight());
                let v4 = pl.cidrs.iter().any(|c| matches!(c, IpNet::V4(_)));
                let v6 = pl.cidrs.iter().any(|c| matches!(c, IpNet::V6(_)));
                // An empty list (family unknown) counts against both.
                let both = !v4 && !v6;
                (
                    if v4 || both { w } else { 0 },
                    if v6 || both { w } else { 0 },
                )
            }
        },
    }
}

fn parse_group(cx: &mut Ctx, raw: &RawGroup, idx: usize) -> Option<Group> {
    let id = match &raw.id {
        None | Some(Scalar::Null) => {
            cx.push(
                Problem::error(
                    format!("security group #{idx} has no id"),
                    "add `id:`, e.g. `id: sg-web`",
                )
                .at(&raw.origin)
                .field("id"),
            );
            return None;
        }
        Some(v) => v.text(),
    };
    if !valid_id(&id) {
        cx.push(
            Problem::error(
                format!("group id {id:?} is not usable"),
                "use letters, digits, `-`, `_`, `.` (no spaces, `/`, `@`, `=` or `,`)",
            )
            .at(&raw.origin)
            .field("id"),
        );
        return None;
    }
    let rules_of = |cx: &mut Ctx, list: &RawRules, dir: Direction| -> Vec<Rule> {
        match list {
            RawRules::Omitted if dir == Direction::Egress => default_egress(&id, &raw.origin),
            RawRules::Omitted => vec![],
            RawRules::Null => {
                cx.push(
                    Problem::error(
                        format!("`{dir}:` has no value"),
                        format!(
                            "write `{dir}: []` for no {dir} rules{}",
                            if dir == Direction::Egress {
                                ", or remove the key for the AWS default (all outbound allowed)"
                            } else {
                                ", or remove the key"
                            }
                        ),
                    )
                    .at(&raw.origin)
                    .group(&id)
                    .field(dir.name()),
                );
                vec![]
            }
            RawRules::List(v) => v
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let rc = RuleCtx {
                        group: &id,
                        dir,
                        idx: i,
                        origin: &r.origin,
                    };
                    parse_rule(cx, &rc, r)
                })
                .collect(),
        }
    };
    let ingress = rules_of(cx, &raw.ingress, Direction::Ingress);
    let egress = rules_of(cx, &raw.egress, Direction::Egress);
    let group_problem = |field| {
        let (id, origin) = (&id, &raw.origin);
        move |m: String, f: String| Problem::error(m, f).at(origin).group(id).field(field)
    };
    let name = free_text(cx, &raw.name, "name", group_problem("name"));
    let description = free_text(
        cx,
        &raw.description,
        "description",
        group_problem("description"),
    );
    Some(Group {
        id: id.clone(),
        name,
        description,
        ingress,
        egress,
        origin: raw.origin.clone(),
    })
}

/// (name, value as written, where it goes, allowed range).
type TimeoutField<'a> = (&'static str, &'a Option<Scalar>, &'a mut u32, (u32, u32));

fn parse_interface(
    cx: &mut Ctx,
    raw: &RawInterface,
    groups: &BTreeSet<String>,
    workloads: &[Workload],
    q: &Quotas,
) -> Option<Interface> {
    let o = &raw.origin;
    let before = cx.problems.len();
    let name = text(&raw.name).unwrap_or_default();
    if !valid_ifname(&name) {
        cx.push(
            Problem::error(
                if name.is_empty() {
                    "the interface has no name".to_owned()
                } else {
                    format!("{name:?} is not a Linux interface name")
                },
                "use the name `ip link` shows: 1-15 characters, no spaces, `/`, `:` or `@`",
            )
            .at(o)
            .field("name"),
        );
    }
    let netns = text(&raw.netns);
    if let Some(ns) = &netns
        && (!valid_id(ns) || ns == "." || ns == "..")
    {
        cx.push(
            Problem::error(
                format!("{ns:?} is not a namespace name"),
                "use the name `ip netns list` shows (a file under /run/netns)",
            )
            .at(o)
            .iface(&name)
            .field("netns"),
        );
    }
    let key = match &netns {
        Some(ns) => format!("{name}@{ns}"),
        None => name.clone(),
    };
    let side = match text(&raw.side).as_deref() {
        None | Some("host") => Side::Host,
        Some("peer") => Side::Peer,
        Some(other) => {
            cx.push(
                Problem::error(
                    format!("side {other:?} is not host or peer"),
                    "use `host` (the protected machine's interface) or `peer` (host end of a container's veth)",
                )
                .at(o)
                .iface(&key)
                .field("side"),
            );
            Side::Host
        }
    };
    let ids = interface_groups(cx, raw, groups, workloads, q, &key);
    let addresses = raw.addresses.as_ref().map(|v| {
        v.iter()
            .filter_map(|a| match parse_addr(&a.text()) {
                Ok(ip) => Some(ip),
                Err((m, f)) => {
                    cx.push(Problem::error(m, f).at(o).iface(&key).field("addresses"));
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let conntrack = interface_conntrack(cx, raw, &key);
    if cx.problems[before..].iter().any(Problem::is_error) {
        return None;
    }
    Some(Interface {
        name,
        netns,
        side,
        groups: ids,
        addresses,
        conntrack,
        origin: o.clone(),
    })
}

/// The groups an interface names (each known, once, within the quota), or
/// `default` when it names none.
fn interface_groups(
    cx: &mut Ctx,
    raw: &RawInterface,
    groups: &BTreeSet<String>,
    workloads: &[Workload],
    q: &Quotas,
    key: &str,
) -> Vec<String> {
    let o = &raw.origin;
    let mut ids: Vec<String> = vec![];
    let named: Vec<String> = match (&raw.security_groups, &raw.workload) {
        (Some(list), _) if !list.is_empty() => list.iter().map(Scalar::text).collect(),
        (_, Some(w)) => workload_groups(w, workloads),
        _ => vec![],
    };
    for g in &named {
        let g = g.clone();
        if !groups.contains(&g) {
            cx.push(
                Problem::error(
                    format!("unknown security group {g:?}"),
                    "define it under `security_groups:` or fix the id",
                )
                .at(o)
                .iface(key)
                .field("security_groups"),
            );
        } else if ids.contains(&g) {
            cx.push(
                Problem::error(
                    format!("group {g} is attached twice"),
                    "list each group once",
                )
                .at(o)
                .iface(key)
                .field("security_groups"),
            );
        } else {
            ids.push(g);
        }
    }
    if named.is_empty() {
        if groups.contains("default") {
            ids.push("default".to_owned());
        } else if let Some(w) = &raw.workload {
            cx.push(
                Problem::error(
                    format!(
                        "container {} has no security groups: no `workloads:` entry matches its name, its network config has no `securityGroups`, and there is no group with id `default`",
                        w.name.as_deref().unwrap_or("(unnamed)")
                    ),
                    format!(
                        "give it the pod annotation `{}`, add a `workloads:` entry for it to the daemon's config, or set `securityGroups` in the CNI network config",
                        GROUPS_ANNOTATION
                    ),
                )
                .at(o)
                .iface(key)
                .field("security_groups"),
            );
        } else {
            cx.push(
                Problem::error(
                    "the interface has no security groups and there is no group with id `default`",
                    "add `security_groups: [...]` to the interface, or define a group with `id: default`",
                )
                .at(o)
                .iface(key)
                .field("security_groups"),
            );
        }
    }
    if ids.len() > q.groups_per_interface as usize {
        cx.push(
            Problem::error(
                format!(
                    "{} groups attached, quota groups_per_interface is {}",
                    ids.len(),
                    q.groups_per_interface
                ),
                format!(
                    "merge groups, or raise quotas.groups_per_interface (at most {})",
                    Quotas::MAX_GROUPS_PER_INTERFACE
                ),
            )
            .at(o)
            .iface(key)
            .field("security_groups"),
        );
    }
    ids
}

/// An interface's idle timeouts, each within the AWS range.
fn interface_conntrack(cx: &mut Ctx, raw: &RawInterface, key: &str) -> ConntrackTimeouts {
    let o = &raw.origin;
    let mut conntrack = ConntrackTimeouts::default();
    if let Some(ct) = &raw.conntrack {
        let fields: [TimeoutField; 3] = [
            (
                "tcp_established",
                &ct.tcp_established,
                &mut conntrack.tcp_established,
                ConntrackTimeouts::TCP_ESTABLISHED_RANGE,
            ),
            (
                "udp_stream",
                &ct.udp_stream,
                &mut conntrack.udp_stream,
                ConntrackTimeouts::UDP_STREAM_RANGE,
            ),
            (
                "udp",
                &ct.udp,
                &mut conntrack.udp,
                ConntrackTimeouts::UDP_RANGE,
            ),
        ];
        for (fname, v, slot, (lo, hi)) in fields {
            match int_in(v, i128::from(lo), i128::from(hi)) {
                Ok(Some(n)) => *slot = n as u32,
                Ok(None) => {}
                Err(m) => cx.push(
                    Problem::error(
                        format!("conntrack.{fname}: {m} seconds"),
                        format!("use {lo}..={hi} seconds (the AWS range)"),
                    )
                    .at(o)
                    .iface(key)
                    .field(fname),
                ),
            }
        }
    }
    conntrack
}

/// Validates a raw document and builds the model, resolving group
/// references with `discovery` for interfaces without declared addresses.
///
/// # Errors
/// Every problem found (warnings included) when there is at least one error.
/// On success the warnings are in [`Model::warnings`].
pub fn build(doc: &Doc, discovery: &dyn AddressSource) -> Result<Model, Vec<Problem>> {
    let mut cx = Ctx {
        problems: doc.problems.clone(),
        file: doc.file.as_deref(),
    };
    let q = quotas(&mut cx, &doc.quotas);
    let pls = prefix_lists(&mut cx, doc);
    let groups = unique_groups(&mut cx, doc, &q);
    let group_ids: BTreeSet<String> = groups.iter().map(|g| g.id.clone()).collect();
    check_group_rules(&mut cx, &groups, &group_ids, &pls, &q);
    let interfaces = unique_interfaces(&mut cx, doc, &groups, &group_ids, &pls, &q);
    let members = members(&mut cx, doc, &group_ids);
    if cx.problems.iter().any(Problem::is_error) {
        return Err(cx.problems);
    }
    let mut model = Model {
        file: doc.file.clone(),
        groups,
        prefix_lists: pls.into_values().collect(),
        interfaces,
        members,
        quotas: q,
        warnings: cx.problems,
        discovered: BTreeMap::new(),
        resolved: BTreeMap::new(),
    };
    model.rediscover(discovery);
    Ok(model)
}

/// The prefix lists, each checked; ids must be unique.
fn prefix_lists(cx: &mut Ctx<'_>, doc: &Doc) -> BTreeMap<String, PrefixList> {
    let mut pls: BTreeMap<String, PrefixList> = BTreeMap::new();
    for (i, raw) in doc.prefix_lists.iter().enumerate() {
        let o = &raw.origin;
        let Some(id) = text(&raw.id) else {
            cx.push(
                Problem::error(
                    format!("prefix list #{i} has no id"),
                    "add `id:`, e.g. `id: pl-office`",
                )
                .at(o)
                .field("id"),
            );
            continue;
        };
        if !valid_id(&id) {
            cx.push(
                Problem::error(
                    format!("prefix list id {id:?} is not usable"),
                    "use letters, digits, `-`, `_`, `.`",
                )
                .at(o)
                .field("id"),
            );
            continue;
        }
        let max_entries = match int_in(&raw.max_entries, 1, 100_000) {
            Ok(v) => v.map(|n| n as u32),
            Err(m) => {
                cx.push(
                    Problem::error(
                        format!("prefix list {id}: max_entries {m}"),
                        "use a number 1..=100000",
                    )
                    .at(o)
                    .field("max_entries"),
                );
                None
            }
        };
        let mut cidrs = vec![];
        for c in &raw.cidrs {
            match parse_cidr(&c.text()) {
                Ok(n) if cidrs.contains(&n) => cx.push(
                    Problem::warning(
                        format!("prefix list {id}: {n} is listed twice"),
                        "remove the duplicate",
                    )
                    .at(o)
                    .field("cidrs"),
                ),
                Ok(n) => cidrs.push(n),
                Err((m, f)) => cx.push(
                    Problem::error(format!("prefix list {id}: {m}"), f)
                        .at(o)
                        .field("cidrs"),
                ),
            }
        }
        if let Some(max) = max_entries
            && cidrs.len() > max as usize
        {
            cx.push(
                Problem::error(
                    format!(
                        "prefix list {id} has {} CIDRs, more than its max_entries {max}",
                        cidrs.len()
                    ),
                    "raise max_entries or remove entries",
                )
                .at(o)
                .field("max_entries"),
            );
        }
        if cidrs.is_empty() && !raw.placeholder {
            cx.push(
                Problem::warning(
                    format!("prefix list {id} has no CIDRs; rules that use it match nothing"),
                    "add its CIDRs under `cidrs:`",
                )
                .at(o)
                .field("cidrs"),
            );
        }
        if raw.placeholder {
            cx.push(
                Problem::warning(
                    format!("prefix list {id} is referenced by the AWS JSON, which does not carry its entries; it matches nothing"),
                    format!(
                        "define it under `prefix_lists:` with its CIDRs (aws ec2 get-managed-prefix-list-entries --prefix-list-id {id})"
                    ),
                )
                .at(o),
            );
        }
        if pls.contains_key(&id) {
            cx.push(
                Problem::error(
                    format!("prefix list id {id} is defined twice"),
                    "give each prefix list a unique id",
                )
                .at(o)
                .field("id"),
            );
            continue;
        }
        pls.insert(
            id.clone(),
            PrefixList {
                id,
                max_entries,
                cidrs,
            },
        );
    }

    pls
}

/// The groups, each checked; ids must be unique, and their number within
/// the quota.
fn unique_groups(cx: &mut Ctx<'_>, doc: &Doc, q: &Quotas) -> Vec<Group> {
    let mut groups: Vec<Group> = vec![];
    let mut seen_groups: HashMap<String, Origin> = HashMap::new();
    for (i, raw) in doc.groups.iter().enumerate() {
        let Some(g) = parse_group(cx, raw, i) else {
            continue;
        };
        if let Some(first) = seen_groups.get(&g.id) {
            cx.push(
                Problem::error(
                    format!("group id {} is defined twice (first at {first})", g.id),
                    "give each group a unique id, or merge their rules",
                )
                .at(&g.origin)
                .group(&g.id)
                .field("id"),
            );
            continue;
        }
        seen_groups.insert(g.id.clone(), g.origin.clone());
        groups.push(g);
    }
    if groups.len() as u64 > u64::from(q.groups) {
        cx.push(
            Problem::error(
                format!(
                    "{} security groups, quota groups is {}",
                    groups.len(),
                    q.groups
                ),
                "remove unused groups or raise quotas.groups",
            )
            .in_file(cx.file),
        );
    }

    groups
}

/// Across groups: references resolve, no rule is written twice, rule ids
/// are unique, and each group's rules fit the per-group quota.
fn check_group_rules(
    cx: &mut Ctx<'_>,
    groups: &[Group],
    group_ids: &BTreeSet<String>,
    pls: &BTreeMap<String, PrefixList>,
    q: &Quotas,
) {
    let mut rule_ids: HashMap<RuleId, Origin> = HashMap::new();
    for g in groups {
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut seen: Vec<(Protocol, L4Match, Peer, usize)> = vec![];
            let (mut v4, mut v6) = (0u64, 0u64);
            for r in g.rules(dir) {
                let i = r.index;
                let err = |m: String, f: &str, field| {
                    Problem::error(m, f)
                        .at(&r.origin)
                        .group(&g.id)
                        .rule(dir, i)
                        .field(field)
                };
                match &r.peer {
                    Peer::Group(id) if !group_ids.contains(id) => cx.push(err(
                        format!("unknown security group {id:?}"),
                        "define that group under `security_groups:` or fix the id",
                        "group",
                    )),
                    Peer::PrefixList(id) if !pls.contains_key(id) => cx.push(err(
                        format!("unknown prefix list {id:?}"),
                        "define it under `prefix_lists:` or fix the id",
                        "prefix_list",
                    )),
                    _ => {}
                }
                if let Some((.., j)) = seen
                    .iter()
                    .find(|(p, l, pe, _)| *p == r.protocol && *l == r.l4 && *pe == r.peer)
                {
                    cx.push(err(
                        format!("duplicate of {dir} rule {j} ({})", r.id),
                        "remove one of them (AWS rejects duplicate rules)",
                        "cidr",
                    ));
                } else {
                    seen.push((r.protocol, r.l4, r.peer.clone(), i));
                }
                if let Some(first) = rule_ids.get(&r.id) {
                    if !seen
                        .iter()
                        .any(|s| s.3 != i && s.0 == r.protocol && s.1 == r.l4 && s.2 == r.peer)
                    {
                        cx.push(err(
                            format!("rule id {} is used twice (first at {first})", r.id),
                            "give each rule a unique `id`",
                            "id",
                        ));
                    }
                } else {
                    rule_ids.insert(r.id.clone(), r.origin.clone());
                }
                let (a, b) = rule_weight(r, pls);
                v4 += a;
                v6 += b;
            }
            for (fam, n) in [("IPv4", v4), ("IPv6", v6)] {
                if n > u64::from(q.rules_per_group) {
                    cx.push(
                        Problem::error(
                            format!(
                                "{n} {fam} {dir} rules (prefix lists count as their max size, group references as one), quota rules_per_group is {}",
                                q.rules_per_group
                            ),
                            "split the group, use smaller prefix lists, or raise quotas.rules_per_group",
                        )
                        .at(&g.origin)
                        .group(&g.id)
                        .field(dir.name()),
                    );
                }
            }
        }
    }
}

/// The interfaces, each checked; listed once each, and the rules of their
/// groups within the per-interface quota.
fn unique_interfaces(
    cx: &mut Ctx<'_>,
    doc: &Doc,
    groups: &[Group],
    group_ids: &BTreeSet<String>,
    pls: &BTreeMap<String, PrefixList>,
    q: &Quotas,
) -> Vec<Interface> {
    let workloads = workloads(cx, doc, group_ids);
    let mut interfaces: Vec<Interface> = vec![];
    for raw in &doc.interfaces {
        let Some(i) = parse_interface(cx, raw, group_ids, &workloads, q) else {
            continue;
        };
        if let Some(prev) = interfaces
            .iter()
            .find(|p| p.name == i.name && p.netns == i.netns)
        {
            cx.push(
                Problem::error(
                    format!(
                        "interface {} is listed twice (first at {})",
                        i.key(),
                        prev.origin
                    ),
                    "list each interface once, with all its groups",
                )
                .at(&i.origin)
                .iface(&i.key()),
            );
            continue;
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            let (mut v4, mut v6) = (0u64, 0u64);
            for g in groups.iter().filter(|g| i.groups.contains(&g.id)) {
                for r in g.rules(dir) {
                    let (a, b) = rule_weight(r, pls);
                    v4 += a;
                    v6 += b;
                }
            }
            for (fam, n) in [("IPv4", v4), ("IPv6", v6)] {
                if n > u64::from(q.rules_per_interface) {
                    cx.push(
                        Problem::error(
                            format!(
                                "{n} {fam} {dir} rules across its groups, quota rules_per_interface is {}",
                                q.rules_per_interface
                            ),
                            "attach fewer or smaller groups",
                        )
                        .at(&i.origin)
                        .iface(&i.key()),
                    );
                }
            }
        }
        interfaces.push(i);
    }

    interfaces
}

/// A valid `workloads:` entry.
struct Workload {
    pattern: String,
    groups: Vec<String>,
}

/// `workloads:`: each has a name pattern and names defined groups.
fn workloads(cx: &mut Ctx<'_>, doc: &Doc, group_ids: &BTreeSet<String>) -> Vec<Workload> {
    let mut out = vec![];
    for (i, raw) in doc.workloads.iter().enumerate() {
        let before = cx.problems.len();
        let mut origin = raw.origin.clone();
        origin.path = Some(format!("workloads[{i}]"));
        let pattern = text(&raw.name).unwrap_or_default();
        if pattern.is_empty() || pattern.chars().any(char::is_whitespace) {
            cx.push(
                Problem::error(
                    "a workload entry needs a `name`: a container name or a pattern (`*` any text, `?` one character), without spaces",
                    "write e.g. `name: web-*`",
                )
                .at(&origin)
                .field("name"),
            );
        }
        let groups: Vec<String> = raw
            .security_groups
            .iter()
            .flatten()
            .map(Scalar::text)
            .collect();
        if groups.is_empty() {
            cx.push(
                Problem::error(
                    format!("workload `{pattern}` names no security groups"),
                    "add `security_groups: [...]`",
                )
                .at(&origin)
                .field("security_groups"),
            );
        }
        for g in groups.iter().filter(|g| !group_ids.contains(*g)) {
            cx.push(
                Problem::error(
                    format!("workload `{pattern}`: unknown security group {g:?}"),
                    "define it under `security_groups:` or fix the id",
                )
                .at(&origin)
                .field("security_groups"),
            );
        }
        if cx.problems[before..].iter().all(|p| !p.is_error()) {
            out.push(Workload { pattern, groups });
        }
    }
    out
}

/// An endpoint's groups when it names none: the first workload pattern its
/// name matches, else its network's groups.
fn workload_groups(w: &WorkloadRef, workloads: &[Workload]) -> Vec<String> {
    w.name
        .as_deref()
        .and_then(|name| workloads.iter().find(|p| glob_match(&p.pattern, name)))
        .map_or_else(|| w.network_groups.clone(), |p| p.groups.clone())
}

/// Whether `name` matches `pattern`: `*` stands for any text, `?` for one
/// character, everything else for itself.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `members:`: each names a defined group and lists valid addresses.
fn members(
    cx: &mut Ctx<'_>,
    doc: &Doc,
    group_ids: &BTreeSet<String>,
) -> BTreeMap<String, Vec<IpAddr>> {
    let mut members = BTreeMap::new();
    let morigin = Origin {
        file: cx.file.map(Path::to_path_buf),
        line: None,
        path: Some("members".to_owned()),
    };
    for (g, addrs) in &doc.members {
        if !group_ids.contains(g) {
            cx.push(
                Problem::error(
                    format!("members: unknown security group {g:?}"),
                    "use the id of a defined group",
                )
                .at(&morigin)
                .field("members"),
            );
            continue;
        }
        let mut v = vec![];
        for a in addrs {
            match parse_addr(&a.text()) {
                Ok(ip) => v.push(ip),
                Err((m, f)) => cx.push(
                    Problem::error(format!("members of {g}: {m}"), f)
                        .at(&morigin)
                        .group(g)
                        .field("members"),
                ),
            }
        }
        members.insert(g.clone(), v);
    }

    members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns_match_names() {
        for (pattern, name, want) in [
            ("web", "web", true),
            ("web", "web1", false),
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("*-db", "orders-db", true),
            ("*-db", "orders-db2", false),
            ("w?b", "wib", true),
            ("w?b", "wb", false),
            ("*a*b*", "xaybz", true),
            ("*a*b*", "xbya", false),
            ("*", "", true),
        ] {
            assert_eq!(glob_match(pattern, name), want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn cidr_host_bits_name_the_canonical_network() {
        let (m, fix) = parse_cidr("198.18.1.7/24").unwrap_err();
        assert!(m.contains("host bits"), "{m}");
        assert!(
            fix.contains("198.18.1.0/24") && fix.contains("198.18.1.7/32"),
            "{fix}"
        );
        let (_, fix) = parse_cidr("2001:db8::1/32").unwrap_err();
        assert!(fix.contains("2001:db8::/32"), "{fix}");
        let (m, fix) = parse_cidr("198.18.0.1").unwrap_err();
        assert!(
            m.contains("address") && fix.contains("198.18.0.1/32"),
            "{m} {fix}"
        );
        assert!(parse_cidr("banana").is_err());
        assert_eq!(parse_cidr(" 0.0.0.0/0 ").unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn ports_forms() {
        let p = |s: Scalar| parse_ports(&s);
        assert_eq!(p(Scalar::Int(443)).unwrap(), PortRange::single(443));
        assert_eq!(
            p(Scalar::Str("80-90".into())).unwrap(),
            PortRange { from: 80, to: 90 }
        );
        assert_eq!(p(Scalar::Str("all".into())).unwrap(), PortRange::ALL);
        assert!(
            p(Scalar::Str("90-80".into()))
                .unwrap_err()
                .1
                .contains("80-90")
        );
        assert!(p(Scalar::Int(65536)).is_err());
        assert!(p(Scalar::Int(-1)).is_err());
        assert!(p(Scalar::Str("-5".into())).is_err());
        assert!(p(Scalar::Str("1-2-3".into())).is_err());
        assert!(p(Scalar::Bool(true)).is_err());
        assert!(p(Scalar::Float(1.5)).is_err());
    }

    #[test]
    fn protocols_as_aws_writes_them() {
        let p = |s: Scalar| parse_protocol(&s);
        assert_eq!(p(Scalar::Str("6".into())), Some(Protocol::Tcp));
        assert_eq!(p(Scalar::Str("17".into())), Some(Protocol::Udp));
        assert_eq!(p(Scalar::Str("1".into())), Some(Protocol::Icmp));
        assert_eq!(p(Scalar::Str("58".into())), Some(Protocol::Icmpv6));
        assert_eq!(p(Scalar::Str("-1".into())), Some(Protocol::All));
        assert_eq!(p(Scalar::Int(-1)), Some(Protocol::All));
        assert_eq!(p(Scalar::Int(47)), Some(Protocol::Other(47)));
        assert_eq!(p(Scalar::Str("TCP".into())), Some(Protocol::Tcp));
        assert_eq!(p(Scalar::Int(256)), None);
        assert_eq!(p(Scalar::Str("sctp".into())), None);
    }

    #[test]
    fn ids() {
        assert!(valid_id("sg-0123abc"));
        assert!(!valid_id("sg web"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
        assert!(!valid_id("sg-\u{202e}bew"), "bidi override");
        assert!(!valid_id("sg\u{200b}-web"), "zero width space");
        assert!(valid_id("sg-ünï"));
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname("a-very-long-interface-name"));
        assert!(!valid_ifname("eth0:1"));
    }
}
