//! One data plane per host, at scale: 200 interfaces in four namespaces,
//! enforced by one `apply`, with real traffic on a sample of them, and the
//! programs they run loaded once — not once per interface.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use sg_user::{
    agent::apply::{self, ApplyOptions},
    kernel::dataplane,
    kernel::loader,
    kernel::pins::IfaceId,
    lab::probe::{self, Reach, TcpServer},
    require_root,
    sys::netns::{Netns, run_checked},
};

const T: Duration = Duration::from_millis(700);
const NAMESPACES: usize = 4;
const PER_NAMESPACE: usize = 50;
/// Interfaces per namespace whose peer is in a client namespace (traffic).
const SAMPLED: usize = 2;

/// Detaches everything attached in `names` when dropped (before the
/// namespaces go).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in sg_user::kernel::dataplane::attached_ifaces().unwrap_or_default() {
            if id.netns.as_ref().is_some_and(|n| self.0.contains(n)) {
                let _ = apply::detach(&id);
            }
        }
    }
}

#[test]
fn two_hundred_interfaces_share_one_set_of_programs() {
    require_root!();
    let hosts: Vec<Netns> = (0..NAMESPACES)
        .map(|k| Netns::create(&format!("scale{k}")).unwrap())
        .collect();
    let clients: Vec<Vec<Netns>> = (0..NAMESPACES)
        .map(|k| {
            (0..SAMPLED)
                .map(|j| Netns::create(&format!("sc{k}{j}")).unwrap())
                .collect()
        })
        .collect();
    let names: Vec<String> = hosts.iter().map(|h| h.name().to_string()).collect();
    let _cleanup = Cleanup(names.clone());
    let dir = std::env::temp_dir().join(format!("sg-test-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Interfaces v0..v49 in each namespace: the first SAMPLED with their
    // peer in a client namespace (198.18.K.(4j+1) ↔ .(4j+2)), the others
    // with both ends inside.
    let mut config = String::from(
        "security_groups:
  - id: sg-web
    ingress:
      - { protocol: tcp, ports: 80, cidr: 198.18.0.0/15 }
  - id: sg-ssh
    ingress:
      - { protocol: tcp, ports: 22, cidr: 198.18.0.0/15 }
interfaces:
",
    );
    for (k, host) in hosts.iter().enumerate() {
        let mut batch = String::new();
        for i in SAMPLED..PER_NAMESPACE {
            writeln!(batch, "link add v{i} type veth peer name p{i}").unwrap();
            writeln!(batch, "link set v{i} up\nlink set p{i} up").unwrap();
        }
        let path = dir.join(format!("links{k}.batch"));
        std::fs::write(&path, batch).unwrap();
        run_checked("ip", &["-n", host.name(), "-batch", path.to_str().unwrap()]).unwrap();
        for (j, client) in clients[k].iter().enumerate() {
            let v = format!("v{j}");
            host.veth_to(&v, client, "eth0").unwrap();
            host.add_addr(&v, &format!("198.18.{k}.{}/30", 4 * j + 1))
                .unwrap();
            client
                .add_addr("eth0", &format!("198.18.{k}.{}/30", 4 * j + 2))
                .unwrap();
        }
        for i in 0..PER_NAMESPACE {
            // Even interfaces web, odd ssh: two group sets, two policies.
            let group = if i % 2 == 0 { "sg-web" } else { "sg-ssh" };
            writeln!(
                config,
                "  - {{ name: v{i}, netns: \"{}\", security_groups: [{group}], addresses: [198.18.{k}.{}] }}",
                host.name(),
                i + 100
            )
            .unwrap();
        }
    }
    let path = dir.join("scale.yaml");
    std::fs::write(&path, &config).unwrap();
    let model = apply::load(&path, &[]).unwrap_or_else(|p| panic!("config invalid: {p:#?}"));
    let started = Instant::now();
    let changes = apply::apply(&model, &ApplyOptions::default()).expect("apply");
    eprintln!(
        "applied {} interfaces in {:?}",
        changes.len(),
        started.elapsed()
    );
    let attached = changes
        .iter()
        .filter(|c| c.action == sg_user::agent::apply::Action::Attached)
        .count();
    assert_eq!(attached, NAMESPACES * PER_NAMESPACE, "{changes:?}");

    // Real traffic on the sample: web interfaces answer on 80 only, ssh
    // interfaces on 22 only.
    for (k, host) in hosts.iter().enumerate() {
        for (j, client) in clients[k].iter().enumerate() {
            let addr = |port| -> SocketAddr {
                format!("198.18.{k}.{}:{port}", 4 * j + 1).parse().unwrap()
            };
            let _servers: Vec<TcpServer> = [80, 22]
                .map(|p| TcpServer::start(host, addr(p)).unwrap())
                .into();
            let (open, closed) = if j % 2 == 0 { (80, 22) } else { (22, 80) };
            assert_eq!(
                probe::tcp_connect(client, addr(open), T),
                Reach::Connected,
                "v{j}@{}: port {open} allowed",
                host.name()
            );
            assert_eq!(
                probe::tcp_connect(client, addr(closed), T),
                Reach::Timeout,
                "v{j}@{}: port {closed} dropped",
                host.name()
            );
        }
    }

    // Every interface runs the same programs: the data plane's, loaded once.
    let mut running = BTreeSet::new();
    let mut policies = BTreeSet::new();
    let mut endpoints = BTreeSet::new();
    for host in &hosts {
        for i in 0..PER_NAMESPACE {
            let id = IfaceId::new(&format!("v{i}"), Some(host.name()));
            let hooks = loader::pinned_hooks(&id).unwrap();
            assert_eq!(hooks.len(), 2, "{id}: ingress and egress linked");
            running.extend(hooks.iter().map(|h| h.program_id));
            let (cfg, _) = loader::settings(&id).unwrap();
            policies.insert(cfg.policy);
            endpoints.insert(cfg.endpoint);
        }
    }
    let pinned: BTreeSet<u32> = dataplane::program_ids().into_iter().collect();
    assert!(
        running.len() <= 2 && running.is_subset(&pinned),
        "200 interfaces run {} programs {running:?}; the data plane has {pinned:?}",
        running.len()
    );
    let loaded: BTreeSet<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| running.contains(id))
        .collect();
    assert_eq!(loaded, running, "each is loaded once");
    assert_eq!(
        policies.len(),
        2,
        "two group sets, two policies: {policies:?}"
    );
    assert_eq!(
        endpoints.len(),
        NAMESPACES * PER_NAMESPACE,
        "one endpoint each"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
