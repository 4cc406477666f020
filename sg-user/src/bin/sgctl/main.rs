//! `sgctl`: security groups for Linux interfaces, enforced with eBPF.
//!
//! Exit codes: 0 success; 1 the command ran and the answer is "no" (an
//! invalid config, lint findings with `--deny`); 2 an error (bad usage, a
//! kernel or system failure). Errors say what to do next.

mod offline;

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sg_common::Reason;
use sg_user::{
    demo,
    loader::{self, AttachOptions, BpfLog, IngressHook, InitialPolicy, Side},
    pins::{self, IfaceId},
};

#[derive(Parser)]
#[command(
    name = "sgctl",
    version,
    about = "AWS-style security groups for Linux interfaces, enforced in the kernel with eBPF"
)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the kernel programs to an interface (counting, pinned in /sys/fs/bpf/sg)
    Attach(AttachArgs),
    /// Detach the programs from an interface, or from all interfaces
    Detach(DetachArgs),
    /// Show attached interfaces, their hooks and packet counters
    Status(StatusArgs),
    /// Stream kernel-side debug logs of an interface attached with --bpf-log
    Logs(IfaceArgs),
    /// Run the built-in demonstration in throwaway network namespaces (root)
    Demo,
    /// Check a config (YAML or AWS JSON) and list every problem (offline; exit 1 if invalid)
    Validate(offline::ValidateArgs),
    /// Ask the reference evaluator whether a packet is allowed (offline)
    Check(offline::CheckArgs),
    /// Report risky or dead rules: open admin/database ports, large ranges, shadowed rules (offline)
    Lint(offline::LintArgs),
    /// Convert `aws ec2 describe-security-groups` JSON into native YAML (offline)
    ImportAws(offline::ImportAwsArgs),
}

#[derive(Args)]
struct IfaceArgs {
    /// Interface name, e.g. eth0
    #[arg(long)]
    iface: String,
    /// Named network namespace the interface lives in (/run/netns/NAME)
    #[arg(long)]
    netns: Option<String>,
}

impl IfaceArgs {
    fn id(&self) -> IfaceId {
        IfaceId::new(&self.iface, self.netns.as_deref())
    }
}

#[derive(Args)]
struct AttachArgs {
    #[command(flatten)]
    target: IfaceArgs,
    /// Which end this interface is: the protected machine's own (host), or the
    /// host side of a container's veth (peer: directions reversed)
    #[arg(long, value_enum, default_value_t)]
    side: SideArg,
    /// Ingress hook: auto = native XDP on physical NICs, TC on virtual ones
    #[arg(long, value_enum, default_value_t)]
    ingress_hook: IngressHook,
    /// Kernel-side log level (read with `sgctl logs`); off costs nothing
    #[arg(long, value_enum, default_value_t)]
    bpf_log: BpfLog,
}

/// Which end of the link the interface is (see `model::Side`).
#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum SideArg {
    /// The protected machine's own interface
    #[default]
    Host,
    /// The host side of a container's veth: directions reversed
    Peer,
}

#[derive(Args)]
struct DetachArgs {
    /// Interface name
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    iface: Option<String>,
    /// Named network namespace of the interface
    #[arg(long, requires = "iface")]
    netns: Option<String>,
    /// Detach every interface sgctl has attached
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        // Kernel log records arrive through the `log` crate: let them all through.
        _ if matches!(cli.command, Command::Logs(_)) => "trace",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Attach(args) => attach(args),
        Command::Detach(args) => detach(args),
        Command::Status(args) => status(args),
        Command::Logs(args) => logs(args),
        Command::Demo => {
            require_root("sgctl demo")?;
            print!("{}", demo::run()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => offline::validate(args),
        Command::Check(args) => offline::check(args),
        Command::Lint(args) => offline::lint(args),
        Command::ImportAws(args) => offline::import_aws(args),
    }
}

fn require_root(what: &str) -> Result<()> {
    if !sg_user::netns::is_root() {
        anyhow::bail!("{what} needs root (it loads eBPF programs); run it with sudo");
    }
    Ok(())
}

fn attach(args: AttachArgs) -> Result<ExitCode> {
    require_root("sgctl attach")?;
    let opts = AttachOptions {
        side: match args.side {
            SideArg::Host => Side::Host,
            SideArg::Peer => Side::Peer,
        },
        ingress_hook: args.ingress_hook,
        bpf_log: args.bpf_log,
        ..AttachOptions::default()
    };
    let done = loader::attach(&args.target.id(), &opts, InitialPolicy::Observe)?;
    println!(
        "attached {} (ingress: {}, egress: tc, side: {:?})",
        done.iface,
        done.ingress_hook.name(),
        done.side
    );
    Ok(ExitCode::SUCCESS)
}

fn detach(args: DetachArgs) -> Result<ExitCode> {
    require_root("sgctl detach")?;
    let targets = if args.all {
        pins::attached_ifaces()?
    } else {
        let iface = args.iface.expect("clap requires --iface without --all");
        vec![IfaceId::new(&iface, args.netns.as_deref())]
    };
    for id in &targets {
        loader::detach(id)?;
        println!("detached {id}");
    }
    if targets.is_empty() {
        println!("nothing attached");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct IfaceStatus {
    iface: IfaceId,
    hooks: Vec<loader::PinnedHook>,
    counters: Vec<CounterRow>,
}

#[derive(serde::Serialize)]
struct CounterRow {
    direction: &'static str,
    verdict: &'static str,
    reason: &'static str,
    packets: u64,
    bytes: u64,
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    require_root("sgctl status")?;
    let mut all = Vec::new();
    for id in pins::attached_ifaces()? {
        let hooks = loader::pinned_hooks(&id)?;
        let counters = loader::read_counters(&id)?
            .into_iter()
            .map(|((d, r), c)| CounterRow {
                direction: d.name(),
                verdict: if r.is_drop() { "drop" } else { "pass" },
                reason: r.name(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        all.push(IfaceStatus {
            iface: id,
            hooks,
            counters,
        });
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        writeln!(
            out,
            "no interface attached; attach one with `sgctl attach --iface NAME`"
        )?;
    }
    for s in &all {
        let hooks: Vec<String> = s
            .hooks
            .iter()
            .map(|h| format!("{} {} (prog {})", h.direction, h.hook.name(), h.program_id))
            .collect();
        writeln!(out, "{}: {}", s.iface, hooks.join(", "))?;
        for c in s
            .counters
            .iter()
            .filter(|c| c.packets > 0 || c.reason == Reason::PassUnfiltered.name())
        {
            writeln!(
                out,
                "  {:<9} {:<4} {:<16} {:>10} pkts {:>12} bytes",
                c.direction, c.verdict, c.reason, c.packets, c.bytes
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(args: IfaceArgs) -> Result<ExitCode> {
    require_root("sgctl logs")?;
    let id = args.id();
    let logger = loader::kernel_logger(&id)?;
    eprintln!(
        "streaming kernel logs of {id} (Ctrl-C to stop); attach with --bpf-log debug to see any"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // SAFETY: the logger owns its ring-buffer fd and keeps it open and
        // unchanged for as long as the AsyncFd lives.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| anyhow::anyhow!("watching the kernel log ring buffer: {e}"))?;
        loop {
            tokio::select! {
                guard = fd.readable_mut() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>(()),
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
