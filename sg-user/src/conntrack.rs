//! The connection tables of attached interfaces, from their pins: list,
//! flush, reclaim expired entries, revoke flows a new policy no longer allows.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError};
use sg_common::{
    Direction, IfaceConfig,
    conntrack::{CtEntry, CtKeyV4, CtKeyV6, CtState},
    names,
};

use crate::{
    compile::{self, CompiledPolicy},
    pins::IfaceId,
};

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

fn open<K: aya::Pod>(iface: &IfaceId, name: &str) -> Result<Table<K>, MapError> {
    let data = MapData::from_pin(iface.dir().join(name))?;
    HashMap::try_from(Map::HashMap(data))
}

/// The parts of a conntrack key that `Flow` shows.
trait CtKey: aya::Pod {
    fn endpoints(&self) -> (IpAddr, IpAddr, [u8; 2], [u8; 2], u8);
}

impl CtKey for CtKeyV4 {
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

impl CtKey for CtKeyV6 {
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

fn flow(key: &impl CtKey, e: &CtEntry, now: u64, cfg: &IfaceConfig) -> Flow {
    let (local, remote, lp, rp, proto) = key.endpoints();
    let idle = now.saturating_sub(e.last_seen_ns);
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
        packets_in: e.packets[0],
        packets_out: e.packets[1],
        bytes_in: e.bytes[0],
        bytes_out: e.bytes[1],
        generation: e.generation,
        rule: e.rule,
        expired: idle >= timeout,
    }
}

/// Every entry of one table, expired ones included, with its key.
fn entries<K: CtKey>(table: &Table<K>, cfg: &IfaceConfig) -> Result<Vec<(K, Flow)>, MapError> {
    let now = monotonic_ns();
    table
        .iter()
        .map(|item| item.map(|(k, e)| (k, flow(&k, &e, now, cfg))))
        .collect()
}

/// Both tables of an interface.
struct Tables {
    v4: Table<CtKeyV4>,
    v6: Table<CtKeyV6>,
}

impl Tables {
    fn open(iface: &IfaceId) -> Result<Tables, MapError> {
        Ok(Tables {
            v4: open(iface, names::MAP_CT_V4)?,
            v6: open(iface, names::MAP_CT_V6)?,
        })
    }
}

/// Every entry of an interface, expired ones not yet reclaimed included.
pub fn list_all(iface: &IfaceId, cfg: &IfaceConfig) -> Result<Vec<Flow>, MapError> {
    let t = Tables::open(iface)?;
    let v4 = entries(&t.v4, cfg)?.into_iter().map(|(_, f)| f);
    let v6 = entries(&t.v6, cfg)?.into_iter().map(|(_, f)| f);
    Ok(v4.chain(v6).collect())
}

/// Live flows of an interface (expired entries not yet reclaimed are hidden).
pub fn list(iface: &IfaceId, cfg: &IfaceConfig) -> Result<Vec<Flow>, MapError> {
    let t = Tables::open(iface)?;
    let v4 = entries(&t.v4, cfg)?.into_iter().map(|(_, f)| f);
    let v6 = entries(&t.v6, cfg)?.into_iter().map(|(_, f)| f);
    Ok(v4.chain(v6).filter(|f| !f.expired).collect())
}

/// Entries in use (live or not yet reclaimed) and the capacity of each table.
pub fn usage(iface: &IfaceId) -> Result<(usize, u32), MapError> {
    let capacity = MapData::from_pin(iface.dir().join(names::MAP_CT_V4))?
        .info()?
        .max_entries();
    let t = Tables::open(iface)?;
    Ok((t.v4.keys().count() + t.v6.keys().count(), capacity))
}

/// Removes the entries `doomed` selects; returns how many.
fn remove_where(
    iface: &IfaceId,
    cfg: &IfaceConfig,
    doomed: impl Fn(&Flow) -> bool,
) -> Result<usize, MapError> {
    let mut t = Tables::open(iface)?;
    let mut n = 0;
    // An entry already gone (the data path may replace it) is not an error.
    for (k, _) in entries(&t.v4, cfg)?.iter().filter(|(_, f)| doomed(f)) {
        n += usize::from(t.v4.remove(k).is_ok());
    }
    for (k, _) in entries(&t.v6, cfg)?.iter().filter(|(_, f)| doomed(f)) {
        n += usize::from(t.v6.remove(k).is_ok());
    }
    Ok(n)
}

/// Deletes every entry.
pub fn flush(iface: &IfaceId, cfg: &IfaceConfig) -> Result<usize, MapError> {
    remove_where(iface, cfg, |_| true)
}

/// Reclaims entries idle past their timeout (the data path already treats
/// them as absent).
pub fn reclaim_expired(iface: &IfaceId, cfg: &IfaceConfig) -> Result<usize, MapError> {
    remove_where(iface, cfg, |f| f.expired)
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
) -> Result<usize, MapError> {
    remove_where(iface, cfg, |f| {
        let direction = if f.opened == "inbound" {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        compile::lookup(policy, direction, f.remote, f.proto, opening_port(f)).is_none()
    })
}
