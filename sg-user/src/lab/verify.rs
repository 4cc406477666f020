//! `sgctl lab verify` and `sgctl lab diff`: flows, their results, and the
//! reachability matrix.
//!
//! A flow is reachable when the opening packet got through and the answer
//! came back: a TCP connection that received the server's byte (or an RST:
//! the SYN passed), a UDP datagram that was echoed, an answered ping. The
//! reference evaluator expects reachable when the source's egress and the
//! destination's ingress both allow the opening packet (replies pass by
//! connection state). Probes run in parallel; a probe that disagrees is
//! repeated once, alone, so a loaded machine cannot fake a disagreement.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::plan::{Expected, Flow, HostKind, Plan, Proto};
use crate::{
    lab::probe::{self, Reach, UdpPeer},
    model::Model,
    sys::netns::Netns,
};

/// How long a probe waits for an answer before calling the flow blocked.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Probes in flight at once.
pub const PARALLEL: usize = 48;

/// One flow's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct FlowResult {
    pub from: String,
    pub to: String,
    pub service: String,
    pub family: &'static str,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The evaluator: reachable or not.
    pub expected: bool,
    /// Observed with real packets (`None` in `lab diff`).
    pub observed: Option<bool>,
    /// Whether observed and expected agree (always true in `lab diff`).
    pub agrees: bool,
    /// Why the evaluator says so.
    pub reason: String,
    #[serde(skip)]
    pub flow: Flow,
}

impl FlowResult {
    /// `web → db tcp/3306 IPv4 (198.18.0.10 → 198.18.0.20)`
    pub fn name(&self) -> String {
        format!(
            "{} → {} {} {} ({} → {})",
            self.from, self.to, self.service, self.family, self.src, self.dst
        )
    }
}

fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// Every flow of `plan` with the evaluator's answer under `lab_model`.
pub fn expectations(plan: &Plan, lab_model: &Model) -> Vec<(Flow, Expected)> {
    plan.flows()
        .into_iter()
        .map(|f| (f, plan.expect(lab_model, &f)))
        .collect()
}

fn result(plan: &Plan, flow: Flow, e: &Expected, observed: Option<bool>) -> FlowResult {
    let (src, dst) = (&plan.hosts[flow.from], &plan.hosts[flow.to]);
    FlowResult {
        from: src.role.clone(),
        to: dst.role.clone(),
        service: plan.services[flow.service].label(),
        family: family(flow.v6),
        src: src.addr(flow.v6).expect("flow has it"),
        dst: dst.addr(flow.v6).expect("flow has it"),
        expected: e.allowed,
        observed,
        agrees: observed.is_none_or(|o| o == e.allowed),
        reason: e.reason(),
        flow,
    }
}

/// Sends one flow's opening packet for real and waits for the answer.
fn probe_flow(plan: &Plan, nss: &[Netns], flow: &Flow) -> bool {
    let src = &nss[flow.from];
    let dst = plan.hosts[flow.to].addr(flow.v6).expect("flow has it");
    let service = &plan.services[flow.service];
    match service.proto {
        Proto::Tcp => matches!(
            probe::tcp_connect(src, SocketAddr::new(dst, service.port), PROBE_TIMEOUT),
            Reach::Connected | Reach::Refused
        ),
        Proto::Udp => UdpPeer::bind_any(src, flow.v6, PROBE_TIMEOUT)
            .is_ok_and(|p| p.roundtrip(SocketAddr::new(dst, service.port))),
        Proto::Ping => probe::ping(src, dst, PROBE_TIMEOUT).unwrap_or(false),
    }
}

/// The outcome of `verify`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub lab: String,
    pub hosts: usize,
    pub services: usize,
    pub flows: Vec<FlowResult>,
    pub seconds: f64,
}

impl Report {
    pub fn disagreements(&self) -> Vec<&FlowResult> {
        self.flows.iter().filter(|f| !f.agrees).collect()
    }
}

/// Probes every flow of the lab in parallel and compares with the evaluator.
///
/// # Errors
/// When a lab namespace is missing (the lab is not up).
pub fn verify(plan: &Plan, lab_model: &Model) -> Result<Report, crate::sys::netns::NetnsError> {
    let started = Instant::now();
    let nss = plan
        .hosts
        .iter()
        .map(|h| Netns::open(&h.netns))
        .collect::<Result<Vec<_>, _>>()?;
    let work = expectations(plan, lab_model);
    let observed: Mutex<Vec<Option<bool>>> = Mutex::new(vec![None; work.len()]);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(work.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((flow, _)) = work.get(i) else { break };
                    let ok = probe_flow(plan, &nss, flow);
                    observed.lock().expect("no panics while held")[i] = Some(ok);
                }
            });
        }
    });
    let mut observed = observed.into_inner().expect("no panics while held");
    // A disagreement is measured again, alone, before it is reported.
    for (i, (flow, e)) in work.iter().enumerate() {
        if observed[i] != Some(e.allowed) {
            observed[i] = Some(probe_flow(plan, &nss, flow));
        }
    }
    let flows = work
        .iter()
        .zip(observed)
        .map(|((flow, e), o)| result(plan, *flow, e, o))
        .collect();
    Ok(Report {
        lab: plan.lab.clone(),
        hosts: plan.hosts.len(),
        services: plan.services.len(),
        flows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The hosts and what they stand for, the interface mapping and the notes.
pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::new();
    // Column widths: the longest entry, at least the heading.
    let widest = |len: fn(&super::plan::Host) -> usize, heading: usize| {
        plan.hosts.iter().map(len).max().unwrap_or(0).max(heading)
    };
    let w = widest(|h| h.role.len(), 4);
    let n = widest(|h| h.netns.len(), 9);
    let _ = writeln!(
        out,
        "{:<w$}  {:<n$} {:<7} {:<15} {:<24} stands for",
        "host", "namespace", "iface", "IPv4", "IPv6"
    );
    for h in &plan.hosts {
        let _ = writeln!(
            out,
            "{:<w$}  {:<n$} {:<7} {:<15} {:<24} {}",
            h.role,
            h.netns,
            h.iface,
            h.ipv4.map_or("-".into(), |a| a.to_string()),
            h.ipv6.map_or("-".into(), |a| a.to_string()),
            h.stands_for.join("; ")
        );
    }
    let services: Vec<String> = plan.services.iter().map(|s| s.label()).collect();
    let _ = writeln!(
        out,
        "services: {}  (* = a port no rule mentions)",
        services.join(" ")
    );
    for (cfg, lab) in plan.mapping() {
        let _ = writeln!(out, "config {cfg:<20} → lab {lab}");
    }
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The matrix: one block per destination (rows: sources, columns: its
/// services); each cell is two marks, IPv4 then IPv6.
pub fn render_matrix(plan: &Plan, flows: &[FlowResult], with_observed: bool) -> String {
    let mut out = String::new();
    let mut cells: BTreeMap<(usize, usize, usize), [char; 2]> = BTreeMap::new();
    for f in flows {
        let mark = match (with_observed, f.agrees, f.expected) {
            (true, false, _) => '✗',
            (_, _, true) => '✓',
            (_, _, false) => '·',
        };
        cells
            .entry((f.flow.to, f.flow.from, f.flow.service))
            .or_insert(['-', '-'])[usize::from(f.flow.v6)] = mark;
    }
    let _ = writeln!(
        out,
        "cells: IPv4 IPv6 — ✓ reachable  · blocked  ✗ observed ≠ rules (listed below)  - not probed (no such address)"
    );
    let w = plan.hosts.iter().map(|h| h.role.len()).max().unwrap_or(4) + 2;
    for (to, dst) in plan.hosts.iter().enumerate() {
        let sources: Vec<usize> = (0..plan.hosts.len())
            .filter(|from| (0..plan.services.len()).any(|s| cells.contains_key(&(to, *from, s))))
            .collect();
        if sources.is_empty() {
            continue;
        }
        let what = match dst.kind {
            HostKind::Interface => dst.stands_for.join("; "),
            _ => format!("{} — not protected", dst.stands_for.join("; ")),
        };
        let _ = writeln!(out, "\n→ {}  {}", dst.role, what);
        let labels: Vec<String> = plan.services.iter().map(|s| s.label()).collect();
        let _ = write!(out, "  {:<w$}", "from");
        for l in &labels {
            let _ = write!(out, " {l}");
        }
        out.push('\n');
        for from in sources {
            let _ = write!(out, "  {:<w$}", plan.hosts[from].role);
            for (s, l) in labels.iter().enumerate() {
                let c = cells.get(&(to, from, s)).copied().unwrap_or(['-', '-']);
                let _ = write!(
                    out,
                    " {}{}{}",
                    c[0],
                    c[1],
                    " ".repeat(l.chars().count().saturating_sub(2))
                );
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    }
    out
}

/// The full `verify` text: plan, matrix, summary, every disagreement.
pub fn render_report(plan: &Plan, report: &Report) -> String {
    let mut out = render_matrix(plan, &report.flows, true);
    let bad = report.disagreements();
    let reachable = report
        .flows
        .iter()
        .filter(|f| f.observed == Some(true))
        .count();
    let _ = writeln!(
        out,
        "\nlab `{}`: {} flows probed in {:.1} s ({} hosts × {} services, IPv4 and IPv6): {} reachable, {} blocked, {} disagreement{} with the reference evaluator",
        report.lab,
        report.flows.len(),
        report.seconds,
        report.hosts,
        report.services,
        reachable,
        report.flows.len() - reachable,
        bad.len(),
        if bad.len() == 1 { "" } else { "s" }
    );
    for f in bad {
        let _ = writeln!(
            out,
            "✗ {}: the rules say {} ({}), observed {}",
            f.name(),
            if f.expected { "reachable" } else { "blocked" },
            f.reason,
            if f.observed == Some(true) {
                "reachable"
            } else {
                "blocked"
            }
        );
    }
    out
}

/// What a change does to the lab's flows (`lab diff`).
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub flows: usize,
    /// Blocked before, reachable after.
    pub opened: Vec<FlowResult>,
    /// Reachable before, blocked after.
    pub closed: Vec<FlowResult>,
}

/// Compares the evaluator's answers for every flow of `plan` under two lab
/// models (both from [`Plan::lab_model`] of the same plan).
pub fn diff(plan: &Plan, old: &Model, new: &Model) -> Diff {
    let flows = plan.flows();
    let mut d = Diff {
        flows: flows.len(),
        opened: vec![],
        closed: vec![],
    };
    for f in flows {
        let (a, b) = (plan.expect(old, &f), plan.expect(new, &f));
        match (a.allowed, b.allowed) {
            (false, true) => d.opened.push(result(plan, f, &b, None)),
            (true, false) => d.closed.push(result(plan, f, &a, None)),
            _ => {}
        }
    }
    d
}

/// `lab diff` as text for a review: hosts, then `+` opened and `-` closed flows.
pub fn render_diff(plan: &Plan, d: &Diff, old: &str, new: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{old} → {new}: {} flows compared ({} hosts × {} services, IPv4 and IPv6); {} opened, {} closed",
        d.flows,
        plan.hosts.len(),
        plan.services.len(),
        d.opened.len(),
        d.closed.len()
    );
    for (sign, list, why) in [
        ("+", &d.opened, "now allowed by"),
        ("-", &d.closed, "was allowed by"),
    ] {
        for f in list {
            let _ = writeln!(out, "{sign} {}  [{why} {}]", f.name(), f.reason);
        }
    }
    out.push_str("\nhosts:\n");
    for h in &plan.hosts {
        let _ = writeln!(
            out,
            "  {:<18} {:<15} {:<24} {}",
            h.role,
            h.ipv4.map_or("-".into(), |a| a.to_string()),
            h.ipv6.map_or("-".into(), |a| a.to_string()),
            h.stands_for.join("; ")
        );
    }
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
