//! Per-CPU packet/byte counters by (direction, reason). Every verdict is
//! counted here and nowhere else.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sg_common::{COUNTER_SLOTS, Counter, Direction, Reason, counter_index};

#[map]
static SG_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn record(direction: Direction, reason: Reason, bytes: usize) {
    if let Some(slot) = SG_COUNTERS.get_ptr_mut(counter_index(direction, reason)) {
        // Per-CPU slot: no other writer, plain adds are enough.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes as u64;
        }
    }
}
