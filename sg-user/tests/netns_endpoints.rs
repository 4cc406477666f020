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

fn endpoint(lab: &Lab, id: &str, role: &str, port: &str, group: &str) -> Endpoint {
    let h = lab.host(role);
    Endpoint {
        container_id: id.into(),
        iface: port.into(),
        container_netns: format!("/run/netns/{}", h.netns.name()),
        addresses: vec![IpAddr::from(h.ipv4), IpAddr::from(h.ipv6)],
        groups: vec![group.into()],
        name: Some(role.into()),
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
    let lab = Lab::new("endpoints");
    let config: PathBuf = lab.dir.join("groups.yaml");
    std::fs::write(&config, GROUPS).unwrap();
    let socket = lab.dir.join("agent.sock");
    let mut daemon = Daemon::start(&lab, &config, &socket);
    let _web = TcpServer::start(lab.ns("a"), "[::]:80".parse().unwrap()).unwrap();
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
