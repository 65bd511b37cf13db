//! One client connection: non-blocking connect, TLS for wss://, opening
//! handshake, then sending pre-built frames and verifying every echo as it
//! streams in; with `--handshakes`, one echo and the close handshake.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use ringecho_proto::frame::{encode_client_frame, parse_server_header, OpCode};
use rustls::ClientConnection;

use super::payload::{Scratch, UnitCheck, Verdict, Workload};
use crate::cli::LoadArgs;
use crate::deflate::{self, Reassembler};
use crate::stats::{ErrorKind, Stats};
use crate::tls::{self, Negotiated, TlsClient};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// TLS (wss://) and the HTTP upgrade.
    Handshaking,
    Open,
    /// `--handshakes`: our close frame is out; waiting for the server's
    /// and then for its TCP close.
    Closing,
    Done,
}

/// What an event did to the connection, for the thread's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Failed,
    /// `--handshakes`: the whole cycle completed.
    Cycled,
}

/// Handshake responses larger than this are refused.
const MAX_RESPONSE: usize = 16 * 1024;
/// Unsent bytes per connection beyond which scheduled sends are skipped
/// (and counted as backlog) instead of growing memory without bound.
const MAX_UNSENT: usize = 16 * 1024 * 1024;
const INITIAL_RX: usize = 16 * 1024;

/// What the thread's loop lends a connection for one event.
pub struct Ctx<'a> {
    pub w: &'a Workload,
    pub stats: &'a mut Stats,
    pub now: Instant,
    /// Echoes received in [window.0, window.1) are counted.
    pub window: (Instant, Instant),
    /// Closed loop: keep this many messages outstanding (0 = open loop or
    /// not sending any more).
    pub top_up_to: usize,
    /// Echoes verified at any time (for the progress line).
    pub echoes: &'a mut u64,
    /// The thread's inflater for echoes of `--deflate` that did not come
    /// back byte for byte as sent.
    pub scratch: &'a mut Scratch,
}

/// Whether this process has said why a server refused permessage-deflate:
/// every connection is refused for the same reason, once is enough.
static TOLD_DEFLATE_REFUSED: AtomicBool = AtomicBool::new(false);
/// The same for the first TLS failure.
static TOLD_TLS_FAILED: AtomicBool = AtomicBool::new(false);

/// wss://: the session over the socket, and the configuration it came
/// from (for explaining a failure).
struct Tls {
    session: Box<ClientConnection>,
    client: Arc<TlsClient>,
}

/// The close code `--handshakes` sends, and expects an echo server to
/// send back (RFC 6455 §5.5.1: the answer typically echoes the code).
const NORMAL_CLOSURE: u16 = 1000;

pub struct Conn {
    pub stream: TcpStream,
    pub state: State,
    started: Instant,
    accept: [u8; 28],
    request: Vec<u8>,
    tx: Vec<u8>,
    tx_pos: usize,
    rx: Vec<u8>,
    rx_pos: usize,
    rx_len: usize,
    next_send: u64,
    next_recv: u64,
    /// Send (or intended send) time of every outstanding message, oldest
    /// first; the front belongs to sequence number `next_recv`.
    sent_at: VecDeque<Instant>,
    check: UnitCheck,
    in_unit: bool,
    unit_opcode_ok: bool,
    /// Set workloads (`--deflate`, `--compressible`) judge whole messages.
    reassembly: Reassembler,
    tls: Option<Tls>,
    /// `--handshakes`: one message, then the close handshake.
    cycle: bool,
    /// The server's close frame has arrived (in `Closing`).
    close_received: bool,
    /// The cycle completed: echo verified, close answered, TCP closed.
    cycled: bool,
}

impl Conn {
    /// A connection for `args`' workload: `--deflate` offers
    /// permessage-deflate ([`deflate::CLIENT_OFFER`]), `--handshakes` makes
    /// it a single cycle, `tls` (wss://) starts a TLS session.
    pub fn new(
        stream: TcpStream,
        args: &LoadArgs,
        tls: Option<&Arc<TlsClient>>,
        now: Instant,
    ) -> io::Result<Conn> {
        let tls = match tls {
            Some(client) => Some(Tls {
                session: Box::new(client.connect().map_err(io::Error::other)?),
                client: Arc::clone(client),
            }),
            None => None,
        };
        let (host, path, deflate) = (&args.host, &args.path, args.deflate);
        let mut request = Vec::new();
        let mut accept = [0u8; 28];
        if !args.raw {
            use base64::Engine as _;
            let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            let key = base64::engine::general_purpose::STANDARD.encode(nonce);
            accept = ringecho_proto::handshake::accept_key(&key);
            let extensions = if deflate {
                format!("Sec-WebSocket-Extensions: {}\r\n", deflate::CLIENT_OFFER)
            } else {
                String::new()
            };
            request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                 Sec-WebSocket-Version: 13\r\n{extensions}\r\n"
            )
            .into_bytes();
        }
        Ok(Conn {
            stream,
            state: State::Connecting,
            started: now,
            accept,
            request,
            tx: Vec::new(),
            tx_pos: 0,
            rx: Vec::new(),
            rx_pos: 0,
            rx_len: 0,
            next_send: 0,
            next_recv: 0,
            sent_at: VecDeque::new(),
            check: UnitCheck::default(),
            in_unit: false,
            unit_opcode_ok: true,
            // Sized in `opened`, where the workload is at hand; nothing
            // is reassembled before then.
            reassembly: Reassembler::new(0),
            tls,
            cycle: args.handshakes,
            close_received: false,
            cycled: false,
        })
    }

    /// When the connect started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn outstanding(&self) -> usize {
        self.sent_at.len()
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Handle readiness; mio is edge-triggered, so this drains what it can.
    pub fn on_event(&mut self, cx: &mut Ctx<'_>) -> Change {
        let before = self.state;
        let live = |s| matches!(s, State::Handshaking | State::Open | State::Closing);
        if self.state == State::Connecting {
            self.finish_connect(cx);
        }
        if live(self.state) {
            self.read_all(cx);
        }
        if live(self.state) {
            self.top_up(cx);
            self.flush(cx);
        }
        match (before, self.state) {
            (_, State::Done) if self.cycled => Change::Cycled,
            (State::Open | State::Closing, _) => Change::None,
            (_, State::Open | State::Closing) => Change::Opened,
            (_, State::Done) => Change::Failed,
            _ => Change::None,
        }
    }

    /// The stream ended (`why` is `None` for an orderly EOF) or failed:
    /// account for it by what the connection was doing.
    fn ended(&mut self, cx: &mut Ctx<'_>, why: Option<&io::Error>) {
        if let Some(e) = why.and_then(tls::tls_error) {
            let line = match &self.tls {
                Some(t) => tls::explain(e, &t.client.opts),
                None => format!("TLS: {e}"),
            };
            return self.tls_failed(cx, line);
        }
        if self.state == State::Closing && self.close_received {
            // The close handshake is complete (RFC 6455 §7.1.1: the
            // server closes TCP first). A TLS peer should have sent
            // close_notify first (RFC 8446 §6.1); its absence is counted,
            // not failed: no data can have been cut off.
            if why.is_some_and(|e| e.kind() == io::ErrorKind::UnexpectedEof) && self.tls.is_some() {
                cx.stats.eof_without_close_notify += 1;
            }
            return self.cycle_done();
        }
        if self.state == State::Closing {
            return self.fail(cx, ErrorKind::CloseFailed);
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.session.is_handshaking())
        {
            let how = why.map_or("EOF".to_string(), |e| e.to_string());
            return self.tls_failed(
                cx,
                format!("TLS handshake failed: the server closed the connection ({how})"),
            );
        }
        let kind = if self.state == State::Handshaking {
            ErrorKind::HandshakeFailed
        } else {
            ErrorKind::UnexpectedClose
        };
        self.fail(cx, kind)
    }

    fn tls_failed(&mut self, cx: &mut Ctx<'_>, line: String) {
        if !TOLD_TLS_FAILED.swap(true, Ordering::Relaxed) {
            eprintln!("loadtest: {line}");
        }
        if cx.stats.tls_error.is_none() {
            cx.stats.tls_error = Some(line);
        }
        self.fail(cx, ErrorKind::TlsFailed);
    }

    /// `--handshakes`: the cycle is complete. Say close_notify before the
    /// socket goes (RFC 8446 §6.1).
    fn cycle_done(&mut self) {
        self.state = State::Done;
        self.cycled = true;
        if let Some(t) = self.tls.as_mut() {
            tls::close_notify(&mut t.session, &self.stream);
        }
    }

    fn fail(&mut self, cx: &mut Ctx<'_>, kind: ErrorKind) {
        if self.state != State::Done {
            cx.stats.error(kind, 1);
            self.state = State::Done;
        }
    }

    fn finish_connect(&mut self, cx: &mut Ctx<'_>) {
        match self.stream.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return self.fail(cx, ErrorKind::ConnectFailed),
        }
        match self.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(_) => return self.fail(cx, ErrorKind::ConnectFailed),
        }
        if cx.w.raw {
            self.opened(cx);
        } else {
            self.tx = std::mem::take(&mut self.request);
            self.state = State::Handshaking;
        }
    }

    fn opened(&mut self, cx: &mut Ctx<'_>) {
        self.state = State::Open;
        cx.stats.opened += 1;
        // A handshake-rate run opens connections all along: only those of
        // the measured window describe it.
        let in_window = cx.now >= cx.window.0 && cx.now < cx.window.1;
        if !self.cycle || in_window {
            let us = cx.now.saturating_duration_since(self.started).as_micros() as u64;
            Stats::record_us(&mut cx.stats.connect, us);
        }
        if let Some(t) = &self.tls {
            *cx.stats.tls.entry(Negotiated::of(&t.session)).or_insert(0) += 1;
        }
        if self.rx.len() < INITIAL_RX {
            self.rx.resize(INITIAL_RX, 0);
        }
        self.reassembly = Reassembler::new(cx.w.max_echo);
    }

    fn read_all(&mut self, cx: &mut Ctx<'_>) {
        if self.rx.len() < 4096 {
            self.rx.resize(4096, 0);
        }
        loop {
            if self.rx_len == self.rx.len() {
                self.process(cx);
                if self.state == State::Done {
                    return;
                }
                self.make_room();
            }
            let into = &mut self.rx[self.rx_len..];
            let got = match self.tls.as_mut() {
                Some(t) => tls::read(&mut t.session, &self.stream, into),
                None => (&self.stream).read(into),
            };
            match got {
                Ok(0) => {
                    self.process(cx);
                    if self.state == State::Done {
                        return;
                    }
                    return self.ended(cx, None);
                }
                Ok(n) => self.rx_len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // What arrived before the error (the server's close
                    // frame, say) still counts.
                    self.process(cx);
                    if self.state == State::Done {
                        return;
                    }
                    return self.ended(cx, Some(&e));
                }
            }
        }
        self.process(cx);
        self.make_room();
    }

    /// Move unconsumed bytes to the front; grow when a whole frame must fit.
    fn make_room(&mut self) {
        if self.rx_pos > 0 {
            self.rx.copy_within(self.rx_pos..self.rx_len, 0);
            self.rx_len -= self.rx_pos;
            self.rx_pos = 0;
        }
        if self.rx_len == self.rx.len() {
            let grown = (self.rx.len() * 2).max(INITIAL_RX);
            self.rx.resize(grown, 0);
        }
    }

    fn process(&mut self, cx: &mut Ctx<'_>) {
        if self.state == State::Handshaking {
            self.process_handshake(cx);
        }
        if matches!(self.state, State::Open | State::Closing) {
            if cx.w.raw {
                self.process_raw(cx);
            } else {
                self.process_frames(cx);
            }
        }
    }

    fn process_handshake(&mut self, cx: &mut Ctx<'_>) {
        let data = &self.rx[self.rx_pos..self.rx_len];
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            if data.len() > MAX_RESPONSE {
                self.fail(cx, ErrorKind::HandshakeFailed);
            }
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let ok = match resp.parse(&data[..end + 4]) {
            Ok(httparse::Status::Complete(_)) => {
                resp.code == Some(101)
                    && resp.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("sec-websocket-accept")
                            && h.value == self.accept.as_slice()
                    })
            }
            _ => false,
        };
        if !ok {
            return self.fail(cx, ErrorKind::HandshakeFailed);
        }
        if cx.w.deflate {
            let values: Vec<&str> = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|h| std::str::from_utf8(h.value).unwrap_or("(not UTF-8)"))
                .collect();
            if let Err(why) = deflate::check_answer(&values) {
                if !TOLD_DEFLATE_REFUSED.swap(true, Ordering::Relaxed) {
                    eprintln!("loadtest: --deflate: {why}");
                }
                return self.fail(cx, ErrorKind::DeflateRefused);
            }
        }
        self.rx_pos += end + 4;
        self.opened(cx);
    }

    /// Raw mode: the stream is the sent frames verbatim, cut into units of
    /// one frame's length.
    fn process_raw(&mut self, cx: &mut Ctx<'_>) {
        let unit = cx.w.expect.base.len();
        while self.rx_pos < self.rx_len {
            if !self.in_unit {
                self.check.start();
                self.in_unit = true;
            }
            let take = (unit - self.check.offset).min(self.rx_len - self.rx_pos);
            self.check
                .feed(&cx.w.expect, &self.rx[self.rx_pos..self.rx_pos + take]);
            self.rx_pos += take;
            if self.check.offset == unit {
                self.in_unit = false;
                self.unit_done(cx, true);
            }
        }
    }

    /// WebSocket mode: parse unmasked server frames, reassemble fragments,
    /// answer pings.
    fn process_frames(&mut self, cx: &mut Ctx<'_>) {
        let max_len = cx.w.max_echo as u64;
        while matches!(self.state, State::Open | State::Closing) {
            if self.close_received && self.rx_pos < self.rx_len {
                // RFC 6455 §5.5.1: nothing follows a close frame.
                return self.fail(cx, ErrorKind::Protocol);
            }
            let buf = &self.rx[self.rx_pos..self.rx_len];
            let h = match parse_server_header(buf) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(_) => return self.fail(cx, ErrorKind::Protocol),
            };
            // §5.1: a server never masks. §5.2: RSV bits only as an agreed
            // extension defines them (RFC 7692 §6 for RSV1).
            if h.masked || !deflate::rsv_allowed(h.rsv, h.opcode, cx.w.deflate) {
                return self.fail(cx, ErrorKind::Protocol);
            }
            let (hlen, len, fin) = (h.header_len, h.payload_len, h.fin);
            if len > max_len {
                return self.fail(cx, ErrorKind::Protocol);
            }
            let total = hlen + len as usize;
            if buf.len() < total {
                // make_room moves the partial frame to the front, so a
                // buffer of the frame's size is enough to complete it.
                if self.rx.len() < total {
                    self.rx.resize(total, 0);
                }
                return;
            }
            let p0 = self.rx_pos + hlen;
            let p1 = self.rx_pos + total;
            self.rx_pos = p1;
            if self.state == State::Closing && matches!(h.opcode, 0x0..=0x2) {
                // The one message of a cycle has been echoed already.
                return self.fail(cx, ErrorKind::Protocol);
            }
            if cx.w.set.is_some() && matches!(h.opcode, 0x0..=0x2) {
                let outstanding = self.sent_at.len() as u64;
                let judged = match self.reassembly.push(fin, h.rsv, h.opcode, &self.rx[p0..p1]) {
                    Err(_) => None,
                    Ok(None) => continue,
                    Ok(Some(m)) => Some((
                        cx.w.judge_set(
                            m.payload,
                            m.compressed,
                            self.next_recv,
                            outstanding,
                            cx.scratch,
                        ),
                        m.opcode == cx.w.opcode as u8,
                        m.payload.len(),
                    )),
                };
                let Some((verdict, opcode_ok, echo_len)) = judged else {
                    return self.fail(cx, ErrorKind::Protocol);
                };
                self.settle(cx, verdict, opcode_ok, echo_len);
                continue;
            }
            match h.opcode {
                op @ (0x1 | 0x2) => {
                    if self.in_unit {
                        return self.fail(cx, ErrorKind::Protocol);
                    }
                    self.in_unit = true;
                    self.unit_opcode_ok = op == cx.w.opcode as u8;
                    self.check.start();
                    self.check.feed(&cx.w.expect, &self.rx[p0..p1]);
                }
                0x0 => {
                    if !self.in_unit {
                        return self.fail(cx, ErrorKind::Protocol);
                    }
                    self.check.feed(&cx.w.expect, &self.rx[p0..p1]);
                }
                0x8 if self.state == State::Closing => {
                    // §5.5: control frames are whole and at most 125 bytes.
                    if len > 125 || !fin {
                        return self.fail(cx, ErrorKind::Protocol);
                    }
                    let body = &self.rx[p0..p1];
                    if body.len() < 2 || u16::from_be_bytes([body[0], body[1]]) != NORMAL_CLOSURE {
                        return self.fail(cx, ErrorKind::CloseFailed);
                    }
                    self.close_received = true;
                    continue;
                }
                0x8 => return self.fail(cx, ErrorKind::UnexpectedClose),
                0x9 => {
                    if len > 125 || !fin {
                        return self.fail(cx, ErrorKind::Protocol);
                    }
                    if self.state == State::Closing {
                        // Our close is out; the connection is going.
                        continue;
                    }
                    let mut ping = [0u8; 125];
                    let n = p1 - p0;
                    ping[..n].copy_from_slice(&self.rx[p0..p1]);
                    encode_client_frame(
                        true,
                        OpCode::Pong,
                        cx.w.mask_key,
                        &ping[..n],
                        &mut self.tx,
                    );
                    continue;
                }
                0xA => continue,
                _ => return self.fail(cx, ErrorKind::Protocol),
            }
            if fin {
                self.in_unit = false;
                let opcode_ok = self.unit_opcode_ok;
                self.unit_done(cx, opcode_ok);
            }
        }
    }

    /// A complete echo has been compared; account for it.
    fn unit_done(&mut self, cx: &mut Ctx<'_>, opcode_ok: bool) {
        let verdict = self
            .check
            .finish(&cx.w.expect, self.next_recv, self.sent_at.len() as u64);
        let len = self.check.offset;
        self.settle(cx, verdict, opcode_ok, len);
    }

    /// Account for a complete echo, `echo_len` payload bytes as received,
    /// judged `verdict`. A cycle closes after its one echo, or ends on a
    /// bad one (already counted).
    fn settle(&mut self, cx: &mut Ctx<'_>, verdict: Verdict, opcode_ok: bool, echo_len: usize) {
        let clean = self.account(cx, verdict, opcode_ok, echo_len);
        if !self.cycle || self.state != State::Open {
            return;
        }
        if !clean {
            self.state = State::Done;
        } else if self.sent_at.is_empty() {
            encode_client_frame(
                true,
                OpCode::Close,
                cx.w.mask_key,
                &NORMAL_CLOSURE.to_be_bytes(),
                &mut self.tx,
            );
            self.state = State::Closing;
        }
    }

    /// The counting half of [`Conn::settle`]; whether the echo was the
    /// one expected, intact.
    fn account(
        &mut self,
        cx: &mut Ctx<'_>,
        verdict: Verdict,
        opcode_ok: bool,
        echo_len: usize,
    ) -> bool {
        *cx.echoes += 1;
        if self.sent_at.is_empty() {
            cx.stats.error(ErrorKind::OutOfOrder, 1);
            return false;
        }
        if !opcode_ok {
            cx.stats.error(ErrorKind::WrongOpcode, 1);
            self.sent_at.pop_front();
            self.next_recv += 1;
            return false;
        }
        let mut clean = true;
        match verdict {
            Verdict::Ok => {}
            Verdict::Skipped(n) => {
                cx.stats.error(ErrorKind::Lost, n);
                self.sent_at.drain(..n as usize);
                self.next_recv += n;
                clean = false;
            }
            Verdict::OutOfOrder => {
                cx.stats.error(ErrorKind::OutOfOrder, 1);
                return false;
            }
            Verdict::Corrupt => {
                cx.stats.error(ErrorKind::Corrupt, 1);
                self.sent_at.pop_front();
                self.next_recv += 1;
                return false;
            }
        }
        let Some(sent) = self.sent_at.pop_front() else {
            return false;
        };
        let seq = self.next_recv;
        self.next_recv += 1;
        if cx.now >= cx.window.0 && cx.now < cx.window.1 {
            let us = cx.now.saturating_duration_since(sent).as_micros() as u64;
            Stats::record_us(&mut cx.stats.latency, us);
            cx.stats.messages += 1;
            cx.stats.payload_bytes += cx.w.size as u64;
            if cx.w.deflate {
                cx.stats.wire_sent += cx.w.wire_len(seq) as u64;
                cx.stats.wire_echoed += echo_len as u64;
            }
        }
        clean
    }

    /// Queue one message whose latency counts from `intended`.
    pub fn queue(&mut self, cx: &mut Ctx<'_>, intended: Instant) {
        if self.tx.len() - self.tx_pos > MAX_UNSENT {
            return cx.stats.error(ErrorKind::Backlog, 1);
        }
        cx.w.push_frame(self.next_send, &mut self.tx);
        self.next_send += 1;
        self.sent_at.push_back(intended);
    }

    /// Closed loop: keep `top_up_to` messages outstanding.
    fn top_up(&mut self, cx: &mut Ctx<'_>) {
        if self.state != State::Open {
            return;
        }
        if self.cycle {
            if self.next_send == 0 {
                let now = cx.now;
                self.queue(cx, now);
            }
            return;
        }
        while self.sent_at.len() < cx.top_up_to {
            let now = cx.now;
            self.queue(cx, now);
        }
    }

    /// Closed loop kick-off and open-loop sends come through here too.
    pub fn send_now(&mut self, cx: &mut Ctx<'_>) {
        self.top_up(cx);
        self.flush(cx);
    }

    pub fn flush(&mut self, cx: &mut Ctx<'_>) {
        if let Some(t) = self.tls.as_mut() {
            // Even with nothing of ours to send, rustls may have records
            // to (handshake messages, alerts).
            match tls::write(&mut t.session, &self.stream, &self.tx[self.tx_pos..]) {
                Ok(n) => self.tx_pos += n,
                Err(e) => return self.ended(cx, Some(&e)),
            }
            if self.tx_pos == self.tx.len() {
                self.tx.clear();
                self.tx_pos = 0;
            }
            return;
        }
        while self.tx_pos < self.tx.len() {
            match (&self.stream).write(&self.tx[self.tx_pos..]) {
                Ok(0) => return self.fail(cx, ErrorKind::UnexpectedClose),
                Ok(n) => self.tx_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.ended(cx, Some(&e)),
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
    }

    /// Say goodbye with close 1000 (best effort: the socket is dropped right
    /// after, so a server's reply is not awaited), and over TLS with
    /// close_notify (RFC 8446 §6.1).
    pub fn close(&mut self, cx: &mut Ctx<'_>) {
        if self.state == State::Open && !cx.w.raw {
            encode_client_frame(
                true,
                OpCode::Close,
                cx.w.mask_key,
                &NORMAL_CLOSURE.to_be_bytes(),
                &mut self.tx,
            );
            self.flush(cx);
        }
        if self.state != State::Done {
            if let Some(t) = self.tls.as_mut() {
                tls::close_notify(&mut t.session, &self.stream);
            }
        }
        self.state = State::Done;
    }
}
