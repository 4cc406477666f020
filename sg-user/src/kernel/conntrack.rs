//! The connection tables of attached interfaces: the host-wide tables of
//! the data plane, whose keys start with the endpoint id. List, flush,
//! reclaim expired entries, revoke flows a new policy no longer allows.
//!
//! Entries removed here are counted in the endpoint's user slot of
//! `SG_CT_COUNT` (the data path adds and its own reclaim subtracts in the
//! kernel slot; see `sg_common::endpoint`), so the per-interface limit keeps
//! counting what is really in the table.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use sg_common::{
    Direction, IfaceConfig,
    conntrack::{CtEntry, CtKeyV4, CtKeyV6, CtState},
    endpoint::{CT_COUNT_KERNEL, CT_COUNT_USER, ct_count_index},
    names,
};

use thiserror::Error;

use crate::{
    compile::{self, CompiledPolicy},
    kernel::pins::{self, IfaceId},
};

/// A connection table or count that could not be read or changed, with
/// the interface it was about.
#[derive(Debug, Error)]
#[error("{iface}: {what}")]
pub struct ConntrackError {
    /// What was being done ("listing its connections", ...).
    pub what: &'static str,
    pub iface: IfaceId,
    #[source]
    pub source: Box<MapError>,
}

/// Wraps a map error of an operation `what` on `iface`'s entries.
fn about<'a>(
    what: &'static str,
    iface: &'a IfaceId,
) -> impl FnOnce(MapError) -> ConntrackError + 'a {
    move |source| ConntrackError {
        what,
        iface: iface.clone(),
        source: Box::new(source),
    }
}

/// One tracked flow, for display.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Flow {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    /// `inbound` when the remote side opened it.
    pub opened: &'static str,
    pub state: &'static str,
    pub idle_s: u64,
    pub age_s: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub generation: u32,
    #[serde(skip)]
    pub rule: u32,
    #[serde(skip)]
    expired: bool,
}

/// CLOCK_MONOTONIC_COARSE in ns, the clock of `bpf_ktime_get_coarse_ns`
/// that the data path stamps connections with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

type Table<K> = HashMap<MapData, K, CtEntry>;

fn open<K: aya::Pod>(name: &str) -> Result<Table<K>, MapError> {
    let data = MapData::from_pin(Path::new(pins::MAPS_DIR).join(name))?;
    HashMap::try_from(Map::HashMap(data))
}

fn open_count() -> Result<Array<MapData, u64>, MapError> {
    let data = MapData::from_pin(Path::new(pins::MAPS_DIR).join(names::MAP_CT_COUNT))?;
    Array::try_from(Map::Array(data))
}

/// The parts of a conntrack key that `Flow` shows.
trait CtKey: aya::Pod {
    fn endpoints(&self) -> (IpAddr, IpAddr, [u8; 2], [u8; 2], u8);
    fn endpoint(&self) -> u32;
}

/// The same fields in both families' keys (addresses of 4 or 16 bytes).
macro_rules! impl_ct_key {
    ($($key:ty),*) => {$(
        impl CtKey for $key {
            fn endpoint(&self) -> u32 {
                self.endpoint
            }

            fn endpoints(&self) -> (IpAddr, IpAddr, [u8; 2], [u8; 2], u8) {
                (
                    self.local.into(),
                    self.remote.into(),
                    self.local_port,
                    self.remote_port,
                    self.proto,
                )
            }
        }
    )*};
}

impl_ct_key!(CtKeyV4, CtKeyV6);

fn flow(key: &impl CtKey, e: &CtEntry, now: u64, cfg: &IfaceConfig) -> Flow {
    let (local, remote, lp, rp, proto) = key.endpoints();
    let idle = now.saturating_sub(e.last_seen_ns());
    let slot = sg_common::conntrack::timeout_slot(e.state, e.flags);
    let timeout = cfg.timeouts_ns.get(slot).copied().unwrap_or(0);
    Flow {
        local,
        remote,
        local_port: u16::from_be_bytes(lp),
        remote_port: u16::from_be_bytes(rp),
        proto,
        opened: if e.origin == Direction::Inbound as u8 {
            "inbound"
        } else {
            "outbound"
        },
        state: CtState::from_u8(e.state).map_or("?", CtState::name),
        idle_s: idle / 1_000_000_000,
        age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
        packets_in: e.inbound.packets,
        packets_out: e.outbound.packets,
        bytes_in: e.inbound.bytes,
        bytes_out: e.outbound.bytes,
        generation: e.generation,
        rule: e.rule,
        expired: idle >= timeout,
    }
}

/// Every entry of endpoint `cfg.endpoint` in one table, expired ones
/// included, with its key.
fn entries<K: CtKey>(table: &Table<K>, cfg: &IfaceConfig) -> Result<Vec<(K, Flow)>, MapError> {
    let now = monotonic_ns();
    let mut out = Vec::new();
    for item in table.iter() {
        let (k, e) = item?;
        if k.endpoint() == cfg.endpoint {
            out.push((k, flow(&k, &e, now, cfg)));
        }
    }
    Ok(out)
}

/// Both host-wide tables.
struct Tables {
    v4: Table<CtKeyV4>,
    v6: Table<CtKeyV6>,
}

impl Tables {
    fn open() -> Result<Tables, MapError> {
        Ok(Tables {
            v4: open(names::MAP_CT_V4)?,
            v6: open(names::MAP_CT_V6)?,
        })
    }
}

/// Every entry of an interface (settings `cfg`, from its endpoint),
/// expired ones not yet reclaimed included.
pub fn list_all(iface: &IfaceId, cfg: &IfaceConfig) -> Result<Vec<Flow>, ConntrackError> {
    let all = || -> Result<Vec<Flow>, MapError> {
        let t = Tables::open()?;
        let v4 = entries(&t.v4, cfg)?.into_iter().map(|(_, f)| f);
        let v6 = entries(&t.v6, cfg)?.into_iter().map(|(_, f)| f);
        Ok(v4.chain(v6).collect())
    };
    all().map_err(about("listing its connections", iface))
}

/// Live flows of an interface (expired entries not yet reclaimed are hidden).
pub fn list(iface: &IfaceId, cfg: &IfaceConfig) -> Result<Vec<Flow>, ConntrackError> {
    Ok(list_all(iface, cfg)?
        .into_iter()
        .filter(|f| !f.expired)
        .collect())
}

/// Entries endpoint `endpoint` holds (live or not yet reclaimed), and its
/// limit (the capacity of the host-wide table when it has none).
pub fn usage(iface: &IfaceId, cfg: &IfaceConfig) -> Result<(usize, u32), ConntrackError> {
    let capacity = MapData::from_pin(Path::new(pins::MAPS_DIR).join(names::MAP_CT_V4))
        .and_then(|map| map.info())
        .map_err(about("reading the capacity of the connection table", iface))?
        .max_entries();
    let limit = if cfg.ct_limit == 0 {
        capacity
    } else {
        cfg.ct_limit.min(capacity)
    };
    Ok((in_use(iface, cfg.endpoint)? as usize, limit))
}

/// Entries of `endpoint` (`iface`'s) by the counts the data path keeps.
pub fn in_use(iface: &IfaceId, endpoint: u32) -> Result<u64, ConntrackError> {
    let count = || -> Result<u64, MapError> {
        let counts = open_count()?;
        let kernel = counts.get(&ct_count_index(endpoint, CT_COUNT_KERNEL), 0)?;
        let user = counts.get(&ct_count_index(endpoint, CT_COUNT_USER), 0)?;
        Ok(kernel.wrapping_sub(user))
    };
    count().map_err(about("counting its connections", iface))
}

/// Records that user space removed `n` entries of `endpoint`.
fn add_user_count(endpoint: u32, n: u64) -> Result<(), MapError> {
    if n == 0 {
        return Ok(());
    }
    let mut counts = open_count()?;
    let index = ct_count_index(endpoint, CT_COUNT_USER);
    let user = counts.get(&index, 0)?;
    counts.set(index, user.wrapping_add(n), 0)
}

/// Adds entries user space put into the tables (an upgrade copying legacy
/// entries) to `endpoint`'s count. Only while its interface is not yet
/// linked (the data path does not write the slot meanwhile).
pub fn add_kernel_count(iface: &IfaceId, endpoint: u32, n: u64) -> Result<(), ConntrackError> {
    let add = || -> Result<(), MapError> {
        let mut counts = open_count()?;
        let index = ct_count_index(endpoint, CT_COUNT_KERNEL);
        let kernel = counts.get(&index, 0)?;
        counts.set(index, kernel.wrapping_add(n), 0)
    };
    add().map_err(about("counting its copied connections", iface))
}

/// Removes the entries `doomed` selects; returns how many.
fn remove_where(cfg: &IfaceConfig, doomed: impl Fn(&Flow) -> bool) -> Result<usize, MapError> {
    let mut t = Tables::open()?;
    let mut n = 0;
    // An entry already gone (the data path may replace it) is not an error.
    for (k, _) in entries(&t.v4, cfg)?.iter().filter(|(_, f)| doomed(f)) {
        n += usize::from(t.v4.remove(k).is_ok());
    }
    for (k, _) in entries(&t.v6, cfg)?.iter().filter(|(_, f)| doomed(f)) {
        n += usize::from(t.v6.remove(k).is_ok());
    }
    add_user_count(cfg.endpoint, n as u64)?;
    Ok(n)
}

/// Deletes every entry of an interface.
pub fn flush(iface: &IfaceId, cfg: &IfaceConfig) -> Result<usize, ConntrackError> {
    remove_where(cfg, |_| true).map_err(about("flushing its connections", iface))
}

/// Reclaims an interface's entries idle past their timeout (the data path
/// already treats them as absent).
pub fn reclaim_expired(iface: &IfaceId, cfg: &IfaceConfig) -> Result<usize, ConntrackError> {
    remove_where(cfg, |f| f.expired).map_err(about("reclaiming its expired connections", iface))
}

/// Removes the keys of `table` that `pick` selects; returns how many went
/// (an entry already gone is not an error: the data path may replace it).
fn remove_keys<K: CtKey>(table: &mut Table<K>, pick: impl Fn(&K) -> bool) -> usize {
    let keys: Vec<K> = table
        .keys()
        .filter_map(Result::ok)
        .filter(|k| pick(k))
        .collect();
    keys.iter().filter(|k| table.remove(k).is_ok()).count()
}

/// Deletes every entry of endpoint id `endpoint` (of `iface`, which is gone
/// or being registered anew) and zeroes its counts. Nothing to do before the
/// data plane exists.
pub fn remove_endpoint_flows(iface: &IfaceId, endpoint: u32) -> Result<usize, ConntrackError> {
    let Ok(mut t) = Tables::open() else {
        return Ok(0);
    };
    let n = remove_keys(&mut t.v4, |k| k.endpoint == endpoint)
        + remove_keys(&mut t.v6, |k| k.endpoint == endpoint);
    let zero = || -> Result<(), MapError> {
        let mut counts = open_count()?;
        for slot in [CT_COUNT_KERNEL, CT_COUNT_USER] {
            counts.set(ct_count_index(endpoint, slot), 0, 0)?;
        }
        Ok(())
    };
    zero().map_err(about("removing its connections", iface))?;
    Ok(n)
}

/// Entries per endpoint id across both tables (one walk; for metrics and
/// status of many interfaces).
pub fn entries_by_endpoint() -> Result<BTreeMap<u32, usize>, MapError> {
    let t = Tables::open()?;
    let mut out = BTreeMap::new();
    for k in t.v4.keys() {
        *out.entry(k?.endpoint).or_default() += 1;
    }
    for k in t.v6.keys() {
        *out.entry(k?.endpoint).or_default() += 1;
    }
    Ok(out)
}

/// The policy "port" of a flow's opening packet: destination port, or the
/// ICMP echo request's type for echo flows.
fn opening_port(f: &Flow) -> u16 {
    let inbound = f.opened == "inbound";
    match f.proto {
        1 => 8 << 8,
        58 => 128 << 8,
        6 | 17 if inbound => f.local_port,
        6 | 17 => f.remote_port,
        _ => 0,
    }
}

/// `--revoke`: deletes tracked flows whose opening packet `policy` would no
/// longer allow (OpenStack Neutron's behaviour; AWS keeps them).
pub fn revoke(
    iface: &IfaceId,
    cfg: &IfaceConfig,
    policy: &CompiledPolicy,
) -> Result<usize, ConntrackError> {
    remove_where(cfg, |f| {
        let direction = if f.opened == "inbound" {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        compile::lookup(policy, direction, f.remote, f.proto, opening_port(f)).is_none()
    })
    .map_err(about("revoking its flows", iface))
}
