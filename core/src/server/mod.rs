//! The provisioning server's own parts (wired together by [`crate::app`]).
//!
//! Data flow: [`hello_listener`] (TCP 9971) parses a hello and checks its PID in the
//! store → [`jobs`] connects back to the device over TLS-PSK and provisions it → the
//! store records the device. Every failure on the way is raised on the alert
//! log ([`crate::alerts`]). The store is owned by one thread ([`crate::store_thread`]); no async worker touches
//! SQLite. [`reachability`] checks managed devices periodically. [`lock`] keeps it to
//! one server per data directory. [`limits`] bounds the jobs in flight by the file
//! descriptors the process has and tells the admin when a limit holds hellos back;
//! [`metrics_endpoint`] serves `/metrics` on a listener of its own.

pub mod hello_listener;
pub mod jobs;
pub mod limits;
pub mod lock;
pub mod metrics_endpoint;
pub mod pki_expiry;
pub mod reachability;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Connections the kernel queues for the hello listener before it accepts them (the
/// kernel caps it at `net.core.somaxconn`). Devices connect, write 32 bytes and close
/// at once, so a burst of hellos outpaces any accept loop for a moment; a full queue
/// drops SYNs and costs the device a one-second retransmit.
const HELLO_BACKLOG: u32 = 4096;

/// Binds the hello listener (a clear error names the address on failure).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restarted server can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(HELLO_BACKLOG)
}
