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

use aya::programs::{SchedClassifier, TcAttachType, links::FdLink};
use common::{A_ONLY, Lab};
use sg_user::{
    compile,
    harness::legacy,
    kernel::pins::{self, IfaceId},
    lab::probe::{self, Reach, TcpEcho, TcpServer, TcpSession},
    require_root,
};

const T: Duration = Duration::from_millis(700);

/// Enforces `model`'s policy on `id` the way the legacy loader did: its own
/// programs and maps, pinned under `dir`, links pinned beside them.
fn attach_legacy(model: &sg_user::model::Model, id: &IfaceId, dir: &Path) {
    let mut ebpf = legacy::open(0, 1024).expect("the legacy object loads");
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
    legacy::install(&mut ebpf, &policy, compile::timeouts_s(&iface.conntrack), 0)
        .expect("the legacy policy installs");
    let ns = id.netns.clone().unwrap();
    sg_user::sys::netns::in_netns(Some(&ns), || {
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
        sg_user::agent::apply::load(&path, &[]).unwrap()
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
    lab.expect_tcp(
        T,
        &[
            ("b", "a", false, 80, Reach::Connected, "legacy: 80 allowed"),
            ("b", "a", false, 22, Reach::Timeout, "legacy: 22 dropped"),
        ],
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
        let b = sg_user::sys::netns::Netns::open(lab.ns("b").name()).unwrap();
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
    let changes =
        sg_user::agent::apply::apply(&model, &sg_user::agent::apply::ApplyOptions::default())
            .expect("apply upgrades");
    lab.applied.push(id.clone());
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();

    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0].action,
        sg_user::agent::apply::Action::Upgraded,
        "{changes:?}"
    );
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
    lab.expect_tcp(
        T,
        &[
            ("b", "a", false, 80, Reach::Connected, "after: 80 allowed"),
            ("b", "a", false, 22, Reach::Timeout, "after: 22 dropped"),
        ],
    );
    let hooks = sg_user::kernel::loader::pinned_hooks(&id).unwrap();
    let shared: std::collections::BTreeSet<u32> = sg_user::kernel::dataplane::program_ids()
        .into_iter()
        .collect();
    assert!(
        hooks.len() == 2 && hooks.iter().all(|h| shared.contains(&h.program_id)),
        "both links run the shared programs: {hooks:?} vs {shared:?}"
    );
}
