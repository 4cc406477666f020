//! Many hosts, one policy: groups and prefix lists in etcd v3 (written by
//! `sgctl push`), each host's members published under its lease by its
//! agent (`sgctl run --store`). See [`layout`] for the keys.
//!
//! The agent lists everything under `/sg/v1/`, then watches from the next
//! revision. A compacted revision means a full re-list into a fresh cache
//! (mark and sweep: nothing stale survives). While the store is unreachable
//! the daemon keeps enforcing the last good state; this task reconnects
//! with backoff and resyncs, and says so in its [`StoreStatus`].

pub mod layout;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::model::{Model, source::Shared};
use layout::{Cache, Member};

/// What `sgctl push` and the agent's store connection can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {url} is not reachable (is etcd running there, and the address right?)")]
    Unreachable {
        url: String,
        source: etcd_client::Error,
    },
    #[error("the store at {url} failed a request")]
    Request {
        url: String,
        source: etcd_client::Error,
    },
    #[error(
        "another `sgctl push` changed the groups at the same time (tried {0} times); push again"
    )]
    Contended(u32),
    #[error("cannot encode group or prefix list: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    /// A failed request; one the server never got (the channel's connect
    /// failed) is [`StoreError::Unreachable`].
    fn request(url: &str, source: etcd_client::Error) -> StoreError {
        let url = url.to_owned();
        match &source {
            etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
                StoreError::Unreachable { url, source }
            }
            _ => StoreError::Request { url, source },
        }
    }
}

/// How an agent talks to the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Endpoint URL (`http://127.0.0.1:2379`).
    pub url: String,
    /// This host's id in member and heartbeat keys.
    pub host_id: String,
    /// Lease TTL: how long this host's members outlive it.
    pub lease_ttl: i64,
}

/// The connection as `sgctl status` and the metrics show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreStatus {
    pub url: String,
    pub host_id: String,
    pub connected: bool,
    /// Unix seconds: connected since, or unreachable since.
    pub since: u64,
    /// The store revision the cache is at.
    pub revision: i64,
    /// Member keys this host has published.
    pub published: usize,
    /// Hosts with a live heartbeat.
    pub hosts: usize,
    /// Times the agent re-listed everything (start, reconnects, compaction).
    pub relists: u64,
    pub last_error: Option<String>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    Client::connect(
        [url],
        Some(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(5)),
        ),
    )
    .await
    .map_err(|source| StoreError::Unreachable {
        url: url.to_owned(),
        source,
    })
}

/// The store's address and port when the URL names an IP address (a host
/// name is resolved by the client, and cannot be checked here).
pub fn store_addr(url: &str) -> Option<(std::net::IpAddr, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    if let Ok(sa) = hostport.parse::<std::net::SocketAddr>() {
        return Some((sa.ip(), sa.port()));
    }
    hostport.parse().ok().map(|ip| (ip, 2379))
}

/// The interfaces of this host (its own namespace, host side) whose groups
/// would drop the agent's own connection to the store: an agent must never
/// cut its own store traffic.
pub fn cut_off_store(model: &Model, url: &str) -> Vec<String> {
    use crate::model::{Direction, Side, eval};
    let Some((ip, port)) = store_addr(url) else {
        return Vec::new();
    };
    if ip.is_loopback() {
        return Vec::new();
    }
    model
        .interfaces
        .iter()
        .filter(|i| i.netns.is_none() && i.side == Side::Host)
        .filter(|i| {
            !eval::decide(
                model,
                i,
                Direction::Egress,
                &eval::PacketDesc::tcp(ip, port),
            )
            .allowed
        })
        .map(|i| i.key())
        .collect()
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    pub revision: i64,
    pub groups: usize,
    pub prefix_lists: usize,
    /// Keys removed because FILE no longer defines them.
    pub removed: Vec<String>,
}

/// Writes the groups and prefix lists of a validated model in one
/// transaction, removing those the model no longer has. The transaction
/// only applies if no other push changed them since they were read.
///
/// # Errors
/// The store is unreachable, refused the transaction (etcd's
/// `--max-txn-ops` bounds its size), or kept changing underneath.
pub async fn push(url: &str, model: &Model) -> Result<PushReport, StoreError> {
    let request = |source| StoreError::request(url, source);
    let mut client = connect(url).await?;
    let mut wanted: Vec<(String, String)> = Vec::new();
    for g in &model.groups {
        wanted.push((layout::group_key(&g.id), crate::model::aws::group_json(g)?));
    }
    for p in &model.prefix_lists {
        wanted.push((
            layout::prefix_list_key(&p.id),
            crate::model::aws::prefix_list_json(p)?,
        ));
    }
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        let mut existing = BTreeSet::new();
        let mut read_rev = 0;
        for prefix in [layout::GROUPS, layout::PREFIX_LISTS] {
            let resp = client
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .map_err(request)?;
            read_rev = resp.header().map_or(0, |h| h.revision());
            for kv in resp.kvs() {
                existing.insert(String::from_utf8_lossy(kv.key()).into_owned());
            }
        }
        let removed: Vec<String> = existing
            .iter()
            .filter(|k| !wanted.iter().any(|(w, _)| w == *k))
            .cloned()
            .collect();
        let mut ops: Vec<TxnOp> = wanted
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        ops.extend(removed.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        let unchanged: Vec<Compare> = [layout::GROUPS, layout::PREFIX_LISTS]
            .into_iter()
            .map(|p| Compare::mod_revision(p, CompareOp::Less, read_rev + 1).with_prefix())
            .collect();
        let resp = client
            .txn(Txn::new().when(unchanged).and_then(ops))
            .await
            .map_err(request)?;
        if resp.succeeded() {
            return Ok(PushReport {
                revision: resp.header().map_or(0, |h| h.revision()),
                groups: model.groups.len(),
                prefix_lists: model.prefix_lists.len(),
                removed,
            });
        }
    }
    Err(StoreError::Contended(ATTEMPTS))
}

/// What the store task tells the daemon.
#[derive(Debug)]
pub enum StoreEvent {
    /// The shared policy changed (or was listed for the first time).
    Changed(Shared),
    /// The connection's [`StoreStatus`] changed.
    Status,
}

/// The agent's side of the store, run as one task for the daemon's life.
/// `notify` gets every new state of the shared policy and every status
/// change; `desired` is what this host should publish (the daemon updates
/// it after each apply).
pub async fn follow(
    opts: StoreOptions,
    notify: impl Fn(StoreEvent) + Send + Sync,
    mut desired: tokio::sync::watch::Receiver<BTreeSet<Member>>,
    status: Arc<Mutex<StoreStatus>>,
) {
    {
        let mut s = status.lock().expect("store status");
        s.url.clone_from(&opts.url);
        s.host_id.clone_from(&opts.host_id);
        s.since = unix_now();
    }
    let mut backoff = Duration::from_millis(200);
    let mut last_shared = None;
    loop {
        let err = session(&opts, &notify, &mut last_shared, &mut desired, &status).await;
        // With its causes: "not reachable …: tcp connect error …".
        let text = crate::model::text::Chain(&err).to_string();
        {
            let mut s = status.lock().expect("store status");
            if s.connected {
                // A connection that worked starts the next wait short again.
                backoff = Duration::from_millis(200);
            }
            if s.connected || s.last_error.is_none() {
                warn!(store = %opts.url, "store unreachable, enforcing the last good state: {text}");
                s.since = unix_now();
            }
            s.connected = false;
            s.last_error = Some(text);
        }
        notify(StoreEvent::Status);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if desired.has_changed().is_err() {
            return; // the daemon is gone
        }
    }
}

/// What one connection to the store holds.
struct Conn {
    client: Client,
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    keepalive: etcd_client::LeaseKeepAliveStream,
    tick: tokio::time::Interval,
    /// The member keys this host has in the store.
    published: BTreeSet<String>,
}

/// The task's state that outlives connections.
struct Follower<'a, N> {
    opts: &'a StoreOptions,
    notify: &'a N,
    last_shared: &'a mut Option<Shared>,
    desired: &'a mut tokio::sync::watch::Receiver<BTreeSet<Member>>,
    status: &'a Arc<Mutex<StoreStatus>>,
}

/// One connection: lease, heartbeat, list, publish, watch, until an error.
async fn session(
    opts: &StoreOptions,
    notify: &(impl Fn(StoreEvent) + Sync),
    last_shared: &mut Option<Shared>,
    desired: &mut tokio::sync::watch::Receiver<BTreeSet<Member>>,
    status: &Arc<Mutex<StoreStatus>>,
) -> StoreError {
    let mut f = Follower {
        opts,
        notify,
        last_shared,
        desired,
        status,
    };
    match f.run().await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

impl<N: Fn(StoreEvent) + Sync> Follower<'_, N> {
    /// Connects, then turns: a full list into a fresh cache (mark and
    /// sweep), then a watch from the next revision until the watch reports
    /// compaction. Only an error ends it.
    async fn run(&mut self) -> Result<std::convert::Infallible, StoreError> {
        let mut conn = self.connect().await?;
        let mut first = true;
        loop {
            let (cache, revision) = self.list(&mut conn, first).await?;
            first = false;
            self.watch(&mut conn, cache, revision).await?;
        }
    }

    fn request(&self) -> impl Fn(etcd_client::Error) -> StoreError + use<N> {
        let url = self.opts.url.clone();
        move |source| StoreError::request(&url, source)
    }

    /// Connects, takes a lease and keeps it alive, writes the heartbeat.
    async fn connect(&mut self) -> Result<Conn, StoreError> {
        let request = self.request();
        let mut client = connect(&self.opts.url).await?;
        let lease = client
            .lease_grant(self.opts.lease_ttl, None)
            .await
            .map_err(&request)?
            .id();
        let (keeper, keepalive) = client.lease_keep_alive(lease).await.map_err(&request)?;
        let heartbeat = serde_json::json!({"pid": std::process::id(), "since": unix_now()});
        client
            .put(
                layout::host_key(&self.opts.host_id),
                heartbeat.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(&request)?;
        let tick =
            tokio::time::interval(Duration::from_secs((self.opts.lease_ttl as u64 / 3).max(1)));
        Ok(Conn {
            client,
            lease,
            keeper,
            keepalive,
            tick,
            published: BTreeSet::new(),
        })
    }

    /// Lists everything into a fresh cache and hands the policy on. On a
    /// new connection it also republishes: what an earlier run of this host
    /// left (maybe under an old lease) is put again under this lease when
    /// still wanted, deleted otherwise.
    async fn list(&mut self, conn: &mut Conn, first: bool) -> Result<(Cache, i64), StoreError> {
        let request = self.request();
        let resp = conn
            .client
            .get(layout::ROOT, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(&request)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let cache = Cache::from_list(resp.kvs().iter().map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        }));
        if first {
            conn.published = cache.members_of(&self.opts.host_id);
            let want = self.desired.borrow_and_update().clone();
            publish(conn, self.opts, &want, true)
                .await
                .map_err(&request)?;
        }
        self.changed(&cache);
        {
            let mut s = self.status.lock().expect("store status");
            if !s.connected {
                info!(store = %self.opts.url, revision, host = %self.opts.host_id, "store connected");
                s.since = unix_now();
            }
            s.connected = true;
            s.revision = revision;
            s.published = conn.published.len();
            s.hosts = cache.hosts().len();
            s.relists += 1;
            s.last_error = None;
        }
        (self.notify)(StoreEvent::Status);
        Ok((cache, revision))
    }

    /// Hands the policy on when it differs from the last one handed on.
    fn changed(&mut self, cache: &Cache) {
        let shared = cache.shared();
        if self.last_shared.as_ref() != Some(&shared) {
            (self.notify)(StoreEvent::Changed(shared.clone()));
            *self.last_shared = Some(shared);
        }
    }

    /// Follows the store from `revision + 1`, keeps the lease, publishes
    /// what the daemon wants; returns when the watch reports compaction.
    async fn watch(
        &mut self,
        conn: &mut Conn,
        mut cache: Cache,
        revision: i64,
    ) -> Result<(), StoreError> {
        let request = self.request();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = conn
            .client
            .watch(layout::ROOT, Some(options))
            .await
            .map_err(&request)?;
        loop {
            tokio::select! {
                _ = conn.tick.tick() => {
                    conn.keeper.keep_alive().await.map_err(&request)?;
                }
                msg = conn.keepalive.message() => {
                    match msg.map_err(&request)? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err(request(etcd_client::Error::LeaseKeepAliveError(
                            "the lease expired".into(),
                        ))),
                    }
                }
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        // The daemon stopped: members stay until the lease ends.
                        std::future::pending::<()>().await;
                    }
                    let want = self.desired.borrow_and_update().clone();
                    publish(conn, self.opts, &want, false).await.map_err(&request)?;
                    self.status.lock().expect("store status").published = conn.published.len();
                    (self.notify)(StoreEvent::Status);
                }
                resp = stream.message() => {
                    let Some(resp) = resp.map_err(&request)? else {
                        return Err(request(etcd_client::Error::WatchError("the watch ended".into())));
                    };
                    if resp.compact_revision() > 0 {
                        warn!(store = %self.opts.url, compacted = resp.compact_revision(), "the store compacted past this agent's revision: listing everything again");
                        return Ok(());
                    }
                    if resp.canceled() {
                        return Err(request(etcd_client::Error::WatchError(format!(
                            "the watch was canceled: {}",
                            resp.cancel_reason()
                        ))));
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        match ev.event_type() {
                            EventType::Put => cache.put(key, kv.value().to_vec()),
                            EventType::Delete => cache.delete(&key),
                        }
                    }
                    self.changed(&cache);
                    {
                        let mut s = self.status.lock().expect("store status");
                        s.revision = resp.header().map_or(s.revision, |h| h.revision());
                        s.hosts = cache.hosts().len();
                    }
                    (self.notify)(StoreEvent::Status);
                }
            }
        }
    }
}

/// Makes this host's member keys exactly `want`: puts the new ones (all of
/// them when `all`, to move them under this lease) and deletes the rest.
async fn publish(
    conn: &mut Conn,
    opts: &StoreOptions,
    want: &BTreeSet<Member>,
    all: bool,
) -> Result<(), etcd_client::Error> {
    let keys: BTreeSet<String> = want
        .iter()
        .map(|m| layout::member_key(&opts.host_id, m))
        .collect();
    let to_put: Vec<&String> = keys
        .iter()
        .filter(|k| all || !conn.published.contains(*k))
        .collect();
    for key in to_put {
        conn.client
            .put(
                key.as_str(),
                "",
                Some(PutOptions::new().with_lease(conn.lease)),
            )
            .await?;
        conn.published.insert(key.clone());
    }
    let stale: Vec<String> = conn.published.difference(&keys).cloned().collect();
    for key in stale {
        conn.client.delete(key.as_str(), None).await?;
        conn.published.remove(&key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_nic_whose_groups_drop_store_traffic_is_named() {
        assert_eq!(
            store_addr("http://198.18.0.5:2379"),
            Some(("198.18.0.5".parse().unwrap(), 2379))
        );
        assert_eq!(
            store_addr("http://[2001:db8::5]:2381/"),
            Some(("2001:db8::5".parse().unwrap(), 2381))
        );
        assert_eq!(store_addr("http://etcd.example:2379"), None);
        let model = crate::model::from_str(
            "security_groups:\n  - { id: sg-closed, ingress: [], egress: [] }\n  - { id: sg-open, ingress: [] }\ninterfaces:\n  - { name: eth0, security_groups: [sg-closed] }\n  - { name: eth1, security_groups: [sg-open] }\n  - { name: eth0, netns: other, security_groups: [sg-closed] }\n",
            &[],
        )
        .unwrap();
        assert_eq!(cut_off_store(&model, "http://198.18.0.5:2379"), ["eth0"]);
        assert!(cut_off_store(&model, "http://127.0.0.1:2379").is_empty());
    }
}
