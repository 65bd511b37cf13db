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

use std::sync::Arc;

use bytes::Bytes;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
    WriteTraffic,
};
use rustls::ServerConfig;

use crate::read_buffer::ReadSizing;

pub mod kernel;

use kernel::{Cipher, KernelSupport, KernelTls, Version};

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
    /// instead of a ClientHello): the alert is queued to send, then the
    /// connection ends.
    Failed,
}

/// One connection's TLS state. rustls's unbuffered API leaves every buffer
/// to us, so an idle connection holds none: a partial record waits in
/// `incoming` only until the rest arrives, and ciphertext to send only
/// until it is written.
pub struct Tls {
    conn: UnbufferedServerConnection,
    /// Received ciphertext not yet a whole record.
    incoming: Vec<u8>,
    /// Ciphertext made and not yet handed to the shell.
    outgoing: Vec<u8>,
    /// Ciphertext handed to the shell and not yet reported written.
    inflight: Bytes,
    /// Our close_notify has been queued.
    close_notify_sent: bool,
    /// The output queue's slices being encrypted, kept for its capacity
    /// (empty between calls).
    pub(crate) plain: Vec<Bytes>,
    /// The next ciphertext read's size: from the smallest read buffer,
    /// doubling while reads fill it, halving when they come in small.
    read_size: u32,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshaking", &self.conn.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("inflight", &self.inflight.len())
            .finish_non_exhaustive()
    }
}

/// What one round of rustls's state machine asks for next.
enum Next {
    Again,
    Wait,
    Closed,
    Failed,
}

impl Tls {
    /// A server session under `config`; fails only for a config rustls
    /// cannot use, which the server checks at start-up.
    pub fn new(config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            inflight: Bytes::new(),
            close_notify_sent: false,
            plain: Vec::new(),
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

    /// Decrypt `ciphertext` and hand the plaintext to `append` (the
    /// engine's read buffer), in order.
    pub fn feed(&mut self, ciphertext: &[u8], mut append: impl FnMut(&[u8])) -> Fed {
        self.incoming.extend_from_slice(ciphertext);
        // Every round consumes input, makes output or stops; a round per
        // byte and a few more bounds it whatever the input is.
        let mut fed = Fed::Ok;
        for _ in 0..self.incoming.len() + 64 {
            match self.round(&mut append) {
                Next::Again => continue,
                Next::Wait => break,
                Next::Closed => {
                    fed = Fed::Closed;
                    break;
                }
                Next::Failed => {
                    self.queue_alert();
                    fed = Fed::Failed;
                    break;
                }
            }
        }
        if self.incoming.is_empty() {
            // Nothing partial is waiting: an idle connection keeps no
            // receive buffer.
            self.incoming = Vec::new();
        }
        fed
    }

    fn round(&mut self, append: &mut impl FnMut(&[u8])) -> Next {
        let Tls {
            conn,
            incoming,
            outgoing,
            ..
        } = self;
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
        let next = match state {
            Err(_) => Next::Failed,
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut next = Next::Again;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            append(record.payload);
                        }
                        Err(_) => {
                            next = Next::Failed;
                            break;
                        }
                    }
                }
                next
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                grow_into(outgoing, |out| encode.encode(out).map_err(encode_size));
                Next::Again
            }
            // The records stay in order in `outgoing` until written, so
            // they count as sent from rustls's point of view.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Next::Again
            }
            Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => Next::Wait,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Next::Closed,
            // Early data is not enabled; anything new is not ours to take.
            Ok(_) => Next::Failed,
        };
        incoming.drain(..discard.min(incoming.len()));
        next
    }

    /// After a failure rustls has queued its alert: encode it to send.
    fn queue_alert(&mut self) {
        let Tls {
            conn,
            incoming,
            outgoing,
            ..
        } = self;
        // rustls hands out what it has queued to send before it looks at
        // the input again, so this yields the alert and consumes nothing.
        if let UnbufferedStatus {
            state: Ok(ConnectionState::EncodeTlsData(mut encode)),
            ..
        } = conn.process_tls_records(incoming)
        {
            grow_into(outgoing, |out| encode.encode(out).map_err(encode_size));
        }
    }

    /// Encrypt the output queue's next slices, in order, whole, while
    /// there is [`Tls::room`]. Returns how many bytes were taken (nothing
    /// before the handshake is done).
    pub fn encrypt(&mut self, slices: &[Bytes]) -> usize {
        let room = self.room();
        self.writing(0, |traffic, outgoing| {
            let mut taken = 0;
            for plaintext in slices {
                if taken >= room
                    || !grow_into(outgoing, |out| {
                        traffic.encrypt(plaintext, out).map_err(encrypt_size)
                    })
                {
                    break;
                }
                taken += plaintext.len();
            }
            taken
        })
    }

    /// Run `write` in rustls's writing state, with the ciphertext buffer;
    /// `otherwise` before the handshake is done.
    fn writing<R>(
        &mut self,
        otherwise: R,
        write: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> R,
    ) -> R {
        // The same input buffer every time (rustls keeps its place in
        // it); after `feed` it holds at most part of a record, so this
        // yields the writing state and consumes nothing.
        let Tls {
            conn,
            incoming,
            outgoing,
            ..
        } = self;
        match conn.process_tls_records(incoming).state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => write(&mut traffic, outgoing),
            _ => otherwise,
        }
    }

    /// How much more plaintext to encrypt now: nothing while the handshake
    /// runs or while ciphertext is waiting to be written.
    pub fn room(&self) -> usize {
        if self.conn.is_handshaking() || !self.inflight.is_empty() {
            0
        } else {
            MAX_CIPHERTEXT.saturating_sub(self.outgoing.len())
        }
    }

    /// The next ciphertext to send (empty when there is none); the same
    /// bytes again until [`Tls::written`] reports them.
    pub fn transmit(&mut self) -> Bytes {
        if self.inflight.is_empty() && !self.outgoing.is_empty() {
            self.inflight = Bytes::from(std::mem::take(&mut self.outgoing));
        }
        self.inflight.clone()
    }

    /// `n` bytes of the ciphertext from [`Tls::transmit`] were written.
    pub fn written(&mut self, n: usize) {
        let n = n.min(self.inflight.len());
        let _ = self.inflight.split_to(n);
        if self.inflight.is_empty() {
            // An empty slice would still keep the written allocation.
            self.inflight = Bytes::new();
        }
    }

    /// Buffer memory held now: input waiting for the rest of a record and
    /// output not yet written (none on an idle connection).
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.inflight.len()
    }

    /// Ciphertext waiting to be written.
    pub fn pending(&self) -> usize {
        self.inflight.len() + self.outgoing.len()
    }

    /// Queue close_notify (RFC 8446 §6.1) once; true if it was queued now
    /// (not before the handshake is done, when there is no session to
    /// close).
    pub fn close_notify(&mut self) -> bool {
        if self.close_notify_sent {
            return false;
        }
        self.close_notify_sent = true;
        self.writing(false, |traffic, outgoing| {
            grow_into(outgoing, |out| {
                traffic.queue_close_notify(out).map_err(encrypt_size)
            })
        })
    }

    /// The negotiated protocol version, for logs.
    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether the kernel can take this session: `None` while the
    /// handshake runs, then whether it negotiated a version and cipher
    /// that `support` lists.
    pub fn kernel_can_take(&self, support: KernelSupport) -> Option<bool> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => Version::Tls12,
            rustls::ProtocolVersion::TLSv1_3 => Version::Tls13,
            _ => return Some(false),
        };
        let cipher = kernel_cipher(self.conn.negotiated_cipher_suite()?.suite());
        Some(cipher.is_some_and(|c| support.allows(version, c)))
    }

    /// Whether the session is between records both ways: nothing partial
    /// received, no ciphertext unwritten, no close_notify queued. Only then
    /// do the kernel's sequence numbers continue exactly where ours stop.
    pub fn between_records(&self) -> bool {
        self.incoming.is_empty() && self.pending() == 0 && !self.close_notify_sent
    }

    /// Hand the record layer to the kernel (see [`kernel`]); call only
    /// when [`Tls::kernel_can_take`] and [`Tls::between_records`] say so.
    pub fn into_kernel(self, support: KernelSupport) -> Result<KernelTls, rustls::Error> {
        KernelTls::new(self.conn, support)
    }
}

/// The AEAD of a suite the kernel's record layer may implement.
fn kernel_cipher(suite: rustls::CipherSuite) -> Option<Cipher> {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Cipher::Aes128Gcm),
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Cipher::Aes256Gcm),
        S::TLS13_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Cipher::Chacha20Poly1305),
        _ => None,
    }
}

/// Run `write` into the spare end of `out`, growing it to the size rustls
/// asks for; false if it failed for another reason.
fn grow_into(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> bool {
    let start = out.len();
    for _ in 0..4 {
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return true;
            }
            Err(Some(required)) => out.resize(start + required, 0),
            Err(None) => break,
        }
    }
    out.truncate(start);
    false
}

fn encode_size(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(required_size)
        }
        _ => None,
    }
}

fn encrypt_size(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(required_size)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
