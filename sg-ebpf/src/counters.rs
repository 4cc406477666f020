//! Per-CPU packet/byte counters by (direction, reason), and per-rule hits.
//! Every verdict is counted here and nowhere else.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use sg_common::{COUNTER_SLOTS, Counter, Direction, Reason, counter_index};

#[map]
static SG_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Keyed by rule hash; user space creates an entry for every rule it
/// compiles, so the data path only increments (never inserts).
#[map]
static SG_RULE_HITS: PerCpuHashMap<u32, Counter> = PerCpuHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn bump(slot: *mut Counter, bytes: u64) {
    // Per-CPU slot: no other writer, plain adds are enough.
    unsafe {
        (*slot).packets += 1;
        (*slot).bytes += bytes;
    }
}

#[inline(always)]
pub fn record(direction: Direction, reason: Reason, bytes: u64) {
    if let Some(slot) = SG_COUNTERS.get_ptr_mut(counter_index(direction, reason)) {
        bump(slot, bytes);
    }
}

#[inline(always)]
pub fn rule_hit(rule: u32, bytes: u64) {
    if let Some(slot) = SG_RULE_HITS.get_ptr_mut(rule) {
        bump(slot, bytes);
    }
}
