//! Workload endpoints as a container runtime registers them through the
//! daemon's socket (what `sg-cni` sends): the daemon runs where a container
//! host's veths are (the lab switch, whose `p0`, `p1`, `p2` are the host
//! ends of containers a, b, c), enforces each registered container from the
//! host side and makes its addresses members of its groups before it
//! answers. Registrations outlive a killed daemon. Needs root.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::Lab;
use sg_user::{
    agent::endpoints::{self, Endpoint, Request, Response},
    lab::probe::{Reach, TcpServer},
    require_root,
};

const T: Duration = Duration::from_millis(700);

/// Groups only: containers get theirs when they register.
const GROUPS: &str = "security_groups:
  - id: sg-web
    ingress:
      - { protocol: tcp, ports: 80, group: sg-client }
  - id: sg-client
";

/// `sgctl run --socket` inside the lab switch's namespace; killed on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn start(lab: &Lab, config: &Path, socket: &Path) -> Daemon {
        // nsenter, not `ip netns exec`: the daemon must see the host's bpffs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.seg.switch().name()))
            .arg(env!("CARGO_BIN_EXE_sgctl"))
            .args(["run", "-c"])
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sgctl run");
        let d = Daemon(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon never served {socket:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A lab whose switch runs `sgctl run --socket` on a groups-only config,
/// and a web server on a's port 80.
struct Setup {
    lab: Lab,
    config: PathBuf,
    socket: PathBuf,
    daemon: Daemon,
    _web: TcpServer,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let lab = Lab::new(tag);
        let config = lab.dir.join("groups.yaml");
        std::fs::write(&config, GROUPS).unwrap();
        let socket = lab.dir.join("agent.sock");
        let daemon = Daemon::start(&lab, &config, &socket);
        let _web = TcpServer::start(lab.ns("a"), "[::]:80".parse().unwrap()).unwrap();
        Setup {
            lab,
            config,
            socket,
            daemon,
            _web,
        }
    }
}

fn endpoint(lab: &Lab, id: &str, role: &str, port: &str, group: &str) -> Endpoint {
    let h = lab.host(role);
    Endpoint {
        container_id: id.into(),
        iface: port.into(),
        container_netns: format!("/run/netns/{}", h.netns.name()),
        addresses: vec![IpAddr::from(h.ipv4), IpAddr::from(h.ipv6)],
        groups: vec![group.into()],
        name: Some(role.into()),
        network_groups: vec![],
    }
}

fn call(socket: &Path, request: Request) -> Response {
    endpoints::call(socket, &request, Duration::from_secs(30)).expect("the daemon answers")
}

fn add(socket: &Path, e: Endpoint) -> Response {
    call(socket, Request::Add { endpoint: e })
}

fn del(socket: &Path, id: &str) -> Response {
    call(
        socket,
        Request::Del {
            container_id: id.into(),
        },
    )
}

fn check(socket: &Path, id: &str) -> Response {
    call(
        socket,
        Request::Check {
            container_id: id.into(),
        },
    )
}

#[test]
fn registered_containers_are_enforced_and_members_and_outlive_the_daemon() {
    require_root!();
    let Setup {
        lab,
        config,
        socket,
        mut daemon,
        _web,
    } = Setup::new("endpoints");
    assert_eq!(
        lab.tcp("c", "a", false, 80, T),
        Reach::Connected,
        "nothing registered: open"
    );

    assert_eq!(
        add(&socket, endpoint(&lab, "ctr-a", "a", "p0", "sg-web")),
        Response::ok()
    );
    lab.expect_tcp(
        T,
        &[
            ("b", "a", false, 80, Reach::Timeout, "b is in no group yet"),
            ("b", "a", true, 80, Reach::Timeout, "b is in no group yet"),
        ],
    );
    assert_eq!(
        add(&socket, endpoint(&lab, "ctr-b", "b", "p1", "sg-client")),
        Response::ok()
    );
    lab.expect_tcp(
        T,
        &[
            (
                "b",
                "a",
                false,
                80,
                Reach::Connected,
                "b's address joined sg-client on ADD",
            ),
            (
                "b",
                "a",
                true,
                80,
                Reach::Connected,
                "both of b's addresses",
            ),
            ("c", "a", false, 80, Reach::Timeout, "c is not a member"),
        ],
    );
    assert_eq!(check(&socket, "ctr-a"), Response::ok());
    assert!(
        !check(&socket, "ctr-nope").ok,
        "an unknown container fails CHECK"
    );
    // A group nobody defined: refused, and nothing of it stays.
    let refused = add(&socket, endpoint(&lab, "ctr-c", "c", "p2", "sg-nope"));
    assert!(
        !refused.ok
            && refused
                .error
                .as_deref()
                .is_some_and(|e| e.contains("sg-nope")),
        "{refused:?}"
    );
    assert!(
        !check(&socket, "ctr-c").ok,
        "the refused ADD left no registration"
    );
    assert_eq!(
        lab.tcp("b", "c", false, 80, T),
        Reach::Refused,
        "c stays unenforced (no server: refused, not dropped)"
    );

    // kill -9: enforcement and membership stay in the kernel.
    daemon.kill9();
    lab.expect_tcp(
        T,
        &[
            ("b", "a", false, 80, Reach::Connected, "after kill -9"),
            ("c", "a", false, 80, Reach::Timeout, "after kill -9"),
        ],
    );
    // A new daemon adopts the registrations; DEL works across the restart.
    let _daemon = Daemon::start(&lab, &config, &socket);
    assert_eq!(
        check(&socket, "ctr-b"),
        Response::ok(),
        "registrations survive a restart"
    );
    assert_eq!(del(&socket, "ctr-b"), Response::ok());
    assert_eq!(
        del(&socket, "ctr-b"),
        Response::ok(),
        "a second DEL succeeds"
    );
    assert_eq!(
        lab.tcp("b", "a", false, 80, T),
        Reach::Timeout,
        "b left sg-client"
    );
    assert_eq!(del(&socket, "ctr-a"), Response::ok());
    assert_eq!(
        lab.tcp("c", "a", false, 80, T),
        Reach::Connected,
        "a unprotected once deleted"
    );
}

/// `sg-cni` run as a runtime runs it: in the host's namespace (the
/// switch's), with the `CNI_*` environment and the network config (with
/// `prevResult`) on stdin. (exit status, stdout as JSON or Null).
fn sg_cni(
    lab: &Lab,
    command: &str,
    container_id: &str,
    container: &str,
    config: &serde_json::Value,
) -> (i32, serde_json::Value) {
    use std::io::Write as _;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.seg.switch().name()))
        .arg(env!("CARGO_BIN_EXE_sg-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env(
            "CNI_NETNS",
            format!("/run/netns/{}", lab.ns(container).name()),
        )
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAME={container}"),
        )
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sg-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("sg-cni printed `{text}`: {e}"))
    };
    (out.status.code().unwrap_or(-1), json)
}

/// What the bridge plugin hands on for `container` (CNI 0.4.0, as podman's
/// backend writes it): the bridge, the host end `port`, the container's
/// eth0, and its address.
fn prev_result(lab: &Lab, container: &str, port: &str) -> serde_json::Value {
    let h = lab.host(container);
    serde_json::json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            { "name": "br0", "mac": "02:00:00:00:00:fe" },
            { "name": port, "mac": "02:00:00:00:00:01" },
            { "name": "eth0", "mac": "02:00:00:00:00:02",
              "sandbox": format!("/run/netns/{}", h.netns.name()) }
        ],
        "ips": [
            { "version": "4", "interface": 2, "address": format!("{}/15", h.ipv4) },
            { "version": "6", "interface": 2, "address": format!("{}/32", h.ipv6) }
        ],
        "dns": {}
    })
}

#[test]
fn sg_cni_driven_as_a_runtime_drives_it() {
    require_root!();
    let Setup {
        lab,
        config,
        socket,
        mut daemon,
        _web,
    } = Setup::new("sgcni");
    let net = |prev: serde_json::Value, extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "sgnet",
            "type": "sg-cni",
            "socket": socket.to_str().unwrap(),
            "prevResult": prev,
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    let (status, version) = sg_cni(
        &lab,
        "VERSION",
        "x",
        "a",
        &serde_json::json!({"cniVersion": "1.0.0"}),
    );
    assert_eq!(status, 0);
    let listed = version["supportedVersions"].to_string();
    assert!(
        listed.contains("0.4.0") && listed.contains("1.0.0"),
        "{listed}"
    );

    // Groups from the network config for a, from the pod annotation for b.
    let prev_a = prev_result(&lab, "a", "p0");
    let (status, out) = sg_cni(
        &lab,
        "ADD",
        "ctr-a",
        "a",
        &net(
            prev_a.clone(),
            serde_json::json!({"securityGroups": ["sg-web"]}),
        ),
    );
    assert_eq!(status, 0, "{out}");
    assert_eq!(out, prev_a, "ADD hands prevResult on unchanged");
    let annotated = serde_json::json!({
        "securityGroups": ["sg-web"],
        "runtimeConfig": { "io.kubernetes.cri.pod-annotations": { "sgctl/security-groups": "sg-client" } }
    });
    let (status, out) = sg_cni(
        &lab,
        "ADD",
        "ctr-b",
        "b",
        &net(prev_result(&lab, "b", "p1"), annotated),
    );
    assert_eq!(status, 0, "{out}");
    lab.expect_tcp(
        T,
        &[
            (
                "b",
                "a",
                false,
                80,
                Reach::Connected,
                "b is in sg-client (annotation)",
            ),
            ("c", "a", false, 80, Reach::Timeout, "c is not registered"),
        ],
    );
    let (status, out) = sg_cni(
        &lab,
        "CHECK",
        "ctr-a",
        "a",
        &net(prev_a.clone(), serde_json::json!({})),
    );
    assert_eq!((status, out), (0, serde_json::Value::Null));

    // prevResult naming an interface that is not the container's peer.
    let (status, out) = sg_cni(
        &lab,
        "ADD",
        "ctr-x",
        "c",
        &net(
            prev_result(&lab, "c", "p0"),
            serde_json::json!({"securityGroups": ["sg-web"]}),
        ),
    );
    assert_eq!(
        (status, &out["code"]),
        (1, &serde_json::json!(101)),
        "{out}"
    );

    // The daemon down: ADD fails (the container must not start unprotected).
    daemon.kill9();
    let (status, out) = sg_cni(
        &lab,
        "ADD",
        "ctr-c",
        "c",
        &net(
            prev_result(&lab, "c", "p2"),
            serde_json::json!({"securityGroups": ["sg-web"]}),
        ),
    );
    assert_eq!((status, &out["code"]), (1, &serde_json::json!(11)), "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("not reachable"),
        "{out}"
    );
    assert_eq!(
        lab.tcp("b", "a", false, 80, T),
        Reach::Connected,
        "enforcement stays"
    );

    // Restarted: DEL works on what the old daemon registered, twice.
    let _daemon = Daemon::start(&lab, &config, &socket);
    let prev_b = prev_result(&lab, "b", "p1");
    for _ in 0..2 {
        let (status, out) = sg_cni(
            &lab,
            "DEL",
            "ctr-b",
            "b",
            &net(prev_b.clone(), serde_json::json!({})),
        );
        assert_eq!(status, 0, "{out}");
    }
    assert_eq!(
        lab.tcp("b", "a", false, 80, T),
        Reach::Timeout,
        "b left sg-client"
    );
    let (status, _) = sg_cni(
        &lab,
        "DEL",
        "ctr-a",
        "a",
        &net(prev_a, serde_json::json!({})),
    );
    assert_eq!(status, 0);
    assert_eq!(
        lab.tcp("c", "a", false, 80, T),
        Reach::Connected,
        "a's enforcement gone"
    );
}

/// Container runtimes start containers in parallel: many ADDs (and then
/// DELs) at once all succeed, each answered only once its own endpoint is
/// enforced and its address a member, none lost or half-applied.
#[test]
fn parallel_adds_and_dels_are_each_applied_completely() {
    require_root!();
    const EXTRA: usize = 11;
    let Setup {
        lab,
        socket,
        daemon: _daemon,
        _web,
        ..
    } = Setup::new("parallel");
    // More container veths on the switch (both ends there: the daemon only
    // enforces the host end); they vanish with the lab's namespaces.
    let switch = lab.seg.switch().name().to_owned();
    for i in 0..EXTRA {
        let status = Command::new("ip")
            .args(["-n", &switch, "link", "add", &format!("px{i}"), "type"])
            .args(["veth", "peer", "name", &format!("qx{i}")])
            .status()
            .expect("run ip");
        assert!(status.success(), "creating veth px{i}");
        let status = Command::new("ip")
            .args(["-n", &switch, "link", "set", &format!("px{i}"), "up"])
            .status()
            .expect("run ip");
        assert!(status.success(), "setting px{i} up");
    }
    assert_eq!(
        add(&socket, endpoint(&lab, "ctr-a", "a", "p0", "sg-web")),
        Response::ok()
    );
    // b's real port and the extra ones, all at once.
    let mut batch = vec![endpoint(&lab, "ctr-b", "b", "p1", "sg-client")];
    for i in 0..EXTRA {
        batch.push(Endpoint {
            container_id: format!("ctr-x{i}"),
            iface: format!("px{i}"),
            container_netns: format!("/run/netns/{switch}"),
            addresses: vec![format!("198.18.0.{}", 200 + i).parse().unwrap()],
            groups: vec!["sg-client".into()],
            name: None,
            network_groups: vec![],
        });
    }
    let ids: Vec<String> = batch.iter().map(|e| e.container_id.clone()).collect();
    let answers: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .into_iter()
            .map(|e| s.spawn(|| add(&socket, e)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, answer) in ids.iter().zip(&answers) {
        assert_eq!(answer, &Response::ok(), "parallel ADD of {id}");
        assert_eq!(check(&socket, id), Response::ok(), "{id} enforced");
    }
    lab.expect_tcp(
        T,
        &[
            (
                "b",
                "a",
                false,
                80,
                Reach::Connected,
                "b joined sg-client in the parallel batch",
            ),
            ("c", "a", false, 80, Reach::Timeout, "c is not a member"),
        ],
    );
    let answers: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = ids.iter().map(|id| s.spawn(|| del(&socket, id))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, answer) in ids.iter().zip(&answers) {
        assert_eq!(answer, &Response::ok(), "parallel DEL of {id}");
        assert!(!check(&socket, id).ok, "{id} is gone after DEL");
    }
    assert_eq!(
        lab.tcp("b", "a", false, 80, T),
        Reach::Timeout,
        "b left sg-client"
    );
    assert_eq!(del(&socket, "ctr-a"), Response::ok());
}
