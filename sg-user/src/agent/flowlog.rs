//! Flow logs in the AWS VPC Flow Logs default format (version 2):
//!
//! `version account-id interface-id srcaddr dstaddr srcport dstport protocol
//! packets bytes start end action log-status`
//!
//! Records are aggregated per flow and direction over a capture window from
//! two sources: kernel events (new untracked flows' packets, drops) read from
//! the data plane's `SG_EVENTS` ring buffer (one per host; each event names
//! its endpoint), and the growth of tracked flows' counters in the
//! connection table. One reader per host: two collectors at once (the
//! daemon and `sgctl flows`) would share the events between them. When the kernel could not report some
//! events (rate limit, full buffer), that interface's records of the window
//! say `SKIPDATA`; an interface with no traffic gets one `NODATA` record.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Map, MapData, MapError, RingBuf};
use sg_common::{Direction, Reason, events::FlowEvent};
use thiserror::Error;

use crate::{kernel::conntrack, kernel::pins::IfaceId};

/// The field names of the version 2 format, in order.
pub const V2_FIELDS: [&str; 14] = [
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Action {
    #[serde(rename = "ACCEPT")]
    Accept,
    #[serde(rename = "REJECT")]
    Reject,
}

/// One flow-log line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowRecord {
    pub account_id: String,
    pub interface_id: String,
    /// `None` in a NODATA record.
    pub flow: Option<FlowKey>,
    pub packets: u64,
    pub bytes: u64,
    pub start: u64,
    pub end: u64,
    pub action: Option<Action>,
    pub log_status: &'static str,
}

/// The 5-tuple of one direction of a flow, as VPC Flow Logs report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// VPC Flow Logs report ports only for TCP and UDP; ICMP and other
/// protocols show 0 (the echo identifier or type/code are not ports).
fn ports_of(proto: u8, sport: u16, dport: u16) -> (u16, u16) {
    if proto == 6 || proto == 17 {
        (sport, dport)
    } else {
        (0, 0)
    }
}

impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dash = || "-".to_string();
        let (src, dst, sport, dport, proto) = match &self.flow {
            Some(k) => {
                let (sport, dport) = ports_of(k.proto, k.sport, k.dport);
                (
                    k.src.to_string(),
                    k.dst.to_string(),
                    sport.to_string(),
                    dport.to_string(),
                    k.proto.to_string(),
                )
            }
            None => (dash(), dash(), dash(), dash(), dash()),
        };
        let (packets, bytes, action) = match self.action {
            Some(a) => (
                self.packets.to_string(),
                self.bytes.to_string(),
                if a == Action::Accept {
                    "ACCEPT"
                } else {
                    "REJECT"
                }
                .to_string(),
            ),
            None => (dash(), dash(), dash()),
        };
        write!(
            f,
            "2 {} {} {src} {dst} {sport} {dport} {proto} {packets} {bytes} {} {} {action} {}",
            self.account_id, self.interface_id, self.start, self.end, self.log_status
        )
    }
}

#[derive(Default)]
struct Agg {
    packets: u64,
    bytes: u64,
}

/// Collects one interface's events and conntrack growth.
struct Source {
    id: IfaceId,
    /// Its endpoint id (events carry it).
    endpoint: u32,
    /// The kernel's count of unreported events at the last window.
    lost_seen: u64,
    /// Counters of tracked flows at the last window: (key, direction) → (packets, bytes).
    ct_seen: HashMap<(FlowKey, u8), (u64, u64)>,
    window: BTreeMap<(FlowKey, Action), Agg>,
}

/// Reads flow events of attached interfaces and turns them into records.
pub struct Collector {
    ring: RingBuf<MapData>,
    /// The lock that keeps the ring this collector's (none: ring 0, shared).
    _claim: Option<std::fs::File>,
    sources: Vec<Source>,
    pub account_id: String,
    window_start: u64,
    /// Events stamped earlier than this (CLOCK_MONOTONIC_COARSE ns) are
    /// skipped: they waited in the ring buffer while nobody read it, and the
    /// window's start and end times would misdate them.
    since_ns: u64,
    /// Events skipped for being older than `since_ns`.
    pub skipped_stale: u64,
}

/// Claims a free event ring (a lock file per ring under the state
/// directory, held while the collector lives); ring 0 when all are taken.
fn claim_ring() -> (u32, Option<std::fs::File>) {
    use std::os::fd::AsRawFd;
    let _ = crate::agent::lock::ensure_state_dir();
    for ring in 1..sg_common::events::EVENT_RINGS {
        let path =
            std::path::Path::new(crate::agent::lock::STATE_DIR).join(format!("events-{ring}.lock"));
        let Ok(file) = crate::sys::private_dir::open_with_mode(
            &path,
            crate::sys::private_dir::STATE_FILE_MODE,
            std::fs::OpenOptions::new().write(true).truncate(false),
        ) else {
            continue;
        };
        // SAFETY: a valid fd; flock(2) has no memory preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (ring, Some(file));
        }
    }
    tracing::warn!("every flow-log event ring is taken; sharing ring 0 with other readers");
    (0, None)
}

/// Why flow logs could not be collected.
#[derive(Debug, Error)]
pub enum FlowLogError {
    #[error("no event ring buffer pinned at {path}; is anything attached (`sgctl status`)?")]
    NoRing {
        path: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("opening the event ring buffer {path}")]
    Ring {
        path: String,
        #[source]
        source: Box<MapError>,
    },
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

crate::from_kernel_errors!(FlowLogError);

/// Points the endpoints of `ifaces` at event ring `ring`.
fn point_at_ring(ifaces: &[IfaceId], ring: u32) -> Result<(), FlowLogError> {
    let mut session = crate::kernel::dataplane::Session::open_or_load(
        &crate::kernel::loader::AttachOptions::default().load_options(),
    )?;
    for id in ifaces {
        if let Some(ep) = session.dp.endpoint_of(id)?
            && ep.cfg.event_ring != ring
        {
            let cfg = sg_common::IfaceConfig {
                event_ring: ring,
                ..ep.cfg
            };
            session.dp.maps.write_endpoint(ep.key, &cfg)?;
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Collector {
    /// Opens the ring buffers of `ifaces` (which must be attached); events
    /// from before this call are not reported.
    ///
    /// # Errors
    /// An interface has no event ring buffer pinned or it cannot be read.
    pub fn open(ifaces: &[IfaceId], account_id: &str) -> Result<Collector, FlowLogError> {
        Self::open_since(ifaces, account_id, conntrack::monotonic_ns())
    }

    /// Like [`Collector::open`], reporting only events stamped at or after
    /// `since_ns` (CLOCK_MONOTONIC_COARSE, e.g. when a daemon started).
    ///
    /// # Errors
    /// As [`Collector::open`].
    pub fn open_since(
        ifaces: &[IfaceId],
        account_id: &str,
        since_ns: u64,
    ) -> Result<Collector, FlowLogError> {
        let mut sources = Vec::new();
        let (ring_index, claim) = claim_ring();
        let path = std::path::Path::new(crate::kernel::pins::MAPS_DIR)
            .join(sg_common::events::event_ring_name(ring_index));
        let ring = MapData::from_pin(&path).map_err(|source| FlowLogError::NoRing {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        let ring = RingBuf::try_from(Map::RingBuf(ring)).map_err(|source| FlowLogError::Ring {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        for id in ifaces {
            let (_, ep) = crate::kernel::loader::endpoint(id)?;
            let lost_seen = crate::kernel::loader::read_events_lost(id)?;
            let mut source = Source {
                id: id.clone(),
                endpoint: ep.cfg.endpoint,
                lost_seen,
                ct_seen: HashMap::new(),
                window: BTreeMap::new(),
            };
            // Flows that existed before we started are not this window's.
            source.ct_growth();
            source.window.clear();
            sources.push(source);
        }
        point_at_ring(ifaces, ring_index)?;
        let mut collector = Collector {
            ring,
            _claim: claim,
            sources,
            account_id: account_id.to_string(),
            window_start: unix_now(),
            since_ns,
            skipped_stale: 0,
        };
        if ring_index != 0 {
            collector.drain_shared();
        }
        Ok(collector)
    }

    /// File descriptors to wait on (readable when events are pending).
    pub fn fds(&self) -> Vec<RawFd> {
        vec![self.ring.as_raw_fd()]
    }

    /// Moves every pending event into the current window (events of
    /// interfaces this collector does not follow are dropped).
    pub fn drain(&mut self) {
        loop {
            let e: FlowEvent = {
                let Some(item) = self.ring.next() else { break };
                if item.len() < std::mem::size_of::<FlowEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a FlowEvent; read unaligned.
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) }
            };
            self.take(&e);
        }
    }

    /// Events of the shared ring 0 (where the interfaces' events went before
    /// this collector claimed its own ring): those of followed interfaces
    /// are taken like the rest (older ones skipped as stale); ring 0 has no
    /// other reader.
    fn drain_shared(&mut self) {
        let path = std::path::Path::new(crate::kernel::pins::MAPS_DIR)
            .join(sg_common::events::event_ring_name(0));
        let Ok(map) = MapData::from_pin(&path) else {
            return;
        };
        let Ok(mut ring) = RingBuf::try_from(Map::RingBuf(map)) else {
            return;
        };
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a FlowEvent; read unaligned.
            let e: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            self.take(&e);
        }
    }

    /// Puts one event into the current window (if its interface is followed).
    fn take(&mut self, e: &FlowEvent) {
        let Some(s) = self.sources.iter_mut().find(|s| s.endpoint == e.endpoint) else {
            return;
        };
        if e.ts_ns < self.since_ns {
            self.skipped_stale += 1;
            return;
        }
        let Some(reason) = Reason::from_code(e.reason as u32) else {
            return;
        };
        // Tracked flows are counted from the connection table.
        if !reason.is_drop() && e.tracked != 0 {
            return;
        }
        let key = event_key(e);
        let action = if reason.is_drop() {
            Action::Reject
        } else {
            Action::Accept
        };
        let agg = s.window.entry((key, action)).or_default();
        agg.packets += 1;
        agg.bytes += u64::from(e.bytes);
    }

    /// Ends the current window: records of every interface, in order.
    pub fn flush(&mut self) -> Vec<FlowRecord> {
        self.drain();
        let (start, end) = (self.window_start, unix_now().max(self.window_start));
        self.window_start = end;
        let mut out = Vec::new();
        for s in &mut self.sources {
            s.ct_growth();
            // Unreadable (detached meanwhile): nothing new to report.
            let lost = crate::kernel::loader::read_events_lost(&s.id).unwrap_or(s.lost_seen);
            let status = if lost > s.lost_seen { "SKIPDATA" } else { "OK" };
            s.lost_seen = lost;
            let window = std::mem::take(&mut s.window);
            let record = |flow, action, packets, bytes| FlowRecord {
                account_id: self.account_id.clone(),
                interface_id: s.id.to_string(),
                flow,
                packets,
                bytes,
                start,
                end,
                action,
                log_status: status,
            };
            if window.is_empty() {
                out.push(FlowRecord {
                    log_status: if status == "OK" { "NODATA" } else { status },
                    ..record(None, None, 0, 0)
                });
            }
            for ((key, action), agg) in window {
                out.push(record(Some(key), Some(action), agg.packets, agg.bytes));
            }
        }
        out
    }

    /// Waits until events are pending or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = self
            .fds()
            .into_iter()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfd.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as i32,
            )
        };
    }
}

impl Source {
    /// Adds the growth of tracked flows' counters since the last call.
    fn ct_growth(&mut self) {
        let Ok((cfg, _)) = crate::kernel::loader::settings(&self.id) else {
            return;
        };
        let Ok(flows) = conntrack::list_all(&self.id, &cfg) else {
            return;
        };
        let mut seen = HashMap::new();
        for f in flows {
            for (direction, packets, bytes) in [
                (Direction::Inbound, f.packets_in, f.bytes_in),
                (Direction::Outbound, f.packets_out, f.bytes_out),
            ] {
                let key = if direction == Direction::Inbound {
                    FlowKey {
                        src: f.remote,
                        dst: f.local,
                        sport: f.remote_port,
                        dport: f.local_port,
                        proto: f.proto,
                    }
                } else {
                    FlowKey {
                        src: f.local,
                        dst: f.remote,
                        sport: f.local_port,
                        dport: f.remote_port,
                        proto: f.proto,
                    }
                };
                let slot = (key, direction as u8);
                let (p0, b0) = self.ct_seen.get(&slot).copied().unwrap_or((0, 0));
                // A reused key (new flow) starts again from zero.
                let (dp, db) = if packets >= p0 {
                    (packets - p0, bytes.saturating_sub(b0))
                } else {
                    (packets, bytes)
                };
                if dp > 0 {
                    let agg = self.window.entry((key, Action::Accept)).or_default();
                    agg.packets += dp;
                    agg.bytes += db;
                }
                seen.insert(slot, (packets, bytes));
            }
        }
        self.ct_seen = seen;
    }
}

fn event_key(e: &FlowEvent) -> FlowKey {
    let addr = |a: [u8; 16]| -> IpAddr {
        if e.ipv6 != 0 {
            a.into()
        } else {
            IpAddr::from([a[0], a[1], a[2], a[3]])
        }
    };
    FlowKey {
        src: addr(e.src),
        dst: addr(e.dst),
        sport: u16::from_be_bytes(e.sport),
        dport: u16::from_be_bytes(e.dport),
        proto: e.proto,
    }
}

/// Parses a version 2 line back into its fields (for tests and tools).
pub fn parse_v2(line: &str) -> Option<BTreeMap<&'static str, String>> {
    let parts: Vec<&str> = line.split(' ').collect();
    (parts.len() == V2_FIELDS.len() && parts[0] == "2").then(|| {
        V2_FIELDS
            .iter()
            .copied()
            .zip(parts.into_iter().map(str::to_string))
            .collect()
    })
}
