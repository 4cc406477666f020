//! Real traffic between harness namespaces: listeners and connection probes.
//! Used by the demo, the end-to-end tests and (later) the lab.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// The connection was established and the server answered.
    Connected,
    /// The peer actively refused (RST / ICMP unreachable): the packet got through.
    Refused,
    /// No answer within the timeout: dropped on the way.
    Timeout,
}

impl Reach {
    pub fn name(self) -> &'static str {
        match self {
            Reach::Connected => "connected",
            Reach::Refused => "refused",
            Reach::Timeout => "timeout",
        }
    }
}

/// A TCP server in a namespace that answers each connection with one byte.
/// Stops when dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl TcpServer {
    /// Binds `addr` inside `ns` (use `[::]:port` for both IPv4 and IPv6).
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpServer> {
        let listener = ns.run(|| TcpListener::bind(addr))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(b"!");
                    }
                    // Nonblocking accept keeps the stop flag responsive.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(TcpServer {
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to `dst` and waits for the server's byte.
pub fn tcp_connect(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Reach {
    ns.run(|| match TcpStream::connect_timeout(&dst, timeout) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(timeout));
            let mut byte = [0u8; 1];
            match stream.read_exact(&mut byte) {
                Ok(()) => Reach::Connected,
                Err(_) => Reach::Timeout,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Err(_) => Reach::Timeout,
    })
}

/// One ICMP echo from inside `ns` (iputils `ping`); true when answered.
pub fn ping(ns: &Netns, dst: std::net::IpAddr, timeout: Duration) -> std::io::Result<bool> {
    let wait = timeout.as_secs().max(1).to_string();
    let dst = dst.to_string();
    let out = ns.exec("ping", &["-c", "1", "-W", &wait, "-n", "-q", &dst])?;
    Ok(out.status.success())
}
