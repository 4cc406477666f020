//! Upgrade in place: an interface enforced by the layout before one data
//! plane per host (its own programs and maps under
//! `/sys/fs/bpf/sg/netns-NAME/IFACE/`, set up here with that release's
//! object, `fixtures/sg-legacy-57b6b46.bpf.o`) is moved onto the shared data
//! plane by `apply` without a moment unenforced and without dropping its
//! established flows.

mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aya::{
    EbpfLoader,
    maps::{Array, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{SchedClassifier, TcAttachType, links::FdLink},
};
use common::{A_ONLY, Lab};
use sg_common::conntrack::TIMEOUT_SLOTS;
use sg_user::{
    compile,
    pins::{self, IfaceId},
    policy_maps::timeouts_ns,
    probe::{self, Reach, TcpEcho, TcpServer, TcpSession},
    require_root,
};

const T: Duration = Duration::from_millis(700);

static LEGACY_OBJECT: &[u8] = aya::include_bytes_aligned!("fixtures/sg-legacy-57b6b46.bpf.o");

// The legacy layouts (no policy id in keys, one config slot per interface).
#[repr(C)]
#[derive(Clone, Copy)]
struct OldAddrV4 {
    gen_dir: [u8; 4],
    addr: [u8; 4],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct OldAddrV6 {
    gen_dir: [u8; 4],
    addr: [u8; 16],
}
#[repr(C)]
#[derive(Clone, Copy)]
struct OldPortKey {
    gen_dir: [u8; 4],
    class: [u8; 4],
    proto: u8,
    port: [u8; 2],
    pad: u8,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct OldConfig {
    generation: u32,
    flags: u32,
    timeouts_ns: [u64; TIMEOUT_SLOTS],
    events_per_sec: u32,
    shortest_timeout_s: u32,
}
// SAFETY: repr(C) integers and byte arrays, no implicit padding.
unsafe impl aya::Pod for OldAddrV4 {}
// SAFETY: as above.
unsafe impl aya::Pod for OldAddrV6 {}
// SAFETY: as above.
unsafe impl aya::Pod for OldPortKey {}
// SAFETY: as above (8 + 72 + 8 bytes).
unsafe impl aya::Pod for OldConfig {}

/// Enforces `model`'s policy on `id` the way the legacy loader did: its own
/// programs and maps, pinned under `dir`, links pinned beside them.
fn attach_legacy(model: &sg_user::model::Model, id: &IfaceId, dir: &Path) {
    let side: u8 = 0;
    let off: u8 = 0;
    let mut ebpf = EbpfLoader::new()
        .override_global("SG_SIDE_PEER", &side, true)
        .override_global(aya_log::LEVEL, &off, true)
        .map_max_entries("SG_CT_V4", 1024)
        .map_max_entries("SG_CT_V6", 1024)
        .load(LEGACY_OBJECT)
        .expect("the legacy object loads");
    for name in ["sg_tc_ingress", "sg_tc_egress"] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("legacy program verifies");
    }
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> = ebpf
        .maps()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with("SG_"))
        .collect();
    for name in &names {
        ebpf.map(name).unwrap().pin(dir.join(name)).unwrap();
    }
    // The policy, as generation 1 of the legacy layout.
    let iface = &model.interfaces[0];
    let policy = compile::compile_iface(model, iface, 1);
    let mut v4: LpmTrie<_, OldAddrV4, u32> =
        LpmTrie::try_from(ebpf.map_mut("SG_ADDR_V4").unwrap()).unwrap();
    for (len, k, class) in &policy.addr_v4 {
        let key = OldAddrV4 {
            gen_dir: k.gen_dir,
            addr: k.addr,
        };
        v4.insert(&Key::new(len - 32, key), class, 0).unwrap();
    }
    let mut v6: LpmTrie<_, OldAddrV6, u32> =
        LpmTrie::try_from(ebpf.map_mut("SG_ADDR_V6").unwrap()).unwrap();
    for (len, k, class) in &policy.addr_v6 {
        let key = OldAddrV6 {
            gen_dir: k.gen_dir,
            addr: k.addr,
        };
        v6.insert(&Key::new(len - 32, key), class, 0).unwrap();
    }
    let mut ports: LpmTrie<_, OldPortKey, sg_common::policy::PolicyHit> =
        LpmTrie::try_from(ebpf.map_mut("SG_PORTS").unwrap()).unwrap();
    for (len, k, hit) in &policy.ports {
        let key = OldPortKey {
            gen_dir: k.gen_dir,
            class: k.class,
            proto: k.proto,
            port: k.port,
            pad: 0,
        };
        ports.insert(&Key::new(len - 32, key), hit, 0).unwrap();
    }
    let timeouts = timeouts_ns(compile::timeouts_s(&iface.conntrack));
    let mut config: Array<_, OldConfig> =
        Array::try_from(ebpf.map_mut("SG_CONFIG").unwrap()).unwrap();
    config
        .set(
            0,
            OldConfig {
                generation: 1,
                flags: 1,
                timeouts_ns: timeouts,
                events_per_sec: 0,
                shortest_timeout_s: 10,
            },
            0,
        )
        .unwrap();
    let ns = id.netns.clone().unwrap();
    sg_user::netns::in_netns(Some(&ns), || {
        for (name, attach, pin) in [
            ("sg_tc_ingress", TcAttachType::Ingress, "link-ingress-tc"),
            ("sg_tc_egress", TcAttachType::Egress, "link-egress-tc"),
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            let link = p.attach(&id.iface, attach).unwrap();
            let link: FdLink = p.take_link(link).unwrap().try_into().unwrap();
            link.pin(dir.join(pin)).unwrap();
        }
    })
    .unwrap();
}

#[test]
fn legacy_attachment_moves_to_the_shared_data_plane_without_opening() {
    require_root!();
    let mut lab = Lab::new("upgrade");
    let a = lab.ns("a").name().to_string();
    let id = IfaceId::new("eth0", Some(&a));
    let legacy_dir = id.legacy_dir();
    // Ingress: 80 from b only; egress: the default (everything) under the
    // legacy layout, nothing after the upgrade — so the outbound flow below
    // lives on only through its connection entry (AWS: a tracked flow
    // outlives the rule that admitted it).
    let config = |egress: &str| {
        format!(
            "security_groups:\n  - id: sg-a\n    ingress:\n      - {{ protocol: tcp, ports: 80, cidr: 198.18.0.2/32 }}\n{egress}{A_ONLY}"
        )
        .replace("{a}", &a)
    };
    let load = |name: &str, yaml: String| {
        let path = lab.dir.join(name);
        std::fs::write(&path, yaml).unwrap();
        sg_user::apply::load(&path, &[]).unwrap()
    };
    let old = load("old.yaml", config(""));
    let model = load("new.yaml", config("    egress: []\n"));
    attach_legacy(&old, &id, &legacy_dir);
    struct RemoveLegacy(std::path::PathBuf);
    impl Drop for RemoveLegacy {
        fn drop(&mut self) {
            let _ = pins::remove_legacy_dir(&self.0);
        }
    }
    let _legacy = RemoveLegacy(legacy_dir.clone());

    let _web = TcpServer::start(lab.ns("a"), lab.addr("a", false, 80)).unwrap();
    let _ssh = TcpServer::start(lab.ns("a"), lab.addr("a", false, 22)).unwrap();
    let _echo = TcpEcho::start(lab.ns("b"), lab.addr("b", false, 9000)).unwrap();
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 80), T),
        Reach::Connected,
        "legacy: 80 allowed"
    );
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 22), T),
        Reach::Timeout,
        "legacy: 22 dropped"
    );
    // An established flow that only its connection entry lets back in: a
    // opened it (egress allows all), no ingress rule admits b:9000.
    let mut session = TcpSession::connect(lab.ns("a"), lab.addr("b", false, 9000), T).unwrap();
    assert!(session.roundtrip(), "legacy: the outbound flow works");

    // During the upgrade, keep trying port 22: not one may connect.
    let stop = Arc::new(AtomicBool::new(false));
    let leaked = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (stop, leaked, tries) = (stop.clone(), leaked.clone(), tries.clone());
        let b = sg_user::netns::Netns::open(lab.ns("b").name()).unwrap();
        let dst = lab.addr("a", false, 22);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if probe::tcp_connect(&b, dst, Duration::from_millis(50)) == Reach::Connected {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
                tries.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let changes = sg_user::apply::apply(&model, &sg_user::apply::ApplyOptions::default())
        .expect("apply upgrades");
    lab.applied.push(id.clone());
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();

    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].action, "upgraded", "{changes:?}");
    assert!(
        !legacy_dir.exists(),
        "the legacy programs and maps are gone"
    );
    assert!(id.dir().exists(), "linked in the new layout");
    assert!(tries.load(Ordering::Relaxed) > 2, "the prober really ran");
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "port 22 never opened during the upgrade"
    );
    assert!(
        session.roundtrip(),
        "the established flow survived (its connection entry was carried over)"
    );
    assert!(
        TcpSession::connect(lab.ns("a"), lab.addr("b", false, 9000), T).is_err(),
        "while a new outbound flow is refused by the new rules"
    );
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 80), T),
        Reach::Connected,
        "after: 80 allowed"
    );
    assert_eq!(
        probe::tcp_connect(lab.ns("b"), lab.addr("a", false, 22), T),
        Reach::Timeout,
        "after: 22 dropped"
    );
    let hooks = sg_user::loader::pinned_hooks(&id).unwrap();
    let shared: std::collections::BTreeSet<u32> =
        sg_user::dataplane::program_ids().into_iter().collect();
    assert!(
        hooks.len() == 2 && hooks.iter().all(|h| shared.contains(&h.program_id)),
        "both links run the shared programs: {hooks:?} vs {shared:?}"
    );
}
