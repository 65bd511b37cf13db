//! Kernel TLS (kTLS): once the handshake is done, the session keys go to
//! the kernel, which then encrypts what the socket sends and decrypts what
//! it receives, so a shell moves plaintext and the echo is unmasked in
//! place and sent from the buffer it arrived in, as on ws://.
//!
//! rustls stays in charge of the keys ([`KernelConnection`]); the engine
//! decides everything else a TLS session still needs once the kernel holds
//! the record layer: answering a KeyUpdate (RFC 8446 §4.6.3), refusing a
//! TLS 1.2 renegotiation (RFC 5746 §4.4 / RFC 5246 §7.2.2), ending with
//! close_notify (RFC 8446 §6.1). Each of those becomes a [`TlsCommand`]
//! the shell carries out on the socket, in order.

use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// TLS record content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Alert descriptions (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const DECODE_ERROR: u8 = 50;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;
const WARNING: u8 = 1;
const FATAL: u8 = 2;

/// Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;

/// The largest record plaintext (RFC 8446 §5.1), for counting records
/// sent.
const MAX_RECORD: usize = 1 << 14;

/// Post-handshake messages (KeyUpdates, refused renegotiations) accepted in
/// a row without application data between them: rustls's own bound in
/// user space, so a storm is cut the same way on both paths.
pub const MAX_IN_A_ROW: u8 = 32;

/// A TLS version the kernel's record layer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    /// The version's code point, as the kernel's `tls_crypto_info` wants it.
    pub fn wire(self) -> u16 {
        match self {
            Version::Tls12 => 0x0303,
            Version::Tls13 => 0x0304,
        }
    }

    fn of(v: ProtocolVersion) -> Option<Version> {
        match v {
            ProtocolVersion::TLSv1_2 => Some(Version::Tls12),
            ProtocolVersion::TLSv1_3 => Some(Version::Tls13),
            _ => None,
        }
    }
}

/// An AEAD the kernel's record layer may implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Chacha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    fn bit(self, version: Version) -> u8 {
        let v = match version {
            Version::Tls12 => 0,
            Version::Tls13 => 3,
        };
        1 << (v + self as u8)
    }
}

/// Which (version, cipher) pairs the kernel takes: found by the shell when
/// it starts (the `tls` module may be missing, or lack a cipher), and empty
/// when the keys must stay in user space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSupport(u8);

/// [`KernelSupport`]'s bit for key changes; the others are (version,
/// cipher) pairs.
const REKEY: u8 = 1 << 7;

impl KernelSupport {
    pub const NONE: KernelSupport = KernelSupport(0);

    pub fn with(self, version: Version, cipher: Cipher) -> KernelSupport {
        KernelSupport(self.0 | cipher.bit(version))
    }

    pub fn allows(self, version: Version, cipher: Cipher) -> bool {
        self.0 & cipher.bit(version) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 & !REKEY == 0
    }

    /// The kernel also changes a TLS 1.3 key under a live session (Linux
    /// 6.14): KeyUpdates are possible in both directions.
    pub fn with_rekey(self) -> KernelSupport {
        KernelSupport(self.0 | REKEY)
    }

    pub fn rekeys(self) -> bool {
        self.0 & REKEY != 0
    }

    /// For the start-up log: "TLS 1.3: AES-128-GCM, ...; TLS 1.2: ...".
    pub fn describe(self) -> String {
        let mut parts = Vec::new();
        for (version, name) in [(Version::Tls13, "TLS 1.3"), (Version::Tls12, "TLS 1.2")] {
            let ciphers: Vec<_> = Cipher::ALL
                .iter()
                .filter(|c| self.allows(version, **c))
                .map(|c| c.name())
                .collect();
            if !ciphers.is_empty() {
                parts.push(format!("{name}: {}", ciphers.join(", ")));
            }
        }
        if !parts.is_empty() && !self.rekeys() {
            parts.push("no TLS 1.3 key updates (before Linux 6.14)".into());
        }
        parts.join("; ")
    }
}

/// One direction's key and where its record sequence stands: what the
/// kernel's `tls_crypto_info` for that direction is made of. Copied out of
/// rustls's secrets, and wiped when dropped as rustls wipes its own.
pub struct KernelKey {
    pub version: Version,
    /// The next record's sequence number.
    pub seq: u64,
    cipher: Cipher,
    key: [u8; 32],
    key_len: u8,
    iv: [u8; 12],
}

impl std::fmt::Debug for KernelKey {
    // Never the key material, even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelKey")
            .field("version", &self.version)
            .field("cipher", &self.cipher)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Drop for KernelKey {
    fn drop(&mut self) {
        for b in self.key.iter_mut().chain(self.iv.iter_mut()) {
            // SAFETY: `b` is a valid, aligned, exclusive reference; the
            // volatile write only keeps the compiler from dropping the wipe.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl KernelKey {
    fn new(version: Version, seq: u64, secrets: ConnectionTrafficSecrets) -> Option<KernelKey> {
        let (cipher, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        let mut out = KernelKey {
            version,
            seq,
            cipher,
            key: [0; 32],
            key_len: 0,
            iv: [0; 12],
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        out.key.get_mut(..key.len())?.copy_from_slice(key);
        out.key_len = key.len() as u8;
        out.iv.get_mut(..iv.len())?.copy_from_slice(iv);
        Some(out)
    }

    /// A key of fixed, made-up bytes, for a shell to find out at start-up
    /// which ciphers the kernel takes. It protects nothing.
    pub fn probe(version: Version, cipher: Cipher) -> KernelKey {
        let key_len = match cipher {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        };
        KernelKey {
            version,
            seq: 0x0102_0304_0506_0708,
            cipher,
            key: std::array::from_fn(|i| 0x40 + i as u8),
            key_len,
            iv: std::array::from_fn(|i| 0x80 + i as u8),
        }
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The AEAD key.
    pub fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    /// The 12-byte static IV (for AES-GCM: the 4-byte salt, then the rest).
    pub fn iv(&self) -> &[u8] {
        &self.iv
    }
}

/// Which way a key protects records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Records we send.
    Send,
    /// Records we receive.
    Receive,
}

/// What the shell does on the socket for a kernel-TLS connection, in the
/// order given, before it arms the next read. A command that fails is
/// reported with [`crate::Connection::tls_command_failed`].
#[derive(Debug)]
pub enum TlsCommand {
    /// Attach the kernel's TLS to the socket (`TCP_ULP` "tls") and give it
    /// both keys: from here the socket carries plaintext.
    Attach { send: KernelKey, receive: KernelKey },
    /// Replace one direction's key (TLS 1.3 KeyUpdate, RFC 8446 §4.6.3).
    SetKey(Direction, KernelKey),
    /// Send one record of a type other than application data (an alert,
    /// a handshake message) through the kernel's record layer.
    Record {
        content_type: u8,
        payload: Box<[u8]>,
    },
}

/// What a record the kernel would not hand over as data did.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing for the engine beyond any commands it queued.
    Ok,
    /// The peer's close_notify: no more input.
    Closed,
    /// The peer broke TLS, or ended it with an error alert: any alert of
    /// ours is queued, then the connection ends.
    Failed,
}

/// A session whose record layer is the kernel's.
pub struct KernelTls {
    conn: KernelConnection<ServerConnectionData>,
    version: Version,
    /// Post-handshake messages in a row (see [`MAX_IN_A_ROW`]), and the
    /// count of bytes read when the last one came.
    in_a_row: u8,
    read_at_last: u64,
    close_notify_sent: bool,
    renegotiation_refused: bool,
    /// Records sent under the current send key, counted from above (the
    /// kernel makes them; see [`KernelTls::wrote`]), and how many the
    /// cipher allows under one key before it must change.
    sent: u64,
    limit: u64,
    /// The kernel can change keys (see [`KernelSupport::rekeys`]).
    rekeys: bool,
    /// The limit was reached where the key cannot change: the connection
    /// is being closed.
    exhausted: bool,
    /// Commands not yet taken by the shell.
    pub(crate) commands: std::collections::VecDeque<TlsCommand>,
}

impl std::fmt::Debug for KernelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelTls")
            .field("version", &self.version)
            .field("commands", &self.commands.len())
            .finish_non_exhaustive()
    }
}

impl KernelTls {
    /// Take over from rustls's unbuffered connection, whose handshake is
    /// done and which holds no record to send: the [`TlsCommand::Attach`]
    /// to run is queued.
    pub(crate) fn new(
        conn: rustls::server::UnbufferedServerConnection,
        support: KernelSupport,
    ) -> Result<KernelTls, rustls::Error> {
        let (secrets, conn) = conn.dangerous_into_kernel_connection()?;
        let unsupported = || rustls::Error::General("not a cipher the kernel takes".into());
        let version = Version::of(conn.protocol_version()).ok_or_else(unsupported)?;
        let (send_seq, send) = secrets.tx;
        let (recv_seq, receive) = secrets.rx;
        let send = KernelKey::new(version, send_seq, send).ok_or_else(unsupported)?;
        let receive = KernelKey::new(version, recv_seq, receive).ok_or_else(unsupported)?;
        if !support.allows(version, send.cipher()) {
            return Err(unsupported());
        }
        // A key must change (or the session end) before this many records
        // (AES-GCM: 2^24, or 2^23 for TLS 1.3's AES-256 in rustls's own
        // accounting); rustls counts in user space, the kernel does not.
        let limit = match conn.negotiated_cipher_suite() {
            rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
            rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        };
        let sent = send.seq;
        let mut commands = std::collections::VecDeque::new();
        commands.push_back(TlsCommand::Attach { send, receive });
        Ok(KernelTls {
            conn,
            version,
            in_a_row: 0,
            read_at_last: 0,
            close_notify_sent: false,
            renegotiation_refused: false,
            sent,
            limit,
            rekeys: support.rekeys(),
            exhausted: false,
            commands,
        })
    }

    /// `n` bytes went out through the kernel in one write, which it made
    /// into at most `n / 2^14 + 1` records. Near the cipher's limit, a TLS
    /// 1.3 session moves to its next send key (a KeyUpdate of ours, RFC
    /// 8446 §4.6.3, §5.5); true when a session that cannot (TLS 1.2, or a
    /// kernel that cannot change keys) must end instead.
    pub(crate) fn wrote(&mut self, n: usize) -> bool {
        self.sent = self.sent.saturating_add((n / MAX_RECORD) as u64 + 1);
        // A sixteenth of the limit to spare: the count is an upper bound,
        // and the records already queued go out under the old key.
        if self.sent < self.limit - self.limit / 16 {
            return false;
        }
        if self.version == Version::Tls13 && self.rekeys {
            self.update_send_key();
            return false;
        }
        !std::mem::replace(&mut self.exhausted, true)
    }

    fn update_send_key(&mut self) {
        self.record(HANDSHAKE, Box::new([KEY_UPDATE, 0, 0, 1, 0]));
        match self.conn.update_tx_secret() {
            Ok((seq, secrets)) => {
                if let Some(key) = KernelKey::new(self.version, seq, secrets) {
                    self.sent = seq;
                    self.commands
                        .push_back(TlsCommand::SetKey(Direction::Send, key));
                }
            }
            // Only TLS 1.2 has no next key; a peer's KeyUpdate on it is
            // refused before this.
            Err(_) => self.exhausted = true,
        }
    }

    fn record(&mut self, content_type: u8, payload: Box<[u8]>) {
        self.sent = self.sent.saturating_add(1);
        self.commands.push_back(TlsCommand::Record {
            content_type,
            payload,
        });
    }

    #[cfg(test)]
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Queue close_notify (RFC 8446 §6.1) once; true if it was queued now.
    pub(crate) fn close_notify(&mut self) -> bool {
        if std::mem::replace(&mut self.close_notify_sent, true) {
            return false;
        }
        self.alert(WARNING, CLOSE_NOTIFY);
        true
    }

    fn alert(&mut self, level: u8, description: u8) {
        self.record(ALERT, Box::new([level, description]));
    }

    /// The kernel could not read the peer's next record (it failed
    /// authentication, or was too long): RFC 8446 §5.2, §6.2.
    pub(crate) fn broken_record(&mut self) -> Received {
        self.fatal(BAD_RECORD_MAC)
    }

    fn fatal(&mut self, description: u8) -> Received {
        // A fatal alert ends the session: no close_notify after it.
        self.close_notify_sent = true;
        self.alert(FATAL, description);
        Received::Failed
    }

    /// A record that is not application data, as the kernel decrypted it;
    /// `bytes_read` is the connection's input so far, which tells whether
    /// application data came since the last post-handshake message.
    pub(crate) fn received(
        &mut self,
        content_type: u8,
        payload: &[u8],
        bytes_read: u64,
    ) -> Received {
        match content_type {
            ALERT => match payload {
                [_, CLOSE_NOTIFY] => Received::Closed,
                // RFC 8446 §6.1: user_canceled is followed by close_notify;
                // RFC 5246 §7.2: warning alerts do not end a TLS 1.2 session.
                [_, USER_CANCELED] => Received::Ok,
                [WARNING, _] if self.version == Version::Tls12 => Received::Ok,
                [_, _] => {
                    // An error alert from the peer: nothing to answer.
                    self.close_notify_sent = true;
                    Received::Failed
                }
                _ => self.fatal(DECODE_ERROR),
            },
            // RFC 8446 §5.1: no zero-length handshake fragments.
            HANDSHAKE if payload.is_empty() => self.fatal(UNEXPECTED_MESSAGE),
            HANDSHAKE => {
                let mut rest = payload;
                // One record may hold several handshake messages.
                while !rest.is_empty() {
                    let [ty, a, b, c, body @ ..] = rest else {
                        return self.fatal(DECODE_ERROR);
                    };
                    let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
                    let Some((message, after)) = body.split_at_checked(len) else {
                        // A message split over records: none we accept is.
                        return self.fatal(UNEXPECTED_MESSAGE);
                    };
                    rest = after;
                    if bytes_read == self.read_at_last && self.in_a_row >= MAX_IN_A_ROW {
                        return self.fatal(UNEXPECTED_MESSAGE);
                    }
                    self.in_a_row = if bytes_read == self.read_at_last {
                        self.in_a_row + 1
                    } else {
                        1
                    };
                    self.read_at_last = bytes_read;
                    let outcome = match (*ty, self.version) {
                        (KEY_UPDATE, Version::Tls13) => self.key_update(message),
                        // A TLS 1.2 renegotiation: the first is refused
                        // with a warning and the session goes on; a second
                        // is fatal, as rustls has it in user space.
                        (CLIENT_HELLO, Version::Tls12) if !self.renegotiation_refused => {
                            self.renegotiation_refused = true;
                            self.alert(WARNING, NO_RENEGOTIATION);
                            Received::Ok
                        }
                        _ => self.fatal(UNEXPECTED_MESSAGE),
                    };
                    if outcome != Received::Ok {
                        return outcome;
                    }
                }
                Received::Ok
            }
            _ => self.fatal(UNEXPECTED_MESSAGE),
        }
    }

    /// RFC 8446 §4.6.3: the peer's next records use its next key; if it asks
    /// (update_requested), ours do too, after a KeyUpdate of our own.
    fn key_update(&mut self, message: &[u8]) -> Received {
        let requested = match message {
            [0] => false,
            [1] => true,
            _ => return self.fatal(DECODE_ERROR),
        };
        let Ok((seq, secrets)) = self.conn.update_rx_secret() else {
            return self.fatal(UNEXPECTED_MESSAGE);
        };
        let Some(key) = KernelKey::new(self.version, seq, secrets) else {
            return self.fatal(UNEXPECTED_MESSAGE);
        };
        self.commands
            .push_back(TlsCommand::SetKey(Direction::Receive, key));
        if requested {
            self.update_send_key();
        }
        Received::Ok
    }
}

#[cfg(test)]
mod tests;
