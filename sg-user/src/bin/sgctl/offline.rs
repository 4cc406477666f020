//! Offline commands: `validate`, `check`, `lint`, `import-aws`. They read a
//! config and answer from the policy model alone: no root, no kernel, and
//! interfaces need not exist on this machine.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use sg_user::model::{
    self, Attachment, Direction, Model, Problem, Protocol,
    config::source_label,
    eval::{self, PacketDesc},
    lint::{self, LintOptions, LintSeverity},
    text::{escape, escape_lines},
};

/// The config file and extra attachments, shared by the offline commands.
#[derive(Args)]
pub struct ConfigArgs {
    /// Config file: native YAML or `aws ec2 describe-security-groups` JSON (`-` = standard input)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
    /// Attach groups to an interface: IFACE=sg-1,sg-2 or IFACE@NETNS=sg-1 (repeatable)
    #[arg(long, value_name = "IFACE[@NETNS]=SG,..")]
    pub attach: Vec<Attachment>,
}

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
}

#[derive(Args)]
#[command(group(ArgGroup::new("direction").required(true).args(["inbound", "outbound"])))]
pub struct CheckArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Interface, as NAME or NAME@NETNS
    #[arg(long)]
    iface: String,
    /// Network namespace of the interface (same as NAME@NETNS)
    #[arg(long)]
    netns: Option<String>,
    /// An inbound packet (the peer is its source)
    #[arg(long = "in")]
    inbound: bool,
    /// An outbound packet (the peer is its destination)
    #[arg(long = "out")]
    outbound: bool,
    /// Protocol: tcp, udp, icmp, icmpv6 or a number 0-255
    #[arg(long)]
    proto: String,
    /// The remote address
    #[arg(long)]
    peer: IpAddr,
    /// Destination port (tcp/udp)
    #[arg(long, conflicts_with_all = ["icmp_type", "icmp_code"])]
    port: Option<u16>,
    /// ICMP type (icmp/icmpv6)
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP code (default 0)
    #[arg(long, requires = "icmp_type")]
    icmp_code: Option<u8>,
    /// IPv4 TTL / IPv6 hop limit of the packet (neighbour discovery, which
    /// bypasses the rules, always has 255)
    #[arg(long, default_value_t = 64)]
    hop_limit: u8,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LintFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DenyLevel {
    /// Exit 1 on warnings and errors
    Warnings,
    /// Exit 1 on errors
    Errors,
}

#[derive(Args)]
pub struct LintArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Output format
    #[arg(long, value_enum, default_value_t = LintFormat::Text)]
    format: LintFormat,
    /// Exit 1 when findings at this level or above exist
    #[arg(long, value_enum)]
    deny: Option<DenyLevel>,
    /// A tcp/udp rule opening more ports than this is a large range (SG003)
    #[arg(long, default_value_t = LintOptions::default().max_port_range)]
    max_port_range: u32,
}

#[derive(Args)]
pub struct ImportAwsArgs {
    /// `aws ec2 describe-security-groups` output (JSON; `-` = standard input)
    file: PathBuf,
    /// Also write interfaces: IFACE=sg-1,sg-2 or IFACE@NETNS=sg-1 (repeatable)
    #[arg(long, value_name = "IFACE[@NETNS]=SG,..")]
    attach: Vec<Attachment>,
    /// Write the YAML here instead of standard output
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// An error in what the user gave (a flag, a config): exit 2, see [`crate::exit`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// An [`InvalidInput`] error.
pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    InvalidInput(message.into()).into()
}

/// Writes to stdout, control characters escaped (line breaks kept); a closed
/// pipe ends quietly.
pub fn emit(text: &str) -> Result<()> {
    let text = escape_lines(text);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

/// One problem per line, each escaped as a whole (a value quoted in a
/// message cannot start a line of its own).
pub fn problems_text(problems: &[Problem]) -> String {
    let mut s = String::new();
    for p in problems {
        s.push_str(&escape(&p.to_string()));
        s.push('\n');
    }
    s
}

/// Whether the config file can be found at all (standard input always can):
/// a clearer message than an unreadable config's problem.
fn check_readable(path: &Path) -> Result<()> {
    if model::config::is_stdin(path) {
        return Ok(());
    }
    std::fs::metadata(path).map_err(|e| {
        invalid(format!(
            "cannot read config {}: {e}; check the path given to -c/--config",
            path.display()
        ))
    })?;
    Ok(())
}

/// Loads a valid model, or fails with every problem listed.
fn load_valid(cfg: &ConfigArgs) -> Result<Model> {
    load_valid_with(cfg, &model::Offline)
}

/// [`load_valid`] with address discovery (for commands that touch the kernel).
pub fn load_valid_with(cfg: &ConfigArgs, discovery: &dyn model::AddressSource) -> Result<Model> {
    check_readable(&cfg.config)?;
    let opts = model::LoadOptions {
        attach: &cfg.attach,
        discovery,
        shared: None,
    };
    match model::load_with(&cfg.config, &opts) {
        Ok(m) => {
            for w in &m.warnings {
                eprintln!("{}", escape(&w.to_string()));
            }
            Ok(m)
        }
        Err(problems) => {
            eprint!("{}", problems_text(&problems));
            Err(invalid(format!(
                "{} is invalid ({} problems); run `sgctl validate -c {}` for details",
                source_label(&cfg.config).display(),
                problems.iter().filter(|p| p.is_error()).count(),
                cfg.config.display()
            )))
        }
    }
}

pub fn validate(args: ValidateArgs) -> Result<ExitCode> {
    check_readable(&args.cfg.config)?;
    let opts = model::LoadOptions {
        attach: &args.cfg.attach,
        ..Default::default()
    };
    match model::load_with(&args.cfg.config, &opts) {
        Err(problems) => {
            let errors = problems.iter().filter(|p| p.is_error()).count();
            let mut s = problems_text(&problems);
            s.push_str(&format!(
                "{}: invalid: {errors} error(s), {} warning(s)\n",
                source_label(&args.cfg.config).display(),
                problems.len() - errors
            ));
            emit(&s)?;
            Ok(ExitCode::from(crate::exit::INVALID))
        }
        Ok(m) => {
            let mut s = problems_text(&m.warnings);
            s.push_str(&format!(
                "{}: valid: {} group(s), {} rule(s), {} prefix list(s), {} interface(s), {} warning(s)\n",
                source_label(&args.cfg.config).display(),
                m.groups.len(),
                m.rule_count(),
                m.prefix_lists.len(),
                m.interfaces.len(),
                m.warnings.len()
            ));
            for i in &m.interfaces {
                let n = |d| m.rules_for(i, d).count();
                s.push_str(&format!(
                    "  {} ({}): {} — {} ingress, {} egress rule(s)\n",
                    i.key(),
                    if i.side == model::Side::Peer {
                        "peer side"
                    } else {
                        "host side"
                    },
                    i.groups.join(", "),
                    n(Direction::Ingress),
                    n(Direction::Egress)
                ));
            }
            emit(&s)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(serde::Serialize)]
struct CheckJson<'a> {
    verdict: &'static str,
    allowed: bool,
    tracked: bool,
    /// Infrastructure no rule judges (IPv6 neighbour discovery).
    bypass: bool,
    interface: String,
    direction: Direction,
    packet: &'a PacketDesc,
    rules: Vec<RuleJson<'a>>,
}

#[derive(serde::Serialize)]
struct RuleJson<'a> {
    id: &'a str,
    group: &'a str,
    description: Option<&'a str>,
}

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let m = load_valid(&args.cfg)?;
    let iface = checked_interface(&m, &args)?;
    let (protocol, pkt) = checked_packet(&args)?;
    let direction = if args.inbound {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let (d, bypass) = decide_check(&m, iface, direction, &pkt, &args);
    let rules: Vec<&model::ResolvedRule> = m
        .rules_for(iface, direction)
        .filter(|r| d.rules.contains(&r.id))
        .collect();
    let verdict = if d.allowed { "allow" } else { "deny" };
    if args.json {
        let j = CheckJson {
            verdict,
            allowed: d.allowed,
            tracked: d.tracked,
            bypass,
            interface: iface.key(),
            direction,
            packet: &pkt,
            rules: rules
                .iter()
                .map(|r| RuleJson {
                    id: r.id.as_str(),
                    group: &r.group,
                    description: r.description.as_deref(),
                })
                .collect(),
        };
        emit(&(serde_json::to_string_pretty(&j)? + "\n"))?;
        return Ok(verdict_code(d.allowed));
    }
    let answer = CheckAnswer {
        verdict,
        protocol,
        pkt: &pkt,
        direction,
        bypass,
        decision: &d,
        rules: &rules,
    };
    emit(&check_text(&args, iface, &answer))?;
    Ok(verdict_code(d.allowed))
}

/// The interface `check` asks about, by `--iface` (and `--netns`).
fn checked_interface<'m>(m: &'m Model, args: &CheckArgs) -> Result<&'m model::Interface> {
    let key = match &args.netns {
        Some(ns) => format!("{}@{ns}", args.iface),
        None => args.iface.clone(),
    };
    if let Some(iface) = m.interface(&key) {
        return Ok(iface);
    }
    let known: Vec<String> = m.interfaces.iter().map(|i| i.key()).collect();
    let same_name: Vec<&String> = known
        .iter()
        .filter(|k| k.split('@').next() == Some(key.as_str()))
        .collect();
    if same_name.len() > 1 {
        return Err(invalid(format!(
            "interface {key} is in the config more than once ({}); name one as NAME@NETNS or add --netns",
            same_name
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Err(invalid(format!(
        "interface {key} is not in the config (it has: {}); add it under `interfaces:` or pass --attach {key}=SG-ID",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )))
}

/// The packet `check` asks about, from `--proto`, `--port`, `--icmp-type`.
fn checked_packet(args: &CheckArgs) -> Result<(Protocol, PacketDesc)> {
    let protocol = Protocol::parse(&args.proto)
        .filter(|p| *p != Protocol::All)
        .ok_or_else(|| {
            invalid(format!(
                "--proto {}: use tcp, udp, icmp, icmpv6 or a protocol number 0-255",
                args.proto
            ))
        })?;
    let proto = protocol.number().expect("not `all`");
    let pkt = match protocol {
        Protocol::Tcp | Protocol::Udp => {
            let port = args.port.ok_or_else(|| {
                invalid(format!(
                    "--proto {protocol} needs --port (the destination port)"
                ))
            })?;
            PacketDesc {
                proto,
                ..PacketDesc::tcp(args.peer, port)
            }
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            if args.port.is_some() {
                return Err(invalid(format!(
                    "--port applies to tcp and udp; for {protocol} use --icmp-type and --icmp-code"
                )));
            }
            let t = args.icmp_type.ok_or_else(|| {
                invalid(format!(
                    "--proto {protocol} needs --icmp-type (e.g. 8 for echo request)"
                ))
            })?;
            PacketDesc {
                proto,
                peer: args.peer,
                port: None,
                icmp: Some((t, args.icmp_code.unwrap_or(0))),
            }
        }
        _ => {
            if args.port.is_some() || args.icmp_type.is_some() {
                return Err(invalid(format!(
                    "protocol {protocol} has no ports or ICMP type; drop --port/--icmp-type"
                )));
            }
            PacketDesc::other(args.peer, proto)
        }
    };
    Ok((protocol, pkt))
}

/// The evaluator's decision, with neighbour discovery let through before
/// any rule as the kernel does; `true` when that bypass applied.
fn decide_check(
    m: &Model,
    iface: &model::Interface,
    direction: Direction,
    pkt: &PacketDesc,
    args: &CheckArgs,
) -> (eval::Decision, bool) {
    // The kernel lets neighbour discovery through before any rule; so does
    // this answer. Outbound, the peer is the destination it checks, against
    // the interface's own address in the same /64 when the config lists one.
    let local = iface
        .addresses
        .iter()
        .flatten()
        .copied()
        .find(|a| match (a, args.peer) {
            (IpAddr::V6(a), IpAddr::V6(p)) => a.octets()[..8] == p.octets()[..8],
            _ => false,
        })
        .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into());
    let (src, dst) = if direction == Direction::Ingress {
        (args.peer, local)
    } else {
        (local, args.peer)
    };
    let bypass = eval::neighbour_discovery_bypasses(
        direction,
        src,
        dst,
        pkt.proto,
        pkt.icmp,
        args.hop_limit,
        false,
    );
    let d = if bypass {
        eval::Decision {
            allowed: true,
            rules: vec![],
            tracked: false,
        }
    } else {
        eval::decide(m, iface, direction, pkt)
    };
    (d, bypass)
}

/// What `check` found, for its text answer.
struct CheckAnswer<'a> {
    verdict: &'static str,
    protocol: Protocol,
    pkt: &'a PacketDesc,
    direction: Direction,
    bypass: bool,
    decision: &'a eval::Decision,
    rules: &'a [&'a model::ResolvedRule],
}

fn check_text(args: &CheckArgs, iface: &model::Interface, a: &CheckAnswer<'_>) -> String {
    let (verdict, protocol, pkt, direction, bypass, d) = (
        a.verdict,
        a.protocol,
        a.pkt,
        a.direction,
        a.bypass,
        a.decision,
    );
    let what = match (pkt.port, pkt.icmp) {
        (Some(p), _) => format!("{protocol} port {p}"),
        (_, Some((t, c))) => format!("{protocol} type {t} code {c}"),
        _ => format!("protocol {protocol}"),
    };
    let way = if direction == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    let mut s = format!(
        "{verdict} {what} {way} {} on {} ({direction})",
        args.peer,
        iface.key()
    );
    if bypass {
        s.push_str(": neighbour discovery (ICMPv6 133-137, code 0, hop limit 255) is infrastructure, like ARP; no rule is consulted\n");
    } else if d.allowed {
        s.push_str(if d.tracked {
            ", tracked\n"
        } else {
            ", untracked (no connection state)\n"
        });
        for r in a.rules {
            s.push_str(&format!("  {}", escape(r.id.as_str())));
            if let Some(desc) = &r.description {
                s.push_str(&format!("  ({})", escape(desc)));
            }
            s.push('\n');
        }
    } else {
        s.push_str(&format!(
            ": no {direction} rule of {} allows it\n",
            iface.groups.join(", ")
        ));
    }
    s
}

/// `check`'s answer as an exit code: 0 allowed, 1 denied (like grep's match / no match).
fn verdict_code(allowed: bool) -> ExitCode {
    if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::NO)
    }
}

pub fn lint(args: LintArgs) -> Result<ExitCode> {
    let m = load_valid(&args.cfg)?;
    let findings = lint::lint(
        &m,
        &LintOptions {
            max_port_range: args.max_port_range,
        },
    );
    match args.format {
        LintFormat::Json => emit(&(serde_json::to_string_pretty(&findings)? + "\n"))?,
        LintFormat::Text => {
            let mut s = String::new();
            for f in &findings {
                s.push_str(&format!("{}\n", escape(&f.to_string())));
            }
            let count = |l| findings.iter().filter(|f| f.severity == l).count();
            s.push_str(&format!(
                "{}: {} error(s), {} warning(s), {} info\n",
                args.cfg.config.display(),
                count(LintSeverity::Error),
                count(LintSeverity::Warning),
                count(LintSeverity::Info)
            ));
            emit(&s)?;
        }
    }
    let floor = match args.deny {
        None => return Ok(ExitCode::SUCCESS),
        Some(DenyLevel::Warnings) => LintSeverity::Warning,
        Some(DenyLevel::Errors) => LintSeverity::Error,
    };
    Ok(if findings.iter().any(|f| f.severity >= floor) {
        ExitCode::from(crate::exit::NO)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn import_aws(args: ImportAwsArgs) -> Result<ExitCode> {
    let text = model::config::read_text(&args.file).map_err(|p| {
        invalid(format!(
            "{p}; give the JSON file `aws ec2 describe-security-groups` wrote"
        ))
    })?;
    if model::config::detect_format(&text) != model::config::Format::AwsJson {
        return Err(invalid(format!(
            "{} is not AWS JSON (no top-level \"SecurityGroups\"); run `aws ec2 describe-security-groups --output json > FILE`",
            source_label(&args.file).display()
        )));
    }
    let mut doc = model::aws::parse(&text, Some(source_label(&args.file)))
        .map_err(|p| invalid(problems_text(&p).trim_end()))?;
    doc.interfaces
        .extend(args.attach.iter().map(Attachment::to_raw));
    let m = match model::validate::build(&doc, &model::Offline) {
        Ok(m) => m,
        Err(problems) => {
            eprint!("{}", problems_text(&problems));
            eprintln!(
                "{}: cannot import: {} error(s); fix them in the JSON or after importing",
                source_label(&args.file).display(),
                problems.iter().filter(|p| p.is_error()).count()
            );
            return Ok(ExitCode::from(crate::exit::INVALID));
        }
    };
    for w in &m.warnings {
        eprintln!("{}", escape(&w.to_string()));
    }
    let yaml = model::aws::to_native_yaml(&m).context("writing YAML")?;
    let yaml = format!(
        "# Imported by `sgctl import-aws` from {}.\n{yaml}",
        args.file
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    match &args.output {
        Some(path) => {
            std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?
        }
        None => emit(&yaml)?,
    }
    Ok(ExitCode::SUCCESS)
}
