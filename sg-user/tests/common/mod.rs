//! Shared by the netns test files: a small lab of namespaces with a config
//! applied through the same code as `sgctl apply`, cleaned up on drop.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use sg_user::{
    agent::apply::{self, ApplyOptions},
    kernel::pins::IfaceId,
    lab::probe::{self, Reach},
    model::Model,
    sys::netns::{Host, Netns, Segment},
};

/// A directory of its own for a test (`tag`), in the temporary directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// [`scratch_dir`] with `yaml` written to `cfg.yaml` in it, for a test
/// without a [`Lab`]: (directory, config path).
#[allow(dead_code, reason = "used by the tests that build no Lab")]
pub fn scratch_config(tag: &str, yaml: &str) -> (PathBuf, PathBuf) {
    let dir = scratch_dir(tag);
    let path = dir.join("cfg.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// Hosts `a` (protected), `b` and `c` on one bridge, and a config file.
pub struct Lab {
    pub seg: Segment,
    pub dir: PathBuf,
    pub applied: Vec<IfaceId>,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let mut seg = Segment::new().expect("segment");
        for (role, v4, v6) in [
            ("a", [198, 18, 0, 1], "2001:db8::1"),
            ("b", [198, 18, 0, 2], "2001:db8::2"),
            ("c", [198, 19, 0, 3], "2001:db8:c::3"),
        ] {
            seg.add_host(role, Ipv4Addr::from(v4), v6.parse().unwrap())
                .unwrap();
        }
        let dir = scratch_dir(tag);
        Lab {
            seg,
            dir,
            applied: Vec::new(),
        }
    }

    pub fn host(&self, role: &str) -> &Host {
        self.seg.host(role)
    }

    pub fn ns(&self, role: &str) -> &Netns {
        &self.host(role).netns
    }

    pub fn addr(&self, role: &str, v6: bool, port: u16) -> SocketAddr {
        let h = self.host(role);
        let ip: IpAddr = if v6 { h.ipv6.into() } else { h.ipv4.into() };
        SocketAddr::new(ip, port)
    }

    /// A TCP connection attempt from `from` to `port` of `to`, waiting at
    /// most `timeout`.
    pub fn tcp(&self, from: &str, to: &str, v6: bool, port: u16, timeout: Duration) -> Reach {
        probe::tcp_connect(self.ns(from), self.addr(to, v6, port), timeout)
    }

    /// Asserts how each connection attempt `(from, to, v6, port)` ends.
    #[allow(dead_code, reason = "not every test file checks tables of probes")]
    pub fn expect_tcp(&self, timeout: Duration, cases: &[(&str, &str, bool, u16, Reach, &str)]) {
        for &(from, to, v6, port, reach, what) in cases {
            let got = self.tcp(from, to, v6, port, timeout);
            assert_eq!(got, reach, "{what} (v6={v6})");
        }
    }

    /// Applies `groups_yaml` with an `interfaces:` entry protecting a's eth0
    /// (`{a}`, `{b}` in the text become the namespaces' names).
    #[allow(dead_code, reason = "some test files apply through sgctl")]
    pub fn apply_with(&mut self, yaml: &str, opts: &ApplyOptions) -> Model {
        let text = yaml
            .replace("{a}", self.ns("a").name())
            .replace("{b}", self.ns("b").name());
        let path = self.dir.join("config.yaml");
        std::fs::write(&path, text).unwrap();
        let model =
            apply::load(&path, &[]).unwrap_or_else(|p| panic!("test config invalid: {p:#?}"));
        for change in apply::apply(&model, opts).expect("apply") {
            let (iface, ns) = change.iface.split_once('@').expect("namespaced");
            let id = IfaceId::new(iface, Some(ns));
            if !self.applied.contains(&id) {
                self.applied.push(id);
            }
        }
        model
    }

    #[allow(dead_code, reason = "some test files apply through sgctl")]
    pub fn apply(&mut self, yaml: &str) -> Model {
        self.apply_with(yaml, &ApplyOptions::default())
    }
}

impl Drop for Lab {
    /// Detaches everything attached in the lab's namespaces, whoever did it.
    fn drop(&mut self) {
        let ours: Vec<String> = self
            .seg
            .hosts
            .iter()
            .map(|h| h.netns.name().to_string())
            .collect();
        // The switch's ports too (workload endpoints a daemon inside the
        // switch attached: recorded by namespace identity, not name).
        let switch = sg_user::kernel::pins::NsIdent::named(self.seg.switch().name()).ok();
        let attached = sg_user::kernel::dataplane::attached_ifaces().unwrap_or_default();
        for id in attached
            .iter()
            .filter(|id| {
                id.netns.as_ref().is_some_and(|n| ours.contains(n)) || Some(id.ns) == switch
            })
            .chain(&self.applied)
        {
            let _ = apply::detach(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(dead_code, reason = "some test files write whole configs")]
pub const A_ONLY: &str = "interfaces:\n  - { name: eth0, netns: \"{a}\", security_groups: [sg-a], addresses: [198.18.0.1, \"2001:db8::1\"] }\n";
