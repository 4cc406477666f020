//! Network namespaces: entering one for a piece of work, and a small test
//! harness (namespaces, veth pairs, a bridge) that always cleans up.
//!
//! Everything the harness creates is named `sgt<pid>-…`, so a harness from a
//! crashed process is recognised (its pid is gone) and removed by the next one.
//! Addresses used by callers come from 198.18.0.0/15 and 2001:db8::/32 only.
//!
//! Namespaces that must outlive the process that made them (`sgctl lab`) are
//! created with [`Netns::create_persistent`] under a name the caller owns
//! and removed explicitly with [`delete_netns`]; [`Netns::open`] gives a
//! handle to an existing one. Neither deletes anything on drop.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use thiserror::Error;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Prefix of every namespace the harness creates.
pub const HARNESS_PREFIX: &str = "sgt";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error(
        "network namespace `{name}` not found under {NETNS_RUN_DIR}; create it with `ip netns add {name}` or fix the name"
    )]
    NotFound { name: String },
    #[error("entering network namespace `{name}` failed (setns; this needs root, CAP_SYS_ADMIN)")]
    Setns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

/// True when running as root; kernel and namespace tests need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` inside network namespace `netns` (`None`: the current one).
///
/// setns(CLONE_NEWNET) changes only the calling thread, so the work runs on a
/// scoped thread that enters the namespace and then ends; the caller's thread
/// is never moved. Sockets and links created by `f` stay in that namespace.
pub fn in_netns<F, R>(netns: Option<&str>, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let Some(name) = netns else {
        return Ok(f());
    };
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let file = File::open(&path).map_err(|_| NetnsError::NotFound {
        name: name.to_string(),
    })?;
    in_netns_file(&file, name, f)
}

/// Runs `f` on a thread inside the namespace that `path` refers to (a
/// `/run/netns` name or `/proc/PID/ns/net`).
pub fn in_netns_path<F, R>(path: &Path, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let name = path.display().to_string();
    let file = File::open(path).map_err(|_| NetnsError::NotFound { name: name.clone() })?;
    in_netns_file(&file, &name, f)
}

/// Runs `f` on a scoped thread that enters the namespace `file` is open on
/// (`name` for errors); see [`in_netns`].
fn in_netns_file<F, R>(file: &File, name: &str, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Setns {
                    name: name.to_string(),
                    source: io::Error::last_os_error(),
                });
            }
            Ok(f())
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs a command and turns a non-zero exit into an error with its stderr.
pub fn run_checked(program: &str, args: &[&str]) -> Result<Output, NetnsError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: format!("{e} (is {program} installed? `cargo xtask setup` installs it)"),
        })?;
    if !output.status.success() {
        return Err(NetnsError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// A named network namespace. Harness namespaces ([`Netns::create`]) are
/// deleted on drop (also while a test panics), which removes every interface
/// inside them; persistent and opened ones are left alone.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Delete the namespace on drop.
    owned: bool,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `sgt<pid>-<n>-<role>` with loopback up. Stale harness
    /// namespaces of dead processes are removed first.
    pub fn create(role: &str) -> Result<Netns, NetnsError> {
        remove_stale_namespaces();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{HARNESS_PREFIX}{}-{id}-{role}", std::process::id());
        run_checked("ip", &["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates namespace `name` with loopback up and leaves it in place when
    /// the handle is dropped: the caller removes it with [`delete_netns`].
    /// Fails if it already exists.
    pub fn create_persistent(name: &str) -> Result<Netns, NetnsError> {
        run_checked("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            owned: false,
        };
        if let Err(e) = ns.ip(&["link", "set", "lo", "up"]) {
            delete_netns(name);
            return Err(e);
        }
        Ok(ns)
    }

    /// A handle to the existing namespace `name` (not deleted on drop).
    pub fn open(name: &str) -> Result<Netns, NetnsError> {
        if !Path::new(NETNS_RUN_DIR).join(name).exists() {
            return Err(NetnsError::NotFound {
                name: name.to_string(),
            });
        }
        Ok(Netns {
            name: name.to_string(),
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args…>`
    pub fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_checked("ip", &full)
    }

    /// Runs a program inside the namespace (`ip netns exec`), not checked:
    /// callers look at the status (a refused ping is an answer, not an error).
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs a closure inside the namespace (see [`in_netns`]).
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        in_netns(Some(&self.name), f).expect("entering a harness namespace")
    }

    /// Connects this namespace to `other` with a veth pair named `local` here
    /// and `remote` there, both up.
    pub fn veth_to(&self, local: &str, other: &Netns, remote: &str) -> Result<(), NetnsError> {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            remote,
            "netns",
            &other.name,
        ])?;
        self.ip(&["link", "set", local, "up"])?;
        other.ip(&["link", "set", remote, "up"])?;
        Ok(())
    }

    /// Adds an address (`198.18.0.1/15`, `2001:db8::1/64`) to `iface`;
    /// IPv6 addresses skip duplicate address detection so they work at once.
    pub fn add_addr(&self, iface: &str, cidr: &str) -> Result<(), NetnsError> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", iface, "nodad"])?;
        } else {
            self.ip(&["addr", "add", cidr, "dev", iface])?;
        }
        Ok(())
    }
}

/// Makes every host in `hosts` (namespace, interface, IPv6 address) a
/// permanent IPv6 neighbour of every other: the test segments and the lab put
/// all of 2001:db8::/32 on one link, while the data plane lets neighbour
/// discovery out only within the sender's /64 (or to link-local and
/// link-scope multicast), as real IPv6 links are. Pinned neighbours keep
/// such a flat segment from depending on solicitations the rules judge.
pub fn pin_ipv6_neighbours(hosts: &[(&Netns, &str, std::net::Ipv6Addr)]) -> Result<(), NetnsError> {
    let macs = hosts
        .iter()
        .map(|(ns, iface, _)| {
            let out = ns.ip(&["-br", "link", "show", "dev", iface])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned())
        })
        .collect::<Result<Vec<String>, NetnsError>>()?;
    for (i, (ns, iface, _)) in hosts.iter().enumerate() {
        for (j, (_, _, addr)) in hosts.iter().enumerate() {
            if i != j && !macs[j].is_empty() {
                let addr = addr.to_string();
                let args = ["-6", "neigh", "replace", &addr, "lladdr", &macs[j]];
                ns.ip(&[&args[..], &["nud", "permanent", "dev", iface]].concat())?;
            }
        }
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            delete_netns(&self.name);
        }
    }
}

/// Deletes a named namespace (and with it every interface inside); true when
/// it existed and is gone.
pub fn delete_netns(name: &str) -> bool {
    Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Names of the namespaces under [`NETNS_RUN_DIR`] that start with `prefix`, sorted.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Deletes harness namespaces whose creating process no longer exists.
pub fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = harness_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The pid encoded in a harness namespace name, if `name` is one.
fn harness_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(HARNESS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// One host on a [`Segment`]: its namespace and interface `eth0`.
#[derive(Debug)]
pub struct Host {
    pub role: String,
    pub netns: Netns,
    pub ipv4: std::net::Ipv4Addr,
    pub ipv6: std::net::Ipv6Addr,
}

impl Host {
    pub const IFACE: &'static str = "eth0";
}

/// Several hosts on one L2 segment: a switch namespace holding bridge `br0`,
/// and one namespace per host joined to it by a veth pair. All hosts share
/// 198.18.0.0/15 and 2001:db8::/32 as on-link prefixes, so any two reach each
/// other directly, whatever sub-ranges the rules carve out of them.
#[derive(Debug)]
pub struct Segment {
    // Hosts first: dropping them removes their veths before the switch goes.
    pub hosts: Vec<Host>,
    switch: Netns,
}

impl Segment {
    pub const IPV4_PREFIX_LEN: u8 = 15;
    pub const IPV6_PREFIX_LEN: u8 = 32;

    pub fn new() -> Result<Segment, NetnsError> {
        let switch = Netns::create("sw")?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        Ok(Segment {
            hosts: Vec::new(),
            switch,
        })
    }

    /// Adds a host with the given addresses (from 198.18.0.0/15 and
    /// 2001:db8::/32) and returns it.
    pub fn add_host(
        &mut self,
        role: &str,
        ipv4: std::net::Ipv4Addr,
        ipv6: std::net::Ipv6Addr,
    ) -> Result<&Host, NetnsError> {
        assert!(
            is_test_ipv4(ipv4) && is_test_ipv6(ipv6),
            "harness addresses must come from 198.18.0.0/15 and 2001:db8::/32"
        );
        let netns = Netns::create(role)?;
        let port = format!("p{}", self.hosts.len());
        self.switch.veth_to(&port, &netns, Host::IFACE)?;
        self.switch.ip(&["link", "set", &port, "master", "br0"])?;
        netns.add_addr(Host::IFACE, &format!("{ipv4}/{}", Self::IPV4_PREFIX_LEN))?;
        netns.add_addr(Host::IFACE, &format!("{ipv6}/{}", Self::IPV6_PREFIX_LEN))?;
        self.hosts.push(Host {
            role: role.to_string(),
            netns,
            ipv4,
            ipv6,
        });
        let all: Vec<(&Netns, &str, std::net::Ipv6Addr)> = self
            .hosts
            .iter()
            .map(|h| (&h.netns, Host::IFACE, h.ipv6))
            .collect();
        pin_ipv6_neighbours(&all)?;
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// The switch's namespace: where the hosts' peer ends (`p0`, `p1`, … in
    /// the order the hosts were added) sit in bridge `br0`, as a container
    /// host's veths do.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| panic!("no host `{role}` on this segment"))
    }
}

/// 198.18.0.0/15, the benchmarking range every harness address comes from.
pub fn is_test_ipv4(addr: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = addr.octets();
    a == 198 && (b & 0xfe) == 18
}

/// 2001:db8::/32, the documentation range.
pub fn is_test_ipv6(addr: std::net::Ipv6Addr) -> bool {
    let s = addr.segments();
    s[0] == 0x2001 && s[1] == 0x0db8
}

/// Skips a root-only test with a visible message, or fails it under CI
/// (`CI` set), where every test must really run.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::sys::netns::is_root() {
            if std::env::var_os("CI").is_some() {
                panic!("this test needs root and CI must run it: run CI as root");
            }
            eprintln!(
                "skipping {}: needs root (kernel programs and network namespaces)",
                module_path!()
            );
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_names_carry_the_pid() {
        assert_eq!(harness_pid("sgt1234-0-web"), Some(1234));
        assert_eq!(harness_pid("sgtx-0-web"), None);
        assert_eq!(harness_pid("blue"), None);
    }

    #[test]
    fn test_ranges() {
        assert!(is_test_ipv4("198.18.0.1".parse().unwrap()));
        assert!(is_test_ipv4("198.19.255.1".parse().unwrap()));
        assert!(!is_test_ipv4("198.20.0.1".parse().unwrap()));
        assert!(!is_test_ipv4("10.0.0.1".parse().unwrap()));
        assert!(is_test_ipv6("2001:db8:1::1".parse().unwrap()));
        assert!(!is_test_ipv6("2001:db9::1".parse().unwrap()));
    }
}
