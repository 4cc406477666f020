//! `sgctl`: security groups for Linux interfaces, enforced with eBPF.
//!
//! Exit codes ([`exit`], printed by `sgctl --help`): 0 success, 1 the answer
//! is "no", 2 invalid input, 3 the system failed. Errors say what to do next.

mod lab;
mod offline;

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context, Result};
use clap::{
    Args, Parser, Subcommand,
    builder::{PossibleValue, PossibleValuesParser, TypedValueParser},
};
use sg_user::{
    agent::lock::{self, StateLock},
    kernel::loader::{self, AttachOptions, BpfLog, IngressHook, InitialPolicy, Side},
    kernel::pins::{self, IfaceId},
    lab::demo,
    model::Choice,
    model::text::{escape, escape_lines},
};

/// Exit codes, the same for every subcommand (grep's 0/1/2, plus 3 for a
/// failure of the system rather than of the input).
pub mod exit {
    /// Success: done, valid, allowed, no findings at the `--deny` level.
    pub const OK: u8 = 0;
    /// The command worked and the answer is "no": `check` denies the packet,
    /// `lint --deny` found something at that level, `lab verify` disagrees.
    pub const NO: u8 = 1;
    /// Invalid input: bad usage, an unreadable, too large or invalid config.
    /// Nothing was changed; fix the input and run again.
    pub const INVALID: u8 = 2;
    /// The system failed: not root, the kernel refused, an I/O error.
    pub const FAILED: u8 = 3;

    /// The text `sgctl --help` ends with.
    pub const HELP: &str = "\
Exit codes (every subcommand):
  0  success: done, config valid, packet allowed, no lint findings at the --deny level
  1  the answer is \"no\": check denies the packet, lint --deny found something, lab verify disagrees
  2  invalid input: bad usage, or a config that is unreadable, too large or invalid (nothing was changed)
  3  the system failed: not root, the kernel refused, an I/O error

Configs (-c FILE, `-` for standard input, and `import:` files) are read up to 16 MiB each.
Output into a closed pipe (`sgctl status | head -1`) ends quietly.";
}

#[derive(Parser)]
#[command(
    name = "sgctl",
    version,
    about = "AWS-style security groups for Linux interfaces, enforced in the kernel with eBPF",
    after_help = exit::HELP
)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Use this bpffs (mounted there if it is not one) as /sys/fs/bpf: one
    /// data plane per directory, for several agents on one machine
    #[arg(long, global = true, value_name = "DIR")]
    bpffs: Option<std::path::PathBuf>,
    /// Use this directory as /run/sgctl (locks, state, registrations)
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce a config: attach to its interfaces, or update their policy atomically
    Apply(ApplyArgs),
    /// Keep a config enforced: reload on change or SIGHUP, follow interfaces, serve metrics
    Run(RunArgs),
    /// Attach the programs without rules: count every packet, pass everything
    Attach(AttachArgs),
    /// Detach the programs from an interface, or from all interfaces
    Detach(DetachArgs),
    /// Show attached interfaces: hooks, generation, counters, conntrack, rule hits
    Status(StatusArgs),
    /// List or flush tracked connections of attached interfaces
    Conntrack(ConntrackArgs),
    /// Stream flow logs (AWS VPC Flow Logs v2 format) of attached interfaces
    Flows(FlowsArgs),
    /// Stream kernel-side debug logs of an interface attached with --bpf-log
    Logs(IfaceArgs),
    /// Run the built-in demonstration in throwaway network namespaces (root)
    Demo,
    /// Prove a config with real packets in namespaces: up, verify, down; diff two configs
    Lab(lab::LabArgs),
    /// Check a config (YAML or AWS JSON) and list every problem (offline; exit 1 if invalid)
    Validate(offline::ValidateArgs),
    /// Ask the reference evaluator whether a packet is allowed (offline)
    Check(offline::CheckArgs),
    /// Report risky or dead rules: open admin/database ports, large ranges, shadowed rules (offline)
    Lint(offline::LintArgs),
    /// Convert `aws ec2 describe-security-groups` JSON into native YAML (offline)
    ImportAws(offline::ImportAwsArgs),
    /// Write the groups and prefix lists of a config to the shared store (etcd), in one transaction
    Push(PushArgs),
}

#[derive(Args)]
struct PushArgs {
    /// Config (YAML or AWS JSON) whose groups and prefix lists become the store's
    #[arg(short, long, value_name = "FILE")]
    config: std::path::PathBuf,
    /// etcd v3 endpoint, e.g. http://127.0.0.1:2379
    #[arg(long, value_name = "URL")]
    store: String,
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

/// One interface, or every attached one.
#[derive(Args)]
struct IfaceFilter {
    /// Only this interface (default: all attached)
    #[arg(long)]
    iface: Option<String>,
    /// Named network namespace of the interface
    #[arg(long, requires = "iface")]
    netns: Option<String>,
}

impl IfaceFilter {
    fn targets(&self) -> Result<Vec<IfaceId>> {
        Ok(match &self.iface {
            Some(i) => vec![IfaceId::new(i, self.netns.as_deref())],
            None => attached_ifaces()?,
        })
    }
}

/// Parses a library [`Choice`]: its names, with their help, are the possible values.
fn choice<T: Choice + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        T::ALL
            .iter()
            .map(|v| PossibleValue::new(v.name()).help(v.help())),
    )
    .map(|name| T::from_name(&name).expect("clap accepts only the names of T::ALL"))
}

#[derive(Args)]
struct IngressHookArg {
    /// Ingress hook of newly attached interfaces: auto = native XDP on physical NICs, TC on virtual ones
    #[arg(long, value_parser = choice::<IngressHook>(), default_value = IngressHook::default().name())]
    ingress_hook: IngressHook,
}

#[derive(Args)]
struct BpfLogArg {
    /// Kernel-side log level of newly attached interfaces (read with `sgctl logs`); off costs nothing
    #[arg(long, value_parser = choice::<BpfLog>(), default_value = BpfLog::default().name())]
    bpf_log: BpfLog,
}

#[derive(Args)]
struct ConntrackEntriesArg {
    /// Capacity of each connection table (IPv4, IPv6) of newly attached interfaces;
    /// when full, new tracked flows are dropped and counted (conntrack_full)
    #[arg(long, default_value_t = loader::DEFAULT_CONNTRACK_ENTRIES)]
    conntrack_entries: u32,
}

/// Commands that change enforcement state take one lock (see README,
/// "Operating it"); by default they wait for it.
#[derive(Args)]
struct LockArgs {
    /// Fail at once instead of waiting when another sgctl is changing enforcement state
    #[arg(long)]
    no_wait: bool,
}

impl LockArgs {
    /// Takes the state lock for `what`, saying once what it waits for.
    fn take(&self, what: &str) -> Result<StateLock> {
        let wait = if self.no_wait {
            lock::Wait::NoWait
        } else {
            lock::Wait::Block
        };
        Ok(lock::state_lock(what, wait, |holder| {
            eprintln!(
                "waiting for another sgctl to finish changing enforcement state ({holder}); \
                 Ctrl-C to give up, --no-wait to fail instead of waiting"
            );
        })?)
    }
}

#[derive(Args)]
struct AttachArgs {
    #[command(flatten)]
    target: IfaceArgs,
    #[command(flatten)]
    lock: LockArgs,
    /// Which end this interface is: the protected machine's own (host), or the
    /// host side of a container's veth (peer: directions reversed)
    #[arg(long, value_parser = choice::<Side>(), default_value = Side::default().name())]
    side: Side,
    #[command(flatten)]
    hook: IngressHookArg,
    #[command(flatten)]
    bpf_log: BpfLogArg,
}

#[derive(Args)]
// Here `--iface` is the one interface to detach: required without --all or --orphans.
#[command(mut_arg("iface", |a| a.help("Interface name").required_unless_present_any(["all", "orphans"])))]
struct DetachArgs {
    #[command(flatten)]
    target: IfaceFilter,
    /// A namespace without a name, by the inode `status` shows (`eth0@netns:INODE`)
    #[arg(
        long,
        requires = "iface",
        conflicts_with = "netns",
        value_name = "INODE"
    )]
    netns_inode: Option<u64>,
    /// Detach every interface sgctl has attached
    #[arg(long, conflicts_with_all = ["iface", "orphans"])]
    all: bool,
    /// Detach the interfaces whose network namespace is gone (what `status` marks as orphans)
    #[arg(long, conflicts_with = "iface")]
    orphans: bool,
    #[command(flatten)]
    lock: LockArgs,
}

#[derive(Args)]
struct ApplyArgs {
    #[command(flatten)]
    cfg: offline::ConfigArgs,
    /// Also cut tracked connections the new rules no longer allow (AWS keeps them)
    #[arg(long)]
    revoke: bool,
    #[command(flatten)]
    hook: IngressHookArg,
    #[command(flatten)]
    bpf_log: BpfLogArg,
    #[command(flatten)]
    conntrack: ConntrackEntriesArg,
    #[command(flatten)]
    lock: LockArgs,
}

#[derive(Args)]
struct FlowsArgs {
    #[command(flatten)]
    target: IfaceFilter,
    /// Only records with this action
    #[arg(long, value_parser = ["ACCEPT", "REJECT"])]
    action: Option<String>,
    /// Capture window in seconds: one record per flow and direction per window
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// account-id field of the records
    #[arg(long, default_value = "-")]
    account_id: String,
    /// Stop after this many windows (default: until Ctrl-C)
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    cfg: offline::ConfigArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9977 or localhost:9977
    #[arg(long, value_name = "HOST:PORT", value_parser = listen_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// Write flow logs (VPC Flow Logs v2 format) to this file, rotated by size
    #[arg(long, value_name = "FILE")]
    flow_log: Option<std::path::PathBuf>,
    /// Rotate the flow log beyond this many bytes (three old files are kept)
    #[arg(long, default_value_t = 64 << 20)]
    flow_log_max_bytes: u64,
    /// Flow-log capture window in seconds
    #[arg(long, default_value_t = 60)]
    flow_window: u64,
    /// account-id field of flow-log records
    #[arg(long, default_value = "-")]
    account_id: String,
    /// Detach everything this config attached when stopping (default: leave enforcement in place)
    #[arg(long)]
    detach_on_exit: bool,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds between reclaiming expired connection-table entries
    #[arg(long, default_value_t = 30)]
    gc_interval: u64,
    /// Serve workload-endpoint requests from the CNI plugin (`sg-cni`) on this unix socket (0600)
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = sg_user::agent::endpoints::DEFAULT_SOCKET)]
    socket: Option<std::path::PathBuf>,
    /// Take groups and prefix lists from this etcd v3 store and publish this host's members there
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// This host's id in the store (default: the host name)
    #[arg(long, value_name = "NAME", requires = "store")]
    host_id: Option<String>,
    /// Seconds this host's published members outlive it
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "store")]
    lease_ttl: u32,
    #[command(flatten)]
    hook: IngressHookArg,
    #[command(flatten)]
    conntrack: ConntrackEntriesArg,
}

#[derive(Args)]
struct ConntrackArgs {
    #[command(subcommand)]
    action: ConntrackAction,
}

#[derive(Subcommand)]
enum ConntrackAction {
    /// Print live tracked connections
    List(ConntrackTarget),
    /// Delete tracked connections (their next packets are judged by the rules again)
    Flush(ConntrackTarget),
    /// Reclaim entries idle past their timeout (the data path already ignores them)
    Gc(ConntrackTarget),
}

#[derive(Args)]
struct ConntrackTarget {
    #[command(flatten)]
    target: IfaceFilter,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
    // Taken by flush and gc.
    #[command(flatten)]
    lock: LockArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

/// `--metrics HOST:PORT`: an address, or a host name resolved now (the
/// first address it resolves to, e.g. `localhost:9977`).
fn listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| {
        format!("`{s}`: expected HOST:PORT, e.g. 127.0.0.1:9977 or localhost:9977")
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "`{s}`: expected HOST:PORT with a port 0-65535, e.g. localhost:9977"
        ));
    }
    s.to_socket_addrs()
        .map_err(|e| {
            format!(
                "`{s}`: cannot resolve {host}: {e}; give an IP address such as 127.0.0.1:{port}"
            )
        })?
        .next()
        .ok_or_else(|| {
            format!("`{s}`: {host} has no address; give an IP address such as 127.0.0.1:{port}")
        })
}

/// Whether a broken pipe (the reader of our output went away) ended the command.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // `sgctl lab diff -c OLD -c2 NEW`: clap would read `-c2` as `-c 2`.
    let cli = Cli::parse_from(std::env::args_os().map(|a| {
        if a == "-c2" {
            std::ffi::OsString::from("--c2")
        } else {
            a
        }
    }));
    // A command that prints and ends does what any Unix tool does when its
    // reader goes away (`sgctl status | head -1`): it ends, quietly. The
    // long-running ones keep ignoring SIGPIPE (a metrics client or a flow-log
    // reader going away must not stop enforcement) and end quietly on EPIPE.
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Logs(_) | Command::Flows(_)
    ) {
        // SAFETY: called before any other thread exists; SIG_DFL is always valid.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging(&cli);
    // Before any thread starts (see `private_view`).
    if let Err(e) =
        sg_user::sys::mounts::private_view(cli.bpffs.as_deref(), cli.state_dir.as_deref())
    {
        eprintln!("error: {e}");
        return ExitCode::from(exit::FAILED);
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", escape_lines(&format!("{e:#}")));
            let invalid = e.chain().any(|c| c.is::<offline::InvalidInput>());
            ExitCode::from(if invalid { exit::INVALID } else { exit::FAILED })
        }
    }
}

/// The one logging stack: `tracing` to stderr, filtered by `RUST_LOG` or the
/// command's default level. `init` also installs tracing-log's `LogTracer`, so
/// records of the `log` crate (aya; kernel records from aya-log) go through it.
fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match &cli.command {
        // Kernel log records: let them all through.
        Command::Logs(_) => "trace",
        // The daemon reports what it does.
        Command::Run(_) if cli.verbose == 0 => "info",
        Command::Run(_) => "debug",
        _ => match cli.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        },
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match &cli.command {
        Command::Run(args) if args.log_format == LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Apply(args) => apply(args),
        Command::Run(args) => daemon(args),
        Command::Conntrack(args) => conntrack(args),
        Command::Flows(args) => flows(args),
        Command::Attach(args) => attach(args),
        Command::Detach(args) => detach(args),
        Command::Status(args) => status(args),
        Command::Logs(args) => logs(args),
        Command::Demo => {
            require_root("sgctl demo")?;
            print!("{}", demo::run()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => lab::run(args),
        Command::Validate(args) => offline::validate(args),
        Command::Check(args) => offline::check(args),
        Command::Lint(args) => offline::lint(args),
        Command::ImportAws(args) => offline::import_aws(args),
        Command::Push(args) => push(args),
    }
}

/// The interfaces sgctl has attached (their pins), or an error naming the directory.
fn attached_ifaces() -> Result<Vec<IfaceId>> {
    sg_user::kernel::dataplane::attached_ifaces().with_context(|| format!("listing {}", pins::ROOT))
}

pub(crate) fn require_root(what: &str) -> Result<()> {
    if !sg_user::sys::netns::is_root() {
        anyhow::bail!("{what} needs root (it loads eBPF programs); run it with sudo");
    }
    Ok(())
}

fn attach(args: AttachArgs) -> Result<ExitCode> {
    require_root("sgctl attach")?;
    let opts = AttachOptions {
        side: args.side,
        ingress_hook: args.hook.ingress_hook,
        bpf_log: args.bpf_log.bpf_log,
        ..AttachOptions::default()
    };
    let id = args.target.id();
    let _held = args.lock.take(&format!("sgctl attach --iface {id}"))?;
    let done = loader::attach(&id, &opts, InitialPolicy::Observe)?;
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
    let held = args.lock.take(if args.all {
        "sgctl detach --all"
    } else if args.orphans {
        "sgctl detach --orphans"
    } else {
        "sgctl detach"
    })?;
    let targets = if args.all {
        attached_ifaces()?
    } else if args.orphans {
        attached_ifaces()?
            .into_iter()
            .filter(IfaceId::namespace_gone)
            .collect()
    } else {
        let iface = args
            .target
            .iface
            .expect("clap requires --iface without --all or --orphans");
        vec![match args.netns_inode {
            Some(ino) => IfaceId::by_inode(&iface, ino).context("reading this namespace")?,
            None => IfaceId::new(&iface, args.target.netns.as_deref()),
        }]
    };
    for id in &targets {
        sg_user::agent::apply::detach_locked(id, &held)?;
        println!("detached {id}");
    }
    if targets.is_empty() {
        println!(
            "{}",
            if args.orphans {
                "no orphans: every attached interface's namespace exists"
            } else {
                "nothing attached"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `apply` and `run` remember which config attached an interface by its
/// path: standard input has none.
fn require_file(cfg: &offline::ConfigArgs, what: &str) -> Result<()> {
    if sg_user::model::config::is_stdin(&cfg.config) {
        return Err(offline::invalid(format!(
            "{what} needs a config file, not standard input (it remembers which file attached each interface); save the config to a file and pass -c FILE"
        )));
    }
    Ok(())
}

fn apply(args: ApplyArgs) -> Result<ExitCode> {
    require_file(&args.cfg, "sgctl apply")?;
    require_root("sgctl apply")?;
    let model = match sg_user::agent::apply::load(&args.cfg.config, &args.cfg.attach) {
        Ok(m) => m,
        Err(problems) => {
            eprint!("{}", offline::problems_text(&problems));
            eprintln!(
                "error: {} is invalid; nothing was changed (fix the problems above, `sgctl validate -c {}` lists them)",
                args.cfg.config.display(),
                args.cfg.config.display()
            );
            return Ok(ExitCode::from(exit::INVALID));
        }
    };
    for w in &model.warnings {
        eprintln!("{}", escape(&w.to_string()));
    }
    let opts = sg_user::agent::apply::ApplyOptions {
        attach: AttachOptions {
            ingress_hook: args.hook.ingress_hook,
            bpf_log: args.bpf_log.bpf_log,
            conntrack_entries: args.conntrack.conntrack_entries,
            ..AttachOptions::default()
        },
        revoke: args.revoke,
        require_present: true,
    };
    // Held from reading the state to writing it: applies never interleave.
    let held = args.lock.take(&format!(
        "sgctl apply -c {}",
        sg_user::agent::state::config_identity(&args.cfg.config)
            .unwrap_or_else(|| args.cfg.config.clone())
            .display()
    ))?;
    for c in sg_user::agent::apply::apply_locked(&model, &opts, &held)? {
        use sg_user::agent::apply::Action;
        match c.action {
            Action::Detached => println!("{:<24} detached (no longer in the config)", c.iface),
            Action::Absent => println!(
                "{:<24} not present on this machine; skipped (`sgctl run` attaches it when it appears)",
                c.iface
            ),
            Action::Unchanged => println!("{:<24} unchanged, generation {}", c.iface, c.generation),
            Action::Repaired | Action::Reattached => println!(
                "{:<24} {} ({}), generation {}",
                c.iface,
                c.action,
                c.detail.as_deref().unwrap_or(""),
                c.generation
            ),
            action => println!(
                "{:<24} {action}, generation {}{}",
                c.iface,
                c.generation,
                if args.revoke {
                    format!(", {} connections revoked", c.revoked)
                } else {
                    String::new()
                }
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn daemon(args: RunArgs) -> Result<ExitCode> {
    require_file(&args.cfg, "sgctl run")?;
    require_root("sgctl run")?;
    let opts = sg_user::agent::daemon::DaemonOptions {
        config: args.cfg.config.clone(),
        attach: args.cfg.attach.clone(),
        apply: sg_user::agent::apply::ApplyOptions {
            attach: AttachOptions {
                ingress_hook: args.hook.ingress_hook,
                conntrack_entries: args.conntrack.conntrack_entries,
                ..AttachOptions::default()
            },
            revoke: false,
            require_present: false,
        },
        metrics: args.metrics,
        flow_log: args.flow_log.clone(),
        flow_log_max_bytes: args.flow_log_max_bytes,
        flow_window: std::time::Duration::from_secs(args.flow_window.max(1)),
        account_id: args.account_id.clone(),
        detach_on_exit: args.detach_on_exit,
        socket: args.socket.clone(),
        gc_interval: std::time::Duration::from_secs(args.gc_interval.max(1)),
        store: match &args.store {
            Some(url) => Some(store_options(url, args.host_id.as_deref(), args.lease_ttl)?),
            None => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(sg_user::agent::daemon::run(opts))?;
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as UTC `YYYY-MM-DDTHH:MM:SSZ`.
fn format_unix(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn store_options(
    url: &str,
    host_id: Option<&str>,
    lease_ttl: u32,
) -> Result<sg_user::agent::store::StoreOptions> {
    let host_id = match host_id {
        Some(h) => h.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name; give --host-id")?
            .trim()
            .to_owned(),
    };
    sg_user::agent::store::layout::check_host_id(&host_id)
        .map_err(|e| offline::invalid(e.to_string()))?;
    if lease_ttl < 2 {
        return Err(offline::invalid("--lease-ttl: at least 2 seconds"));
    }
    Ok(sg_user::agent::store::StoreOptions {
        url: url.to_owned(),
        host_id,
        lease_ttl: i64::from(lease_ttl),
    })
}

/// `sgctl push`: validate completely, then one transaction.
fn push(args: PushArgs) -> Result<ExitCode> {
    let cfg = offline::ConfigArgs {
        config: args.config.clone(),
        attach: Vec::new(),
    };
    let model = offline::load_valid_with(&cfg, &sg_user::model::Offline)?;
    if !model.interfaces.is_empty() || !model.members.is_empty() {
        eprintln!(
            "note: interfaces and members: are local to each host and are not pushed; give them to `sgctl run -c LOCAL --store` there"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(sg_user::agent::store::push(&args.store, &model))?;
    println!(
        "pushed {} group(s) and {} prefix list(s) to {} at revision {}",
        report.groups, report.prefix_lists, args.store, report.revision
    );
    for key in &report.removed {
        println!("removed {key}");
    }
    Ok(ExitCode::SUCCESS)
}

fn conntrack(args: ConntrackArgs) -> Result<ExitCode> {
    require_root("sgctl conntrack")?;
    let (target, action) = match &args.action {
        ConntrackAction::List(t) => (t, "list"),
        ConntrackAction::Flush(t) => (t, "flush"),
        ConntrackAction::Gc(t) => (t, "gc"),
    };
    // Flush and gc delete entries: one at a time with applies and the daemon.
    let _held = match action {
        "list" => None,
        _ => Some(target.lock.take(&format!("sgctl conntrack {action}"))?),
    };
    let mut out = std::io::stdout().lock();
    let mut all = Vec::new();
    for id in target.target.targets()? {
        let (cfg, _) = loader::settings(&id).with_context(|| {
            format!("{id} is not attached; `sgctl status` lists attached interfaces")
        })?;
        match action {
            "flush" => {
                let n = sg_user::kernel::conntrack::flush(&id, &cfg)?;
                writeln!(out, "{id}: {n} connections flushed")?;
                continue;
            }
            "gc" => {
                let n = sg_user::kernel::conntrack::reclaim_expired(&id, &cfg)?;
                writeln!(out, "{id}: {n} expired entries reclaimed")?;
                continue;
            }
            _ => {}
        }
        let flows = sg_user::kernel::conntrack::list(&id, &cfg)?;
        if target.json {
            all.push(serde_json::json!({ "iface": id.to_string(), "flows": flows }));
            continue;
        }
        writeln!(out, "{id}: {} connections", flows.len())?;
        for f in flows {
            writeln!(
                out,
                "  {:<5} {:>39}:{:<5} {} {:>39}:{:<5} {:<11} idle {:>6}s  in {}/{}B out {}/{}B",
                proto_name(f.proto),
                f.local,
                f.local_port,
                if f.opened == "inbound" { "<-" } else { "->" },
                f.remote,
                f.remote_port,
                f.state,
                f.idle_s,
                f.packets_in,
                f.bytes_in,
                f.packets_out,
                f.bytes_out
            )?;
        }
    }
    if target.json && action == "list" {
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn flows(args: FlowsArgs) -> Result<ExitCode> {
    require_root("sgctl flows")?;
    let ifaces = args.target.targets()?;
    if ifaces.is_empty() {
        anyhow::bail!("no interface attached; enforce a config with `sgctl apply -c FILE` first");
    }
    let mut collector = sg_user::agent::flowlog::Collector::open(&ifaces, &args.account_id)?;
    let window = std::time::Duration::from_secs(args.window.max(1));
    eprintln!(
        "# {} (window {}s)",
        sg_user::agent::flowlog::V2_FIELDS.join(" "),
        window.as_secs()
    );
    let mut windows = 0;
    loop {
        let end = std::time::Instant::now() + window;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            collector.wait(left.min(std::time::Duration::from_millis(500)));
            collector.drain();
        }
        let mut out = std::io::stdout().lock();
        for r in collector.flush() {
            let action = match r.action {
                Some(sg_user::agent::flowlog::Action::Accept) => "ACCEPT",
                Some(sg_user::agent::flowlog::Action::Reject) => "REJECT",
                None => "-",
            };
            if args.action.as_deref().is_none_or(|a| a == action) && writeln!(out, "{r}").is_err() {
                return Ok(ExitCode::SUCCESS); // closed pipe: end quietly
            }
        }
        windows += 1;
        if args.count.is_some_and(|c| windows >= c) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmp6".into(),
        n => n.to_string(),
    }
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    require_root("sgctl status")?;
    // One unreadable interface (e.g. attached by another sgctl version) does
    // not hide the others.
    let mut all = Vec::new();
    let mut unreadable = Vec::new();
    for id in attached_ifaces()? {
        match sg_user::agent::status::iface_status(id.clone()) {
            Ok(s) => all.push(s),
            Err(e) => unreadable.push((id, format!("{:#}", anyhow::Error::from(e)))),
        }
    }
    let daemons = sg_user::agent::daemon_state::read_states();
    let mut out = std::io::stdout().lock();
    if args.json {
        let unreadable: Vec<_> = unreadable
            .iter()
            .map(|(id, e)| serde_json::json!({ "iface": id, "error": e }))
            .collect();
        let doc = serde_json::json!({
            "daemon": daemons.last(),
            "daemons": daemons,
            "interfaces": all,
            "unreadable": unreadable
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for d in &daemons {
        let last = match (&d.last_error, d.last_reload_ok) {
            (_, true) => "last reload ok".to_string(),
            (Some(e), false) => format!("LAST RELOAD FAILED, running policy kept: {e}"),
            (None, false) => "no reload yet".to_string(),
        };
        writeln!(
            out,
            "daemon: pid {} on {} — {} ({} ok, {} failed)",
            d.pid,
            escape(&d.config.display().to_string()),
            escape(&last),
            d.reloads_ok,
            d.reloads_failed
        )?;
        let per_netns = |counts: &std::collections::BTreeMap<String, u64>| {
            counts
                .iter()
                .map(|(ns, n)| format!("{} ×{n}", escape(ns)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(st) = &d.store {
            let since = format_unix(st.since);
            let line = if !st.connected && st.last_error.is_none() {
                format!(
                    "store: {} as host {} — connecting since {since}; nothing applied before its first list",
                    st.url, st.host_id
                )
            } else if st.connected {
                format!(
                    "store: {} as host {} — connected since {since}, revision {}, {} member key(s) published, {} host(s) alive",
                    st.url, st.host_id, st.revision, st.published, st.hosts
                )
            } else {
                format!(
                    "store: {} as host {} — UNREACHABLE since {since}, enforcing the last good state (revision {}): {}",
                    st.url,
                    st.host_id,
                    st.revision,
                    st.last_error.as_deref().unwrap_or("not connected yet")
                )
            };
            writeln!(out, "  {}", escape(&line))?;
        }
        if !d.netlink_overflows.is_empty() {
            writeln!(
                out,
                "  link events lost (socket buffer full; each answered by a full reconcile): {}",
                per_netns(&d.netlink_overflows)
            )?;
        }
        if !d.link_watch_failures.is_empty() {
            writeln!(
                out,
                "  link watchers failed and reopened (see the daemon's log): {}",
                per_netns(&d.link_watch_failures)
            )?;
        }
    }
    for (id, e) in &unreadable {
        writeln!(
            out,
            "{}: cannot read its pinned state ({}); it may be from another sgctl version: `{}` and apply again",
            escape(&id.to_string()),
            escape(e),
            escape(&id.detach_command()),
        )?;
    }
    if all.is_empty() && unreadable.is_empty() {
        writeln!(
            out,
            "no interface attached; enforce a config with `sgctl apply -c FILE`"
        )?;
    } else {
        for s in &all {
            write!(out, "{}", sg_user::agent::status::render(s))?;
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
