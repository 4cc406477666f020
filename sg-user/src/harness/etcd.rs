//! A real etcd on loopback for the many-hosts tests and benchmark: free
//! ports, a data directory of the caller's, stopped (and started again on
//! the same ports and data) at will, killed on drop.

use std::{
    io,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Why etcd cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    match Command::new("etcd").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Some(format!(
            "etcd cannot be started ({e}); `cargo xtask setup` installs etcd-server"
        )),
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One etcd member on 127.0.0.1.
pub struct Etcd {
    /// Its data directory (its log beside it, `etcd.log`).
    dir: PathBuf,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd with its data under `dir/etcd`; returns once it is healthy.
    ///
    /// # Errors
    /// No free port, etcd cannot be started, or it is not healthy in 20 s.
    pub fn start(dir: &Path) -> io::Result<Etcd> {
        let mut e = Etcd {
            dir: dir.join("etcd"),
            client: free_port()?,
            peer: free_port()?,
            child: None,
        };
        e.resume()?;
        Ok(e)
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Starts it again on the same ports and data.
    ///
    /// # Errors
    /// As [`Etcd::start`].
    pub fn resume(&mut self) -> io::Result<()> {
        let (client, peer) = (self.url(), format!("http://127.0.0.1:{}", self.peer));
        let log = std::fs::File::create(self.dir.with_extension("log"))?;
        let child = Command::new("etcd")
            .args(["--name", "sgtest", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sgtest={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .get("/health")
            .is_ok_and(|body| body.contains(r#""health":"true""#))
        {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("etcd at {client} never became healthy"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills it (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The body of an HTTP GET of `path` on the client port (`/health`,
    /// `/metrics`).
    ///
    /// # Errors
    /// Not answering, or not with 200.
    pub fn get(&self, path: &str) -> io::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.client))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.lines().next().unwrap_or("");
        if !status.contains(" 200 ") {
            return Err(io::Error::other(format!("etcd {path}: {status}")));
        }
        Ok(out
            .split_once("\r\n\r\n")
            .map_or(out.clone(), |(_, b)| b.to_owned()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
