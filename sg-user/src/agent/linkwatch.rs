//! Link and address changes in one network namespace, from a netlink socket
//! subscribed to the link, IPv4-address and IPv6-address groups.
//!
//! A watcher says *that* something changed, not what: the daemon's reconcile
//! looks at what is there, so messages need no parsing. It never misses a
//! change silently:
//! - when the kernel drops events because the socket's receive buffer is full
//!   (`ENOBUFS`), [`LinkSocket::next`] returns [`Notice::Lost`] — the answer
//!   is a full reconcile — and the socket is read on (the kernel delivers
//!   again once its queue is drained);
//! - any other failure is returned as an error; the daemon logs it,
//!   reconciles and opens a new socket (see `agent::daemon`).

use std::io;

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};
use thiserror::Error;

use crate::{
    kernel::pins::NsIdent,
    sys::netns::{NetnsError, in_netns},
};

/// The multicast groups watched: links, IPv4 and IPv6 addresses.
const GROUPS: u32 =
    (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;

/// Receive buffer asked for, in bytes. The kernel caps it at
/// `net.core.rmem_max` (and doubles it for bookkeeping); an overflow is
/// handled anyway, a large buffer only makes it rarer.
const RCVBUF: usize = 1 << 20;

/// Test-only (feature `test-support`): the watchers' receive buffer in bytes,
/// so that a test can overflow it for certain. A release `sgctl` ignores it.
pub const TEST_RCVBUF_VAR: &str = "SG_TEST_NETLINK_RCVBUF";

/// Bytes read per `recv`; a longer message is truncated, which is harmless
/// because messages are not parsed.
const READ_BUF: usize = 32 * 1024;

/// Messages read before [`LinkSocket::next`] reports, so that an endless
/// burst still triggers reconciles while it lasts.
const READS_PER_NOTICE: usize = 1024;

#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink socket for {netns}: {op} failed")]
    Socket {
        netns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl WatchError {
    /// The namespace is gone: a normal end for its watcher, not a failure.
    pub fn is_netns_gone(&self) -> bool {
        matches!(self, WatchError::Netns(NetnsError::NotFound { .. }))
    }
}

/// What a wake-up of the socket brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Links or addresses changed.
    Changed,
    /// The kernel dropped events (the receive buffer overflowed): anything
    /// may have changed.
    Lost,
}

/// A netlink socket subscribed to link and address changes, opened inside a
/// namespace (the socket stays bound to it).
pub struct LinkSocket {
    socket: TokioSocket,
    netns: NsIdent,
    label: String,
    buf: Vec<u8>,
}

impl LinkSocket {
    /// Opens the socket inside `netns` (`None`: the caller's namespace).
    ///
    /// # Errors
    /// [`NetnsError::NotFound`] when the namespace does not exist (see
    /// [`WatchError::is_netns_gone`]), otherwise the socket call that failed.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn open(netns: Option<&str>) -> Result<LinkSocket, WatchError> {
        let label = netns.unwrap_or("host").to_string();
        let fail = |op| {
            let netns = label.clone();
            move |source| WatchError::Socket { netns, op, source }
        };
        // The socket is created on a thread inside the namespace; it
        // registers with this runtime's reactor.
        let runtime = tokio::runtime::Handle::current();
        let (socket, ident) = in_netns(netns, || -> Result<_, WatchError> {
            let _runtime = runtime.enter();
            let mut socket = TokioSocket::new(NETLINK_ROUTE).map_err(fail("socket"))?;
            let raw = socket.socket_mut();
            raw.set_rx_buf_sz(libc::c_int::try_from(rcvbuf()).unwrap_or(libc::c_int::MAX))
                .map_err(fail("setsockopt SO_RCVBUF"))?;
            raw.bind(&SocketAddr::new(0, GROUPS))
                .map_err(fail("bind"))?;
            let ident = NsIdent::current().map_err(fail("stat /proc/thread-self/ns/net"))?;
            Ok((socket, ident))
        })??;
        Ok(LinkSocket {
            socket,
            netns: ident,
            label,
            buf: Vec::with_capacity(READ_BUF),
        })
    }

    /// The namespace the socket watches.
    pub fn netns(&self) -> NsIdent {
        self.netns
    }

    /// The receive buffer the kernel granted, in bytes.
    ///
    /// # Errors
    /// getsockopt failed.
    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.socket.socket_ref().get_rx_buf_sz()
    }

    /// Waits for changes, then reads everything queued: [`Notice::Lost`]
    /// when the kernel dropped events on the way, else [`Notice::Changed`].
    ///
    /// # Errors
    /// The socket failed (not `ENOBUFS`: that is [`Notice::Lost`]).
    pub async fn next(&mut self) -> Result<Notice, WatchError> {
        self.buf.clear();
        let mut notice = match self.socket.recv(&mut self.buf).await {
            Ok(()) => Notice::Changed,
            Err(e) => self.lost_or_fail(e)?,
        };
        for _ in 0..READS_PER_NOTICE {
            self.buf.clear();
            match self.socket.socket_ref().recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => notice = self.lost_or_fail(e)?,
            }
        }
        Ok(notice)
    }

    /// `ENOBUFS` is reported once per overflow and then cleared; the
    /// messages queued before it are still there to read, and the kernel
    /// delivers again once the queue is drained.
    fn lost_or_fail(&self, e: io::Error) -> Result<Notice, WatchError> {
        if e.raw_os_error() == Some(libc::ENOBUFS) {
            Ok(Notice::Lost)
        } else {
            Err(WatchError::Socket {
                netns: self.label.clone(),
                op: "recv",
                source: e,
            })
        }
    }
}

fn rcvbuf() -> usize {
    #[cfg(feature = "test-support")]
    if let Some(n) = std::env::var(TEST_RCVBUF_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    RCVBUF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_a_normal_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _runtime = rt.enter();
        let err = LinkSocket::open(Some("sg-no-such-netns-for-linkwatch"))
            .err()
            .expect("no such namespace");
        assert!(err.is_netns_gone(), "{err}");
    }
}
