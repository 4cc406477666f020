//! Real traffic between harness namespaces: listeners and connection probes.
//! Used by the demo, the end-to-end tests and (later) the lab.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::sys::netns::Netns;

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

/// A loop on its own thread that runs until dropped: the loop body gets a
/// stop flag to check between steps (which must not block for long).
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn spawn(body: impl FnOnce(&AtomicBool) + Send + 'static) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || body(&flag));
        Background {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts TCP connections on `addr` inside `ns` in the background and hands
/// each to `handle`, until dropped. Nonblocking accept keeps the stop flag
/// responsive.
fn accept_loop(
    ns: &Netns,
    addr: SocketAddr,
    handle: impl Fn(TcpStream) + Send + 'static,
) -> std::io::Result<Background> {
    let listener = ns.run(|| TcpListener::bind(addr))?;
    listener.set_nonblocking(true)?;
    Ok(Background::spawn(move |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    handle(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }))
}

/// A TCP server in a namespace that answers each connection with one byte.
/// Stops when dropped.
pub struct TcpServer {
    _loop: Background,
    pub addr: SocketAddr,
}

impl TcpServer {
    /// Binds `addr` inside `ns` (use `[::]:port` for both IPv4 and IPv6).
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpServer> {
        let answer = |mut stream: TcpStream| {
            let _ = stream.write_all(b"!");
        };
        Ok(TcpServer {
            _loop: accept_loop(ns, addr, answer)?,
            addr,
        })
    }

    /// One server per port on `[::]` (IPv4 and IPv6) inside `ns`.
    pub fn start_all(ns: &Netns, ports: &[u16]) -> std::io::Result<Vec<TcpServer>> {
        ports
            .iter()
            .map(|&p| TcpServer::start(ns, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), p)))
            .collect()
    }
}

/// Serves TCP on `addr` inside `ns` until the process ends, answering each
/// connection with one byte like [`TcpServer`]: one blocking thread, no stop
/// flag and no polling, for a process whose only job is to answer (the
/// listeners of `sgctl lab`).
pub fn serve_tcp_forever(ns: &Netns, addr: SocketAddr) -> std::io::Result<()> {
    let listener = ns.run(|| TcpListener::bind(addr))?;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"!");
        }
    });
    Ok(())
}

/// Echoes UDP datagrams on `addr` inside `ns` until the process ends (see
/// [`serve_tcp_forever`]; [`UdpEcho`] is the stoppable variant).
pub fn serve_udp_echo_forever(ns: &Netns, addr: SocketAddr) -> std::io::Result<()> {
    let socket = ns.run(|| std::net::UdpSocket::bind(addr))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    Ok(())
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

/// A TCP echo server (one thread per connection), for long-lived flows.
pub struct TcpEcho {
    _loop: Background,
}

impl TcpEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpEcho> {
        let echo = |mut stream: TcpStream| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        };
        Ok(TcpEcho {
            _loop: accept_loop(ns, addr, echo)?,
        })
    }
}

/// A client connection that stays open: each round trip sends a few bytes
/// and waits for the echo.
pub struct TcpSession {
    stream: TcpStream,
}

impl TcpSession {
    pub fn connect(ns: &Netns, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpSession> {
        let stream = ns.run(|| TcpStream::connect_timeout(&dst, timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(TcpSession { stream })
    }

    /// True when the echo came back within the read timeout.
    pub fn roundtrip(&mut self) -> bool {
        let msg = *b"ping";
        let mut back = [0u8; 4];
        self.stream.write_all(&msg).is_ok()
            && self.stream.read_exact(&mut back).is_ok()
            && back == msg
    }
}

/// A UDP echo server. Stops when dropped.
pub struct UdpEcho {
    _loop: Background,
}

impl UdpEcho {
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<UdpEcho> {
        let socket = ns.run(|| std::net::UdpSocket::bind(addr))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let body = move |stop: &AtomicBool| {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        };
        Ok(UdpEcho {
            _loop: Background::spawn(body),
        })
    }
}

/// A UDP socket in a namespace that sends and waits for the answer.
pub struct UdpPeer {
    pub socket: std::net::UdpSocket,
}

impl UdpPeer {
    pub fn bind(ns: &Netns, local: SocketAddr, timeout: Duration) -> std::io::Result<UdpPeer> {
        let socket = ns.run(|| std::net::UdpSocket::bind(local))?;
        socket.set_read_timeout(Some(timeout))?;
        Ok(UdpPeer { socket })
    }

    /// Binds an ephemeral port on the unspecified address of IPv6 or IPv4.
    pub fn bind_any(ns: &Netns, v6: bool, timeout: Duration) -> std::io::Result<UdpPeer> {
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        UdpPeer::bind(ns, SocketAddr::new(any, 0), timeout)
    }

    /// Sends to `dst` and waits for any datagram back from it.
    pub fn roundtrip(&self, dst: SocketAddr) -> bool {
        let mut buf = [0u8; 1500];
        if self.socket.send_to(b"hello", dst).is_err() {
            return false;
        }
        matches!(self.socket.recv_from(&mut buf), Ok((_, from)) if from.ip() == dst.ip())
    }

    /// Waits for one datagram (from anyone).
    pub fn receive(&self) -> Option<SocketAddr> {
        let mut buf = [0u8; 1500];
        self.socket.recv_from(&mut buf).ok().map(|(_, from)| from)
    }
}
