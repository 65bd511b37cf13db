//! One client connection: non-blocking connect, opening handshake, then
//! sending pre-built frames and verifying every echo as it streams in.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mio::net::TcpStream;
use ringecho_proto::frame::{encode_client_frame, parse_server_header, OpCode};

use super::payload::{Scratch, UnitCheck, Verdict, Workload};
use crate::deflate::{self, Reassembler};
use crate::stats::{ErrorKind, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Handshaking,
    Open,
    Done,
}

/// What an event did to the connection, for the thread's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Failed,
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
}

impl Conn {
    /// `deflate`: offer permessage-deflate ([`deflate::CLIENT_OFFER`]).
    pub fn new(
        stream: TcpStream,
        host: &str,
        path: &str,
        raw: bool,
        deflate: bool,
        now: Instant,
    ) -> Conn {
        let mut request = Vec::new();
        let mut accept = [0u8; 28];
        if !raw {
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
        Conn {
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
        }
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
        if self.state == State::Connecting {
            self.finish_connect(cx);
        }
        if matches!(self.state, State::Handshaking | State::Open) {
            self.read_all(cx);
        }
        if matches!(self.state, State::Handshaking | State::Open) {
            self.top_up(cx);
            self.flush(cx);
        }
        match (before, self.state) {
            (State::Open, _) => Change::None,
            (_, State::Open) => Change::Opened,
            (_, State::Done) => Change::Failed,
            _ => Change::None,
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
        let us = cx.now.saturating_duration_since(self.started).as_micros() as u64;
        Stats::record_us(&mut cx.stats.connect, us);
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
            match (&self.stream).read(&mut self.rx[self.rx_len..]) {
                Ok(0) => {
                    self.process(cx);
                    let kind = if self.state == State::Handshaking {
                        ErrorKind::HandshakeFailed
                    } else {
                        ErrorKind::UnexpectedClose
                    };
                    return self.fail(cx, kind);
                }
                Ok(n) => self.rx_len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let kind = if self.state == State::Handshaking {
                        ErrorKind::HandshakeFailed
                    } else {
                        ErrorKind::UnexpectedClose
                    };
                    return self.fail(cx, kind);
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
        if self.state == State::Open {
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
        while self.state == State::Open {
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
                0x8 => return self.fail(cx, ErrorKind::UnexpectedClose),
                0x9 => {
                    if len > 125 || !fin {
                        return self.fail(cx, ErrorKind::Protocol);
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
    /// judged `verdict`.
    fn settle(&mut self, cx: &mut Ctx<'_>, verdict: Verdict, opcode_ok: bool, echo_len: usize) {
        *cx.echoes += 1;
        if self.sent_at.is_empty() {
            return cx.stats.error(ErrorKind::OutOfOrder, 1);
        }
        if !opcode_ok {
            cx.stats.error(ErrorKind::WrongOpcode, 1);
            self.sent_at.pop_front();
            self.next_recv += 1;
            return;
        }
        match verdict {
            Verdict::Ok => {}
            Verdict::Skipped(n) => {
                cx.stats.error(ErrorKind::Lost, n);
                self.sent_at.drain(..n as usize);
                self.next_recv += n;
            }
            Verdict::OutOfOrder => return cx.stats.error(ErrorKind::OutOfOrder, 1),
            Verdict::Corrupt => {
                cx.stats.error(ErrorKind::Corrupt, 1);
                self.sent_at.pop_front();
                self.next_recv += 1;
                return;
            }
        }
        let Some(sent) = self.sent_at.pop_front() else {
            return;
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
        while self.tx_pos < self.tx.len() {
            match (&self.stream).write(&self.tx[self.tx_pos..]) {
                Ok(0) => return self.fail(cx, ErrorKind::UnexpectedClose),
                Ok(n) => self.tx_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let kind = if self.state == State::Handshaking {
                        ErrorKind::HandshakeFailed
                    } else {
                        ErrorKind::UnexpectedClose
                    };
                    return self.fail(cx, kind);
                }
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
    }

    /// Say goodbye with close 1000 (best effort: the socket is dropped right
    /// after, so a server's reply is not awaited).
    pub fn close(&mut self, cx: &mut Ctx<'_>) {
        if self.state == State::Open && !cx.w.raw {
            encode_client_frame(
                true,
                OpCode::Close,
                cx.w.mask_key,
                &1000u16.to_be_bytes(),
                &mut self.tx,
            );
            self.flush(cx);
        }
        self.state = State::Done;
    }
}
