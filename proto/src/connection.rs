//! The connection engine: one TCP stream's whole life as a plain struct,
//! from the first request byte to the last socket action, in the shape of
//! quinn-proto's `Connection`.
//!
//! A shell hands it the bytes it read ([`Connection::read_buffer`],
//! [`Connection::handle_read`]), asks what to write
//! ([`Connection::poll_transmit`]) and reports what was written
//! ([`Connection::handle_written`]), asks when to wake it
//! ([`Connection::poll_timeout`]) and tells it the time
//! ([`Connection::handle_timeout`]), and carries out the socket actions it
//! decides ([`Connection::poll_shutdown_write`], [`Connection::is_done`]).
//! The engine never reads a clock or touches a socket: time is an argument,
//! so every path, timeouts included, is a deterministic unit test.
//!
//! Where a new rule goes: a rule about bytes on the wire belongs in
//! `handshake`, `frame` or `message`; a rule about when to read, write, wait
//! or give up on a connection belongs here; a shell never decides either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::close_code;
use crate::deflate::{self, Policy};
use crate::frame::{ControlFrame, MAX_CLIENT_HEADER};
use crate::handshake::{self, Limits, Parsed, Request};
use crate::message::{self, Session};
use crate::out_queue::{CloseOrder, OutQueue};
pub use crate::read_buffer::ADOPT_HEADROOM;
use crate::read_buffer::{Flow, ReadBuffer, ReadSizing};
use crate::tls::kernel::{KernelSupport, KernelTls, Received, TlsCommand, APPLICATION_DATA};
use crate::tls::{Fed, Tls};
use crate::HandshakeError;

/// Everything that bounds what a client can make one connection do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest message, summed over fragments (1009 beyond, §7.4.1).
    pub max_message_size: u64,
    /// Largest handshake header block (431 beyond).
    pub max_header_bytes: usize,
    /// Time from accept to a complete opening handshake.
    pub handshake_timeout: Duration,
    /// Silence after which the server pings; as long again without a byte
    /// and the connection is closed. Zero disables both.
    pub idle_timeout: Duration,
    /// Time a closing connection has to finish before the socket is cut.
    pub close_timeout: Duration,
    /// Cost of unsent output (bytes plus queue entries) beyond which the
    /// connection stops processing and reading input: backpressure.
    pub max_output_bytes: usize,
    /// Read buffer sizes; frames that fit the largest are echoed whole.
    pub read_sizing: ReadSizing,
    /// Subprotocols the server may select.
    pub subprotocols: Vec<String>,
    /// Browser origins allowed to connect; empty allows all (§10.2).
    pub allowed_origins: Vec<String>,
    /// Whether to agree to permessage-deflate, and on what (RFC 7692).
    pub deflate: Policy,
    /// What the kernel's TLS takes (the shell finds out at start-up): a
    /// wss:// session that negotiated one of these goes to the kernel once
    /// its handshake is done. Empty keeps TLS in user space.
    pub kernel_tls: KernelSupport,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: message::DEFAULT_MAX_MESSAGE_SIZE,
            max_header_bytes: handshake::DEFAULT_MAX_HEADER_BYTES,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            max_output_bytes: 256 * 1024,
            read_sizing: ReadSizing {
                min: 4 * 1024,
                max: 64 * 1024,
            },
            subprotocols: Vec::new(),
            allowed_origins: Vec::new(),
            deflate: Policy::Off,
            kernel_tls: KernelSupport::NONE,
        }
    }
}

/// A plain HTTP request (no upgrade) for the shell to answer with
/// [`Connection::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
}

/// Things that happened, for the shell's counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The opening handshake succeeded (§4.2.2).
    Upgraded,
    /// A plain HTTP request arrived.
    HttpRequest,
    /// The handshake was refused with this HTTP status.
    HandshakeRejected(u16),
    /// The peer broke a framing rule; closed with this code (§7.1.7).
    ProtocolError(u16),
    /// Silent past the idle ping: closed with 1001.
    IdleClosed,
    /// A handshake or closing deadline passed: the socket is cut.
    TimedOut(Deadline),
    /// A close frame with this code is on its way out (§5.5.1; 1005 for
    /// one without a code).
    CloseSent(u16),
    /// The peer's close frame carried this code (1005 for none, §7.1.5).
    CloseReceived(u16),
    /// The peer broke TLS (garbage instead of a ClientHello, a failed
    /// handshake, a bad record): the alert is sent and the connection ends.
    TlsFailed,
}

/// Which deadline cut a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The opening handshake did not complete in time.
    Handshake,
    /// The closing handshake, or the answer to a plain request, did not
    /// complete in time.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the request.
    Handshake,
    /// An HTTP answer (a page, or a refused handshake) is queued; once it is
    /// written, half-close and read until the peer goes, so unread input does
    /// not turn our close into a reset that destroys the answer.
    Responding,
    Open,
    /// Our close (shutdown, idle) is out or queued: waiting for the peer's.
    ServerClosing,
    /// The peer's close arrived and our reply is queued; once it is written
    /// the server closes the TCP connection first (§7.1.1).
    PeerClosed,
    /// We failed the connection (§7.1.7): after our close, half-close and
    /// drain until the peer goes.
    Failed,
    /// The peer's side ended (EOF or error): flush what is queued, then close.
    Gone,
    /// Close the socket.
    Done,
}

const EV_UPGRADED: u16 = 1;
const EV_HTTP: u16 = 2;
const EV_REJECTED: u16 = 4;
const EV_PROTOCOL: u16 = 8;
const EV_IDLE: u16 = 16;
const EV_TIMED_OUT: u16 = 32;
const EV_CLOSE_SENT: u16 = 64;
const EV_CLOSE_RECEIVED: u16 = 128;
const EV_TLS_FAILED: u16 = 256;

/// Reads a closing connection may discard before it is closed anyway.
const MAX_LINGER_READS: u8 = 64;

/// One connection's engine.
#[derive(Debug)]
pub struct Connection {
    cfg: Arc<Config>,
    state: State,
    session: Session,
    rb: ReadBuffer,
    out: OutQueue,
    /// Input is buffered but unprocessed: output must drain first.
    backlog: bool,
    half_closed: bool,
    shutdown_write: bool,
    handshake_deadline: Instant,
    last_read: Instant,
    /// When our idle ping went out, while unanswered by any byte.
    ping_at: Option<Instant>,
    /// When the connection's ending was decided: the close timer's start.
    closing_since: Option<Instant>,
    linger_reads: u8,
    /// What few connections have (a plain request waiting for its answer,
    /// a proxy's report of the client), boxed together: the engine's size
    /// is most of an idle connection's memory, and one pointer costs 8
    /// bytes of it.
    rare: Option<Box<Rare>>,
    events: u16,
    rejected_status: u16,
    failed_code: u16,
    timed_out: Deadline,
    /// Close codes already reported as events: (sent, received).
    closes_reported: (bool, bool),
    /// Times processing stopped because unsent output was over budget.
    stalls: u64,
    /// Bytes read and written over the connection's life.
    bytes: (u64, u64),
    /// wss://: the TLS session every byte in and out passes through.
    tls: Option<Box<Tls>>,
}

/// See [`Connection`]'s `rare`.
#[derive(Debug, Default)]
struct Rare {
    http: Option<HttpRequest>,
    /// The client address a proxy reported in the handshake.
    forwarded_for: Option<String>,
    /// wss:// with the kernel's record layer: the session rustls handed over.
    kernel_tls: Option<KernelTls>,
    /// The session stays in user space for good (a cipher the kernel does
    /// not take, or the connection ended before it could pass).
    kernel_declined: bool,
}

/// A connection's life in figures, for a log line when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// From accept until now.
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages: u64,
    /// Close codes (1005 for a close without one): sent, received.
    pub close_sent: Option<u16>,
    pub close_received: Option<u16>,
    /// See [`crate::handshake::UpgradeRequest::forwarded_for`]: whether to
    /// believe it is the shell's call.
    pub forwarded_for: Option<Box<str>>,
}

impl Connection {
    /// A connection accepted at `now`.
    pub fn new(cfg: Arc<Config>, now: Instant) -> Connection {
        let session = Session::new(message::Config {
            max_message_size: cfg.max_message_size,
            echo_whole_up_to: cfg.read_sizing.max.saturating_sub(MAX_CLIENT_HEADER) as u64,
        });
        Connection {
            rb: ReadBuffer::new(cfg.read_sizing),
            handshake_deadline: now + cfg.handshake_timeout,
            cfg,
            state: State::Handshake,
            session,
            out: OutQueue::new(),
            backlog: false,
            half_closed: false,
            shutdown_write: false,
            last_read: now,
            ping_at: None,
            closing_since: None,
            linger_reads: 0,
            events: 0,
            rejected_status: 0,
            failed_code: 0,
            timed_out: Deadline::Close,
            closes_reported: (false, false),
            stalls: 0,
            bytes: (0, 0),
            rare: None,
            tls: None,
        }
    }

    /// A wss:// connection accepted at `now`: everything it reads and
    /// writes is TLS under `tls` (rustls fails only for a configuration
    /// it cannot use).
    pub fn with_tls(
        cfg: Arc<Config>,
        tls: Arc<rustls::ServerConfig>,
        now: Instant,
    ) -> Result<Connection, rustls::Error> {
        let mut conn = Connection::new(cfg, now);
        conn.tls = Some(Box::new(Tls::new(tls)?));
        Ok(conn)
    }

    /// Whether this connection speaks TLS, and whether its handshake is
    /// done: `None` for a plain one.
    pub fn tls_handshaking(&self) -> Option<bool> {
        match &self.tls {
            Some(t) => Some(t.is_handshaking()),
            None => self.kernel_tls().then_some(false),
        }
    }

    /// Whether the kernel holds this connection's TLS record layer.
    pub fn kernel_tls(&self) -> bool {
        self.kernel().is_some()
    }

    fn kernel(&self) -> Option<&KernelTls> {
        self.rare.as_ref().and_then(|r| r.kernel_tls.as_ref())
    }

    fn kernel_mut(&mut self) -> Option<&mut KernelTls> {
        self.rare.as_mut().and_then(|r| r.kernel_tls.as_mut())
    }

    #[cfg(test)]
    pub(crate) fn kernel_tls_state(&mut self) -> Option<&mut KernelTls> {
        self.kernel_mut()
    }

    /// True while this connection's TLS may still pass to the kernel: the
    /// shell then keeps at most one read in flight, so that it can call
    /// [`Connection::poll_tls_command`] between reads.
    pub fn tls_hand_off_pending(&self) -> bool {
        self.tls.is_some()
            && !self.cfg.kernel_tls.is_empty()
            && !self.rare.as_ref().is_some_and(|r| r.kernel_declined)
    }

    /// The next thing to do on the socket for TLS in the kernel, in order,
    /// before the next read is armed (the kernel orders each record and key
    /// change by when it is made, so a send in flight does not matter).
    /// The first is the [`TlsCommand::Attach`] that hands the session over,
    /// at the first record boundary after the TLS handshake: it comes only
    /// when no read is in flight, for the kernel must see every byte after
    /// the last record rustls read.
    pub fn poll_tls_command(&mut self, read_in_flight: bool) -> Option<TlsCommand> {
        if !read_in_flight && self.tls_hand_off_pending() {
            self.try_hand_off();
        }
        let command = self.kernel_mut()?.commands.pop_front();
        if command.is_some() {
            self.settle();
        }
        command
    }

    /// The session can pass to the kernel once the ciphertext it has made
    /// is written: read nothing more until then, for what a read took
    /// would be ciphertext the kernel never sees.
    fn hand_off_waits_for_write(&self) -> bool {
        match &self.tls {
            Some(tls) if self.tls_hand_off_pending() => {
                tls.pending() > 0
                    && tls.kernel_can_take(self.cfg.kernel_tls) == Some(true)
                    && matches!(self.state, State::Handshake | State::Open)
            }
            _ => false,
        }
    }

    fn try_hand_off(&mut self) {
        let support = self.cfg.kernel_tls;
        let Some(tls) = &self.tls else {
            return;
        };
        let decline = match tls.kernel_can_take(support) {
            None => return,
            Some(false) => true,
            // A session that is ending finishes where it is.
            Some(true) => !matches!(self.state, State::Handshake | State::Open),
        };
        if decline {
            self.rare.get_or_insert_default().kernel_declined = true;
            return;
        }
        if !tls.between_records() {
            return;
        }
        let Some(tls) = self.tls.take() else {
            return;
        };
        match tls.into_kernel(support) {
            Ok(kernel) => self.rare.get_or_insert_default().kernel_tls = Some(kernel),
            // rustls refuses only a state the checks above rule out; the
            // session is gone with it, so the connection is too.
            Err(_) => self.state = State::Done,
        }
    }

    /// A [`TlsCommand`] could not be carried out (the kernel refused a
    /// key): the session cannot go on, and the socket is cut.
    pub fn tls_command_failed(&mut self) {
        if let Some(k) = self.kernel_mut() {
            k.commands.clear();
        }
        self.state = State::Done;
    }

    /// With TLS in the kernel: it could not read the peer's next record
    /// (it failed authentication, or was too long). The peer broke TLS:
    /// our alert goes out, and the connection ends.
    pub fn handle_tls_record_error(&mut self, now: Instant) {
        if let Some(kernel) = self.kernel_mut() {
            let _ = kernel.broken_record();
            self.tls_said(Fed::Failed, now);
            self.settle();
        } else {
            self.handle_eof(now);
        }
    }

    /// With TLS in the kernel: a record it would not hand over as data,
    /// read with its content type (an alert, a KeyUpdate, a renegotiation
    /// attempt).
    pub fn handle_tls_record(&mut self, content_type: u8, payload: &[u8], now: Instant) {
        if !self.kernel_tls() {
            return;
        }
        let bytes_read = self.bytes.0;
        if content_type == APPLICATION_DATA {
            self.bytes.0 += payload.len() as u64;
            let session =
                matches!(self.state, State::Open | State::ServerClosing).then_some(&self.session);
            self.rb.append(payload, session, &mut self.out);
            return self.after_plaintext(Fed::Ok, now);
        }
        let Some(kernel) = self.kernel_mut() else {
            return;
        };
        let fed = match kernel.received(content_type, payload, bytes_read) {
            Received::Ok => Fed::Ok,
            Received::Closed => Fed::Closed,
            Received::Failed => Fed::Failed,
        };
        self.last_read = now;
        self.ping_at = None;
        self.tls_said(fed, now);
        self.settle();
    }

    /// True while the engine wants a read in flight.
    pub fn wants_read(&self) -> bool {
        if self.hand_off_waits_for_write() {
            return false;
        }
        match self.state {
            State::Handshake => true,
            State::Responding => self.half_closed,
            // Backpressure: a peer that does not take its echo cannot make us
            // hold more. Reading goes on when nothing is sendable, so a held
            // frame's own rest can always arrive.
            State::Open | State::ServerClosing => {
                !self.backlog
                    && (self.output_cost() < self.cfg.max_output_bytes || !self.output_pending())
            }
            State::Failed => self.out.close_written(),
            State::PeerClosed | State::Gone | State::Done => false,
        }
    }

    /// The buffer for the next read: read into its spare capacity and hand
    /// it back with [`Connection::handle_read`].
    pub fn read_buffer(&mut self) -> BytesMut {
        if let Some(tls) = &self.tls {
            // Ciphertext, decrypted into the engine's own buffer as it
            // arrives; nothing is kept between reads, so an idle
            // connection holds only what a shell's read in flight holds.
            return BytesMut::with_capacity(tls.read_size(self.cfg.read_sizing));
        }
        match self.state {
            State::Handshake => {
                // Room to see the limit crossed, so an oversize block gets 431.
                let want =
                    (self.cfg.max_header_bytes + 1).saturating_sub(self.rb.unprocessed().len());
                self.rb.take_for_read(None, &mut self.out, want.max(256))
            }
            State::Open | State::ServerClosing => {
                self.rb.take_for_read(Some(&self.session), &mut self.out, 0)
            }
            _ => self.rb.take_for_read(None, &mut self.out, 0),
        }
    }

    /// A read into `buf` completed with `n` bytes; 0 is the end of the peer's
    /// stream (or a read error: either way nothing more will come).
    pub fn handle_read(&mut self, buf: BytesMut, n: usize, now: Instant) {
        if self.tls.is_some() {
            if let Some(tls) = &mut self.tls {
                tls.sized_read(buf.capacity(), n, self.cfg.read_sizing);
            }
            return self.handle_ciphertext(buf.get(..n).unwrap_or_default(), now);
        }
        self.bytes.0 += n as u64;
        self.rb.restore(buf, n);
        if n == 0 {
            self.peer_gone(now);
            return self.settle();
        }
        self.last_read = now;
        self.ping_at = None;
        match self.state {
            State::Handshake => self.handshake(now),
            State::Open | State::ServerClosing => self.process(now),
            _ => {
                // Draining after our ending: discard.
                self.rb.consume(usize::MAX);
                self.count_linger_read();
            }
        }
        self.settle();
    }

    fn count_linger_read(&mut self) {
        if self.state == State::Responding {
            self.linger_reads += 1;
            if self.linger_reads >= MAX_LINGER_READS {
                self.state = State::Done;
            }
        }
    }

    /// For a shell that receives into buffers of its own (an io_uring
    /// provided-buffer ring): `buf[data_at..]` was received; the bytes before
    /// `data_at` are scratch the engine may overwrite, and with
    /// [`ADOPT_HEADROOM`] of them it copies nothing. The echo is cut from
    /// the buffer in place, and the buffer comes back through
    /// [`Connection::release_buffers`]. The end of the peer's stream is
    /// [`Connection::handle_eof`].
    pub fn handle_received(&mut self, buf: BytesMut, data_at: usize, now: Instant) {
        if buf.len() <= data_at {
            self.rb.discard(buf);
            return;
        }
        if self.tls.is_some() {
            self.handle_ciphertext(buf.get(data_at..).unwrap_or_default(), now);
            self.rb.discard(buf);
            return;
        }
        self.bytes.0 += (buf.len() - data_at) as u64;
        self.last_read = now;
        self.ping_at = None;
        match self.state {
            State::Handshake => {
                // The request must be parsed whole: it is copied into a
                // buffer of our own (it is small, and bounded by the header
                // limit).
                self.rb.absorb(buf, data_at, &mut self.out);
                self.handshake(now);
            }
            State::Open | State::ServerClosing => {
                self.rb.adopt(buf, data_at, &mut self.out);
                if !self.backlog {
                    self.process(now);
                }
            }
            _ => {
                self.rb.discard(buf);
                self.count_linger_read();
            }
        }
        self.settle();
    }

    /// Ciphertext arrived (empty: the end of the stream): decrypt it into
    /// the read buffer and go on as a plain connection does with what it
    /// read.
    fn handle_ciphertext(&mut self, data: &[u8], now: Instant) {
        self.bytes.0 += data.len() as u64;
        if data.is_empty() {
            self.peer_gone(now);
            return self.settle();
        }
        self.last_read = now;
        self.ping_at = None;
        let fed = match &mut self.tls {
            Some(tls) => {
                let (rb, out) = (&mut self.rb, &mut self.out);
                let session = matches!(self.state, State::Open | State::ServerClosing)
                    .then_some(&self.session);
                tls.feed(data, |plain| rb.append(plain, session, out))
            }
            None => Fed::Ok,
        };
        self.after_plaintext(fed, now);
    }

    /// Decrypted input is in the read buffer: go on as a plain connection
    /// does with what it read, then act on what TLS said.
    fn after_plaintext(&mut self, fed: Fed, now: Instant) {
        match self.state {
            State::Handshake if !self.rb.unprocessed().is_empty() => self.handshake(now),
            State::Handshake => {}
            State::Open | State::ServerClosing => {
                if !self.backlog {
                    self.process(now);
                }
            }
            _ => {
                self.rb.consume(usize::MAX);
                self.count_linger_read();
            }
        }
        self.tls_said(fed, now);
        self.settle();
    }

    fn tls_said(&mut self, fed: Fed, now: Instant) {
        match fed {
            Fed::Ok => {}
            Fed::Closed => self.peer_gone(now),
            Fed::Failed => {
                // Our alert, if any, is queued: send it, then close.
                self.events |= EV_TLS_FAILED;
                self.backlog = false;
                self.begin_ending(State::Gone, now);
            }
        }
    }

    /// The peer's stream ended (or a receive failed): nothing more will
    /// come.
    pub fn handle_eof(&mut self, now: Instant) {
        self.peer_gone(now);
        self.settle();
    }

    /// Call once output has been sent: shell buffers the engine is done with
    /// go into `into`, for the shell to reuse once nothing points into them
    /// (`BytesMut::try_reclaim`). Returns the bytes of small unsent echo
    /// copied out of them, so that a peer that does not read pins no more
    /// than `min_pin`-sized slices of shell buffers.
    pub fn release_buffers(&mut self, into: &mut Vec<BytesMut>, min_pin: usize) -> usize {
        let copied = if self.backlog {
            0
        } else {
            self.rb.release_current(&mut self.out, min_pin)
        };
        self.rb.take_released(into);
        copied
    }

    /// Give back the memory of empty queues (call now and then, e.g. from a
    /// shell's timer sweep: an idle connection then holds only this struct
    /// and no allocation, while a busy one keeps its queues between echoes).
    pub fn shrink_idle(&mut self) {
        self.out.shrink_idle();
        self.rb.shrink_idle();
    }

    /// The connection is being dropped: every shell buffer it holds goes
    /// into `into` (echo still queued is dropped with the engine).
    pub fn release_all(&mut self, into: &mut Vec<BytesMut>) {
        self.rb.release_all();
        self.rb.take_released(into);
    }

    /// Give back a buffer from [`Connection::read_buffer`] that nothing was
    /// read into (a non-blocking read would have blocked).
    pub fn cancel_read(&mut self, buf: BytesMut) {
        // With TLS the buffer was a fresh one for ciphertext, not the read
        // buffer holding plaintext: there is nothing to put back.
        if self.tls.is_none() {
            self.rb.put_back(buf);
        }
    }

    /// Fill `batch` with up to `max` slices to write next (empty when there
    /// is nothing). Write them in order and report with
    /// [`Connection::handle_written`].
    pub fn poll_transmit(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let Some(tls) = &mut self.tls else {
            return self.out.fill_batch(batch, max);
        };
        batch.clear();
        // Encrypt what the queue would send next, in its order, whole
        // entries only, while rustls has room.
        if tls.room() > 0 && self.out.has_pending() {
            let mut plain = std::mem::take(&mut tls.plain);
            self.out.fill_batch(&mut plain, max.max(1));
            let taken = tls.encrypt(&plain);
            // Drop the references now: the queue reclaims what is sent.
            plain.clear();
            tls.plain = plain;
            self.out.advance(taken);
        }
        let ciphertext = tls.transmit();
        if !ciphertext.is_empty() {
            batch.push(ciphertext);
        }
    }

    /// `n` bytes of the last batch were written; 0 means the peer is gone.
    pub fn handle_written(&mut self, n: usize, now: Instant) {
        if n == 0 {
            self.state = State::Done;
            return;
        }
        self.bytes.1 += n as u64;
        match &mut self.tls {
            Some(tls) => tls.written(n),
            None => self.out.advance(n),
        }
        // Only a connection with something rare can have kernel TLS: one
        // branch on the echo path of all others.
        if self.rare.is_some() && self.kernel_mut().is_some_and(|k| k.wrote(n)) {
            self.close_ahead(now, "TLS key limit");
        }
        if self.backlog && self.output_cost() < self.cfg.max_output_bytes {
            self.process(now);
        }
        self.settle();
    }

    /// A write failed: nothing more can be delivered.
    pub fn handle_write_error(&mut self) {
        self.state = State::Done;
    }

    /// When the engine next needs [`Connection::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshake => Some(self.handshake_deadline),
            State::Open if !self.cfg.idle_timeout.is_zero() => {
                Some(self.ping_at.unwrap_or(self.last_read) + self.cfg.idle_timeout)
            }
            State::Open | State::Done => None,
            State::Responding
            | State::ServerClosing
            | State::PeerClosed
            | State::Failed
            | State::Gone => self.closing_since.map(|t| t + self.cfg.close_timeout),
        }
    }

    /// The time is `now`: act on whatever deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.state {
            State::Open => match self.ping_at {
                // Silent for the idle time: ask whether the peer is there.
                None => {
                    self.ping_at = Some(now);
                    self.out.push_ping(ControlFrame::ping(b"ringecho"));
                }
                // Still silent as long again: give up, politely (§7.1.2).
                Some(_) => {
                    self.events |= EV_IDLE;
                    self.close_ahead(now, "idle timeout");
                }
            },
            state => {
                self.events |= EV_TIMED_OUT;
                self.timed_out = if state == State::Handshake {
                    Deadline::Handshake
                } else {
                    Deadline::Close
                };
                self.state = State::Done;
            }
        }
    }

    /// Graceful shutdown: close 1001 ahead of queued echo (§7.4.1), or cut
    /// a connection that has not finished its handshake.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Handshake => self.state = State::Done,
            State::Open => self.close_ahead(now, "server shutting down"),
            _ => {}
        }
    }

    /// True once: the engine's output is over, shut down the socket's
    /// writing side (the peer then sees EOF after our last frame).
    pub fn poll_shutdown_write(&mut self) -> bool {
        std::mem::take(&mut self.shutdown_write)
    }

    /// The connection is over: close the socket (§7.1.1: the server closes
    /// the TCP connection first).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A plain HTTP request waiting for the shell's answer.
    pub fn take_http_request(&mut self) -> Option<HttpRequest> {
        self.rare.as_mut().and_then(|r| r.http.take())
    }

    /// Send `response` to a plain HTTP request, then close.
    pub fn respond(&mut self, response: Vec<u8>) {
        if self.state == State::Responding && !self.half_closed {
            self.out.push_raw(Bytes::from(response));
        }
    }

    /// The next thing that happened, for counters; `None` when nothing new.
    pub fn poll_event(&mut self) -> Option<Event> {
        let (sent, received) = self.session.close_codes();
        if sent.is_some() && !self.closes_reported.0 {
            self.closes_reported.0 = true;
            self.events |= EV_CLOSE_SENT;
        }
        if received.is_some() && !self.closes_reported.1 {
            self.closes_reported.1 = true;
            self.events |= EV_CLOSE_RECEIVED;
        }
        if self.events == 0 {
            return None;
        }
        let bit = self.events & self.events.wrapping_neg();
        self.events &= !bit;
        Some(match bit {
            EV_UPGRADED => Event::Upgraded,
            EV_HTTP => Event::HttpRequest,
            EV_REJECTED => Event::HandshakeRejected(self.rejected_status),
            EV_PROTOCOL => Event::ProtocolError(self.failed_code),
            EV_IDLE => Event::IdleClosed,
            EV_TIMED_OUT => Event::TimedOut(self.timed_out),
            EV_CLOSE_SENT => Event::CloseSent(sent.unwrap_or_default()),
            EV_CLOSE_RECEIVED => Event::CloseReceived(received.unwrap_or_default()),
            _ => Event::TlsFailed,
        })
    }

    /// The connection's life so far in figures, for a log line.
    pub fn summary(&self, now: Instant) -> Summary {
        // The handshake deadline is a fixed time after accept.
        let accepted = self.handshake_deadline - self.cfg.handshake_timeout;
        let (close_sent, close_received) = self.session.close_codes();
        Summary {
            duration: now.saturating_duration_since(accepted),
            bytes_in: self.bytes.0,
            bytes_out: self.bytes.1,
            messages: self.session.messages_echoed(),
            close_sent,
            close_received,
            forwarded_for: self
                .rare
                .as_ref()
                .and_then(|r| r.forwarded_for.as_deref())
                .map(Into::into),
        }
    }

    /// Client messages echoed whole over the connection's life.
    pub fn messages_echoed(&self) -> u64 {
        self.session.messages_echoed()
    }

    /// Times the engine stopped taking input because the peer was not
    /// reading its echo fast enough (unsent output over `max_output_bytes`).
    pub fn backpressure_stalls(&self) -> u64 {
        self.stalls
    }

    /// Echo bytes (server frames) queued over the connection's life.
    pub fn echoed_bytes(&self) -> u64 {
        self.out.echoed()
    }

    /// Input bytes moved from one read allocation to another (never data
    /// payload: only partial headers and control frames).
    pub fn carried_bytes(&self) -> u64 {
        self.rb.carried()
    }

    /// Read buffer memory this connection holds (its own buffer and any
    /// shell buffers it has not released), for tests and memory accounting.
    pub fn read_buffer_bytes(&self) -> usize {
        self.rb.held_bytes()
    }

    /// TLS buffer memory this connection holds (none when idle), for tests
    /// and memory accounting.
    pub fn tls_buffered_bytes(&self) -> usize {
        self.tls.as_ref().map_or(0, |t| t.buffered_bytes())
    }

    fn tls_commands_pending(&self) -> bool {
        self.kernel().is_some_and(|k| !k.commands.is_empty())
    }

    /// Queue our close_notify once, in user space or through the kernel;
    /// true if it was queued now.
    fn close_notify(&mut self) -> bool {
        match &mut self.tls {
            Some(t) => t.close_notify(),
            None => self.kernel_mut().is_some_and(|k| k.close_notify()),
        }
    }

    /// Whether permessage-deflate was agreed in the handshake.
    pub fn deflate_agreed(&self) -> bool {
        self.session.deflate_agreed()
    }

    /// Whether the connection holds a permessage-deflate inflater now (a
    /// fixed [`deflate::Inflater::MEMORY`] bytes): mid-message, or between
    /// messages when the client keeps context.
    pub fn holds_inflater(&self) -> bool {
        self.session.holds_inflater()
    }

    /// Unsent output cost, for tests and memory accounting: the queue,
    /// and with TLS the ciphertext not yet written.
    pub fn output_cost(&self) -> usize {
        self.out.cost() + self.tls.as_ref().map_or(0, |t| t.pending())
    }

    fn http_waiting(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.http.is_some())
    }

    fn output_pending(&self) -> bool {
        self.out.has_pending()
            || self.tls.as_ref().is_some_and(|t| t.pending() > 0)
            || self.tls_commands_pending()
    }

    fn handshake(&mut self, now: Instant) {
        let limits = Limits {
            max_header_bytes: self.cfg.max_header_bytes,
        };
        let mut response = Vec::new();
        let upgraded = match handshake::parse_request(self.rb.unprocessed(), &limits) {
            Ok(Parsed::Partial) => return,
            Ok(Parsed::Complete {
                request: Request::Plain(req),
                ..
            }) => {
                self.rare.get_or_insert_default().http = Some(HttpRequest {
                    method: req.method.to_owned(),
                    path: req.path.to_owned(),
                });
                self.events |= EV_HTTP;
                None
            }
            Ok(Parsed::Complete {
                request: Request::Upgrade(req),
                ..
            }) if !handshake::origin_allowed(req.origin, &self.cfg.allowed_origins) => {
                self.reject(HandshakeError::OriginNotAllowed, &mut response);
                None
            }
            Ok(Parsed::Complete {
                request: Request::Upgrade(req),
                consumed,
            }) => {
                if let Some(f) = req.forwarded_for {
                    self.rare.get_or_insert_default().forwarded_for = Some(f.to_owned());
                }
                let protocol =
                    handshake::select_subprotocol(&req.protocols, &self.cfg.subprotocols);
                // RFC 7692 §5: agree on permessage-deflate, or decline it.
                let deflate = deflate::negotiate(&req.extensions, self.cfg.deflate);
                if let Some(agreed) = &deflate {
                    self.session.enable_deflate(agreed);
                }
                handshake::write_switching_protocols(
                    &mut response,
                    req.key,
                    protocol,
                    deflate.as_ref(),
                );
                Some(consumed)
            }
            Err(e) => {
                self.reject(e, &mut response);
                None
            }
        };
        if !response.is_empty() {
            self.out.push_raw(Bytes::from(response));
        }
        match upgraded {
            Some(consumed) => {
                self.rb.consume(consumed);
                self.events |= EV_UPGRADED;
                self.state = State::Open;
                // Frames the client pipelined behind its handshake.
                if self.rb.unprocessed().is_empty() {
                    self.rb.release_drained();
                } else {
                    self.process(now);
                }
            }
            None => self.begin_ending(State::Responding, now),
        }
    }

    fn reject(&mut self, e: HandshakeError, response: &mut Vec<u8>) {
        self.events |= EV_REJECTED;
        self.rejected_status = e.status();
        handshake::write_error_response(response, e);
    }

    /// Run the session over buffered input, within the output budget.
    fn process(&mut self, now: Instant) {
        let result = self
            .rb
            .process(&mut self.session, &mut self.out, self.cfg.max_output_bytes);
        let stalled = matches!(result, Ok(Flow::Backlog));
        if stalled && !self.backlog {
            self.stalls += 1;
        }
        self.backlog = stalled;
        match result {
            Ok(Flow::NeedMore | Flow::Backlog) => {}
            // The peer's close: our reply, if one was due, is queued after
            // the echo of everything before it (§5.5.1).
            Ok(Flow::PeerClosed) => self.begin_ending(State::PeerClosed, now),
            Err(e) => {
                self.events |= EV_PROTOCOL;
                self.failed_code = e.close_code();
                if let Some(close) = self.session.fail(e) {
                    self.out.push_close(close, CloseOrder::AfterData);
                }
                self.backlog = false;
                self.begin_ending(State::Failed, now);
            }
        }
    }

    /// Our close, ahead of queued echo, which the peer is not taking anyway.
    fn close_ahead(&mut self, now: Instant, reason: &str) {
        if let Some(close) = self.session.initiate_close(close_code::GOING_AWAY, reason) {
            self.out.push_close(close, CloseOrder::AheadOfData);
            self.rb.drop_held();
        }
        self.begin_ending(State::ServerClosing, now);
    }

    /// From here the close timer bounds the connection's life. It starts
    /// when the ending is decided, not once our output is written: a peer
    /// that never reads would hold that write, and the connection, forever.
    fn begin_ending(&mut self, state: State, now: Instant) {
        self.state = state;
        self.closing_since.get_or_insert(now);
    }

    fn peer_gone(&mut self, now: Instant) {
        match self.state {
            State::Handshake | State::Responding | State::Done => self.state = State::Done,
            // Output still queued goes out first (the peer may only have
            // half-closed); the close timer bounds that wait.
            _ => {
                self.backlog = false;
                self.begin_ending(State::Gone, now);
            }
        }
    }

    /// Transitions that wait for the output to drain.
    fn settle(&mut self) {
        if self.output_pending() {
            return;
        }
        let state = self.state;
        match state {
            // RFC 8446 §6.1: our side of a TLS session ends with
            // close_notify, written before the socket is shut or closed.
            State::PeerClosed if self.close_notify() => {}
            State::PeerClosed | State::Gone => self.state = State::Done,
            State::Failed | State::Responding if !self.half_closed && !self.http_waiting() => {
                if self.close_notify() {
                    return;
                }
                self.half_closed = true;
                self.shutdown_write = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod pool_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_client_frame, parse_server_header, OpCode};

    const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(fin, op, [1, 2, 3, 4], payload, &mut v);
        v
    }

    /// Plays the shell with a fake clock: reads go into the engine's buffer
    /// in pieces of at most `piece` bytes, writes take everything offered.
    struct Shell {
        conn: Connection,
        t0: Instant,
        piece: usize,
    }

    impl Shell {
        fn new(cfg: Config) -> Shell {
            let t0 = Instant::now();
            Shell {
                conn: Connection::new(Arc::new(cfg), t0),
                t0,
                piece: usize::MAX,
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        /// Feed `input` while the engine wants it; returns what is left.
        fn feed<'a>(&mut self, mut input: &'a [u8], now: Instant) -> &'a [u8] {
            while !input.is_empty() && self.conn.wants_read() {
                let mut buf = self.conn.read_buffer();
                let spare = buf.capacity() - buf.len();
                let n = input.len().min(spare).min(self.piece);
                buf.extend_from_slice(&input[..n]);
                input = &input[n..];
                self.conn.handle_read(buf, n, now);
            }
            input
        }

        /// Write everything the engine has, as a socket that takes it all.
        fn drain(&mut self, now: Instant) -> Vec<u8> {
            let mut wire = Vec::new();
            let mut batch = Vec::new();
            for _ in 0..100_000 {
                self.conn.poll_transmit(&mut batch, 64);
                if batch.is_empty() {
                    break;
                }
                let n: usize = batch.iter().map(|b| b.len()).sum();
                for b in &batch {
                    wire.extend_from_slice(b);
                }
                self.conn.handle_written(n, now);
            }
            wire
        }

        /// Feed `input` and drain the output, as a client that reads
        /// everything while it writes; returns what the server sent.
        fn pump(&mut self, mut input: &[u8], now: Instant) -> Vec<u8> {
            let mut wire = Vec::new();
            for _ in 0..100_000 {
                input = self.feed(input, now);
                wire.extend(self.drain(now));
                if input.is_empty() {
                    break;
                }
            }
            assert!(input.is_empty(), "the engine stopped reading");
            wire
        }

        fn open(cfg: Config) -> Shell {
            let mut s = Shell::new(cfg);
            let now = s.t0;
            assert!(s.feed(REQUEST, now).is_empty());
            let wire = s.drain(now);
            assert!(wire.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            assert_eq!(s.conn.poll_event(), Some(Event::Upgraded));
            s
        }
    }

    /// Server frames as (opcode byte with FIN, payload).
    pub(super) fn frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut seen = Vec::new();
        while let Ok(Some(h)) = parse_server_header(wire) {
            let end = h.header_len + h.payload_len as usize;
            seen.push((wire[0], wire[h.header_len..end].to_vec()));
            wire = &wire[end..];
        }
        assert!(wire.is_empty(), "trailing bytes {wire:?}");
        seen
    }

    #[test]
    fn the_handshake_deadline_cuts_a_slow_request_section_4_1() {
        let mut s = Shell::new(Config::default());
        let (at9, at10) = (s.at(9), s.at(10));
        assert!(s.feed(&REQUEST[..20], at9).is_empty());
        assert_eq!(
            s.conn.poll_timeout(),
            Some(at10),
            "from accept, not from the last byte"
        );
        s.conn.handle_timeout(at9);
        assert!(!s.conn.is_done());
        s.conn.handle_timeout(at10);
        assert!(s.conn.is_done());
        assert_eq!(
            s.conn.poll_event(),
            Some(Event::TimedOut(Deadline::Handshake))
        );
    }

    #[test]
    fn pipelined_frames_behind_the_handshake_are_echoed_after_the_101() {
        let mut s = Shell::new(Config::default());
        let mut input = REQUEST.to_vec();
        input.extend(frame(true, OpCode::Text, b"early"));
        let now = s.t0;
        s.feed(&input, now);
        let wire = s.drain(now);
        let at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(frames(&wire[at..]), vec![(0x81, b"early".to_vec())]);
    }

    #[test]
    fn a_ping_pipelined_behind_the_handshake_is_answered_after_the_101_section_4_2_2() {
        for shutdown_first in [false, true] {
            let mut s = Shell::new(Config::default());
            let mut input = REQUEST.to_vec();
            input.extend(frame(true, OpCode::Ping, b"hi"));
            let now = s.t0;
            s.feed(&input, now);
            if shutdown_first {
                // A close ahead of data must not cut the response either.
                s.conn.shutdown(now);
            }
            let wire = s.drain(now);
            assert!(
                wire.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
                "{shutdown_first}: {:?}",
                &wire[..wire.len().min(16)]
            );
            let at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let seen = frames(&wire[at..]);
            if shutdown_first {
                assert_eq!(seen.last().map(|f| f.0), Some(0x88));
            } else {
                assert_eq!(seen, vec![(0x8A, b"hi".to_vec())]);
            }
        }
    }

    #[test]
    fn a_refused_handshake_is_answered_then_half_closed_and_drained_section_4_2_2() {
        let mut s = Shell::new(Config::default());
        let now = s.t0;
        s.feed(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            now,
        );
        assert_eq!(s.conn.poll_event(), Some(Event::HandshakeRejected(400)));
        assert!(!s.conn.wants_read(), "the answer goes out before any read");
        let wire = s.drain(now);
        assert!(wire.starts_with(b"HTTP/1.1 400 "));
        assert!(s.conn.poll_shutdown_write());
        assert!(s.conn.wants_read(), "drains so our close is not a reset");
        s.feed(b"more garbage", now);
        assert!(!s.conn.is_done());
        s.conn.handle_read(BytesMut::new(), 0, now);
        assert!(s.conn.is_done());
    }

    #[test]
    fn a_plain_request_is_the_shells_to_answer() {
        let mut s = Shell::new(Config::default());
        let now = s.t0;
        s.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", now);
        let req = s.conn.take_http_request().unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("GET", "/healthz")
        );
        assert!(s.drain(now).is_empty(), "nothing before the answer");
        assert!(!s.conn.poll_shutdown_write());
        s.conn.respond(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
        assert_eq!(s.drain(now), b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(s.conn.poll_shutdown_write());
        // The linger ends after the close timer at the latest.
        s.conn.handle_timeout(s.at(5));
        assert!(s.conn.is_done());
    }

    #[test]
    fn idle_ping_then_idle_close_then_the_close_timer_section_7_1_2() {
        let mut s = Shell::open(Config::default());
        assert_eq!(s.conn.poll_timeout(), Some(s.at(60)));
        s.conn.handle_timeout(s.at(59));
        assert!(s.drain(s.at(59)).is_empty());
        s.conn.handle_timeout(s.at(60));
        assert_eq!(
            frames(&s.drain(s.at(60))),
            vec![(0x89, b"ringecho".to_vec())]
        );
        assert_eq!(s.conn.poll_timeout(), Some(s.at(120)));
        s.conn.handle_timeout(s.at(120));
        assert_eq!(s.conn.poll_event(), Some(Event::IdleClosed));
        let wire = s.drain(s.at(120));
        let (op, payload) = &frames(&wire)[0];
        assert_eq!((*op, &payload[..2]), (0x88, &1001u16.to_be_bytes()[..]));
        // The peer never answers: the close timer cuts it.
        assert_eq!(s.conn.poll_timeout(), Some(s.at(125)));
        assert!(!s.conn.is_done());
        s.conn.handle_timeout(s.at(125));
        assert!(s.conn.is_done());
    }

    #[test]
    fn any_byte_after_the_idle_ping_keeps_the_connection() {
        let mut s = Shell::open(Config::default());
        s.conn.handle_timeout(s.at(60));
        s.drain(s.at(60));
        let pong = frame(true, OpCode::Pong, b"ringecho");
        s.feed(&pong, s.at(70));
        assert_eq!(
            s.conn.poll_timeout(),
            Some(s.at(130)),
            "idle again from the read"
        );
        s.conn.handle_timeout(s.at(120));
        assert!(s.drain(s.at(120)).is_empty());
        assert!(!s.conn.is_done());
    }

    #[test]
    fn shutdown_during_a_half_received_frame_sends_no_data_after_the_close_section_5_5_1() {
        // Streamed (1 MiB) and echoed whole (16 KiB): either way, once the
        // close is decided nothing of the frame's rest may follow it.
        for size in [1 << 20, 16 << 10] {
            let mut s = Shell::open(Config::default());
            s.piece = 4096;
            let input = frame(true, OpCode::Binary, &vec![5u8; size]);
            let half = input.len() / 2;
            let now = s.at(1);
            let mut wire = s.pump(&input[..half], now);
            s.conn.shutdown(now);
            wire.extend(s.pump(&input[half..], now));
            let seen = frames(&wire);
            let close = seen.iter().position(|(op, _)| *op == 0x88).unwrap();
            assert_eq!(close, seen.len() - 1, "{size}: data after our close");
            assert_eq!(&seen[close].1[..2], &1001u16.to_be_bytes());
            // The peer's close completes the handshake; the server closes.
            s.feed(&frame(true, OpCode::Close, &1001u16.to_be_bytes()), now);
            assert!(s.drain(now).is_empty(), "no reply to the reply");
            assert!(s.conn.is_done(), "{size}");
        }
    }

    #[test]
    fn a_peer_close_behind_backpressure_is_answered_after_every_echo_section_5_5_1() {
        let mut s = Shell::open(Config::default());
        let now = s.at(1);
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend(frame(true, OpCode::Binary, &[9u8; 8000]));
        }
        input.extend(frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        // The client writes everything and reads nothing.
        let rest = s.feed(&input, now);
        assert!(!rest.is_empty(), "backpressure stopped reading");
        assert!(s.conn.output_cost() <= 256 * 1024 + 8100);
        let wire = s.pump(rest, now);
        let seen = frames(&wire);
        assert_eq!(seen.len(), 101);
        assert!(s.drain(now).is_empty());
        assert!(seen[..100]
            .iter()
            .all(|(op, p)| *op == 0x82 && p.len() == 8000));
        assert_eq!(seen[100], (0x88, 1000u16.to_be_bytes().to_vec()));
        assert!(s.conn.is_done(), "the server closes TCP first (§7.1.1)");
    }

    fn events(conn: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| conn.poll_event()).collect()
    }

    #[test]
    fn close_codes_are_reported_as_received_and_sent_section_7_1_5() {
        // The peer's code comes back as its own (§5.5.1); a close without
        // a code is reported as 1005 both ways.
        for (payload, code) in [(1000u16.to_be_bytes().to_vec(), 1000), (vec![], 1005)] {
            let mut s = Shell::open(Config::default());
            let now = s.at(1);
            s.pump(&frame(true, OpCode::Close, &payload), now);
            let seen = events(&mut s.conn);
            assert!(seen.contains(&Event::CloseReceived(code)), "{seen:?}");
            assert!(seen.contains(&Event::CloseSent(code)), "{seen:?}");
            assert!(events(&mut s.conn).is_empty(), "reported once");
        }
        // Ours: a protocol error's code, with no close received.
        let mut s = Shell::open(Config::default());
        let mut unmasked = frame(true, OpCode::Text, b"x");
        unmasked[1] &= 0x7f;
        let now = s.at(1);
        s.feed(&unmasked, now);
        s.drain(now);
        let seen = events(&mut s.conn);
        assert!(seen.contains(&Event::CloseSent(1002)), "{seen:?}");
        assert!(!seen.iter().any(|e| matches!(e, Event::CloseReceived(_))));
    }

    #[test]
    fn the_close_deadline_is_reported_apart_from_the_handshakes() {
        let mut s = Shell::open(Config::default());
        s.conn.shutdown(s.at(1));
        s.drain(s.at(1));
        assert_eq!(events(&mut s.conn), vec![Event::CloseSent(1001)]);
        s.conn.handle_timeout(s.at(6));
        assert!(s.conn.is_done());
        assert_eq!(events(&mut s.conn), vec![Event::TimedOut(Deadline::Close)]);
    }

    #[test]
    fn the_summary_counts_bytes_both_ways_and_keeps_the_proxys_client_address() {
        let mut s = Shell::new(Config::default());
        let request = String::from_utf8(REQUEST.to_vec()).unwrap().replace(
            "\r\n\r\n",
            "\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n\r\n",
        );
        let mut input = request.into_bytes();
        input.extend(frame(true, OpCode::Text, b"hello"));
        input.extend(frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        let wire = s.pump(&input, s.at(3));
        let sum = s.conn.summary(s.at(7));
        assert_eq!(sum.duration, Duration::from_secs(7), "from accept");
        assert_eq!(
            (sum.bytes_in, sum.bytes_out),
            (input.len() as u64, wire.len() as u64)
        );
        assert_eq!(sum.messages, 1);
        assert_eq!(
            (sum.close_sent, sum.close_received),
            (Some(1000), Some(1000))
        );
        assert_eq!(sum.forwarded_for.as_deref(), Some("203.0.113.9"));
    }

    #[test]
    fn messages_are_counted_once_echoed_whole_and_stalls_once_per_stall() {
        let mut s = Shell::open(Config::default());
        let now = s.at(1);
        let mut input = frame(true, OpCode::Text, b"one");
        input.extend(frame(false, OpCode::Binary, b"tw"));
        input.extend(frame(true, OpCode::Continuation, b"o"));
        input.extend(frame(true, OpCode::Binary, b""));
        s.pump(&input, now);
        assert_eq!(s.conn.messages_echoed(), 3);
        assert_eq!(s.conn.backpressure_stalls(), 0);
        // A client that writes 100 messages and reads none: processing
        // stops once, then resumes as it reads.
        let big = frame(true, OpCode::Binary, &[9u8; 8000]).repeat(100);
        let rest = s.feed(&big, now);
        assert!(!rest.is_empty());
        assert_eq!(s.conn.backpressure_stalls(), 1);
        s.pump(rest, now);
        assert_eq!(s.conn.messages_echoed(), 103);
    }

    #[test]
    fn empty_frames_from_a_client_that_never_reads_cannot_grow_memory() {
        for payload in [&[][..], &[1u8][..], &[2u8; 125][..]] {
            let mut s = Shell::open(Config::default());
            let one = frame(true, OpCode::Binary, payload);
            let input = one.repeat(200_000);
            let rest = s.feed(&input, s.at(1));
            assert!(!rest.is_empty(), "backpressure must stop reading");
            let cost = s.conn.output_cost();
            assert!(
                cost <= 256 * 1024 + 200,
                "{} B frames: cost {cost}",
                payload.len()
            );
            assert!(s.conn.rb.capacity() <= 128 * 1024);
            // Everything comes back once the client reads.
            let mut echoed = s.drain(s.at(1)).len();
            echoed += s.pump(rest, s.at(1)).len();
            assert_eq!(echoed, 200_000 * (payload.len() + 2));
        }
    }

    #[test]
    fn ten_pings_in_one_read_get_ten_pongs_in_order_section_5_5_2() {
        let mut s = Shell::open(Config::default());
        let mut input = Vec::new();
        for i in 0..10u8 {
            input.extend(frame(true, OpCode::Ping, &[b'p', i]));
        }
        s.feed(&input, s.at(1));
        let seen = frames(&s.drain(s.at(1)));
        let expected: Vec<_> = (0..10u8).map(|i| (0x8A, vec![b'p', i])).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_frame_that_fits_the_read_buffer_is_echoed_as_one_frame_from_small_reads() {
        let mut s = Shell::open(Config::default());
        s.piece = 1000;
        let payload: Vec<u8> = (0..16384u32).map(|i| i as u8).collect();
        let input = frame(true, OpCode::Binary, &payload);
        let seen = frames(&s.pump(&input, s.at(1)));
        assert_eq!(seen.len(), 1, "one frame, as the client sent it");
        assert!(seen[0] == (0x82, payload), "the payload, unmasked");
        assert_eq!(s.conn.carried_bytes(), 0, "no payload byte was copied");
    }

    #[test]
    fn a_protocol_error_closes_after_the_echo_then_half_closes_section_7_1_7() {
        let mut s = Shell::open(Config::default());
        let mut input = frame(true, OpCode::Text, b"ok");
        input.extend([0x81, 0x02, b'n', b'o']); // unmasked
        s.feed(&input, s.at(1));
        assert_eq!(s.conn.poll_event(), Some(Event::ProtocolError(1002)));
        let seen = frames(&s.drain(s.at(1)));
        assert_eq!(seen[0], (0x81, b"ok".to_vec()));
        assert_eq!(seen[1].0, 0x88);
        assert!(s.conn.poll_shutdown_write());
        assert_eq!(s.conn.poll_timeout(), Some(s.at(6)));
        s.conn.handle_timeout(s.at(6));
        assert!(s.conn.is_done());
    }

    #[test]
    fn permessage_deflate_is_agreed_in_the_101_only_when_enabled_rfc_7692_section_5() {
        let offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        let request = [&REQUEST[..REQUEST.len() - 2], offer].concat();
        let z = crate::deflate::tests::compress_once(b"squeeze me, squeeze me");
        let mut compressed = Vec::new();
        encode_client_frame(true, OpCode::Text, [1, 2, 3, 4], &z, &mut compressed);
        compressed[0] |= 0x40;
        for (policy, agreed) in [
            (Policy::Off, None),
            (
                Policy::NoContextTakeover,
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
        ] {
            let mut s = Shell::new(Config {
                deflate: policy,
                ..Config::default()
            });
            let now = s.t0;
            let wire = s.pump(&[&request[..], &compressed].concat(), now);
            let end = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = std::str::from_utf8(&wire[..end]).unwrap();
            let line = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "));
            assert_eq!(line, agreed, "{head}");
            let echo = frames(&wire[end..]);
            match agreed {
                // FIN, RSV1, text: the payload exactly as the client sent it.
                Some(_) => assert_eq!(echo, vec![(0xC1, z.clone())]),
                // Declined: RSV1 is a reserved bit again (RFC 6455 §5.2).
                None => assert_eq!(echo[0].0, 0x88),
            }
        }
    }
}
