//! Time to enforced on a container host: podman (CNI backend) starts
//! containers one after another on a network whose conflist chains `sg-cni`
//! last; the daemon (`sgctl run --socket`) enforces each container's groups
//! and membership before the plugin's ADD returns. Measured: the plugin's
//! ADD and DEL as the runtime sees them (a bash wrapper reading
//! `$EPOCHREALTIME` around the real plugin, no extra processes), the whole
//! `podman run`, and the kernel map memory each container adds.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use sg_user::harness::podman::{busybox_rootfs_tar, chain_sg_cni, containers_conf_with_cni_dirs};

use crate::bench::control::dataplane_memlock;

/// The project's podman settings (runc, CNI backend, rlimits).
const PROJECT_CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/podman/containers.conf"
);

#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainersRow {
    pub containers: usize,
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub del_p50_ms: f64,
    pub podman_run_p50_ms: f64,
    /// Kernel map memory added per container (fdinfo `memlock` of the data
    /// plane's maps), KiB.
    pub map_kib_per_container: f64,
}

/// Nearest-rank percentile (`p` in 0..=100) of `v`, 0 when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Why podman cannot run here, if it cannot.
pub fn podman_unavailable() -> Option<String> {
    match Command::new("podman")
        .env("CONTAINERS_CONF", PROJECT_CONF)
        .args(["version", "--format", "{{.Client.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Some(format!("podman cannot be started: {e}")),
    }
}

/// podman with the bench's containers.conf, the network, the daemon; all
/// removed on drop.
struct Host {
    dir: PathBuf,
    conf: PathBuf,
    network: String,
    image: String,
    daemon: Option<Child>,
    containers: Vec<String>,
}

impl Host {
    fn podman(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("starting podman (`cargo xtask setup` installs it)")?;
        if !out.status.success() {
            bail!(
                "`podman {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn new(sgctl: &Path, sg_cni: &Path) -> Result<Host> {
        let tag = format!("sgbench{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        let (plugins, net_d) = (dir.join("cni-bin"), dir.join("net.d"));
        std::fs::create_dir_all(&plugins)?;
        std::fs::create_dir_all(&net_d)?;
        let times = dir.join("plugin-times");
        std::fs::write(
            plugins.join("sg-cni"),
            format!(
                "#!/bin/bash\nstart=$EPOCHREALTIME\n{} \"$@\"\nrc=$?\nend=$EPOCHREALTIME\necho \"$CNI_COMMAND $start $end\" >> {}\nexit $rc\n",
                sg_cni.display(),
                times.display()
            ),
        )?;
        std::fs::set_permissions(
            plugins.join("sg-cni"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let project = std::fs::read_to_string(PROJECT_CONF)
            .with_context(|| format!("reading {PROJECT_CONF}"))?;
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            containers_conf_with_cni_dirs(&project, &plugins, &net_d),
        )?;
        let config = dir.join("groups.yaml");
        // Every container is a web server its clients may reach and a
        // client of the others: each ADD changes a group that the rules of
        // every running container reference.
        std::fs::write(
            &config,
            "security_groups:\n  - id: sg-web\n    ingress:\n      - { protocol: tcp, ports: 80, group: sg-web }\nworkloads:\n  - { name: \"*\", security_groups: [sg-web] }\n",
        )?;
        let socket = dir.join("agent.sock");
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let daemon = Command::new(sgctl)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sgctl run")?;
        let mut host = Host {
            network: format!("{tag}-net"),
            image: format!("localhost/{tag}-busybox:bench"),
            conf,
            dir,
            daemon: Some(daemon),
            containers: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            ensure!(
                Instant::now() < deadline,
                "sgctl run never served {}",
                socket.display()
            );
            if let Some(Some(status)) = host.daemon.as_mut().map(|d| d.try_wait().ok().flatten()) {
                bail!("sgctl run exited ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        host.import_image()?;
        host.podman(&[
            "network",
            "create",
            "--internal",
            "--disable-dns",
            "--subnet",
            "198.18.192.0/24",
            &host.network,
        ])?;
        chain_sg_cni(&net_d, &host.network, &socket)?;
        Ok(host)
    }

    /// busybox-static as an image, without a registry.
    fn import_image(&self) -> Result<()> {
        let tar = busybox_rootfs_tar(&self.dir, &["sleep"])?;
        self.podman(&[
            "import",
            "--quiet",
            tar.to_str().context("utf-8 path")?,
            &self.image,
        ])?;
        Ok(())
    }

    /// The plugin's durations by command, in ms, from the wrapper's log.
    fn plugin_ms(&self, command: &str) -> Result<Vec<f64>> {
        let text = std::fs::read_to_string(self.dir.join("plugin-times")).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [cmd, start, end] = f[..]
                && cmd == command
            {
                let (s, e): (f64, f64) = (start.parse()?, end.parse()?);
                out.push((e - s) * 1e3);
            }
        }
        Ok(out)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // With the daemon up, so that every DEL is served.
        for name in self.containers.iter().rev() {
            let _ = self.podman(&["rm", "--force", "--time", "0", name]);
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = Command::new("kill").arg(d.id().to_string()).status();
            let _ = d.wait();
        }
        let _ = self.podman(&["network", "rm", "--force", &self.network]);
        let _ = self.podman(&["image", "rm", "--force", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `n` containers one after another, then removes them.
pub fn measure(sgctl: &Path, n: usize) -> Result<ContainersRow> {
    ensure!(n <= 250, "one /24 holds at most 250 containers");
    let sg_cni = sgctl.with_file_name("sg-cni");
    ensure!(
        sg_cni.exists(),
        "{} not found; build it with `cargo build --release -p sg-user`",
        sg_cni.display()
    );
    let mut host = Host::new(sgctl, &sg_cni)?;
    let before = dataplane_memlock()?;
    let mut runs = Vec::new();
    for i in 0..n {
        let name = format!("{}-c{i}", host.network);
        let ip = format!("198.18.192.{}", i + 2);
        let t = Instant::now();
        host.podman(&[
            "run",
            "--detach",
            "--pull",
            "never",
            "--name",
            &name,
            "--network",
            &host.network,
            "--ip",
            &ip,
            &host.image,
            "sleep",
            "3600",
        ])?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
        host.containers.push(name);
    }
    let after = dataplane_memlock()?;
    let adds = host.plugin_ms("ADD")?;
    ensure!(
        adds.len() == n,
        "the plugin ran ADD {} times for {n} containers",
        adds.len()
    );
    for name in std::mem::take(&mut host.containers).iter().rev() {
        host.podman(&["rm", "--force", "--time", "0", name])?;
    }
    let dels = host.plugin_ms("DEL")?;
    Ok(ContainersRow {
        containers: n,
        add_p50_ms: percentile(&adds, 50.0),
        add_p99_ms: percentile(&adds, 99.0),
        del_p50_ms: percentile(&dels, 50.0),
        podman_run_p50_ms: percentile(&runs, 50.0),
        map_kib_per_container: after.saturating_sub(before) as f64 / 1024.0 / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 25.0);
        assert_eq!(percentile(&v, 99.0), 50.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
