//! Prometheus metrics for `sgctl run --metrics ADDR`, encoded with the
//! prometheus-client crate from the kernel's pinned counters at each scrape
//! (the kernel holds the truth; nothing is cached here).

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent::daemon_state::DaemonState, agent::status};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Why the metrics could not be rendered.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("listing the attached interfaces")]
    Ifaces(#[source] std::io::Error),
    #[error("encoding the metrics")]
    Encode(#[source] std::fmt::Error),
}

/// The exposition text for the current state.
pub fn render(daemon: &DaemonState) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    register_interfaces(&mut registry)?;
    register_daemon(&mut registry, daemon);
    let mut out = String::new();
    encode(&mut out, &registry).map_err(MetricsError::Encode)?;
    Ok(out)
}

/// Per-interface families: counters, rule hits, connection table, policy.
fn register_interfaces(registry: &mut Registry) -> Result<(), MetricsError> {
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let rule_hits = Family::<Labels, Counter>::default();
    let rule_bytes = Family::<Labels, Counter>::default();
    let ct_entries = Family::<Labels, Gauge>::default();
    let ct_capacity = Family::<Labels, Gauge>::default();
    let generation = Family::<Labels, Gauge>::default();
    let events_lost = Family::<Labels, Counter>::default();
    for id in crate::kernel::dataplane::attached_ifaces().map_err(MetricsError::Ifaces)? {
        let Ok(s) = status::iface_status(id.clone()) else {
            continue; // detached while we looked
        };
        let iface = id.to_string();
        for c in &s.counters {
            let l = labels(&[
                ("iface", &iface),
                ("direction", c.direction),
                ("verdict", c.verdict),
                ("reason", c.reason),
            ]);
            packets.get_or_create(&l).inc_by(c.packets);
            bytes.get_or_create(&l).inc_by(c.bytes);
        }
        for h in &s.rule_hits {
            let l = labels(&[("iface", &iface), ("group", &h.group), ("rule", &h.rule)]);
            rule_hits.get_or_create(&l).inc_by(h.packets);
            rule_bytes.get_or_create(&l).inc_by(h.bytes);
        }
        let l = labels(&[("iface", &iface)]);
        ct_entries.get_or_create(&l).set(s.conntrack_entries as i64);
        ct_capacity
            .get_or_create(&l)
            .set(i64::from(s.conntrack_capacity));
        generation.get_or_create(&l).set(i64::from(s.generation));
        events_lost.get_or_create(&l).inc_by(s.events_lost);
    }
    let counters = [
        (
            "sgctl_packets",
            "Packets judged, by interface, direction, verdict and reason",
            packets,
        ),
        (
            "sgctl_bytes",
            "Bytes judged, by interface, direction, verdict and reason",
            bytes,
        ),
        (
            "sgctl_rule_hits",
            "New flows (or untracked packets) each rule admitted",
            rule_hits,
        ),
        (
            "sgctl_rule_bytes",
            "Bytes of the packets counted in sgctl_rule_hits",
            rule_bytes,
        ),
        (
            "sgctl_flow_events_lost",
            "Flow-log events the kernel could not report (rate limit, full buffer)",
            events_lost,
        ),
    ];
    register_all(registry, counters);
    let gauges = [
        (
            "sgctl_conntrack_entries",
            "Connection-table entries in use (both families)",
            ct_entries,
        ),
        (
            "sgctl_conntrack_capacity",
            "Connection-table capacity per family",
            ct_capacity,
        ),
        (
            "sgctl_policy_generation",
            "Policy generation in force",
            generation,
        ),
    ];
    register_all(registry, gauges);
    Ok(())
}

fn register_all<M: prometheus_client::registry::Metric>(
    registry: &mut Registry,
    families: impl IntoIterator<Item = (&'static str, &'static str, M)>,
) {
    for (name, help, family) in families {
        registry.register(name, help, family);
    }
}

/// The daemon's own families: reloads and namespace watchers.
fn register_daemon(registry: &mut Registry, daemon: &DaemonState) {
    let reload_success = Gauge::<i64>::default();
    reload_success.set(i64::from(daemon.last_reload_ok));
    registry.register(
        "sgctl_reload_success",
        "1 if the last config reload succeeded",
        reload_success,
    );
    let reloads = Family::<Labels, Counter>::default();
    reloads
        .get_or_create(&labels(&[("result", "ok")]))
        .inc_by(daemon.reloads_ok);
    reloads
        .get_or_create(&labels(&[("result", "error")]))
        .inc_by(daemon.reloads_failed);
    registry.register("sgctl_reloads", "Config reloads by result", reloads);
    let last = Gauge::<i64>::default();
    last.set(daemon.last_reload_at as i64);
    registry.register(
        "sgctl_last_reload_timestamp_seconds",
        "When the last reload was attempted",
        last,
    );
    // Counters of the namespace watchers, labelled by namespace.
    for (name, help, counts) in [
        (
            "sgctl_netlink_overflows",
            "Times the kernel dropped link and address events (a watcher's socket buffer was full); each triggers a full reconcile",
            &daemon.netlink_overflows,
        ),
        (
            "sgctl_link_watch_failures",
            "Times a namespace's link watcher failed and was reopened",
            &daemon.link_watch_failures,
        ),
    ] {
        let family = Family::<Labels, Counter>::default();
        for (netns, n) in counts {
            family
                .get_or_create(&labels(&[("netns", netns)]))
                .inc_by(*n);
        }
        registry.register(name, help, family);
    }
    if let Some(store) = &daemon.store {
        for (name, help, value) in [
            (
                "sgctl_store_connected",
                "1 while the shared store is reachable; 0: enforcing the last good state",
                i64::from(store.connected),
            ),
            (
                "sgctl_store_since_timestamp_seconds",
                "When the store connection last became reachable or unreachable",
                store.since as i64,
            ),
            (
                "sgctl_store_revision",
                "The store revision this agent's view is at",
                store.revision,
            ),
            (
                "sgctl_store_published_members",
                "Member keys this host publishes",
                store.published as i64,
            ),
            (
                "sgctl_store_hosts",
                "Hosts with a live heartbeat in the store",
                store.hosts as i64,
            ),
        ] {
            let g = Gauge::<i64>::default();
            g.set(value);
            registry.register(name, help, g);
        }
        let relists = Counter::<u64>::default();
        relists.inc_by(store.relists);
        registry.register(
            "sgctl_store_relists",
            "Full lists of the store (start, reconnects, compaction)",
            relists,
        );
    }
}

/// Answers `GET /metrics` (anything else: 404) until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<DaemonState>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (bounded).
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                let snapshot = state.lock().expect("state lock").clone();
                // Rendering reads every interface's counters and walks the
                // connection tables (blocking syscalls): off the runtime's
                // worker threads, which run the daemon's event loop.
                match tokio::task::spawn_blocking(move || render(&snapshot)).await {
                    Ok(Ok(text)) => ("200 OK", text),
                    Ok(Err(e)) => (
                        "500 Internal Server Error",
                        format!("{}\n", crate::model::text::Chain(&e)),
                    ),
                    Err(e) => (
                        "500 Internal Server Error",
                        format!("rendering failed: {e}\n"),
                    ),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
