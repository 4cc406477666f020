//! Writes compiled policy into an interface's maps, atomically: the new
//! generation's entries are written beside the live one, a single update of
//! `SG_CONFIG` switches to it, and only then are the old entries removed.
//! No packet ever sees a half-written policy.

use std::{path::Path, time::Duration};

use aya::{
    Ebpf,
    maps::{
        Array, Map, MapData, MapError, PerCpuHashMap, PerCpuValues, lpm_trie::Key,
        lpm_trie::LpmTrie,
    },
};
use sg_common::{
    Counter, IfaceConfig,
    conntrack::{DEFAULT_TIMEOUTS_S, TIMEOUT_SLOTS},
    events::DEFAULT_EVENTS_PER_SEC,
    names,
    policy::{AddrKeyV4, AddrKeyV6, CONFIG_ENFORCE, ClassId, PolicyHit, PortKey},
};
use thiserror::Error;

use crate::compile::CompiledPolicy;

/// Maps written by policy updates, in pin order.
pub const POLICY_MAPS: [&str; 5] = [
    names::MAP_CONFIG,
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
    #[error("pinning map {name}: {detail}")]
    Pin { name: &'static str, detail: String },
    #[error("counting CPUs (/sys/devices/system/cpu/possible)")]
    Cpus(#[from] std::io::Error),
    #[error("map {name} is missing from the eBPF object or from {dir}; detach and attach again")]
    Missing { name: &'static str, dir: String },
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

/// The policy maps of one interface instance.
pub struct PolicyMaps {
    config: Array<MapData, IfaceConfig>,
    addr_v4: LpmTrie<MapData, AddrKeyV4, ClassId>,
    addr_v6: LpmTrie<MapData, AddrKeyV6, ClassId>,
    ports: LpmTrie<MapData, PortKey, PolicyHit>,
    rule_hits: PerCpuHashMap<MapData, u32, Counter>,
}

impl PolicyMaps {
    fn from_maps(
        mut take: impl FnMut(&'static str) -> Result<Map, PolicyMapError>,
    ) -> Result<Self, PolicyMapError> {
        Ok(PolicyMaps {
            config: Array::try_from(take(names::MAP_CONFIG)?)
                .map_err(map_err(names::MAP_CONFIG))?,
            addr_v4: LpmTrie::try_from(take(names::MAP_ADDR_V4)?)
                .map_err(map_err(names::MAP_ADDR_V4))?,
            addr_v6: LpmTrie::try_from(take(names::MAP_ADDR_V6)?)
                .map_err(map_err(names::MAP_ADDR_V6))?,
            ports: LpmTrie::try_from(take(names::MAP_PORTS)?).map_err(map_err(names::MAP_PORTS))?,
            rule_hits: PerCpuHashMap::try_from(take(names::MAP_RULE_HITS)?)
                .map_err(map_err(names::MAP_RULE_HITS))?,
        })
    }

    /// Takes the policy maps out of a freshly loaded object, pinning each
    /// under `pin_dir` when given.
    pub fn take_from(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Self, PolicyMapError> {
        Self::from_maps(|name| {
            let map = ebpf.take_map(name).ok_or(PolicyMapError::Missing {
                name,
                dir: "the object".into(),
            })?;
            if let Some(dir) = pin_dir {
                map.pin(dir.join(name)).map_err(|e| PolicyMapError::Pin {
                    name,
                    detail: e.to_string(),
                })?;
            }
            Ok(map)
        })
    }

    /// Opens the pinned policy maps of an attached interface.
    pub fn from_pins(dir: &Path) -> Result<Self, PolicyMapError> {
        Self::from_maps(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(|_| PolicyMapError::Missing {
                name,
                dir: dir.display().to_string(),
            })?;
            let map = match name {
                n if n == names::MAP_CONFIG => Map::Array(data),
                n if n == names::MAP_RULE_HITS => Map::PerCpuHashMap(data),
                _ => Map::LpmTrie(data),
            };
            Ok(map)
        })
    }

    /// The live settings.
    pub fn config(&self) -> Result<IfaceConfig, PolicyMapError> {
        self.config.get(&0, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// The generation number a new policy should use.
    pub fn next_generation(&self) -> Result<u32, PolicyMapError> {
        let current = self.config()?.generation;
        // 31 bits are keyed; wrap to 1 (0 means "no policy").
        Ok(if current >= (1 << 31) - 1 {
            1
        } else {
            current + 1
        })
    }

    /// Makes `policy` the live policy with these idle timeouts (seconds).
    ///
    /// Entries of any generation other than the live one are removed first:
    /// an install that stopped part-way (a full map, ENOMEM, `kill -9`) may
    /// have left some under the number this one reuses, and class ids are
    /// renumbered per policy, so a leftover prefix would grant the new
    /// policy's ports to an address the new policy never names.
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        timeouts_s: [u64; TIMEOUT_SLOTS],
    ) -> Result<(), PolicyMapError> {
        let old = self.config()?;
        self.remove_generations_except(old.generation)?;
        self.stage(policy)?;
        let config = IfaceConfig::new(
            policy.generation,
            CONFIG_ENFORCE,
            timeouts_ns(timeouts_s),
            DEFAULT_EVENTS_PER_SEC,
        );
        // The switch: one update of one array slot.
        self.config
            .set(0, config, 0)
            .map_err(map_err(names::MAP_CONFIG))?;
        if old.generation != 0 && old.generation != policy.generation {
            std::thread::sleep(OLD_GENERATION_GRACE);
            self.remove_generations_except(policy.generation)?;
        }
        self.prune_rule_hits(policy)
    }

    /// Writes `policy`'s entries under its generation, without switching to
    /// it: the first half of [`PolicyMaps::install`]. Public so tests can
    /// stop an install exactly where a crash would.
    pub fn stage(&mut self, policy: &CompiledPolicy) -> Result<(), PolicyMapError> {
        self.add_rule_hits(policy)?;
        for (len, key, class) in &policy.addr_v4 {
            self.addr_v4
                .insert(&Key::new(*len, *key), class, 0)
                .map_err(map_err(names::MAP_ADDR_V4))?;
        }
        for (len, key, class) in &policy.addr_v6 {
            self.addr_v6
                .insert(&Key::new(*len, *key), class, 0)
                .map_err(map_err(names::MAP_ADDR_V6))?;
        }
        for (len, key, hit) in &policy.ports {
            self.ports
                .insert(&Key::new(*len, *key), hit, 0)
                .map_err(map_err(names::MAP_PORTS))?;
        }
        Ok(())
    }

    /// A zeroed hit counter for each of `policy`'s rules that has none. When
    /// the map is full, the counters of rules outside `policy` go first
    /// (they would be removed after the switch anyway).
    fn add_rule_hits(&mut self, policy: &CompiledPolicy) -> Result<(), PolicyMapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut pruned = false;
        for &rule in policy.rule_hashes.keys() {
            if self.rule_hits.get(&rule, 0).is_ok() {
                continue;
            }
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
            match self.rule_hits.insert(rule, zeros, 0) {
                Err(MapError::SyscallError(e))
                    if !pruned && e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    self.prune_rule_hits(policy)?;
                    pruned = true;
                    let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
                    self.rule_hits
                        .insert(rule, zeros, 0)
                        .map_err(map_err(names::MAP_RULE_HITS))?;
                }
                other => other.map_err(map_err(names::MAP_RULE_HITS))?,
            }
        }
        Ok(())
    }

    /// Removes the hit counters of rules that are not in `policy`. Rule ids
    /// come from rule content, so every edit makes new ones: without this the
    /// map fills over an attachment's life and installs start to fail.
    fn prune_rule_hits(&mut self, policy: &CompiledPolicy) -> Result<(), PolicyMapError> {
        let stale: Vec<u32> = self
            .rule_hits
            .keys()
            .filter_map(Result::ok)
            .filter(|rule| !policy.rule_hashes.contains_key(rule))
            .collect();
        for rule in stale {
            match self.rule_hits.remove(&rule) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::MAP_RULE_HITS)(e)),
            }
        }
        Ok(())
    }

    /// Rule ids that have a hit counter (live rules, after an install).
    pub fn rule_hit_ids(&self) -> Vec<u32> {
        self.rule_hits.keys().filter_map(Result::ok).collect()
    }

    /// Sets the flow-log event rate (events per second per CPU; 0: none).
    pub fn set_events_per_sec(&mut self, rate: u32) -> Result<(), PolicyMapError> {
        let mut config = self.config()?;
        config.events_per_sec = rate;
        self.config
            .set(0, config, 0)
            .map_err(map_err(names::MAP_CONFIG))
    }

    /// Switches to observe mode (count, pass everything) and drops all rules.
    pub fn observe(&mut self) -> Result<(), PolicyMapError> {
        let config = IfaceConfig::new(0, 0, timeouts_ns(DEFAULT_TIMEOUTS_S), 0);
        self.config
            .set(0, config, 0)
            .map_err(map_err(names::MAP_CONFIG))?;
        std::thread::sleep(OLD_GENERATION_GRACE);
        self.remove_generations_except(0)
    }

    fn remove_generations_except(&mut self, keep: u32) -> Result<(), PolicyMapError> {
        let live = |gen_dir: [u8; 4]| u32::from_be_bytes(gen_dir) >> 1 == keep;
        let stale: Vec<_> = self
            .addr_v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live(k.data().gen_dir))
            .collect();
        for key in stale {
            self.addr_v4
                .remove(&key)
                .map_err(map_err(names::MAP_ADDR_V4))?;
        }
        let stale: Vec<_> = self
            .addr_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live(k.data().gen_dir))
            .collect();
        for key in stale {
            self.addr_v6
                .remove(&key)
                .map_err(map_err(names::MAP_ADDR_V6))?;
        }
        let stale: Vec<_> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live(k.data().gen_dir))
            .collect();
        for key in stale {
            self.ports.remove(&key).map_err(map_err(names::MAP_PORTS))?;
        }
        Ok(())
    }

    /// Entries per map (v4 prefixes, v6 prefixes, port blocks) — for status.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.addr_v4.keys().count(),
            self.addr_v6.keys().count(),
            self.ports.keys().count(),
        )
    }
}
