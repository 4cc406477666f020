//! Real traffic between two namespaces over veth, the same rules expressed
//! for each peer: unfiltered (the ceiling), this project, iptables with
//! conntrack laid out as OpenStack Neutron does, nftables with sets + ct,
//! and xdp-filter (stateless; it can express "allow these ports").

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use sg_user::{
    agent::apply::{self, ApplyOptions},
    kernel::pins::IfaceId,
    sys::netns::{Host, Netns, Segment},
};

pub const IPERF_PORT: u16 = 5201;
pub const CONN_PORT: u16 = 7000;

/// The firewalls compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Peer {
    Unfiltered,
    Sg,
    Iptables,
    Nftables,
    XdpFilter,
}

impl Peer {
    pub const ALL: [Peer; 5] = [
        Peer::Unfiltered,
        Peer::Sg,
        Peer::Iptables,
        Peer::Nftables,
        Peer::XdpFilter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Unfiltered => "unfiltered",
            Peer::Sg => "sg (this project)",
            Peer::Iptables => "iptables + conntrack (Neutron layout)",
            Peer::Nftables => "nftables (sets + ct)",
            Peer::XdpFilter => "xdp-filter (stateless)",
        }
    }
}

/// Client and server namespaces; the server's eth0 is the protected side.
pub struct Testbed {
    pub seg: Segment,
    dir: std::path::PathBuf,
}

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

impl Testbed {
    pub fn new() -> Result<Testbed> {
        let mut seg = Segment::new()?;
        seg.add_host("client", CLIENT, "2001:db8::1".parse()?)?;
        seg.add_host("server", SERVER, "2001:db8::2".parse()?)?;
        let dir = std::env::temp_dir().join(format!("sg-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Testbed { seg, dir })
    }

    pub fn server(&self) -> &Netns {
        &self.seg.host("server").netns
    }

    pub fn client(&self) -> &Netns {
        &self.seg.host("client").netns
    }

    pub fn iface(&self) -> IfaceId {
        IfaceId::new(Host::IFACE, Some(self.server().name()))
    }

    /// `rules` filler rules (never matching the client) before the rules that
    /// allow the benchmark's ports, so rule-linear firewalls walk them all.
    pub fn install(&self, peer: Peer, rules: usize) -> Result<()> {
        self.remove(peer)?;
        // `rules` in total: fillers plus the four that allow the benchmark.
        let fillers: Vec<String> = (0..rules.saturating_sub(4))
            .map(|i| format!("198.19.{}.{}/32", i / 250, i % 250 + 1))
            .collect();
        match peer {
            Peer::Unfiltered => Ok(()),
            Peer::Sg => self.install_sg(&fillers),
            Peer::Iptables => self.install_iptables(&fillers),
            Peer::Nftables => self.install_nftables(&fillers),
            Peer::XdpFilter => {
                self.xdp_filter(&["load", "--mode", "skb", "--policy", "deny", Host::IFACE])?;
                for port in [IPERF_PORT, CONN_PORT] {
                    self.xdp_filter(&["port", "--mode", "dst", &port.to_string()])?;
                }
                Ok(())
            }
        }
    }

    fn install_sg(&self, fillers: &[String]) -> Result<()> {
        let mut y = String::from(
            "quotas: { rules_per_group: 1000, groups_per_interface: 1, rules_per_interface: 1000 }\nsecurity_groups:\n  - id: sg-bench\n    ingress:\n",
        );
        for (i, f) in fillers.iter().enumerate() {
            y.push_str(&format!(
                "      - {{ protocol: tcp, ports: {}, cidr: {f} }}\n",
                10000 + i % 1000
            ));
        }
        for port in [IPERF_PORT, CONN_PORT] {
            y.push_str(&format!(
                "      - {{ protocol: tcp, ports: {port}, cidr: {CLIENT}/32 }}\n"
            ));
            y.push_str(&format!(
                "      - {{ protocol: udp, ports: {port}, cidr: {CLIENT}/32 }}\n"
            ));
        }
        y.push_str(&format!(
            "interfaces:\n  - {{ name: eth0, netns: \"{}\", security_groups: [sg-bench], addresses: [{SERVER}] }}\n",
            self.server().name()
        ));
        let path = self.dir.join("sg.yaml");
        std::fs::write(&path, y)?;
        let model =
            apply::load(&path, &[]).map_err(|p| anyhow::anyhow!("bench config invalid: {p:?}"))?;
        apply::apply(&model, &ApplyOptions::default())?;
        Ok(())
    }

    fn install_iptables(&self, fillers: &[String]) -> Result<()> {
        // Neutron: a per-port chain, ESTABLISHED/RELATED first, then the rules.
        let mut script =
            String::from("*filter\n:INPUT ACCEPT [0:0]\n:sg-bench - [0:0]\n-A INPUT -j sg-bench\n");
        script.push_str("-A sg-bench -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n");
        script.push_str("-A sg-bench -m conntrack --ctstate INVALID -j DROP\n");
        for (i, f) in fillers.iter().enumerate() {
            script.push_str(&format!(
                "-A sg-bench -s {f} -p tcp --dport {} -j RETURN\n",
                10000 + i % 1000
            ));
        }
        for port in [IPERF_PORT, CONN_PORT] {
            for proto in ["tcp", "udp"] {
                script.push_str(&format!(
                    "-A sg-bench -s {CLIENT}/32 -p {proto} --dport {port} -j RETURN\n"
                ));
            }
        }
        script.push_str("-A sg-bench -j DROP\nCOMMIT\n");
        self.restore("iptables-restore", &script)
    }

    fn install_nftables(&self, fillers: &[String]) -> Result<()> {
        let mut elems: Vec<String> = fillers
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} . {}", f.trim_end_matches("/32"), 10000 + i % 1000))
            .collect();
        for port in [IPERF_PORT, CONN_PORT] {
            elems.push(format!("{CLIENT} . {port}"));
        }
        let script = format!(
            "table inet sgbench {{
  set allowed {{ type ipv4_addr . inet_service; elements = {{ {} }} }}
  chain input {{
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    ct state invalid drop
    ip saddr . tcp dport @allowed accept
    ip saddr . udp dport @allowed accept
    meta l4proto {{ icmp, ipv6-icmp }} accept
    meta nfproto ipv6 accept
  }}
}}
",
            elems.join(", ")
        );
        self.restore("nft", &script)
    }

    /// Runs xdp-filter in the server's network namespace only: `ip netns
    /// exec` remounts /sys, which hides the bpffs xdp-filter pins its maps
    /// in (its load then fails and the rows measure no filter at all).
    fn xdp_filter(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server().name()))
            .arg("xdp-filter")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "xdp-filter {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn restore(&self, tool: &str, script: &str) -> Result<()> {
        let path = self.dir.join(format!("{tool}.rules"));
        std::fs::write(&path, script)?;
        let path = path.to_str().expect("utf-8 path");
        let args: Vec<&str> = if tool == "nft" {
            vec!["-f", path]
        } else {
            vec![path]
        };
        let out = self.server().exec(tool, &args)?;
        if !out.status.success() {
            bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Removes whatever `peer` installed (only inside the server namespace).
    pub fn remove(&self, peer: Peer) -> Result<()> {
        match peer {
            Peer::Unfiltered => {}
            Peer::Sg => {
                if self.iface().dir().exists() {
                    apply::detach(&self.iface())?;
                }
            }
            Peer::Iptables => {
                self.server().exec("iptables", &["-F"])?;
                self.server().exec("iptables", &["-X"])?;
            }
            Peer::Nftables => {
                self.server()
                    .exec("nft", &["delete", "table", "inet", "sgbench"])?;
            }
            Peer::XdpFilter => {
                // Not loaded is fine here (removing before installing).
                let _ = self.xdp_filter(&["unload", Host::IFACE]);
            }
        }
        Ok(())
    }

    fn iperf_server(&self) -> Result<Child> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.server().name(),
                "iperf3",
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (is iperf3 installed? `cargo xtask setup`)")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(child)
    }

    fn iperf(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = vec!["-c", "198.18.0.2", "-p", "5201", "-J"];
        full.extend_from_slice(args);
        let out = self.client().exec("iperf3", &full)?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
        if let Some(e) = json.get("error") {
            bail!("iperf3: {e}");
        }
        Ok(json)
    }

    /// TCP throughput of one established flow, Gbit/s.
    pub fn tcp_throughput(&self, secs: u64) -> Result<f64> {
        let mut server = self.iperf_server()?;
        let r = self.iperf(&["-t", &secs.to_string()]);
        let _ = server.kill();
        let _ = server.wait();
        let bps = r?["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no throughput in iperf3 output")?;
        Ok(bps / 1e9)
    }

    /// Small-packet UDP rate (64-byte payloads, two senders), packets/s received.
    pub fn udp_pps(&self, secs: u64) -> Result<f64> {
        let mut server = self.iperf_server()?;
        let r = self.iperf(&[
            "-u",
            "-l",
            "64",
            "-b",
            "0",
            "-P",
            "2",
            "-t",
            &secs.to_string(),
        ]);
        let _ = server.kill();
        let _ = server.wait();
        let r = r?;
        let sum = &r["end"]["sum"];
        let packets = sum["packets"].as_f64().context("no packet count")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"].as_f64().unwrap_or(secs as f64).max(0.001);
        Ok((packets - lost) / seconds)
    }

    /// New TCP connections per second (connect, read one byte, close).
    pub fn conn_rate(&self, secs: u64) -> Result<f64> {
        let listener = self
            .server()
            .run(|| TcpListener::bind(("0.0.0.0", CONN_PORT)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            // Blocking accept: the last connection below wakes it to stop.
            while let Ok((mut s, _)) = listener.accept() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let _ = s.write_all(b"!");
            }
        });
        let dst = SocketAddr::from((SERVER, CONN_PORT));
        let count = self.client().run(|| {
            use std::io::Read;
            let end = Instant::now() + Duration::from_secs(secs);
            let mut n = 0u64;
            while Instant::now() < end {
                if let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
                    let mut b = [0u8; 1];
                    // Close with RST so client ports are not exhausted by TIME_WAIT.
                    let _ = s.close_with_reset();
                    if s.read_exact(&mut b).is_ok() {
                        n += 1;
                    }
                }
            }
            n
        });
        stop.store(true, Ordering::Relaxed);
        let _ = self
            .client()
            .run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(1)));
        let _ = server.join();
        Ok(count as f64 / secs as f64)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.remove(Peer::Sg);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

trait CloseWithReset {
    /// SO_LINGER with a zero timeout: close() sends RST, no TIME_WAIT.
    fn close_with_reset(&self) -> std::io::Result<()>;
}

impl CloseWithReset for TcpStream {
    fn close_with_reset(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a valid linger struct on our socket.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const l).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}
