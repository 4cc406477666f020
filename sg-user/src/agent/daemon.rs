//! `sgctl run`: apply a config and keep it applied.
//!
//! - Reloads when the config file changes (inotify on its directory,
//!   debounced) and on SIGHUP. An invalid config changes nothing: the
//!   running policy stays, the error is logged and shown in status and
//!   metrics.
//! - Interfaces come and go: link and address events (netlink, one socket per
//!   namespace the config names, see [`crate::agent::linkwatch`]) and
//!   namespaces appearing or disappearing under /run/netns (inotify) trigger
//!   a reconcile — no polling. Events the kernel drops (a full socket
//!   buffer) trigger a reconcile too; a watcher that fails is logged,
//!   counted and reopened.
//! - One daemon per config: it holds the config's daemon lock for its
//!   lifetime (a second `sgctl run` on the same config refuses with this
//!   one's pid) and the state lock during each reload, like `sgctl apply`
//!   (see [`crate::agent::lock`] for the order).
//! - Exits on SIGTERM/SIGINT leaving enforcement pinned in place (unless
//!   `--detach-on-exit`); a new `sgctl run` adopts it: unchanged policies are
//!   not even reinstalled, counters and connections continue.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    agent::apply::{self, ApplyOptions},
    agent::daemon_state::{DaemonState, state_path},
    agent::discover::KernelAddresses,
    agent::endpoints::{self, Registry, Request, Response},
    agent::flowlog::Collector,
    agent::linkwatch::{LinkSocket, Notice},
    agent::lock::{self, LockError, StateLock},
    agent::metrics,
    agent::store::{self, StoreEvent, StoreOptions, StoreStatus, layout::Member},
    kernel::pins::{self, IfaceId, NsIdent},
    model::{Attachment, Model, source::Shared, text::Chain},
    sys::{netns::NETNS_RUN_DIR, private_dir::PrivateDirError},
};

/// Why `sgctl run` could not start. (Once running, failures are logged and
/// shown in `sgctl status`; the daemon keeps going.)
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("{}: the directory of the config does not exist; check the path given to -c", .config.display())]
    ConfigDir { config: PathBuf },
    #[error("the config path names no file")]
    ConfigName,
    #[error("installing a signal handler")]
    Signal(#[source] std::io::Error),
    #[error("inotify")]
    Inotify(#[source] std::io::Error),
    #[error(transparent)]
    Path(#[from] crate::sys::PathError),
    #[error("listening for metrics on {addr} (is the port in use?)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Dir(#[from] PrivateDirError),
    /// Not root (the error says so).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T, E = DaemonError> = std::result::Result<T, E>;

/// Everything `sgctl run` is told.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub config: PathBuf,
    pub attach: Vec<Attachment>,
    pub apply: ApplyOptions,
    pub metrics: Option<std::net::SocketAddr>,
    pub flow_log: Option<PathBuf>,
    pub flow_log_max_bytes: u64,
    pub flow_window: Duration,
    pub account_id: String,
    pub detach_on_exit: bool,
    pub gc_interval: Duration,
    /// Serve workload-endpoint requests (the CNI plugin's) on this socket.
    pub socket: Option<PathBuf>,
    /// Groups, prefix lists and members from a shared store.
    pub store: Option<StoreOptions>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug)]
enum Event {
    /// Re-read the config (file change, SIGHUP).
    Reload(&'static str),
    /// Interfaces, addresses or namespaces changed.
    Reconcile(String),
    Gc,
    FlowDrain,
    FlowWindow,
    Shutdown(&'static str),
    /// A runtime's plugin asks; the answer goes back on the channel.
    Endpoint(Request, tokio::sync::oneshot::Sender<Response>),
    /// The shared store's policy changed.
    Store(Shared),
    /// The shared store's connection status changed.
    StoreStatus,
}

struct Daemon {
    opts: DaemonOptions,
    state: Arc<Mutex<DaemonState>>,
    /// Where `state` is published (daemon-KEY.json).
    state_file: PathBuf,
    last_good: Option<Model>,
    tx: mpsc::UnboundedSender<Event>,
    /// Netlink watchers by namespace (None = the daemon's own).
    watchers: BTreeMap<Option<String>, Watcher>,
    /// Namespaces whose watcher could not be opened: when to try again.
    watch_retry: BTreeMap<Option<String>, Retry>,
    flows: Option<FlowLog>,
    /// Registered workload endpoints (with `--socket`).
    endpoints: Option<Registry>,
    /// With `--store`: the shared policy as last received (None until the
    /// first list: nothing is applied before it), the connection's status,
    /// and what this host should publish.
    shared: Option<Shared>,
    store_status: Option<Arc<Mutex<StoreStatus>>>,
    members: Option<tokio::sync::watch::Sender<BTreeSet<Member>>>,
}

/// Runs until SIGTERM/SIGINT.
///
/// # Errors
/// Another daemon keeps this config ([`lock::LockError::DaemonRunning`]), the
/// state or bpffs directory cannot be trusted, or a watch cannot be set up.
pub async fn run(opts: DaemonOptions) -> Result<()> {
    pins::ensure_root()?;
    lock::ensure_state_dir()?;
    let identity = crate::agent::state::config_identity(&opts.config).ok_or_else(|| {
        DaemonError::ConfigDir {
            config: opts.config.clone(),
        }
    })?;
    // Held until we return: our daemon-KEY.json is ours alone.
    let daemon_lock = lock::daemon_lock(&identity)?;
    let started_mono = crate::kernel::conntrack::monotonic_ns();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let state = Arc::new(Mutex::new(DaemonState {
        pid: std::process::id(),
        config: identity.clone(),
        started: unix_now(),
        ..DaemonState::default()
    }));
    spawn_signal(&tx, SignalKind::hangup(), Event::Reload("SIGHUP"))?;
    spawn_signal(&tx, SignalKind::terminate(), Event::Shutdown("SIGTERM"))?;
    spawn_signal(&tx, SignalKind::interrupt(), Event::Shutdown("SIGINT"))?;
    spawn_config_watch(&tx, &opts.config)?;
    spawn_netns_watch(&tx)?;
    spawn_tick(&tx, opts.gc_interval, || Event::Gc);
    if let Some(addr) = opts.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        info!(%addr, "serving Prometheus metrics at /metrics");
        tokio::spawn(metrics::serve(listener, state.clone()));
    }
    let flows = match &opts.flow_log {
        Some(path) => {
            spawn_tick(&tx, Duration::from_millis(500), || Event::FlowDrain);
            spawn_tick(&tx, opts.flow_window, || Event::FlowWindow);
            Some(FlowLog::new(
                path.clone(),
                opts.flow_log_max_bytes,
                &opts.account_id,
                started_mono,
            )?)
        }
        None => None,
    };
    let endpoints = match &opts.socket {
        Some(socket) => {
            // Per config, like the daemon lock: two daemons never share
            // registrations.
            let dir = Path::new(lock::STATE_DIR)
                .join(format!("endpoints-{}", lock::config_key(&identity)));
            let registry = Registry::open(&dir)?;
            let listener = bind_socket(socket)?;
            info!(socket = %socket.display(), "serving workload-endpoint requests");
            tokio::spawn(serve_socket(listener, tx.clone()));
            Some(registry)
        }
        None => None,
    };
    let (store_status, members) = match &opts.store {
        Some(store) => {
            let status = Arc::new(Mutex::new(StoreStatus::default()));
            let (members_tx, members_rx) = tokio::sync::watch::channel(BTreeSet::new());
            let events = tx.clone();
            info!(store = %store.url, host = %store.host_id, "following the shared store; nothing is applied before its first list");
            tokio::spawn(store::follow(
                store.clone(),
                move |e| {
                    let _ = events.send(match e {
                        StoreEvent::Changed(shared) => Event::Store(shared),
                        StoreEvent::Status => Event::StoreStatus,
                    });
                },
                members_rx,
                status.clone(),
            ));
            (Some(status), Some(members_tx))
        }
        None => (None, None),
    };
    let mut daemon = Daemon {
        shared: None,
        store_status,
        members,
        opts,
        state,
        state_file: state_path(&identity),
        last_good: None,
        tx,
        watchers: BTreeMap::new(),
        watch_retry: BTreeMap::new(),
        flows,
        endpoints,
    };
    if daemon.opts.store.is_none()
        && let Some(held) = daemon.state_lock("start").await
    {
        daemon.reload("start", &held);
    }
    daemon.serve(&mut rx).await;
    daemon.stop().await;
    // Ours alone: the daemon lock is still held.
    let _ = std::fs::remove_file(&daemon.state_file);
    daemon_lock.remove();
    Ok(())
}

impl Daemon {
    /// Handles events until a shutdown signal (or every sender is gone).
    async fn serve(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) {
        while let Some(first) = rx.recv().await {
            // Coalesce a burst (an editor's save, a container starting) into one
            // reload or reconcile; nothing queued meanwhile is lost.
            // A runtime's request ends the window at once: a container's
            // start is waiting for it (and its own veth is what set off the
            // burst).
            let mut batch = vec![first];
            if matches!(batch[0], Event::Reload(_) | Event::Reconcile(_)) {
                let window = tokio::time::sleep(Duration::from_millis(150));
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        () = &mut window => break,
                        more = rx.recv() => match more {
                            Some(e @ Event::Endpoint(..)) => {
                                batch.push(e);
                                break;
                            }
                            Some(e) => batch.push(e),
                            None => break,
                        },
                    }
                }
            }
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut reload = None;
            let mut reconcile = None;
            let mut shutdown = None;
            for event in batch {
                match event {
                    Event::Reload(why) => reload = Some(why),
                    Event::Reconcile(why) => reconcile = Some(why),
                    Event::Gc => self.gc(),
                    Event::FlowDrain => {
                        if let Some(f) = &mut self.flows {
                            f.drain();
                        }
                    }
                    Event::FlowWindow => {
                        if let Some(f) = &mut self.flows {
                            f.window();
                        }
                    }
                    Event::Shutdown(why) => shutdown = Some(why),
                    Event::Store(shared) => {
                        self.shared = Some(shared);
                        reload = Some("store changed");
                    }
                    Event::StoreStatus => {
                        if let Some(status) = &self.store_status {
                            let now = status.lock().expect("store status").clone();
                            self.state.lock().expect("state lock").store = Some(now);
                            self.publish();
                        }
                    }
                    Event::Endpoint(request, reply) => {
                        let started = std::time::Instant::now();
                        let what = request.summary();
                        let answer = match self.state_lock("workload endpoint").await {
                            Some(held) => self.endpoint_request(request, &held),
                            None => Response::error(
                                "the daemon could not take the state lock; see its log",
                            ),
                        };
                        info!(
                            request = %what,
                            ok = answer.ok,
                            ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
                            "workload endpoint request served"
                        );
                        let _ = reply.send(answer);
                    }
                }
            }
            // A reload re-discovers interfaces too, so it covers a reconcile.
            let why = reload.map(str::to_string).or(reconcile);
            if let Some(why) = why
                && let Some(held) = self.state_lock(&why).await
            {
                match reload {
                    Some(why) => {
                        self.reload(why, &held);
                    }
                    None => self.reconcile(&why, &held),
                }
            }
            if let Some(why) = shutdown {
                info!(signal = why, "stopping");
                break;
            }
        }
    }

    /// What a stopping daemon does: closes the flow-log window, and detaches
    /// its interfaces only when asked to (enforcement outlives the daemon).
    async fn stop(&mut self) {
        if let Some(f) = &mut self.flows {
            f.window();
        }
        if self.opts.detach_on_exit
            && let Some(held) = self.state_lock("stop").await
        {
            for id in self.attached() {
                match apply::detach_locked(&id, &held) {
                    Ok(()) => info!(iface = %id, "detached (--detach-on-exit)"),
                    Err(e) => warn!(iface = %id, "detach failed: {}", Chain(&e)),
                }
            }
        } else {
            info!(
                "enforcement stays in place (pinned); `sgctl run` adopts it, `sgctl detach --all` removes it"
            );
        }
        if let Some(registry) = &self.endpoints {
            registry.remove_dir_if_empty();
        }
    }

    /// Takes the state lock for a reload or reconcile, waiting (without
    /// blocking metrics or signals) while an `sgctl apply` holds it. None
    /// when it cannot be taken at all (logged, shown in status).
    async fn state_lock(&mut self, why: &str) -> Option<StateLock> {
        let purpose = format!("sgctl run -c {} ({why})", self.opts.config.display());
        let taken = tokio::task::spawn_blocking(move || {
            lock::state_lock(&purpose, lock::Wait::Block, |holder| {
                info!("waiting for the state lock ({holder})");
            })
        })
        .await;
        match taken {
            Ok(Ok(held)) => Some(held),
            Ok(Err(e)) => {
                self.failed(why, Chain(&e).to_string());
                None
            }
            Err(e) => {
                self.failed(why, format!("taking the state lock: {e}"));
                None
            }
        }
    }

    /// Records a failed reload or reconcile (status, metrics, log).
    fn failed(&mut self, why: &str, error: String) {
        error!(
            trigger = why,
            "applying failed, the previous policy stays where it was not replaced: {error}"
        );
        let mut s = self.state.lock().expect("state lock");
        s.last_reload_ok = false;
        s.last_reload_at = unix_now();
        s.last_error = Some(error);
        s.reloads_failed += 1;
        drop(s);
        self.publish();
    }

    /// Loads the config (with the registered endpoints) and enforces it;
    /// true when that succeeded.
    fn reload(&mut self, why: &str, held: &StateLock) -> bool {
        if self.opts.store.is_some() && self.shared.is_none() {
            // The groups are in the store: until its first list, whatever is
            // pinned stays in force untouched.
            info!(
                trigger = why,
                "waiting for the store's first list before applying"
            );
            return false;
        }
        let mut attach = self.opts.attach.clone();
        match self.live_endpoints() {
            Ok((live, _)) => attach.extend(live.iter().map(endpoints::Endpoint::attachment)),
            Err(e) => {
                self.failed(why, format!("reading the workload endpoints: {e}"));
                return false;
            }
        }
        match apply::load_shared(&self.opts.config, &attach, self.shared.as_ref()) {
            Ok(model) => {
                for w in &model.warnings {
                    warn!("{w}");
                }
                if let Some(store) = &self.opts.store {
                    for iface in store::cut_off_store(&model, &store.url) {
                        warn!(%iface, store = %store.url, "store traffic would be dropped: the groups of this interface do not allow tcp to the store outbound; add an egress rule for it, or this agent cuts itself off from the store");
                    }
                }
                self.enforce(model, why, true, held)
            }
            Err(problems) => {
                let text: Vec<String> = problems
                    .iter()
                    .filter(|p| p.is_error())
                    .map(|p| p.to_string())
                    .collect();
                error!(
                    config = %self.opts.config.display(),
                    problems = text.len(),
                    "config invalid, keeping the running policy:\n{}",
                    text.join("\n")
                );
                let mut s = self.state.lock().expect("state lock");
                s.last_reload_ok = false;
                s.last_reload_at = unix_now();
                s.last_error = Some(text.join("; "));
                s.reloads_failed += 1;
                drop(s);
                self.publish();
                false
            }
        }
    }

    /// Answers a plugin's request. Adding or removing an endpoint is a
    /// reload with the new registrations; when it fails the registration is
    /// put back as it was (and enforced again), so a refused ADD leaves
    /// nothing behind.
    fn endpoint_request(&mut self, request: Request, held: &StateLock) -> Response {
        let Some(registry) = &self.endpoints else {
            return Response::error("this daemon keeps no workload endpoints");
        };
        let id = match &request {
            Request::Add { endpoint } => endpoint.container_id.clone(),
            Request::Del { container_id } | Request::Check { container_id } => container_id.clone(),
        };
        let before = match registry.get(&id) {
            Ok(before) => before,
            Err(e) => return Response::error(e.to_string()),
        };
        let changed = match &request {
            Request::Check { .. } => {
                return match before {
                    None => Response::error(format!("container {id} is not registered")),
                    Some(e) if self.enforced(&e.iface) => Response::ok(),
                    Some(e) => Response::error(format!(
                        "container {id}: {} is not enforced; see `sgctl status`",
                        e.iface
                    )),
                };
            }
            Request::Add { endpoint } => registry.put(endpoint).map(|()| true),
            Request::Del { .. } => registry.remove(&id),
        };
        match changed {
            Err(e) => return Response::error(e.to_string()),
            Ok(false) => return Response::ok(),
            Ok(true) => {}
        }
        let why = match request {
            Request::Add { .. } => "workload endpoint added",
            _ => "workload endpoint removed",
        };
        if self.reload(why, held) {
            return Response::ok();
        }
        let error = self
            .state
            .lock()
            .expect("state lock")
            .last_error
            .clone()
            .unwrap_or_else(|| "applying failed".into());
        let Some(registry) = &self.endpoints else {
            return Response::error(error);
        };
        let restored = match &before {
            Some(e) => registry.put(e),
            None => registry.remove(&id).map(drop),
        };
        if let Err(e) = restored {
            warn!(container = %id, "could not restore the registration: {e}");
        }
        self.reload("workload endpoint request undone", held);
        Response::error(error)
    }

    /// The registered endpoints, after forgetting those of containers gone
    /// without a DEL (the daemon was down, the runtime crashed): their veth
    /// no longer exists here and their namespace's path is gone. Their
    /// addresses must not stay members of their groups: the next container
    /// given one of them would inherit the membership. Also whether any was
    /// forgotten. None registered without `--socket`.
    fn live_endpoints(&mut self) -> std::io::Result<(Vec<endpoints::Endpoint>, bool)> {
        let Some(registry) = &self.endpoints else {
            return Ok((Vec::new(), false));
        };
        let (gone, live): (Vec<_>, Vec<_>) = registry
            .list()?
            .into_iter()
            .partition(endpoints::Endpoint::is_gone);
        for e in &gone {
            warn!(
                container = %e.container_id,
                iface = %e.iface,
                netns = %e.container_netns,
                "the container is gone without a CNI DEL (its veth and namespace no longer exist): forgetting it and its addresses' membership"
            );
            if let Err(err) = registry.remove(&e.container_id) {
                warn!(container = %e.container_id, "could not forget it: {err}");
            }
        }
        Ok((live, !gone.is_empty()))
    }

    /// Whether `iface` (in the daemon's namespace) is enforced.
    fn enforced(&self, iface: &str) -> bool {
        let key = IfaceId::new(iface, None).to_string();
        let s = self.state.lock().expect("state lock");
        s.generations.get(&key).is_some_and(|g| *g != 0)
    }

    /// Re-discovers addresses and applies the last good model again.
    fn reconcile(&mut self, why: &str, held: &StateLock) {
        let Some(mut model) = self.last_good.clone() else {
            self.reload(why, held);
            return;
        };
        // A container gone without a DEL changes the config: reload it.
        if matches!(self.live_endpoints(), Ok((_, true))) {
            self.reload(why, held);
            return;
        }
        model.rediscover(&KernelAddresses);
        self.enforce(model, why, false, held);
    }

    /// Applies `model`; `reload` says whether this was a config reload (whose
    /// result status and metrics report) or a reconcile.
    fn enforce(&mut self, model: Model, why: &str, reload: bool, held: &StateLock) -> bool {
        match apply::apply_locked(&model, &self.opts.apply, held) {
            Ok(changes) => {
                let mut generations = BTreeMap::new();
                for c in &changes {
                    if c.action != apply::Action::Unchanged {
                        info!(iface = %c.iface, action = %c.action, generation = c.generation, detail = c.detail.as_deref(), trigger = why, "applied");
                    }
                    if c.action != apply::Action::Detached {
                        generations.insert(c.iface.clone(), c.generation);
                    }
                }
                let mut s = self.state.lock().expect("state lock");
                if reload {
                    s.last_reload_ok = true;
                    s.last_reload_at = unix_now();
                    s.last_error = None;
                    s.reloads_ok += 1;
                }
                s.generations = generations;
                drop(s);
                self.watch_namespaces(&model);
                if let Some(members) = &self.members {
                    let want = local_members(&model);
                    members.send_if_modified(|m| {
                        let changed = *m != want;
                        *m = want;
                        changed
                    });
                }
                self.last_good = Some(model);
                let attached = self.attached();
                if let Some(f) = &mut self.flows {
                    f.reopen(&attached);
                }
            }
            Err(e) => {
                self.failed(why, Chain(&e).to_string());
                return false;
            }
        }
        self.publish();
        true
    }

    fn attached(&self) -> Vec<IfaceId> {
        let generations = self.state.lock().expect("state lock").generations.clone();
        crate::kernel::dataplane::attached_ifaces()
            .unwrap_or_default()
            .into_iter()
            .filter(|id| generations.get(&id.to_string()).is_some_and(|g| *g != 0))
            .collect()
    }

    /// Reclaims expired connections; skipped when an apply holds the state
    /// lock (the next tick does it).
    fn gc(&mut self) {
        let _held = match lock::try_state_lock("sgctl run (conntrack gc)") {
            Ok(Some(held)) => held,
            Ok(None) => return,
            Err(e) => return warn!("conntrack gc skipped: {}", Chain(&e)),
        };
        for id in self.attached() {
            let reclaimed = crate::kernel::loader::settings(&id)
                .map_err(|e| Chain(&e).to_string())
                .and_then(|(cfg, _)| {
                    crate::kernel::conntrack::reclaim_expired(&id, &cfg)
                        .map_err(|e| Chain(&e).to_string())
                });
            match reclaimed {
                Ok(0) => {}
                Ok(n) => info!(iface = %id, reclaimed = n, "expired connections reclaimed"),
                Err(e) => warn!(iface = %id, "conntrack gc failed: {e}"),
            }
        }
    }

    /// One netlink watcher per namespace the model names (and our own).
    fn watch_namespaces(&mut self, model: &Model) {
        let mut wanted: Vec<Option<String>> =
            model.interfaces.iter().map(|i| i.netns.clone()).collect();
        wanted.push(None);
        wanted.sort();
        wanted.dedup();
        // Drop watchers of namespaces that are gone, replaced (deleted and
        // created again under the same name) or no longer named: a socket
        // would keep a deleted namespace (and its devices) alive. A watcher
        // whose task ended is replaced too.
        self.watchers.retain(|ns, w| {
            let same_netns = ns
                .as_ref()
                .is_none_or(|n| NsIdent::named(n).is_ok_and(|now| now == w.netns));
            let keep = wanted.contains(ns) && same_netns && !w.task.is_finished();
            if !keep {
                w.task.abort();
            }
            keep
        });
        self.watch_retry.retain(|ns, _| wanted.contains(ns));
        for ns in wanted {
            let retry_scheduled = self
                .watch_retry
                .get(&ns)
                .is_some_and(|r| tokio::time::Instant::now() < r.at);
            if self.watchers.contains_key(&ns) || retry_scheduled {
                continue;
            }
            let label = ns.clone().unwrap_or_else(|| "host".into());
            match LinkSocket::open(ns.as_deref()) {
                Ok(socket) => {
                    self.watch_retry.remove(&ns);
                    let netns = socket.netns();
                    let task = tokio::spawn(keep_watching(
                        socket,
                        ns.clone(),
                        self.tx.clone(),
                        self.state.clone(),
                    ));
                    self.watchers.insert(ns, Watcher { task, netns });
                }
                // The namespace does not exist yet: /run/netns tells us when it does.
                Err(e) if e.is_netns_gone() => {}
                // One retry at a time per namespace, with a growing wait.
                Err(e) => {
                    let wait = self
                        .watch_retry
                        .get(&ns)
                        .map_or(WATCH_BACKOFF_MIN, |r| (r.wait * 2).min(WATCH_BACKOFF_MAX));
                    let at = tokio::time::Instant::now() + wait;
                    self.watch_retry.insert(ns, Retry { wait, at });
                    error!(
                        netns = %label,
                        "cannot watch links and addresses, retrying in {wait:?}: {}",
                        Chain(&e)
                    );
                    count(&self.state, |s| &mut s.link_watch_failures, &label);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        let _ = tx.send(Event::Reconcile(format!(
                            "retrying the link watcher of {label}"
                        )));
                    });
                }
            }
        }
    }

    fn publish(&self) {
        let s = self.state.lock().expect("state lock").clone();
        let written = serde_json::to_vec_pretty(&s)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::sys::private_dir::write_state_file(&self.state_file, &bytes));
        if let Err(e) = written {
            warn!("{e}");
        }
    }
}

/// What this host publishes to the store: every address of every local
/// interface (and registered container), as a member of each of its groups.
fn local_members(model: &Model) -> BTreeSet<Member> {
    model
        .interfaces
        .iter()
        .flat_map(|i| {
            model.interface_addresses(i).iter().flat_map(move |a| {
                i.groups.iter().map(move |g| Member {
                    group: g.clone(),
                    address: *a,
                })
            })
        })
        .collect()
}

/// Binds the endpoint socket (0600). A socket file nobody answers on is a
/// leftover of a killed daemon and is replaced; one that answers belongs to
/// a running daemon and is an error.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{}: another sgctl daemon serves this socket; give this one its own with --socket",
                    path.display()
                ),
            )));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts plugin connections: one JSON request line each, answered by the
/// daemon's loop (which serialises them with reloads).
async fn serve_socket(listener: tokio::net::UnixListener, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("endpoint socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut limited = tokio::io::BufReader::new(read.take(endpoints::MAX_REQUEST_BYTES));
            let answer = match limited.read_line(&mut line).await {
                Err(e) => Response::error(format!("reading the request: {e}")),
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Err(e) => Response::error(format!("unreadable request: {e}")),
                    Ok(request) => {
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        if tx.send(Event::Endpoint(request, reply)).is_err() {
                            Response::error("the daemon is stopping")
                        } else {
                            answer
                                .await
                                .unwrap_or_else(|_| Response::error("the daemon is stopping"))
                        }
                    }
                },
            };
            let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

fn spawn_signal(tx: &mpsc::UnboundedSender<Event>, kind: SignalKind, event: Event) -> Result<()> {
    let mut stream = signal(kind).map_err(DaemonError::Signal)?;
    let tx = tx.clone();
    let make = move || match &event {
        Event::Reload(w) => Event::Reload(w),
        Event::Shutdown(w) => Event::Shutdown(w),
        _ => unreachable!("signals reload or stop"),
    };
    tokio::spawn(async move {
        while stream.recv().await.is_some() {
            if tx.send(make()).is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn spawn_tick(tx: &mpsc::UnboundedSender<Event>, every: Duration, make: fn() -> Event) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.tick().await;
        loop {
            interval.tick().await;
            if tx.send(make()).is_err() {
                break;
            }
        }
    });
}

/// inotify on the config's directory (editors replace files by rename).
fn spawn_config_watch(tx: &mpsc::UnboundedSender<Event>, config: &Path) -> Result<()> {
    use inotify::WatchMask;
    let dir = config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name: OsString = config
        .file_name()
        .ok_or(DaemonError::ConfigName)?
        .to_owned();
    let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE;
    spawn_dir_watch(tx, dir, mask, move |entry| {
        (entry == Some(name.as_os_str())).then_some(Event::Reload("config changed"))
    })
}

/// inotify on /run/netns: namespaces created or deleted.
fn spawn_netns_watch(tx: &mpsc::UnboundedSender<Event>) -> Result<()> {
    use inotify::WatchMask;
    std::fs::create_dir_all(NETNS_RUN_DIR)
        .map_err(crate::sys::PathError::on("creating", NETNS_RUN_DIR))?;
    let mask = WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO;
    spawn_dir_watch(tx, Path::new(NETNS_RUN_DIR), mask, |entry| {
        let name = entry
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some(Event::Reconcile(format!("netns {name}")))
    })
}

/// Watches `dir` for `mask`; each event's entry name becomes the event
/// `event` makes of it (none: ignored), until the daemon stops listening.
fn spawn_dir_watch(
    tx: &mpsc::UnboundedSender<Event>,
    dir: &Path,
    mask: inotify::WatchMask,
    event: impl Fn(Option<&std::ffi::OsStr>) -> Option<Event> + Send + 'static,
) -> Result<()> {
    let inotify = inotify::Inotify::init().map_err(DaemonError::Inotify)?;
    inotify
        .watches()
        .add(dir, mask)
        .map_err(crate::sys::PathError::on("watching", dir.to_path_buf()))?;
    let tx = tx.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let Ok(mut events) = inotify.into_event_stream([0u8; 4096]) else {
            return;
        };
        while let Some(Ok(e)) = events.next().await {
            if let Some(ev) = event(e.name.as_deref())
                && tx.send(ev).is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

/// A namespace's netlink watcher.
struct Watcher {
    task: tokio::task::JoinHandle<()>,
    /// The namespace its socket is bound to.
    netns: NsIdent,
}

/// When to try again to open a namespace's watcher.
struct Retry {
    wait: Duration,
    at: tokio::time::Instant,
}

/// First and longest wait before a failed link watcher is reopened.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Adds one to the per-namespace counter `field` of the daemon's state
/// (published with the next reconcile, read live by the metrics).
fn count(
    state: &Mutex<DaemonState>,
    field: fn(&mut DaemonState) -> &mut BTreeMap<String, u64>,
    netns: &str,
) {
    let mut s = state.lock().expect("state lock");
    *field(&mut s).entry(netns.to_string()).or_default() += 1;
}

/// Turns a namespace's link and address changes into reconciles for as long
/// as the namespace exists.
///
/// Events the kernel dropped (socket buffer full) mean anything may have
/// changed: a full reconcile, counted and logged. A socket that fails is
/// logged, counted and reopened after a backoff, followed by a reconcile for
/// what happened meanwhile. The namespace being gone or replaced ends the
/// watcher normally (the daemon's next reconcile watches a new one).
async fn keep_watching(
    mut socket: LinkSocket,
    netns: Option<String>,
    tx: mpsc::UnboundedSender<Event>,
    state: Arc<Mutex<DaemonState>>,
) {
    let label = netns.clone().unwrap_or_else(|| "host".into());
    let watched = socket.netns();
    if let Ok(bytes) = socket.rcvbuf() {
        info!(netns = %label, rcvbuf = bytes, "watching links and addresses");
    }
    let mut backoff = WATCH_BACKOFF_MIN;
    loop {
        let why = match socket.next().await {
            Ok(Notice::Changed) => {
                backoff = WATCH_BACKOFF_MIN;
                format!("links in {label}")
            }
            Ok(Notice::Lost) => {
                backoff = WATCH_BACKOFF_MIN;
                warn!(netns = %label, "netlink events lost (socket buffer overflowed); reconciling");
                count(&state, |s| &mut s.netlink_overflows, &label);
                format!("netlink events lost in {label}")
            }
            Err(e) => {
                count(&state, |s| &mut s.link_watch_failures, &label);
                error!(
                    netns = %label,
                    "watching links failed, reopening in {backoff:?}: {}",
                    Chain(&e)
                );
                socket = loop {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                    match LinkSocket::open(netns.as_deref()) {
                        Ok(s) if s.netns() == watched => break s,
                        Ok(_) => {
                            info!(netns = %label, "namespace replaced; its new instance gets a new watcher");
                            let _ = tx.send(Event::Reconcile(format!("netns {label} replaced")));
                            return;
                        }
                        Err(e) if e.is_netns_gone() => {
                            info!(netns = %label, "namespace gone; its link watcher ends");
                            return;
                        }
                        Err(e) => error!(
                            netns = %label,
                            "reopening the link watcher failed, retrying in {backoff:?}: {}",
                            Chain(&e)
                        ),
                    }
                };
                info!(netns = %label, "link watcher reopened");
                // Changes while the socket was down went unseen.
                format!("link watcher of {label} reopened")
            }
        };
        if tx.send(Event::Reconcile(why)).is_err() {
            return;
        }
    }
}

/// The daemon's flow-log file, rotated by size (3 old files kept).
struct FlowLog {
    path: PathBuf,
    max_bytes: u64,
    account_id: String,
    collector: Option<Collector>,
    /// Events older than this (CLOCK_MONOTONIC_COARSE ns: the daemon's
    /// start) were left in the ring buffers by an earlier reader's absence;
    /// they are not this daemon's to report.
    since_ns: u64,
}

impl FlowLog {
    fn new(path: PathBuf, max_bytes: u64, account_id: &str, since_ns: u64) -> Result<FlowLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(crate::sys::PathError::on("creating", dir.to_path_buf()))?;
        }
        Ok(FlowLog {
            path,
            max_bytes,
            account_id: account_id.into(),
            collector: None,
            since_ns,
        })
    }

    fn reopen(&mut self, ifaces: &[IfaceId]) {
        // Finish the current window before the set of interfaces changes.
        self.window();
        self.collector = match Collector::open_since(ifaces, &self.account_id, self.since_ns) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!("flow logs paused: {}", Chain(&e));
                None
            }
        };
    }

    fn drain(&mut self) {
        if let Some(c) = &mut self.collector {
            c.drain();
        }
    }

    fn window(&mut self) {
        let Some(c) = &mut self.collector else { return };
        let records = c.flush();
        if let Err(e) = self.write(&records) {
            warn!("writing flow logs to {}: {e}", self.path.display());
        }
    }

    fn write(&self, records: &[crate::agent::flowlog::FlowRecord]) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > self.max_bytes) {
            for i in (1..3).rev() {
                let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        let mut f = crate::sys::private_dir::open_with_mode(
            &self.path,
            crate::sys::private_dir::FLOW_LOG_MODE,
            std::fs::OpenOptions::new().append(true),
        )?;
        for r in records {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::flowlog::FlowRecord;

    #[test]
    fn flow_log_rotates_by_size_and_keeps_three_old_files() {
        let dir = std::env::temp_dir().join(format!("sg-flowlog-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("flows.log");
        let log = FlowLog::new(path.clone(), 100, "-", 0).unwrap();
        let record = FlowRecord {
            account_id: "-".into(),
            interface_id: "eth0".into(),
            flow: None,
            packets: 0,
            bytes: 0,
            start: 1,
            end: 2,
            action: None,
            log_status: "NODATA",
        };
        for _ in 0..6 {
            // Each write is ~40 bytes; the file passes 100 bytes every third write.
            log.write(&[record.clone(), record.clone()]).unwrap();
        }
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        assert!(lines(&path) >= 1, "current file written");
        assert!(lines(&rotated(&path, 1)) >= 2, "one rotation happened");
        assert!(!rotated(&path, 4).exists(), "at most three old files");
        let total: usize = [
            path.clone(),
            rotated(&path, 1),
            rotated(&path, 2),
            rotated(&path, 3),
        ]
        .iter()
        .map(|p| lines(p))
        .sum();
        assert_eq!(total, 12, "no record lost by rotating");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
