//! Reading configs: native YAML and AWS `describe-security-groups` JSON,
//! format detection, `import:` and `--attach`, into one raw document
//! ([`Doc`]) that validation turns into a [`super::Model`].
//!
//! Leaf values are read as [`Scalar`]s, not typed fields, so that a wrong
//! value is reported by validation together with every other problem instead
//! of stopping the parse at the first one.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::{diag::Problem, types::Origin};

/// Largest config file accepted (bytes).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A leaf value as written: YAML gives numbers, strings, booleans or null.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// An integer.
    Int(i128),
    /// A float (never valid where the model wants a number; kept to say so).
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A string.
    Str(String),
    /// `~`, `null` or an empty value.
    Null,
}

impl Scalar {
    /// The value as text, the way a user would have written it.
    pub fn text(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Str(s) => s.clone(),
            Self::Null => String::new(),
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer: an integer, or a string holding one
    /// (AWS writes protocol numbers as strings).
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Null => f.write_str("null"),
            other => f.write_str(&other.text()),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, a string or a boolean")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Scalar, E> {
                Ok(i128::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a text value was written in native YAML: its start, and how long
/// it is in the source (to find the column of a character in it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextAt {
    /// 1-based line of the value's first character (its quote, if quoted).
    pub line: u64,
    /// 1-based column of the same.
    pub column: u64,
    /// Length of the value in the source, in characters (quotes included).
    pub source_len: u64,
}

/// A free-text value (a description, a name) and where it was written,
/// when known (native YAML; not AWS JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct RawText {
    /// The value.
    pub value: Scalar,
    /// Where it was written.
    pub at: Option<TextAt>,
}

impl From<Scalar> for RawText {
    fn from(value: Scalar) -> Self {
        Self { value, at: None }
    }
}

impl<'de> Deserialize<'de> for RawText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Scalar>::deserialize(d)?;
        let l = s.referenced;
        Ok(Self {
            value: s.value,
            at: (l.line() > 0).then(|| TextAt {
                line: l.line(),
                column: l.column(),
                source_len: l.span().len(),
            }),
        })
    }
}

/// A rule as written. Native YAML fields; AWS permissions are converted to
/// one of these per peer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Explicit rule id (optional).
    pub id: Option<Scalar>,
    /// Protocol name or number.
    pub protocol: Option<Scalar>,
    /// `N`, `"N-M"` or `all`.
    pub ports: Option<Scalar>,
    /// ICMP type, -1 = any.
    pub icmp_type: Option<Scalar>,
    /// ICMP code, -1 = any.
    pub icmp_code: Option<Scalar>,
    /// IPv4 or IPv6 CIDR peer.
    pub cidr: Option<Scalar>,
    /// Prefix-list peer.
    pub prefix_list: Option<Scalar>,
    /// Group peer.
    pub group: Option<Scalar>,
    /// Description.
    pub description: Option<RawText>,
    /// Where it was written.
    #[serde(skip)]
    pub origin: Origin,
}

/// A rule list that distinguishes omitted, explicitly empty and null.
#[derive(Clone, Debug, Default)]
pub enum RawRules {
    /// The key is absent: for egress, the AWS default (allow all).
    #[default]
    Omitted,
    /// `egress:` with no value: ambiguous, reported as an error.
    Null,
    /// A list (possibly empty: no rules).
    List(Vec<RawRule>),
}

/// A group as written.
#[derive(Clone, Debug, Default)]
pub struct RawGroup {
    /// Group id.
    pub id: Option<Scalar>,
    /// Name.
    pub name: Option<RawText>,
    /// Description.
    pub description: Option<RawText>,
    /// Inbound rules.
    pub ingress: RawRules,
    /// Outbound rules.
    pub egress: RawRules,
    /// Where it was written.
    pub origin: Origin,
}

/// A prefix list as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefixList {
    /// Id.
    pub id: Option<Scalar>,
    /// Declared maximum size.
    pub max_entries: Option<Scalar>,
    /// CIDRs.
    #[serde(default)]
    pub cidrs: Vec<Scalar>,
    /// Made up by the AWS importer for a list the JSON only references.
    #[serde(skip)]
    pub placeholder: bool,
    /// Where it was written.
    #[serde(skip)]
    pub origin: Origin,
}

/// Conntrack timeouts as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConntrack {
    /// TCP established, seconds.
    pub tcp_established: Option<Scalar>,
    /// UDP stream, seconds.
    pub udp_stream: Option<Scalar>,
    /// UDP, seconds.
    pub udp: Option<Scalar>,
}

/// An interface as written (or given with `--attach`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// Interface name.
    pub name: Option<Scalar>,
    /// Network namespace.
    pub netns: Option<Scalar>,
    /// `host` | `peer`.
    pub side: Option<Scalar>,
    /// Attached group ids.
    pub security_groups: Option<Vec<Scalar>>,
    /// Declared addresses.
    pub addresses: Option<Vec<Scalar>>,
    /// Timeouts.
    pub conntrack: Option<RawConntrack>,
    /// A container's interface whose groups come from the config's
    /// `workloads:` when it names none itself (a CNI endpoint).
    #[serde(skip)]
    pub workload: Option<WorkloadRef>,
    /// Where it was written.
    #[serde(skip)]
    pub origin: Origin,
}

/// The pod annotation naming a container's groups (comma-separated); a CRI
/// runtime passes it to the CNI plugin.
pub const GROUPS_ANNOTATION: &str = "sgctl/security-groups";

/// What a container runtime said about an endpoint that names no groups of
/// its own: its name, matched against `workloads:`, and its network's
/// groups, used when no pattern matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadRef {
    /// The container's name (`K8S_POD_NAME`), if the runtime gave one.
    pub name: Option<String>,
    /// The network config's `securityGroups`.
    pub network_groups: Vec<String>,
}

/// A `workloads:` entry: containers whose name matches `name` (a glob: `*`
/// any text, `?` one character) get these groups.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    /// The name pattern.
    pub name: Option<Scalar>,
    /// Group ids.
    pub security_groups: Option<Vec<Scalar>>,
    /// Where it was written.
    #[serde(skip)]
    pub origin: Origin,
}

/// Quotas as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuotas {
    /// Groups in the config.
    pub groups: Option<Scalar>,
    /// Rules per group per direction per address family.
    pub rules_per_group: Option<Scalar>,
    /// Groups per interface.
    pub groups_per_interface: Option<Scalar>,
    /// Bound on groups_per_interface × rules_per_group.
    pub rules_per_interface: Option<Scalar>,
}

/// A whole config, format-independent, before validation.
#[derive(Clone, Debug, Default)]
pub struct Doc {
    /// The file it came from.
    pub file: Option<PathBuf>,
    /// Groups.
    pub groups: Vec<RawGroup>,
    /// Prefix lists.
    pub prefix_lists: Vec<RawPrefixList>,
    /// Interfaces.
    pub interfaces: Vec<RawInterface>,
    /// Group members by group id.
    pub members: BTreeMap<String, Vec<Scalar>>,
    /// Container name patterns and their groups, in config order.
    pub workloads: Vec<RawWorkload>,
    /// Quotas.
    pub quotas: RawQuotas,
    /// Problems found while reading that only the format can see (AWS: a
    /// CIDR under the other family's key, TCP ports of -1); validation
    /// reports them with its own.
    pub problems: Vec<Problem>,
}

/// The two config formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The native YAML format (JSON with the same keys works too).
    Native,
    /// `aws ec2 describe-security-groups` output.
    AwsJson,
}

/// Detects the format from content: a JSON object with a `SecurityGroups`
/// key is AWS JSON; anything else is native YAML.
pub fn detect_format(text: &str) -> Format {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with('{') && t.contains("\"SecurityGroups\"") {
        Format::AwsJson
    } else {
        Format::Native
    }
}

// ---- native YAML -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeGroup {
    id: Option<Scalar>,
    name: Option<RawText>,
    description: Option<RawText>,
    #[serde(default, deserialize_with = "present")]
    ingress: Option<Option<Vec<Spanned<RawRule>>>>,
    #[serde(default, deserialize_with = "present")]
    egress: Option<Option<Vec<Spanned<RawRule>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeConfig {
    import: Option<OneOrMany>,
    security_groups: Option<Vec<Spanned<NativeGroup>>>,
    #[serde(default)]
    prefix_lists: Vec<Spanned<RawPrefixList>>,
    #[serde(default)]
    interfaces: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    members: BTreeMap<String, Vec<Scalar>>,
    #[serde(default)]
    workloads: Vec<Spanned<RawWorkload>>,
    #[serde(default)]
    quotas: RawQuotas,
}

/// A key that is present deserializes to `Some(value)`, even when the value is null.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn origin_at(file: Option<&Path>, line: u64) -> Origin {
    Origin {
        file: file.map(Path::to_path_buf),
        line: (line > 0).then_some(line),
        path: None,
    }
}

fn rules(list: Option<Option<Vec<Spanned<RawRule>>>>, file: Option<&Path>) -> RawRules {
    match list {
        None => RawRules::Omitted,
        Some(None) => RawRules::Null,
        Some(Some(v)) => RawRules::List(
            v.into_iter()
                .map(|s| RawRule {
                    origin: origin_at(file, s.referenced.line()),
                    ..s.value
                })
                .collect(),
        ),
    }
}

/// What a YAML parser error means to a user, and what to do about it, in
/// words that do not name the parser's options or counters.
fn yaml_error(e: &serde_saphyr::Error) -> (String, &'static str) {
    use serde_saphyr::{
        Budget, Error, MessageFormatter as _, UserMessageFormatter, budget::BudgetBreach,
    };
    let e = e.without_snippet();
    let too_big_fix = "check that this is the right file; a policy that large can be split: groups can also come from AWS JSON files listed under `import:`";
    let limits = Budget::default();
    let user = UserMessageFormatter.format_message(e);
    match e {
        Error::DuplicateMappingKey { key, .. } => (
            match key {
                Some(k) => format!("the key `{k}` appears twice in one mapping"),
                None => "a key appears twice in one mapping".to_owned(),
            },
            "keep one of them (YAML allows a key once per mapping; for several rules or groups, write several list items)",
        ),
        Error::Budget { breach, .. } => {
            let what = match breach {
                BudgetBreach::Depth { .. } => {
                    format!("it is nested deeper than {} levels", limits.max_depth)
                }
                BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
                    "it has more than {} values, lists and mappings",
                    limits.max_nodes
                ),
                BudgetBreach::ScalarBytes { .. } => format!(
                    "its values hold more than {} MiB of text",
                    limits.max_total_scalar_bytes >> 20
                ),
                BudgetBreach::Documents { .. } => "it has too many YAML documents".to_owned(),
                _ => "it has too many anchors and aliases (`&name`, `*name`)".to_owned(),
            };
            (
                format!("the YAML is too large or too complex to be a config: {what}"),
                too_big_fix,
            )
        }
        _ if user.starts_with("YAML document too large or too complex") => (
            "the YAML is too large or too complex to be a config: its aliases (`*name`) expand to too much".to_owned(),
            too_big_fix,
        ),
        _ => (
            format!(
                "cannot read the YAML: {}",
                parser_words(user.lines().next().unwrap_or("invalid YAML"))
            ),
            "fix the syntax or the value's type at this spot (keys and shapes are in README.md)",
        ),
    }
}

/// The parser's terms in a user's: what was expected at this spot.
fn parser_words(msg: &str) -> String {
    [
        (
            "expected mapping start",
            "expected a mapping (`key: value` lines) here",
        ),
        (
            "expected sequence start",
            "expected a list (`- item` lines or `[...]`) here",
        ),
        ("recursion limit exceeded", "it is nested too deeply"),
    ]
    .iter()
    .fold(msg.to_owned(), |m, (from, to)| m.replace(from, to))
}

/// A native document plus the AWS files it imports (paths as written).
pub struct NativeDoc {
    /// The document.
    pub doc: Doc,
    /// `import:` entries, as written (relative to the file's directory).
    pub imports: Vec<String>,
}

/// Parses native YAML. `file` is only used to label problems.
///
/// # Errors
/// One [`Problem`] with the line and column of the syntax or type error.
pub fn parse_native(text: &str, file: Option<&Path>) -> Result<NativeDoc, Vec<Problem>> {
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Err(vec![
            Problem::error(
                "the config is empty",
                "start with `security_groups:` (see the example in README.md)",
            )
            .in_file(file),
        ]);
    }
    let cfg: NativeConfig = serde_saphyr::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let (msg, fix) = yaml_error(&e);
        let mut p = Problem::error(msg, fix).in_file(file);
        p.origin.line = line.filter(|l| *l > 0);
        vec![p]
    })?;
    if cfg.security_groups.is_none() && cfg.import.is_none() {
        return Err(vec![
            Problem::error(
                "the config has no `security_groups:` (and no `import:`)",
                "define groups under `security_groups:` (an empty list `[]` is allowed), or import AWS JSON with `import: FILE.json`",
            )
            .in_file(file),
        ]);
    }
    let mut doc = Doc {
        file: file.map(Path::to_path_buf),
        members: cfg.members,
        quotas: cfg.quotas,
        ..Doc::default()
    };
    for g in cfg.security_groups.unwrap_or_default() {
        let origin = origin_at(file, g.referenced.line());
        let g = g.value;
        doc.groups.push(RawGroup {
            id: g.id,
            name: g.name,
            description: g.description,
            ingress: rules(g.ingress, file),
            egress: rules(g.egress, file),
            origin,
        });
    }
    for p in cfg.prefix_lists {
        doc.prefix_lists.push(RawPrefixList {
            origin: origin_at(file, p.referenced.line()),
            ..p.value
        });
    }
    for i in cfg.interfaces {
        doc.interfaces.push(RawInterface {
            origin: origin_at(file, i.referenced.line()),
            ..i.value
        });
    }
    for w in cfg.workloads {
        doc.workloads.push(RawWorkload {
            origin: origin_at(file, w.referenced.line()),
            ..w.value
        });
    }
    let imports = match cfg.import {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    Ok(NativeDoc { doc, imports })
}

// ---- attachments -----------------------------------------------------------

/// An interface attached from outside the config file: from the command
/// line (`IFACE=sg-1,sg-2` or `IFACE@NETNS=sg-1`), or a workload endpoint a
/// container runtime registered (see `agent::endpoints`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Network namespace.
    pub netns: Option<String>,
    /// Group ids.
    pub groups: Vec<String>,
    /// Which end of the link it is (the config's default when `None`).
    pub side: Option<super::types::Side>,
    /// Declared addresses (none: discovered).
    pub addresses: Vec<std::net::IpAddr>,
    /// Where it came from, for messages (`--attach IFACE` when `None`).
    pub source: Option<String>,
    /// For a container's endpoint: how to find its groups when `groups` is
    /// empty.
    pub workload: Option<WorkloadRef>,
}

impl std::str::FromStr for Attachment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (target, groups) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected IFACE=sg-1,sg-2 or IFACE@NETNS=sg-1"))?;
        let (iface, netns) = match target.split_once('@') {
            Some((i, n)) => (i.trim(), Some(n.trim().to_owned())),
            None => (target.trim(), None),
        };
        if iface.is_empty() || netns.as_deref() == Some("") {
            return Err(format!(
                "`{s}`: the interface (and namespace after @) must not be empty"
            ));
        }
        let groups: Vec<String> = groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        if groups.is_empty() {
            return Err(format!("`{s}`: name at least one group after `=`"));
        }
        Ok(Self {
            iface: iface.to_owned(),
            netns,
            groups,
            ..Self::default()
        })
    }
}

impl Attachment {
    /// The raw interface entry this attachment stands for.
    pub fn to_raw(&self) -> RawInterface {
        use super::types::Choice as _;
        RawInterface {
            name: Some(Scalar::Str(self.iface.clone())),
            netns: self.netns.clone().map(Scalar::Str),
            side: self.side.map(|s| Scalar::Str(s.name().to_owned())),
            security_groups: (!self.groups.is_empty() || self.workload.is_none())
                .then(|| self.groups.iter().cloned().map(Scalar::Str).collect()),
            workload: self.workload.clone(),
            addresses: (!self.addresses.is_empty()).then(|| {
                self.addresses
                    .iter()
                    .map(|a| Scalar::Str(a.to_string()))
                    .collect()
            }),
            origin: Origin {
                path: Some(
                    self.source
                        .clone()
                        .unwrap_or_else(|| format!("--attach {}", self.iface)),
                ),
                ..Origin::default()
            },
            ..RawInterface::default()
        }
    }
}

// ---- loading ---------------------------------------------------------------

pub(super) fn read(path: &Path) -> Result<String, Vec<Problem>> {
    read_text(path).map_err(|p| vec![*p])
}

/// The path that stands for standard input (`-c -`).
pub const STDIN: &str = "-";

/// Whether `path` means standard input.
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == STDIN
}

/// How a config is named in messages and problem locations: `<stdin>` for
/// `-`, else the path as given.
pub fn source_label(path: &Path) -> &Path {
    if is_stdin(path) {
        Path::new("<stdin>")
    } else {
        path
    }
}

/// Why [`read_bounded`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// More than the limit arrived.
    #[error("more than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading failed.
    #[error("reading failed")]
    Io(#[source] std::io::Error),
}

/// Reads everything from `r`, but never more than `limit` bytes: the
/// `limit + 1`-th byte ends the read with [`BoundedReadError::TooLarge`].
/// Memory stays below `limit` whatever `r` is (a file, a pipe, `/dev/zero`).
///
/// # Errors
/// Too much input, or an I/O error.
pub fn read_bounded(r: impl std::io::Read, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(BoundedReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(BoundedReadError::TooLarge { limit });
    }
    Ok(buf)
}

/// `16 MiB` for 16 << 20 and so on.
fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Reads a config (or an imported file) as UTF-8 text: a file of any kind
/// (regular, pipe, device) or standard input for `-`, never more than
/// [`MAX_CONFIG_BYTES`].
///
/// # Errors
/// One problem naming the path: unreadable, too large, not UTF-8.
pub fn read_text(path: &Path) -> Result<String, Box<Problem>> {
    let label = source_label(path);
    let name = label.display();
    let fix =
        "check the path (relative paths in `import:` start at the importing file's directory)";
    let io_problem = |e: std::io::Error| {
        Box::new(Problem::error(format!("cannot read {name}: {e}"), fix).in_file(Some(label)))
    };
    let bytes = if is_stdin(path) {
        read_bounded(std::io::stdin().lock(), MAX_CONFIG_BYTES)
    } else {
        let file = std::fs::File::open(path).map_err(io_problem)?;
        // A regular file says its size up front: refuse it without reading.
        if let Ok(meta) = file.metadata()
            && meta.is_file()
            && meta.len() > MAX_CONFIG_BYTES
        {
            return Err(Box::new(
                Problem::error(
                    format!(
                        "{name} is {} bytes, more than the {} a config may have",
                        meta.len(),
                        human_bytes(MAX_CONFIG_BYTES)
                    ),
                    "check that this is the right file; a larger policy can be split into AWS JSON files listed under `import:` (each may have up to the limit)",
                )
                .in_file(Some(label)),
            ));
        }
        read_bounded(file, MAX_CONFIG_BYTES)
    };
    let bytes = bytes.map_err(|e| match e {
        BoundedReadError::Io(e) => io_problem(e),
        BoundedReadError::TooLarge { limit } => Box::new(
            Problem::error(
                format!(
                    "{name}: more than {} arrived, the most a config may have; reading stopped there",
                    human_bytes(limit)
                ),
                "give a config file (a device or a stream that does not end is not one); a larger policy can be split into AWS JSON files listed under `import:` (each may have up to the limit)",
            )
            .in_file(Some(label)),
        ),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        Box::new(
            Problem::error(
                format!(
                    "{name} is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
                "save it as UTF-8",
            )
            .in_file(Some(label)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_detected_from_content() {
        assert_eq!(detect_format("{\"SecurityGroups\": []}"), Format::AwsJson);
        assert_eq!(
            detect_format("\u{feff}  \n{ \"SecurityGroups\": [] }"),
            Format::AwsJson
        );
        assert_eq!(detect_format("{\"security_groups\": []}"), Format::Native);
        assert_eq!(
            detect_format("security_groups: []\n# \"SecurityGroups\""),
            Format::Native
        );
    }

    #[test]
    fn scalars_read_numbers_written_as_strings() {
        assert_eq!(Scalar::Str(" 22 ".into()).as_int(), Some(22));
        assert_eq!(Scalar::Int(-1).as_int(), Some(-1));
        assert_eq!(Scalar::Float(1.0).as_int(), None);
        assert_eq!(Scalar::Bool(true).as_int(), None);
        assert_eq!(Scalar::Str("x".into()).to_string(), "\"x\"");
    }

    #[test]
    fn omitted_null_and_empty_rule_lists_differ() {
        let d = parse_native(
            "security_groups:\n  - id: a\n  - id: b\n    egress:\n  - id: c\n    egress: []\n",
            None,
        )
        .unwrap()
        .doc;
        assert!(matches!(d.groups[0].egress, RawRules::Omitted));
        assert!(matches!(d.groups[1].egress, RawRules::Null));
        assert!(matches!(&d.groups[2].egress, RawRules::List(v) if v.is_empty()));
        assert_eq!(d.groups[1].origin.line, Some(3));
    }
}
