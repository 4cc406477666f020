//! Per-CPU packet/byte counters by (endpoint, direction, reason), and
//! per-(policy, rule) hits. Every verdict is counted here and nowhere else.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use sg_common::{
    COUNTER_SLOTS, Counter, Direction, Reason, endpoint::MAX_ENDPOINTS, endpoint_counter_index,
    policy::RuleHitKey,
};

#[map]
static SG_COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(COUNTER_SLOTS * MAX_ENDPOINTS, 0);

/// Keyed by (policy id, rule hash); user space creates an entry for every
/// rule it compiles, so the data path only increments (never inserts).
#[map]
static SG_RULE_HITS: PerCpuHashMap<RuleHitKey, Counter> = PerCpuHashMap::with_max_entries(32768, 0);

/// Per-CPU slot: no other writer, plain adds are enough.
#[inline(always)]
fn bump(slot: &mut Counter, bytes: u64) {
    slot.packets += 1;
    slot.bytes += bytes;
}

#[inline(always)]
pub fn record(endpoint: u32, direction: Direction, reason: Reason, bytes: u64) {
    if let Some(slot) = SG_COUNTERS.get_ptr_mut(endpoint_counter_index(endpoint, direction, reason))
    {
        // SAFETY: a valid map value pointer for this run; this CPU's slot, so
        // nothing else holds it.
        bump(unsafe { &mut *slot }, bytes);
    }
}

#[inline(always)]
pub fn rule_hit(policy: u32, rule: u32, bytes: u64) {
    if let Some(slot) = SG_RULE_HITS.get_ptr_mut(RuleHitKey { policy, rule }) {
        // SAFETY: as in `record` (a per-CPU hash map).
        bump(unsafe { &mut *slot }, bytes);
    }
}
