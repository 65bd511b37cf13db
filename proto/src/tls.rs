//! TLS for wss:// (RFC 6455 §4.1 point 5, §11.1.2), driven sans-IO: the
//! engine hands rustls the ciphertext a shell read and takes back the
//! ciphertext to send, so every shell gets TLS from one place and none of
//! them decides anything about it.
//!
//! Ciphertext in: [`Tls::feed`] decrypts into the engine's read buffer,
//! where the request and the frames are parsed exactly as on a plain
//! connection. Ciphertext out: the engine's output queue is encrypted in
//! order just before it is sent, at most [`MAX_CIPHERTEXT`] at a time, so a
//! peer that does not read holds back the queue (and with it the engine's
//! backpressure) rather than growing a ciphertext buffer.

use std::io::{self, BufRead};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls::{ServerConfig, ServerConnection};

use crate::read_buffer::ReadSizing;

/// Ciphertext encrypted ahead of what the shell has written: about four
/// full records.
pub const MAX_CIPHERTEXT: usize = 64 * 1024;

/// What feeding ciphertext did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Plaintext (possibly none) was appended; the connection goes on.
    Ok,
    /// The peer ended the TLS session with close_notify: no more input.
    Closed,
    /// The peer broke TLS (a bad record, a failed handshake, garbage
    /// instead of a ClientHello): rustls has queued the alert to send, then
    /// the connection ends.
    Failed,
}

/// One connection's TLS state.
pub struct Tls {
    conn: ServerConnection,
    /// Ciphertext handed to the shell and not yet reported written.
    inflight: Bytes,
    /// Our close_notify has been queued.
    close_notify_sent: bool,
    /// The next ciphertext read's size: from the smallest read buffer,
    /// doubling while reads fill it, halving when they come in small.
    read_size: u32,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshaking", &self.conn.is_handshaking())
            .field("inflight", &self.inflight.len())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// A server session under `config`; fails only for a config rustls
    /// cannot use, which the server checks at start-up.
    pub fn new(config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        // What rustls buffers for sending is bounded by what we encrypt
        // (MAX_CIPHERTEXT at a time); before the handshake completes
        // nothing of ours is written at all.
        conn.set_buffer_limit(Some(MAX_CIPHERTEXT));
        Ok(Tls {
            conn,
            inflight: Bytes::new(),
            close_notify_sent: false,
            read_size: 0,
        })
    }

    /// Capacity for the next ciphertext read.
    pub fn read_size(&self, sizing: ReadSizing) -> usize {
        (self.read_size as usize).clamp(sizing.min, sizing.max)
    }

    /// A read of `n` bytes into `offered` bytes of room completed.
    pub fn sized_read(&mut self, offered: usize, n: usize, sizing: ReadSizing) {
        let size = self.read_size(sizing);
        let next = if n >= offered * 3 / 4 {
            size * 2
        } else if n < size / 8 {
            size / 2
        } else {
            size
        };
        self.read_size = next.clamp(sizing.min, sizing.max) as u32;
    }

    /// True until the TLS handshake has completed.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Decrypt `ciphertext` and append the plaintext to `plain` through
    /// `append` (the engine's read buffer). Never given an empty slice:
    /// rustls takes a zero-length read for the end of the stream.
    pub fn feed(&mut self, mut ciphertext: &[u8], mut append: impl FnMut(&[u8])) -> Fed {
        while !ciphertext.is_empty() {
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => return Fed::Closed,
                Ok(_) => {}
                // Backpressure inside rustls (its buffers are full until
                // processed and drained, which the loop does next); any
                // other error cannot come from reading a slice.
                Err(e) if e.kind() == io::ErrorKind::Other => {}
                Err(_) => return Fed::Failed,
            }
            if self.conn.process_new_packets().is_err() {
                return Fed::Failed;
            }
            if let Some(fed) = self.drain_plaintext(&mut append) {
                return fed;
            }
        }
        Fed::Ok
    }

    /// Move received plaintext out; `Some` when the session ended.
    fn drain_plaintext(&mut self, append: &mut impl FnMut(&[u8])) -> Option<Fed> {
        let mut reader = self.conn.reader();
        loop {
            match reader.fill_buf() {
                Ok([]) => return Some(Fed::Closed),
                Ok(chunk) => {
                    let n = chunk.len();
                    append(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                // A TCP end without close_notify: the shell reports the
                // end of the stream itself.
                Err(_) => return Some(Fed::Closed),
            }
        }
    }

    /// Encrypt plaintext for sending, what the output queue would send
    /// next, in order. Returns how much was taken: rustls stops at its
    /// buffer limit, and the rest stays queued for the next round.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> usize {
        io::Write::write(&mut self.conn.writer(), plaintext).unwrap_or(0)
    }

    /// How much more plaintext to encrypt now: nothing while the handshake
    /// runs or while ciphertext is waiting to be written.
    pub fn room(&self) -> usize {
        if self.conn.is_handshaking() || !self.inflight.is_empty() {
            0
        } else {
            MAX_CIPHERTEXT
        }
    }

    /// The next ciphertext to send (empty when there is none); the same
    /// bytes again until [`Tls::written`] reports them.
    pub fn transmit(&mut self) -> Bytes {
        if self.inflight.is_empty() && self.conn.wants_write() {
            let mut out = BytesMut::new().writer();
            while self.conn.wants_write() {
                // Writing into memory cannot fail.
                if self.conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
            self.inflight = out.into_inner().freeze();
        }
        self.inflight.clone()
    }

    /// `n` bytes of the ciphertext from [`Tls::transmit`] were written.
    pub fn written(&mut self, n: usize) {
        self.inflight.advance(n.min(self.inflight.len()));
    }

    /// Ciphertext waiting to be written, encrypted or not yet.
    pub fn pending(&self) -> usize {
        self.inflight.len() + usize::from(self.conn.wants_write())
    }

    /// Queue close_notify (RFC 8446 §6.1) once; true if it was queued now.
    pub fn close_notify(&mut self) -> bool {
        if std::mem::replace(&mut self.close_notify_sent, true) {
            return false;
        }
        self.conn.send_close_notify();
        true
    }

    /// The negotiated protocol version, for logs.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }
}

#[cfg(test)]
mod tests;
