//! Writes compiled policies and endpoint settings into the host's data
//! plane (see [`crate::kernel::dataplane`] and `sg_common::endpoint`).
//!
//! A policy is installed atomically: its new generation's entries are
//! written beside the live one (every key starts with the policy id and the
//! generation), a single update of the policy's `SG_POLICIES` slot switches
//! every interface that uses it, and only then are the old entries removed.
//! No packet ever sees a half-written policy. Moving an interface to another
//! policy is one update of its `SG_ENDPOINTS` entry.

use std::{path::Path, time::Duration};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
        lpm_trie::LpmTrie,
    },
};
use sg_common::{
    Counter, IfaceConfig,
    conntrack::{DEFAULT_TIMEOUTS_S, TIMEOUT_SLOTS},
    endpoint::{EndpointKey, PolicyState, UNIQUE_IFINDEX_COOKIE},
    events::DEFAULT_EVENTS_PER_SEC,
    names,
    policy::{
        AddrKeyV4, AddrKeyV6, CONFIG_ENFORCE, ClassId, PolicyHit, PortKey, RuleHitKey, class_base,
    },
};
use thiserror::Error;

use crate::compile::CompiledPolicy;

/// Maps written by policy and endpoint updates.
pub const POLICY_MAPS: [&str; 7] = [
    names::MAP_POLICIES,
    names::MAP_ENDPOINTS,
    names::MAP_CT_TIMEOUTS,
    names::MAP_ADDR_V4,
    names::MAP_ADDR_V6,
    names::MAP_PORTS,
    names::MAP_RULE_HITS,
];

/// How long to wait after the switch before deleting the old generation:
/// programs that read the old generation number finish their lookups within
/// microseconds (they run under RCU); this is orders of magnitude more.
const OLD_GENERATION_GRACE: Duration = Duration::from_millis(5);

#[derive(Debug, Error)]
pub enum PolicyMapError {
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("pinning map {name}")]
    Pin {
        name: &'static str,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("counting CPUs (/sys/devices/system/cpu/possible)")]
    Cpus(#[from] std::io::Error),
    #[error("map {name} is missing from the eBPF object or from {dir}; run `sgctl apply` again")]
    Missing { name: &'static str, dir: String },
    #[error("no endpoint selected (internal error: select one with `PolicyMaps::select`)")]
    NoEndpoint,
    #[error("the interface's endpoint is gone from the data plane; run `sgctl apply` again")]
    EndpointGone,
}

/// A delete of a key that is not there (aya reports it as the syscall's ENOENT).
fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> PolicyMapError {
    move |source| PolicyMapError::Map {
        name,
        source: Box::new(source),
    }
}

/// Idle timeouts (seconds, by `CtState`) to the config's nanoseconds.
pub fn timeouts_ns(seconds: [u64; TIMEOUT_SLOTS]) -> [u64; TIMEOUT_SLOTS] {
    seconds.map(|s| s.saturating_mul(1_000_000_000))
}

/// The control maps of a data plane, with one policy (and optionally one
/// endpoint) selected for the per-policy operations.
pub struct PolicyMaps {
    policies: Array<MapData, PolicyState>,
    endpoints: HashMap<MapData, EndpointKey, IfaceConfig>,
    ct_timeouts: Array<MapData, [u64; TIMEOUT_SLOTS]>,
    addr_v4: LpmTrie<MapData, AddrKeyV4, ClassId>,
    addr_v6: LpmTrie<MapData, AddrKeyV6, ClassId>,
    ports: LpmTrie<MapData, PortKey, PolicyHit>,
    rule_hits: PerCpuHashMap<MapData, RuleHitKey, Counter>,
    policy: u32,
    endpoint: Option<EndpointKey>,
    /// The endpoint table as last read or written, while the caller holds
    /// the data plane's lock (see [`PolicyMaps::cache_endpoints`]).
    cache: Option<Vec<(EndpointKey, IfaceConfig)>>,
}

/// Entries of one policy as (generation, key), per map.
type Keyed<K> = Vec<(u32, aya::maps::lpm_trie::Key<K>)>;

/// The fields every key of the policy maps starts with.
trait PolicyKey: aya::Pod {
    /// Policy id and [`gen_dir`](sg_common::policy::gen_dir), both big-endian.
    fn policy_and_gen_dir(&self) -> ([u8; 4], [u8; 4]);
}

macro_rules! impl_policy_key {
    ($($key:ty),*) => {$(
        impl PolicyKey for $key {
            fn policy_and_gen_dir(&self) -> ([u8; 4], [u8; 4]) {
                (self.policy, self.gen_dir)
            }
        }
    )*};
}

impl_policy_key!(AddrKeyV4, AddrKeyV6, PortKey);

/// The entries of policy `id` (big-endian) in `map`, with their generation.
fn keys_of_policy<K: PolicyKey, V: aya::Pod>(
    map: &LpmTrie<MapData, K, V>,
    id: [u8; 4],
) -> Keyed<K> {
    map.keys()
        .filter_map(Result::ok)
        .filter_map(|k| {
            let (policy, gen_dir) = k.data().policy_and_gen_dir();
            (policy == id).then(|| (u32::from_be_bytes(gen_dir) >> 1, k))
        })
        .collect()
}

struct PolicyKeys {
    addr_v4: Keyed<AddrKeyV4>,
    addr_v6: Keyed<AddrKeyV6>,
    ports: Keyed<PortKey>,
}

impl PolicyKeys {
    /// (the entries of the live version: addresses of `addr_generation`,
    /// ports of `generation`; the entries of every other one).
    fn partition(self, addr_generation: u32, generation: u32) -> (PolicyKeys, PolicyKeys) {
        fn split<K>(v: Keyed<K>, generation: u32) -> (Keyed<K>, Keyed<K>) {
            v.into_iter().partition(|(g, _)| *g == generation)
        }
        let (v4, other_v4) = split(self.addr_v4, addr_generation);
        let (v6, other_v6) = split(self.addr_v6, addr_generation);
        let (ports, other_ports) = split(self.ports, generation);
        (
            PolicyKeys {
                addr_v4: v4,
                addr_v6: v6,
                ports,
            },
            PolicyKeys {
                addr_v4: other_v4,
                addr_v6: other_v6,
                ports: other_ports,
            },
        )
    }
}

impl PolicyMaps {
    fn from_maps(
        mut take: impl FnMut(&'static str) -> Result<Map, PolicyMapError>,
    ) -> Result<Self, PolicyMapError> {
        Ok(PolicyMaps {
            policies: Array::try_from(take(names::MAP_POLICIES)?)
                .map_err(map_err(names::MAP_POLICIES))?,
            endpoints: HashMap::try_from(take(names::MAP_ENDPOINTS)?)
                .map_err(map_err(names::MAP_ENDPOINTS))?,
            ct_timeouts: Array::try_from(take(names::MAP_CT_TIMEOUTS)?)
                .map_err(map_err(names::MAP_CT_TIMEOUTS))?,
            addr_v4: LpmTrie::try_from(take(names::MAP_ADDR_V4)?)
                .map_err(map_err(names::MAP_ADDR_V4))?,
            addr_v6: LpmTrie::try_from(take(names::MAP_ADDR_V6)?)
                .map_err(map_err(names::MAP_ADDR_V6))?,
            ports: LpmTrie::try_from(take(names::MAP_PORTS)?).map_err(map_err(names::MAP_PORTS))?,
            rule_hits: PerCpuHashMap::try_from(take(names::MAP_RULE_HITS)?)
                .map_err(map_err(names::MAP_RULE_HITS))?,
            policy: 1,
            endpoint: None,
            cache: None,
        })
    }

    /// Takes the control maps out of a freshly loaded object, pinning each
    /// under `pin_dir` when given.
    pub fn take_from(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Self, PolicyMapError> {
        Self::from_maps(|name| {
            let map = ebpf.take_map(name).ok_or(PolicyMapError::Missing {
                name,
                dir: "the object".into(),
            })?;
            if let Some(dir) = pin_dir {
                map.pin(dir.join(name))
                    .map_err(|source| PolicyMapError::Pin { name, source })?;
            }
            Ok(map)
        })
    }

    /// Opens the pinned control maps of the host's data plane (in `dir`,
    /// normally [`crate::kernel::pins::MAPS_DIR`]).
    pub fn from_pins(dir: &Path) -> Result<Self, PolicyMapError> {
        Self::from_maps(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(|_| PolicyMapError::Missing {
                name,
                dir: dir.display().to_string(),
            })?;
            let map = match name {
                n if n == names::MAP_POLICIES || n == names::MAP_CT_TIMEOUTS => Map::Array(data),
                n if n == names::MAP_ENDPOINTS => Map::HashMap(data),
                n if n == names::MAP_RULE_HITS => Map::PerCpuHashMap(data),
                _ => Map::LpmTrie(data),
            };
            Ok(map)
        })
    }

    /// Selects the policy (and endpoint) the per-policy operations work on.
    pub fn select(&mut self, policy: u32, endpoint: Option<EndpointKey>) {
        self.policy = policy;
        self.endpoint = endpoint;
    }

    /// The selected endpoint's key.
    pub fn endpoint_key(&self) -> Option<EndpointKey> {
        self.endpoint
    }

    /// The selected policy id.
    pub fn policy_id(&self) -> u32 {
        self.policy
    }

    /// The state of policy `id`.
    pub fn policy_state(&self, id: u32) -> Result<PolicyState, PolicyMapError> {
        self.policies
            .get(&id, 0)
            .map_err(map_err(names::MAP_POLICIES))
    }

    /// Every policy slot in use: (id, state). Only the slots up to the
    /// highest id ever installed are read (one syscall each), not all 4,096.
    pub fn policies(&self) -> Result<Vec<(u32, PolicyState)>, PolicyMapError> {
        let mut out = Vec::new();
        for id in 1..=self.highest_policy()? {
            let state = self.policy_state(id)?;
            if state.generation != 0 {
                out.push((id, state));
            }
        }
        Ok(out)
    }

    /// The last generation number handed out on this host. Kept in slot 0
    /// of the policy table, which no endpoint uses: its generation stays 0
    /// (the programs see "no policy"), its fingerprint holds the number. A
    /// number is so never handed out twice, also after the policy that had
    /// it was freed.
    pub fn last_generation(&self) -> Result<u32, PolicyMapError> {
        Ok(self.policy_state(0)?.fingerprint as u32)
    }

    /// Records the last generation number handed out (see
    /// [`PolicyMaps::last_generation`]).
    pub fn set_last_generation(&mut self, generation: u32) -> Result<(), PolicyMapError> {
        self.update_slot_zero(|state| state.fingerprint = u64::from(generation))
    }

    /// The highest policy id ever installed on this host (slot 0's
    /// `addr_generation`; raised before a slot above it is written, so no
    /// policy lies above it).
    fn highest_policy(&self) -> Result<u32, PolicyMapError> {
        let highest = self.policy_state(0)?.addr_generation;
        Ok(highest.min(sg_common::endpoint::MAX_POLICIES - 1))
    }

    fn update_slot_zero(&mut self, f: impl FnOnce(&mut PolicyState)) -> Result<(), PolicyMapError> {
        let mut state = self.policy_state(0)?;
        f(&mut state);
        // The programs see "no policy" in slot 0 whatever it holds.
        state.generation = 0;
        self.policies
            .set(0, state, 0)
            .map_err(map_err(names::MAP_POLICIES))
    }

    /// The live generation of the selected policy (0: none).
    pub fn generation(&self) -> Result<u32, PolicyMapError> {
        Ok(self.policy_state(self.policy)?.generation)
    }

    /// The settings of the selected endpoint.
    pub fn config(&self) -> Result<IfaceConfig, PolicyMapError> {
        let key = self.endpoint.ok_or(PolicyMapError::NoEndpoint)?;
        match self.endpoints.get(&key, 0) {
            Ok(cfg) => Ok(cfg),
            Err(MapError::KeyNotFound) => Err(PolicyMapError::EndpointGone),
            Err(e) => Err(map_err(names::MAP_ENDPOINTS)(e)),
        }
    }

    /// Every endpoint: (key, settings); unique-ifindex aliases not included.
    pub fn endpoints(&self) -> Result<Vec<(EndpointKey, IfaceConfig)>, PolicyMapError> {
        if let Some(cache) = &self.cache {
            return Ok(cache.clone());
        }
        let all: Vec<(EndpointKey, IfaceConfig)> = self
            .endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::MAP_ENDPOINTS))?;
        Ok(all
            .into_iter()
            .filter(|(k, _)| k.netns_cookie != UNIQUE_IFINDEX_COOKIE)
            .collect())
    }

    /// Keeps the alias (cookie 0, `ifindex`) exactly while one endpoint has
    /// `ifindex` (see `UNIQUE_IFINDEX_COOKIE`), with that endpoint's settings.
    fn sync_alias(&mut self, ifindex: u32) -> Result<(), PolicyMapError> {
        let alias = EndpointKey {
            netns_cookie: UNIQUE_IFINDEX_COOKIE,
            ifindex,
            _pad: 0,
        };
        let same: Vec<IfaceConfig> = self
            .endpoints()?
            .into_iter()
            .filter(|(k, _)| k.ifindex == ifindex)
            .map(|(_, cfg)| cfg)
            .collect();
        match same.as_slice() {
            [only] => self
                .endpoints
                .insert(alias, only, 0)
                .map_err(map_err(names::MAP_ENDPOINTS)),
            _ => match self.endpoints.remove(&alias) {
                Err(e) if !not_found(&e) => Err(map_err(names::MAP_ENDPOINTS)(e)),
                _ => Ok(()),
            },
        }
    }

    /// Keeps the endpoint table in memory from now on (reads served from it,
    /// writes through it): only while no one else can change it (a
    /// `dataplane::Session` holds the data plane's lock).
    pub fn cache_endpoints(&mut self) -> Result<(), PolicyMapError> {
        self.cache = None;
        self.cache = Some(self.endpoints()?);
        Ok(())
    }

    /// Writes an endpoint's settings (and its timeouts for the in-kernel
    /// reclaim): one update of its entry, which packets see whole.
    pub fn write_endpoint(
        &mut self,
        key: EndpointKey,
        cfg: &IfaceConfig,
    ) -> Result<(), PolicyMapError> {
        self.ct_timeouts
            .set(cfg.endpoint, cfg.timeouts_ns, 0)
            .map_err(map_err(names::MAP_CT_TIMEOUTS))?;
        self.endpoints
            .insert(key, cfg, 0)
            .map_err(map_err(names::MAP_ENDPOINTS))?;
        if let Some(cache) = &mut self.cache {
            match cache.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = *cfg,
                None => cache.push((key, *cfg)),
            }
        }
        self.sync_alias(key.ifindex)
    }

    /// Removes an endpoint (its interface's packets then drop as `no_policy`).
    pub fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), PolicyMapError> {
        if let Some(cache) = &mut self.cache {
            cache.retain(|(k, _)| k != key);
        }
        match self.endpoints.remove(key) {
            Err(e) if !not_found(&e) => return Err(map_err(names::MAP_ENDPOINTS)(e)),
            _ => {}
        }
        self.sync_alias(key.ifindex)
    }

    fn update_endpoint(&mut self, f: impl FnOnce(&mut IfaceConfig)) -> Result<(), PolicyMapError> {
        let key = self.endpoint.ok_or(PolicyMapError::NoEndpoint)?;
        let mut cfg = self.config()?;
        f(&mut cfg);
        self.write_endpoint(key, &cfg)
    }

    /// Writes the selected policy's slot as given: tests show with it what
    /// the programs do with a pair of generations no install writes (what a
    /// torn read would see).
    #[cfg(feature = "test-support")]
    pub fn write_policy_state(&mut self, state: PolicyState) -> Result<(), PolicyMapError> {
        self.policies
            .set(self.policy, state, 0)
            .map_err(map_err(names::MAP_POLICIES))
    }

    /// The generation number a new version of the selected policy should use.
    pub fn next_generation(&self) -> Result<u32, PolicyMapError> {
        let current = self.generation()?;
        // 31 bits are keyed; wrap to 1 (0 means "no policy").
        Ok(if current >= (1 << 31) - 1 {
            1
        } else {
            current + 1
        })
    }

    /// Makes `policy` the selected policy's live version and, when an
    /// endpoint is selected, has it enforce the policy with these idle
    /// timeouts (seconds).
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        timeouts_s: [u64; TIMEOUT_SLOTS],
    ) -> Result<(), PolicyMapError> {
        self.install_policy(policy, 0)?;
        if self.endpoint.is_some() {
            let id = self.policy;
            self.update_endpoint(|cfg| {
                let fresh = IfaceConfig::new(
                    CONFIG_ENFORCE | (cfg.flags & !CONFIG_ENFORCE),
                    timeouts_ns(timeouts_s),
                    DEFAULT_EVENTS_PER_SEC,
                );
                cfg.policy = id;
                cfg.flags = fresh.flags;
                cfg.timeouts_ns = fresh.timeouts_ns;
                cfg.shortest_timeout_s = fresh.shortest_timeout_s;
                cfg.events_per_sec = fresh.events_per_sec;
            })?;
        }
        Ok(())
    }

    /// Makes `policy` the selected policy's live version (every interface
    /// using the policy switches at once), recording `fingerprint`.
    ///
    /// Entries of any generation other than the live one are removed first:
    /// an install that stopped part-way (a full map, ENOMEM, `kill -9`) may
    /// have left some under the number this one reuses, and class ids are
    /// renumbered per policy, so a leftover prefix would grant the new
    /// policy's ports to an address the new policy never names.
    ///
    /// A new version whose address entries are those of the live one (same
    /// classes: only ports or protocols changed) keeps them: only its port
    /// entries are written, under its generation, and the switch names the
    /// live address generation. At a thousand members that is the
    /// difference between ~2,000 and ~14,000 map updates.
    pub fn install_policy(
        &mut self,
        policy: &CompiledPolicy,
        fingerprint: u64,
    ) -> Result<(), PolicyMapError> {
        if self.policy > self.highest_policy()? {
            let id = self.policy;
            self.update_slot_zero(|state| state.addr_generation = id)?;
        }
        let old = self.policy_state(self.policy)?;
        let old_addr_generation = match old.addr_generation {
            0 => old.generation,
            g => g,
        };
        let reuse = old.generation != 0
            && old.generation != policy.generation
            && old.addr_fingerprint == policy.addr_fingerprint;
        let addr_generation = if reuse {
            old_addr_generation
        } else {
            policy.generation
        };
        // Entries of any generation but the live one are leftovers of an
        // install that did not finish: gone before staging. The live ones
        // go after the switch. Reused addresses are not walked (leftover
        // addresses, if any, wait for the next install that writes some:
        // their numbers are never handed out again).
        let keys = if reuse {
            self.port_keys()?
        } else {
            self.keys_by_generation()?
        };
        let (mut live, leftovers) = keys.partition(old_addr_generation, old.generation);
        self.remove_keys(leftovers)?;
        self.stage_as(policy, !reuse, addr_generation)?;
        let state = PolicyState {
            generation: policy.generation,
            addr_generation,
            fingerprint,
            addr_fingerprint: policy.addr_fingerprint,
        };
        // The switch: one update of one array slot.
        self.policies
            .set(self.policy, state, 0)
            .map_err(map_err(names::MAP_POLICIES))?;
        if old.generation != 0 && old.generation != policy.generation {
            if reuse {
                // Still in force: only the old ports go.
                live.addr_v4.clear();
                live.addr_v6.clear();
            }
            std::thread::sleep(OLD_GENERATION_GRACE);
            self.remove_keys(live)?;
        }
        self.prune_rule_hits(policy)
    }

    /// Removes the selected policy: its entries, hit counters and slot.
    /// Only for a policy no endpoint uses.
    pub fn free_policy(&mut self) -> Result<(), PolicyMapError> {
        self.policies
            .set(self.policy, PolicyState::default(), 0)
            .map_err(map_err(names::MAP_POLICIES))?;
        self.remove_generations_except(0)?;
        self.prune_rule_hits(&CompiledPolicy::default())
    }

    /// Writes `policy`'s entries under its generation, without switching to
    /// it: the first half of [`PolicyMaps::install`]. Public so tests can
    /// stop an install exactly where a crash would.
    pub fn stage(&mut self, policy: &CompiledPolicy) -> Result<(), PolicyMapError> {
        self.stage_as(policy, true, policy.generation)
    }

    /// Writes `policy`'s port entries (and its address entries when
    /// `addresses`), naming the classes of `addr_generation`.
    fn stage_as(
        &mut self,
        policy: &CompiledPolicy,
        addresses: bool,
        addr_generation: u32,
    ) -> Result<(), PolicyMapError> {
        let id = self.policy.to_be_bytes();
        let base = class_base(addr_generation);
        self.add_rule_hits(policy)?;
        if addresses {
            for (len, key, class) in &policy.addr_v4 {
                let key = AddrKeyV4 { policy: id, ..*key };
                self.addr_v4
                    .insert(&Key::new(*len, key), class | base, 0)
                    .map_err(map_err(names::MAP_ADDR_V4))?;
            }
            for (len, key, class) in &policy.addr_v6 {
                let key = AddrKeyV6 { policy: id, ..*key };
                self.addr_v6
                    .insert(&Key::new(*len, key), class | base, 0)
                    .map_err(map_err(names::MAP_ADDR_V6))?;
            }
        }
        for (len, key, hit) in &policy.ports {
            let class = u32::from_be_bytes(key.class) | base;
            let key = PortKey {
                policy: id,
                class: class.to_be_bytes(),
                ..*key
            };
            self.ports
                .insert(&Key::new(*len, key), hit, 0)
                .map_err(map_err(names::MAP_PORTS))?;
        }
        Ok(())
    }

    fn hit_key(&self, rule: u32) -> RuleHitKey {
        RuleHitKey {
            policy: self.policy,
            rule,
        }
    }

    /// A zeroed hit counter for each of `policy`'s rules that has none. When
    /// the map is full, the counters of rules outside `policy` go first
    /// (they would be removed after the switch anyway).
    fn add_rule_hits(&mut self, policy: &CompiledPolicy) -> Result<(), PolicyMapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut pruned = false;
        for &rule in policy.rule_hashes.keys() {
            let key = self.hit_key(rule);
            if self.rule_hits.get(&key, 0).is_ok() {
                continue;
            }
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
            match self.rule_hits.insert(key, zeros, 0) {
                Err(MapError::SyscallError(e))
                    if !pruned && e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    self.prune_rule_hits(policy)?;
                    pruned = true;
                    let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
                    self.rule_hits
                        .insert(key, zeros, 0)
                        .map_err(map_err(names::MAP_RULE_HITS))?;
                }
                other => other.map_err(map_err(names::MAP_RULE_HITS))?,
            }
        }
        Ok(())
    }

    /// Removes the selected policy's hit counters of rules that are not in
    /// `policy`. Rule ids come from rule content, so every edit makes new
    /// ones: without this the map fills over a policy's life and installs
    /// start to fail.
    fn prune_rule_hits(&mut self, policy: &CompiledPolicy) -> Result<(), PolicyMapError> {
        let stale: Vec<RuleHitKey> = self
            .rule_hits
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.policy == self.policy && !policy.rule_hashes.contains_key(&k.rule))
            .collect();
        for key in stale {
            match self.rule_hits.remove(&key) {
                Err(e) if !not_found(&e) => return Err(map_err(names::MAP_RULE_HITS)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Rule ids of the selected policy that have a hit counter (live rules,
    /// after an install).
    pub fn rule_hit_ids(&self) -> Vec<u32> {
        self.rule_hits
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.policy == self.policy)
            .map(|k| k.rule)
            .collect()
    }

    /// Hit counters (summed over CPUs) of the selected policy's rules.
    pub fn rule_hits(&self) -> Result<std::collections::BTreeMap<u32, Counter>, PolicyMapError> {
        let mut hits = std::collections::BTreeMap::new();
        for item in self.rule_hits.iter() {
            let (key, per_cpu) = item.map_err(map_err(names::MAP_RULE_HITS))?;
            if key.policy == self.policy {
                hits.insert(key.rule, per_cpu.iter().sum());
            }
        }
        Ok(hits)
    }

    /// Sets the selected endpoint's flow-log event rate (events per second
    /// per CPU; 0: none).
    pub fn set_events_per_sec(&mut self, rate: u32) -> Result<(), PolicyMapError> {
        self.update_endpoint(|cfg| cfg.events_per_sec = rate)
    }

    /// Switches the selected endpoint to observe mode (count, pass everything).
    pub fn observe(&mut self) -> Result<(), PolicyMapError> {
        self.update_endpoint(|cfg| {
            let fresh = IfaceConfig::new(0, timeouts_ns(DEFAULT_TIMEOUTS_S), 0);
            cfg.flags &= !CONFIG_ENFORCE;
            cfg.timeouts_ns = fresh.timeouts_ns;
            cfg.shortest_timeout_s = fresh.shortest_timeout_s;
            cfg.events_per_sec = 0;
        })
    }

    fn remove_generations_except(&mut self, keep: u32) -> Result<(), PolicyMapError> {
        let (_, others) = self.keys_by_generation()?.partition(keep, keep);
        self.remove_keys(others)
    }

    /// The selected policy's port entries, with their generation (the
    /// address tries are not walked).
    fn port_keys(&self) -> Result<PolicyKeys, PolicyMapError> {
        Ok(PolicyKeys {
            addr_v4: Vec::new(),
            addr_v6: Vec::new(),
            ports: keys_of_policy(&self.ports, self.policy.to_be_bytes()),
        })
    }

    /// The selected policy's entries, with their generation: one walk of
    /// each map (an install walks once and deletes twice from the result).
    fn keys_by_generation(&self) -> Result<PolicyKeys, PolicyMapError> {
        let id = self.policy.to_be_bytes();
        Ok(PolicyKeys {
            addr_v4: keys_of_policy(&self.addr_v4, id),
            addr_v6: keys_of_policy(&self.addr_v6, id),
            ports: keys_of_policy(&self.ports, id),
        })
    }

    fn remove_keys(&mut self, keys: PolicyKeys) -> Result<(), PolicyMapError> {
        for (_, key) in keys.addr_v4 {
            self.addr_v4
                .remove(&key)
                .map_err(map_err(names::MAP_ADDR_V4))?;
        }
        for (_, key) in keys.addr_v6 {
            self.addr_v6
                .remove(&key)
                .map_err(map_err(names::MAP_ADDR_V6))?;
        }
        for (_, key) in keys.ports {
            self.ports.remove(&key).map_err(map_err(names::MAP_PORTS))?;
        }
        Ok(())
    }

    /// Entries of the selected policy per map (v4 prefixes, v6 prefixes,
    /// port blocks) — for status.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let id = self.policy.to_be_bytes();
        (
            keys_of_policy(&self.addr_v4, id).len(),
            keys_of_policy(&self.addr_v6, id).len(),
            keys_of_policy(&self.ports, id).len(),
        )
    }
}
