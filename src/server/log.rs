//! Log lines a shell writes about a connection: one at debug level when it
//! ends, nothing per message.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use crate::protocol::Connection;

/// The peer's address, kept from accept for the connection's log line
/// when debug logging is on (by its end the socket may no longer know it:
/// a reset leaves nothing to ask). Nothing is kept otherwise.
pub fn peer_if_logged(stream: &impl AsRawFd) -> Option<Box<SocketAddr>> {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return None;
    }
    peer_addr(stream).map(Box::new)
}

/// Log `conn`'s end (peer, duration, bytes, close codes) at debug level.
/// The client address a proxy reported is logged only when the peer is
/// one of `trusted`: anyone else could write any address in that header.
pub fn connection_ended(peer: Option<&SocketAddr>, conn: &Connection, trusted: &[IpAddr]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let sum = conn.summary(Instant::now());
    let client = match (peer, sum.forwarded_for.as_deref()) {
        (Some(p), Some(f)) if trusted.contains(&p.ip()) => Some(f),
        _ => None,
    };
    tracing::debug!(
        peer = %peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        client = client.unwrap_or(""),
        duration_ms = sum.duration.as_millis() as u64,
        bytes_in = sum.bytes_in,
        bytes_out = sum.bytes_out,
        messages = sum.messages,
        close_sent = sum.close_sent.unwrap_or(0),
        close_received = sum.close_received.unwrap_or(0),
        "connection closed"
    );
}

fn peer_addr(stream: &impl AsRawFd) -> Option<SocketAddr> {
    // SAFETY: the descriptor belongs to `stream`, which the caller holds
    // for the whole call, so it stays open while it is borrowed here.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_read_from_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(peer_addr(&server), Some(client.local_addr().unwrap()));
    }
}
