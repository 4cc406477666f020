//! What `sgctl status` shows of an attached interface, shared by the CLI
//! and the demo.

use std::fmt::Write as _;

use thiserror::Error;

use crate::{
    agent::drift::{self, Drift},
    kernel::loader,
    kernel::pins::IfaceId,
    model::text::escape,
};

/// Why an interface's status could not be read.
#[derive(Debug, Error)]
pub enum StatusError {
    #[error(
        "{iface} is enforced by an older sgctl (its own programs and maps under {}); \
         `sgctl apply` of its config moves it to the shared data plane without opening it, \
         or `{}` removes it",
        .iface.legacy_dir().display(),
        .iface.detach_command()
    )]
    Legacy { iface: IfaceId },
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

crate::from_kernel_errors!(StatusError);

#[derive(serde::Serialize)]
pub struct IfaceStatus {
    pub iface: IfaceId,
    /// For a namespace without a name of its own: where a person finds it
    /// (see [`IfaceId::whereabouts`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Whether this machine's `/run/sgctl` has its state (groups, rule
    /// names): not when a sidecar, with a private `/run`, attached it.
    pub state_here: bool,
    /// The interface's endpoint id in the host's data plane, and its policy
    /// (shared by the interfaces with the same rules; rule hits are the
    /// policy's).
    pub endpoint: u32,
    pub policy: u32,
    pub mode: &'static str,
    pub generation: u32,
    /// The config that attached it, by its identity (absolute path); none
    /// for `sgctl attach`.
    pub config: Option<std::path::PathBuf>,
    /// The container whose veth this is, when a runtime registered it
    /// (CNI): its name and id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// Where the kernel no longer matches what was set up (empty: intact).
    pub drift: Vec<Drift>,
    /// The command that repairs the drift (or removes the leftovers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    pub groups: Vec<String>,
    pub hooks: Vec<loader::PinnedHook>,
    pub counters: Vec<CounterRow>,
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    pub rule_hits: Vec<RuleHitRow>,
    pub events_lost: u64,
}

#[derive(serde::Serialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: Option<String>,
}

#[derive(serde::Serialize)]
pub struct CounterRow {
    pub direction: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(serde::Serialize)]
pub struct RuleHitRow {
    pub rule: String,
    pub group: String,
    pub description: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

pub fn iface_status(id: IfaceId) -> Result<IfaceStatus, StatusError> {
    if !id.dir().exists() && id.legacy_dir().exists() {
        return Err(StatusError::Legacy { iface: id });
    }
    // One look at the data plane for everything below.
    let (mut dp, ep) = loader::endpoint(&id)?;
    let cfg = ep.cfg;
    let generation = if cfg.policy == 0 {
        0
    } else {
        dp.maps.policy_state(cfg.policy)?.generation
    };
    let state = crate::agent::state::read_state(&id);
    let drift = drift::check_with(&id, state.as_ref(), Some(true));
    let fix = (!drift.is_empty()).then(|| drift::fix_command(&id, state.as_ref(), &drift));
    let state_here = state.is_some();
    let state = state.unwrap_or_default();
    let hooks = loader::pinned_hooks(&id)?;
    let counters = dp
        .counters(cfg.endpoint)?
        .into_iter()
        .map(|((d, r), c)| CounterRow {
            direction: d.name(),
            verdict: if r.is_drop() { "drop" } else { "pass" },
            reason: r.name(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    let (conntrack_entries, conntrack_capacity) = crate::kernel::conntrack::usage(&id, &cfg)?;
    let hits = if cfg.policy == 0 {
        Default::default()
    } else {
        dp.maps.select(cfg.policy, Some(ep.key));
        dp.maps.rule_hits()?
    };
    let mut rule_hits: Vec<RuleHitRow> = hits
        .into_iter()
        .filter_map(|(hash, c)| {
            // Counters of rules that left the config are not shown.
            let info = state.rules.get(&hash)?.clone();
            Some(RuleHitRow {
                rule: info.id,
                group: info.group,
                description: info.description,
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect();
    rule_hits.sort_by(|a, b| a.rule.cmp(&b.rule));
    let events_lost = dp.events_lost(cfg.endpoint)?;
    let container = id
        .netns
        .is_none()
        .then(|| {
            crate::agent::endpoints::container_on(
                std::path::Path::new(crate::agent::lock::STATE_DIR),
                &id.iface,
            )
        })
        .flatten()
        .map(|e| ContainerRef {
            id: e.container_id,
            name: e.name,
        });
    Ok(IfaceStatus {
        container,
        namespace: id.whereabouts(),
        state_here,
        iface: id,
        endpoint: cfg.endpoint,
        policy: cfg.policy,
        mode: if cfg.flags & sg_common::policy::CONFIG_ENFORCE != 0 {
            "enforce"
        } else {
            "observe"
        },
        generation,
        config: state.config,
        drift,
        fix,
        groups: state.groups,
        hooks,
        counters,
        conntrack_entries,
        conntrack_capacity,
        rule_hits,
        events_lost,
    })
}

/// Human-readable status of one interface (counters that moved only).
pub fn render(s: &IfaceStatus) -> String {
    let mut out = String::new();
    let hooks: Vec<String> = s
        .hooks
        .iter()
        .map(|h| {
            format!(
                "{} {} (prog {})",
                escape(&h.direction),
                h.hook.name(),
                h.program_id
            )
        })
        .collect();
    // Names come from pins and state files: escaped, so that they cannot
    // move the cursor or forge lines.
    let gone = s.drift.iter().any(Drift::is_gone);
    let _ = writeln!(
        out,
        "{}  {} generation {} (policy {}, endpoint {})  groups [{}]  hooks: {}",
        escape(&s.iface.to_string()),
        if gone { "NOT ENFORCED" } else { s.mode },
        s.generation,
        s.policy,
        s.endpoint,
        escape(&s.groups.join(", ")),
        if hooks.is_empty() {
            "none".to_string()
        } else {
            hooks.join(", ")
        }
    );
    if let Some(namespace) = &s.namespace {
        let _ = writeln!(out, "  namespace: {}", escape(namespace));
    }
    // `sgctl attach` (observe mode, no policy) keeps no state anywhere; an
    // enforced interface without state here was applied by another sgctl.
    if !s.state_here && s.policy != 0 {
        let _ = writeln!(
            out,
            "  groups and rule names: not kept here (attached by an sgctl with its own /run, \
             such as a sidecar: its `sgctl status` shows them)"
        );
    }
    if let Some(config) = &s.config {
        let _ = writeln!(out, "  config: {}", escape(&config.display().to_string()));
    }
    if let Some(c) = &s.container {
        let short = c.id.get(..12).unwrap_or(&c.id);
        let _ = match &c.name {
            Some(name) => writeln!(out, "  container: {} ({short})", escape(name)),
            None => writeln!(out, "  container: {short}"),
        };
    }
    for d in &s.drift {
        let _ = writeln!(out, "  WARNING: {}", escape(&d.to_string()));
    }
    if let Some(fix) = &s.fix {
        let what = if gone {
            "remove the leftovers"
        } else {
            "repair"
        };
        let _ = writeln!(out, "  to {what}: {}", escape(fix));
    }
    let _ = writeln!(
        out,
        "  conntrack: {} entries in use, limit {} for this interface",
        s.conntrack_entries, s.conntrack_capacity
    );
    for c in s.counters.iter().filter(|c| c.packets > 0) {
        let _ = writeln!(
            out,
            "  {:<9} {:<4} {:<16} {:>10} pkts {:>12} bytes",
            c.direction, c.verdict, c.reason, c.packets, c.bytes
        );
    }
    for h in &s.rule_hits {
        let _ = writeln!(
            out,
            "  rule {:<44} {:>10} pkts {:>12} bytes  {}",
            escape(&h.rule),
            h.packets,
            h.bytes,
            escape(h.description.as_deref().unwrap_or(""))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_pins_and_state_files_cannot_forge_output() {
        let s = IfaceStatus {
            iface: IfaceId::new("eth0\u{1b}[2J", Some("ns\nfake")),
            mode: "enforce",
            generation: 1,
            groups: vec!["sg-a\rsg-b".into()],
            hooks: vec![],
            counters: vec![],
            conntrack_entries: 0,
            conntrack_capacity: 1,
            rule_hits: vec![RuleHitRow {
                rule: "r\u{202e}1".into(),
                group: "g".into(),
                description: Some("x\u{1b}[31m\nforged: 0 drops".into()),
                packets: 1,
                bytes: 2,
            }],
            events_lost: 0,
            config: None,
            container: None,
            drift: vec![],
            fix: None,
            policy: 1,
            endpoint: 1,
            namespace: Some("/run/netns/x\u{1b}[2J".into()),
            state_here: true,
        };
        let text = render(&s);
        assert_eq!(text.lines().count(), 4, "one line per item:\n{text}");
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && crate::model::text::is_unsafe(c)),
            "{text:?}"
        );
        for shown in ["\\u{1b}[2J", "\\n", "\\r", "\\u{202e}", "\\u{1b}[31m"] {
            assert!(text.contains(shown), "{shown} in {text:?}");
        }
    }
}
