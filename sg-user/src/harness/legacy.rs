//! The previous release's kernel object (one program instance and one set of
//! maps per interface, settings in a one-slot array):
//! `tests/fixtures/sg-legacy-57b6b46.bpf.o`. The upgrade test enforces an
//! interface with it and moves it onto the shared data plane; the benchmark
//! measures it beside the shared programs, so the endpoint lookup's cost is
//! a difference within one run.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, lpm_trie::Key, lpm_trie::LpmTrie},
};
use sg_common::conntrack::TIMEOUT_SLOTS;

use crate::{compile::CompiledPolicy, kernel::policy_maps::timeouts_ns};

/// The previous release's object.
pub static LEGACY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sg-legacy-57b6b46.bpf.o"
));

// The legacy layouts: no policy id in keys, one config slot per interface.
#[repr(C)]
#[derive(Clone, Copy)]
struct AddrV4 {
    gen_dir: [u8; 4],
    addr: [u8; 4],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct AddrV6 {
    gen_dir: [u8; 4],
    addr: [u8; 16],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct PortKey {
    gen_dir: [u8; 4],
    class: [u8; 4],
    proto: u8,
    port: [u8; 2],
    pad: u8,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct Config {
    generation: u32,
    flags: u32,
    timeouts_ns: [u64; TIMEOUT_SLOTS],
    events_per_sec: u32,
    shortest_timeout_s: u32,
}
const _: () = assert!(size_of::<AddrV4>() == 8);
const _: () = assert!(size_of::<AddrV6>() == 20);
const _: () = assert!(size_of::<PortKey>() == 12);
const _: () = assert!(size_of::<Config>() == 8 + 8 * TIMEOUT_SLOTS + 8);
// SAFETY: repr(C) integers and byte arrays without implicit padding (sizes
// asserted above); every bit pattern is a valid value.
unsafe impl aya::Pod for AddrV4 {}
// SAFETY: as above.
unsafe impl aya::Pod for AddrV6 {}
// SAFETY: as above.
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Config {}

/// Opens the legacy object as the legacy loader did (global side: `side`,
/// kernel logs off, connection tables of `ct_entries`), programs not loaded.
pub fn open(side: u8, ct_entries: u32) -> Result<Ebpf, aya::EbpfError> {
    let off: u8 = 0;
    EbpfLoader::new()
        .override_global("SG_SIDE_PEER", &side, true)
        .override_global(aya_log::LEVEL, &off, true)
        .map_max_entries("SG_CT_V4", ct_entries)
        .map_max_entries("SG_CT_V6", ct_entries)
        .load(LEGACY_OBJECT)
}

/// Installs `policy` (compiled for generation 1) into a legacy instance,
/// with the interface's idle timeouts and flow-log rate, enforcing.
pub fn install(
    ebpf: &mut Ebpf,
    policy: &CompiledPolicy,
    timeouts_s: [u64; TIMEOUT_SLOTS],
    events_per_sec: u32,
) -> anyhow::Result<()> {
    insert_all(ebpf, "SG_ADDR_V4", &policy.addr_v4, |k| AddrV4 {
        gen_dir: k.gen_dir,
        addr: k.addr,
    })?;
    insert_all(ebpf, "SG_ADDR_V6", &policy.addr_v6, |k| AddrV6 {
        gen_dir: k.gen_dir,
        addr: k.addr,
    })?;
    insert_all(ebpf, "SG_PORTS", &policy.ports, |k| PortKey {
        gen_dir: k.gen_dir,
        class: k.class,
        proto: k.proto,
        port: k.port,
        pad: 0,
    })?;
    let mut config: Array<_, Config> = Array::try_from(map(ebpf, "SG_CONFIG")?)?;
    config.set(
        0,
        Config {
            generation: 1,
            flags: 1,
            timeouts_ns: timeouts_ns(timeouts_s),
            events_per_sec,
            // What the legacy loader wrote.
            shortest_timeout_s: 10,
        },
        0,
    )?;
    Ok(())
}

/// Writes `entries` (LPM prefix length, key, value) into the LPM map
/// `name`, each key rewritten to the legacy layout by `key` (no policy id:
/// 32 bits less of prefix).
fn insert_all<S, K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &[(u32, S, V)],
    key: impl Fn(&S) -> K,
) -> anyhow::Result<()> {
    let mut map: LpmTrie<_, K, V> = LpmTrie::try_from(map(ebpf, name)?)?;
    for (len, k, value) in entries {
        map.insert(&Key::new(len - 32, key(k)), value, 0)?;
    }
    Ok(())
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow::anyhow!("the legacy object has no map {name}"))
}
