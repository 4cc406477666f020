//! `sgctl lab up|verify|down|diff`: a thin layer over `sg_user::lab`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use sg_user::{
    lab::{self, DEFAULT_NAME, LabState, plan, verify},
    model::Attachment,
};
use std::path::Path;

use crate::offline::{ConfigArgs, emit, invalid, problems_text};

/// Loads a config offline, or fails with its problems (exit 2, invalid input).
fn load_valid(path: &Path, attach: &[Attachment]) -> Result<sg_user::model::Model> {
    lab::load_config(path, attach).map_err(|p| {
        eprint!("{}", problems_text(&p));
        invalid(format!(
            "{} is invalid; `sgctl validate -c {}` lists every problem",
            path.display(),
            path.display()
        ))
    })
}

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    action: LabAction,
}

#[derive(Subcommand)]
enum LabAction {
    /// Build namespaces for a config's interfaces and peers, enforce it there, start listeners (root)
    Up(UpArgs),
    /// Send real TCP/UDP/ICMP between the lab's hosts and compare with the rules (root; exit 1 on a disagreement)
    Verify(VerifyArgs),
    /// Remove everything the lab made, and nothing else (root)
    Down(NameArg),
    /// Which of the lab's flows a change opens and closes (offline, reference evaluator)
    Diff(DiffArgs),
    /// The lab's listener process (started by `up`, stopped by `down`)
    #[command(hide = true)]
    Serve(NameArg),
}

#[derive(Args)]
struct NameArg {
    /// Lab name (lowercase letters and digits); namespaces are sgl-NAME-*
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    #[command(flatten)]
    name: NameArg,
}

#[derive(Args)]
struct VerifyArgs {
    /// Config to enforce in the lab first (default: the one it was built
    /// from); it must need the same hosts and ports
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Attach groups to an interface: IFACE=sg-1,sg-2 or IFACE@NETNS=sg-1 (repeatable)
    #[arg(long, value_name = "IFACE[@NETNS]=SG,..", requires = "config")]
    attach: Vec<Attachment>,
    #[command(flatten)]
    name: NameArg,
    /// Machine-readable output (every flow)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DiffArgs {
    /// The config before the change
    #[arg(short = 'c', long = "config", value_name = "OLD")]
    old: PathBuf,
    /// The config after the change (`-c2 NEW` works too)
    #[arg(long = "c2", value_name = "NEW")]
    new: PathBuf,
    /// Attachments for both configs: IFACE=sg-1,sg-2 or IFACE@NETNS=sg-1 (repeatable)
    #[arg(long, value_name = "IFACE[@NETNS]=SG,..")]
    attach: Vec<Attachment>,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

fn attach_text(a: &Attachment) -> String {
    match &a.netns {
        Some(ns) => format!("{}@{ns}={}", a.iface, a.groups.join(",")),
        None => format!("{}={}", a.iface, a.groups.join(",")),
    }
}

pub fn run(args: LabArgs) -> Result<ExitCode> {
    match args.action {
        LabAction::Up(a) => up(a),
        LabAction::Verify(a) => verify(a),
        LabAction::Down(a) => down(a),
        LabAction::Diff(a) => diff(a),
        LabAction::Serve(a) => {
            lab::serve(&a.name)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(args: UpArgs) -> Result<ExitCode> {
    crate::require_root("sgctl lab up")?;
    let name = &args.name.name;
    load_valid(&args.cfg.config, &args.cfg.attach)?;
    let attach: Vec<String> = args.cfg.attach.iter().map(attach_text).collect();
    let report = lab::up(
        name,
        &args.cfg.config,
        &args.cfg.attach,
        &attach,
        &lab::UpOptions::default(),
    )?;
    let plan = &report.state.plan;
    let mut out = format!(
        "lab `{name}` is up: {} hosts on bridge br0 (namespace {}{})\n",
        plan.hosts.len(),
        plan::netns_prefix(name),
        plan::SWITCH_ROLE
    );
    out.push_str(&verify::render_plan(plan));
    out.push_str(&format!(
        "enforced {} (rewritten for the lab) on {} interfaces; listeners on every service of every host\nnext: `sgctl lab verify{f}`, then `sgctl lab down{f}`\n",
        report.state.lab_config.display(),
        report.applied.len(),
        f = lab::name_flag(name)
    ));
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> Result<ExitCode> {
    crate::require_root("sgctl lab verify")?;
    let name = &args.name.name;
    let mut state = LabState::read(name)?;
    if let Some(config) = &args.config {
        load_valid(config, &args.attach)?;
        lab::reapply(&mut state, config, &args.attach)?;
    }
    if !lab::server_running(&state) {
        return Err(anyhow!(
            "the listeners of lab `{name}` are not running (killed or crashed); rebuild the lab with `sgctl lab up -c {}{}`",
            state.config.display(),
            lab::name_flag(name)
        ));
    }
    let model = state.lab_model()?;
    let report = verify::verify(&state.plan, &model)?;
    let bad = report.disagreements().len();
    if args.json {
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "lab": report.lab,
            "hosts": state.plan.hosts,
            "services": state.plan.services,
            "notes": state.plan.notes,
            "seconds": report.seconds,
            "disagreements": bad,
            "flows": report.flows,
        }))?;
        text.push('\n');
        emit(&text)?;
    } else {
        emit(&verify::render_report(&state.plan, &report))?;
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::NO)
    })
}

fn down(args: NameArg) -> Result<ExitCode> {
    crate::require_root("sgctl lab down")?;
    let r = lab::down(&args.name)?;
    if r.is_empty() {
        emit(&format!("no lab `{}` to remove\n", args.name))?;
    } else {
        emit(&format!(
            "lab `{}` removed: {} namespaces, {} attachments{}\n",
            args.name,
            r.namespaces.len(),
            r.detached.len(),
            if r.server_stopped {
                ", listeners stopped"
            } else {
                ""
            }
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(args: DiffArgs) -> Result<ExitCode> {
    let (old, new) = (
        load_valid(&args.old, &args.attach)?,
        load_valid(&args.new, &args.attach)?,
    );
    let plan = plan::plan("diff", &[&old, &new]);
    let d = verify::diff(
        &plan,
        &plan.lab_model(&old, None),
        &plan.lab_model(&new, None),
    );
    if args.json {
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "hosts": plan.hosts,
            "services": plan.services,
            "notes": plan.notes,
            "diff": d,
        }))?;
        text.push('\n');
        emit(&text)?;
    } else {
        emit(&verify::render_diff(
            &plan,
            &d,
            &args.old.display().to_string(),
            &args.new.display().to_string(),
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
