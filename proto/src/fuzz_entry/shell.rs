//! The `connection` fuzz target's driver: the engine run the way the
//! completion-based shells (`src/server/conn.rs`, `src/server/ring.rs`) run
//! it, with the fuzz input as the script of what the peer, the socket and
//! the clock do.
//!
//! Those shells keep at most one read and one write in flight and call the
//! engine while both are out: a write completes or a timer fires while the
//! read buffer is lent to the kernel, a read lands while a batch is half
//! written. A driver that finished each read before the next call would
//! never reach those interleavings, so this one keeps the same two slots.
//! The epoll shell's read that would block is one more operation.
//!
//! Script layout: byte 0 picks the request and the configuration (see
//! [`run`]); every further byte is one operation, its low nibble the kind
//! and its high nibble `a` an argument (see [`Shell::wake`]): 0-1 the read
//! completes with `READ_LENS[a]` bytes, 13 and 15 with all that fit;
//! 2 the client sends `a + 1` raw script bytes (`a` = 15: a count byte
//! first); 3-4 the client sends a generated frame (`FRAME_LENS[a]`, a
//! flags byte next); 5-6 the write completes with `WRITE_LENS[a]` bytes;
//! 7 the clock moves `a` ticks and the timer fires (`a` = 15: at the
//! engine's deadline); 8 the clock moves `a` ticks; 9 shutdown; 10 EOF;
//! 11 the write fails; 12 the shell answers a plain request; 14 the read
//! would block.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::close::is_valid_close_code;
use crate::connection::{Config, Connection, Event};
use crate::frame::{
    parse_client_header, parse_server_header, server_header_len, OpCode, MAX_CONTROL_PAYLOAD,
};
use crate::handshake::write_response;
use crate::mask::apply_mask;
use crate::out_queue::{ENTRY_COST, MAX_UNSENT_PONGS};
use crate::read_buffer::{ReadSizing, ADOPT_HEADROOM};

/// RFC 6455 §1.3's sample: the plainest valid upgrade.
const REQUEST_RFC: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// A browser's upgrade: an allowed origin, subprotocols to choose from
/// (§4.2.2) and an extension offer the server declines by silence (§9.1).
const REQUEST_BROWSER: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example.com\r\n\
Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\nSec-WebSocket-Version: 13\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: superchat, chat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// No upgrade: the shell answers it (`Connection::take_http_request`).
const REQUEST_PLAIN: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// An upgrade from an origin outside the allow list: 403 (§10.2).
const REQUEST_FOREIGN: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example.com\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n\r\n";

/// Sizes a read may complete with; the largest exceed every buffer, so a
/// read fills whatever room it was given.
const READ_LENS: [usize; 16] = [
    1,
    2,
    3,
    4,
    7,
    13,
    14,
    64,
    100,
    127,
    200,
    500,
    1000,
    1500,
    4000,
    usize::MAX,
];

/// Bytes a write may complete with; partial writes split headers, payloads
/// and the 101 response.
const WRITE_LENS: [usize; 16] = [
    usize::MAX,
    1,
    2,
    3,
    5,
    9,
    64,
    100,
    127,
    500,
    1000,
    2000,
    4000,
    usize::MAX,
    usize::MAX,
    usize::MAX,
];

/// Payload sizes of generated frames: each side of the 7-bit/16-bit length
/// forms (§5.2), of the control limit (§5.5), of both configurations' "echo
/// whole" limit (read_sizing.max - 14) and of the message limit (§7.4.1).
const FRAME_LENS: [usize; 16] = [
    0, 1, 2, 5, 20, 125, 126, 242, 243, 300, 1010, 1011, 3000, 20_000, 65_536, 65_537,
];

/// The client stream stops growing here, so one input cannot run for long.
const MAX_CLIENT_BYTES: usize = 1 << 20;

/// Script bytes a generated frame's payload may take (then repeated).
const MAX_SCRIPT_PAYLOAD: usize = 128;

/// One step of the fake clock.
const TICK: Duration = Duration::from_millis(250);

/// Queue entries one frame echoed whole may take: it leaves the read buffer
/// in one piece per allocation it was read into, and `take_for_read` moves
/// to a new allocation only with its rest or half of one still to come, so
/// a frame of at most read_sizing.max spans two or three (four allowed).
const MAX_FRAME_PIECES: usize = 4;

/// What a run saw: read by the seed tests only, the fuzz target ignores it.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub status: Option<u16>,
    /// Server frames after the 101, as (first byte, payload length).
    pub frames: Vec<(u8, usize)>,
    pub events: Vec<Event>,
    pub max_cost: usize,
    /// The engine decided the connection was over before the script ended.
    pub done_in_script: bool,
    /// Client bytes the server never read.
    pub unread: usize,
}

/// Runs one script; panics on any broken invariant.
///
/// Byte 0: bits 0-2 the request (0-3 RFC sample, 4 browser, 5 plain GET,
/// 6 foreign origin, 7 none: the script writes its own), bit 3 disables the
/// idle timer, bit 4 halves the read sizing to 32/256, bit 5 cuts the
/// output budget to 1 KiB, bits 6-7 the slices per write (1, 3, 16, 256).
pub(super) fn run(data: &[u8]) -> Outcome {
    let Some((&setup, script)) = data.split_first() else {
        return Outcome::default();
    };
    let (request, upgrade) = match setup & 7 {
        0..=3 => (REQUEST_RFC, true),
        4 => (REQUEST_BROWSER, true),
        5 => (REQUEST_PLAIN, false),
        6 => (REQUEST_FOREIGN, false),
        _ => (&[][..], false),
    };
    let read_sizing = if setup & 16 == 0 {
        ReadSizing { min: 64, max: 1024 }
    } else {
        ReadSizing { min: 32, max: 256 }
    };
    let cfg = Arc::new(Config {
        max_message_size: 1 << 16,
        max_header_bytes: 2048,
        handshake_timeout: Duration::from_secs(2),
        idle_timeout: if setup & 8 == 0 {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        },
        close_timeout: Duration::from_secs(1),
        max_output_bytes: if setup & 32 == 0 { 4096 } else { 1024 },
        read_sizing,
        subprotocols: vec!["chat".into()],
        allowed_origins: vec!["http://example.com".into()],
        deflate: crate::deflate::Policy::Off,
        kernel_tls: crate::tls::kernel::KernelSupport::NONE,
    });
    let mut shell = Shell::new(cfg, [1, 3, 16, 256][usize::from(setup >> 6)]);
    // How reads arrive (from the input's length, so seeds keep their
    // meaning): into the engine's own buffer, or as a shell's buffers with
    // headroom, or as views with none (incremental provided buffers).
    shell.pool = match data.len() % 3 {
        0 => Pool::Own,
        1 => Pool::Headroom,
        _ => Pool::Views,
    };
    shell.client.extend_from_slice(request);
    shell.frames_from = upgrade.then_some(request.len());

    let mut script = Script(script);
    let mut done_in_script = false;
    loop {
        if !shell.turn() {
            done_in_script = true;
            break;
        }
        let Some(op) = script.byte() else {
            break;
        };
        shell.wake(op, &mut script);
    }
    shell.finish();
    let (status, frames) = shell.check_wire();
    Outcome {
        status,
        frames,
        events: shell.events,
        max_cost: shell.max_cost,
        done_in_script,
        unread: shell.client.len() - shell.read_upto,
    }
}

struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

struct Shell {
    conn: Connection,
    cfg: Arc<Config>,
    max_iov: usize,
    t0: Instant,
    now: Instant,
    /// Everything the client sends, and how much of it the server has read.
    client: Vec<u8>,
    read_upto: usize,
    /// Where the client's frames start, when its request is a canned
    /// upgrade: the echo must be a prefix of their data payload.
    frames_from: Option<usize>,
    reading: Option<BytesMut>,
    writing: Option<Vec<Bytes>>,
    spare_batch: Vec<Bytes>,
    /// Everything the peer received.
    wire: Vec<u8>,
    write_shut: bool,
    /// The shell's answer to a plain request.
    answer: Option<Vec<u8>>,
    events: Vec<Event>,
    largest_read_buffer: usize,
    max_cost: usize,
    pool: Pool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    Own,
    Headroom,
    Views,
}

/// Bytes one receive into a shell's buffer takes at most.
const POOL_ROOM: usize = 512;

impl Shell {
    fn new(cfg: Arc<Config>, max_iov: usize) -> Shell {
        let t0 = Instant::now();
        Shell {
            conn: Connection::new(cfg.clone(), t0),
            cfg,
            max_iov,
            t0,
            now: t0,
            client: Vec::new(),
            read_upto: 0,
            frames_from: None,
            reading: None,
            writing: None,
            spare_batch: Vec::new(),
            wire: Vec::new(),
            write_shut: false,
            answer: None,
            events: Vec::new(),
            largest_read_buffer: 0,
            max_cost: 0,
            pool: Pool::Own,
        }
    }

    /// The top of the shell's loop: start a write and a read if none is in
    /// flight, carry out a half-close. False once the engine is done.
    fn turn(&mut self) -> bool {
        if self.writing.is_none() {
            let mut batch = std::mem::take(&mut self.spare_batch);
            self.conn.poll_transmit(&mut batch, self.max_iov);
            if batch.is_empty() {
                self.spare_batch = batch;
            } else {
                assert!(
                    !self.write_shut,
                    "output offered after the write side was shut down"
                );
                // A zero-byte writev returns 0, which the shell reports as
                // the peer gone.
                assert!(
                    batch.iter().any(|b| !b.is_empty()),
                    "a batch of empty slices"
                );
                assert!(batch.len() <= self.max_iov);
                self.writing = Some(batch);
            }
        }
        if self.conn.poll_shutdown_write() {
            assert!(!self.write_shut, "the write side shut down twice");
            assert!(self.writing.is_none(), "half-closed under a write");
            self.write_shut = true;
        }
        self.check_cost();
        if self.conn.is_done() {
            self.check_done();
            return false;
        }
        if self.reading.is_none() && self.conn.wants_read() && self.pool != Pool::Own {
            // The shell's buffer is picked when data arrives.
            self.largest_read_buffer = self.largest_read_buffer.max(POOL_ROOM);
            self.reading = Some(BytesMut::new());
        }
        if self.reading.is_none() && self.conn.wants_read() {
            let buf = self.conn.read_buffer();
            // A read into no room completes with 0, which is EOF.
            assert!(buf.capacity() > buf.len(), "a read buffer without room");
            self.largest_read_buffer = self.largest_read_buffer.max(buf.capacity());
            self.reading = Some(buf);
        }
        true
    }

    /// What woke the shell: a completed read or write, a signal, the timer;
    /// or the shell answering a plain request.
    fn wake(&mut self, op: u8, script: &mut Script<'_>) {
        let arg = op >> 4;
        match op & 0x0F {
            0 | 1 => self.read(READ_LENS[usize::from(arg)]),
            2 => {
                let n = if arg == 15 {
                    script.byte().map_or(0, usize::from)
                } else {
                    usize::from(arg) + 1
                };
                let raw = script.bytes(n);
                if self.client.len() + raw.len() <= MAX_CLIENT_BYTES {
                    self.client.extend_from_slice(raw);
                }
            }
            3 | 4 => self.frame(arg, script),
            5 | 6 => self.write(WRITE_LENS[usize::from(arg)]),
            7 => {
                if arg == 15 {
                    // The shell's timer firing at the deadline it was given.
                    if let Some(t) = self.conn.poll_timeout() {
                        self.now = self.now.max(t);
                    }
                } else {
                    self.now += TICK * u32::from(arg);
                }
                self.timer();
            }
            8 => self.now += TICK * u32::from(arg),
            9 => self.conn.shutdown(self.now),
            10 => {
                // EOF or a read error: the shell reports both as 0.
                if let Some(buf) = self.reading.take() {
                    if self.pool == Pool::Own {
                        self.conn.handle_read(buf, 0, self.now);
                    } else {
                        self.conn.handle_eof(self.now);
                    }
                }
            }
            11 => {
                if let Some(mut batch) = self.writing.take() {
                    if arg & 1 == 0 {
                        self.conn.handle_write_error();
                    } else {
                        self.conn.handle_written(0, self.now);
                    }
                    batch.clear();
                    self.spare_batch = batch;
                }
            }
            12 => {
                if let Some(req) = self.conn.take_http_request() {
                    assert!(self.answer.is_none(), "a second plain request");
                    let mut response = Vec::new();
                    let head_only = req.method == "HEAD";
                    write_response(
                        &mut response,
                        200,
                        "text/plain",
                        req.path.as_bytes(),
                        head_only,
                    );
                    self.answer = Some(response.clone());
                    self.conn.respond(response);
                }
            }
            14 => {
                // The epoll shell's non-blocking read that would block: the
                // buffer goes back unused and the next turn takes it again.
                if let Some(buf) = self.reading.take() {
                    if self.pool == Pool::Own {
                        self.conn.cancel_read(buf);
                    }
                }
            }
            _ => self.read(usize::MAX),
        }
        while let Some(event) = self.conn.poll_event() {
            self.events.push(event);
        }
        if self.pool != Pool::Own {
            // The shell gives its buffers back after each step; the views
            // are simply dropped (a pool reclaims them when unshared).
            let mut back = Vec::new();
            self.conn.release_buffers(&mut back, POOL_ROOM / 4);
        }
    }

    /// The read in flight completes with up to `want` of the bytes the
    /// client has sent; with none sent yet it stays in flight.
    fn read(&mut self, want: usize) {
        let Some(mut buf) = self.reading.take() else {
            return;
        };
        if self.pool != Pool::Own {
            let n = want.min(POOL_ROOM).min(self.client.len() - self.read_upto);
            if n == 0 {
                self.reading = Some(buf);
                return;
            }
            let data = &self.client[self.read_upto..][..n];
            let data_at = if self.pool == Pool::Headroom {
                ADOPT_HEADROOM
            } else {
                0
            };
            let mut received = BytesMut::zeroed(data_at);
            received.extend_from_slice(data);
            self.read_upto += n;
            self.conn.handle_received(received, data_at, self.now);
            return;
        }
        let room = buf.capacity() - buf.len();
        let n = want.min(room).min(self.client.len() - self.read_upto);
        if n == 0 {
            self.reading = Some(buf);
            return;
        }
        buf.extend_from_slice(&self.client[self.read_upto..][..n]);
        self.read_upto += n;
        self.conn.handle_read(buf, n, self.now);
    }

    /// The write in flight completes with up to `limit` bytes.
    fn write(&mut self, limit: usize) {
        let Some(mut batch) = self.writing.take() else {
            return;
        };
        let total: usize = batch.iter().map(Bytes::len).sum();
        let n = limit.min(total);
        let mut left = n;
        for slice in &batch {
            let k = left.min(slice.len());
            self.wire.extend_from_slice(&slice[..k]);
            left -= k;
        }
        self.conn.handle_written(n, self.now);
        batch.clear();
        self.spare_batch = batch;
    }

    fn timer(&mut self) {
        self.conn.handle_timeout(self.now);
        if self.conn.is_done() {
            return;
        }
        match self.conn.poll_timeout() {
            // A deadline left in the past would spin the shell's timer.
            Some(t) => assert!(
                t > self.now,
                "deadline {:?} not after {:?} once handled",
                t - self.t0,
                self.now - self.t0
            ),
            None => assert!(
                self.cfg.idle_timeout.is_zero(),
                "a live connection without a deadline"
            ),
        }
    }

    /// A client frame, masked (§5.3), with a minimal length (§5.2), the
    /// opcode nibble as given (reserved ones included) and a payload either
    /// of text-safe letters (a close gets a valid code first) or of script
    /// bytes repeated to length.
    fn frame(&mut self, arg: u8, script: &mut Script<'_>) {
        let Some(flags) = script.byte() else {
            return;
        };
        let len = FRAME_LENS[usize::from(arg)];
        if self.client.len() + len + 14 > MAX_CLIENT_BYTES {
            return;
        }
        let opcode = flags & 0x0F;
        let mut payload: Vec<u8> = if flags & 0x40 != 0 {
            let src = script.bytes(len.min(MAX_SCRIPT_PAYLOAD));
            if src.is_empty() {
                vec![0; len]
            } else {
                src.iter().copied().cycle().take(len).collect()
            }
        } else {
            let mut p: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            if opcode == 8 && len >= 2 {
                let code: u16 = if flags & 0x20 == 0 { 1000 } else { 1001 };
                p[..2].copy_from_slice(&code.to_be_bytes());
            }
            p
        };
        let key = [flags | 1, 0x5A ^ arg, 0xC3, 0x3C];
        self.client.push((flags & 0x80) | opcode);
        match len {
            0..=125 => self.client.push(0x80 | len as u8),
            126..=0xFFFF => {
                self.client.push(0x80 | 126);
                self.client.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                self.client.push(0x80 | 127);
                self.client.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        self.client.extend_from_slice(&key);
        apply_mask(&mut payload, key, 0);
        self.client.extend_from_slice(&payload);
    }

    /// The unsent output's cost stays within the budget plus what one step
    /// past it can add. `ReadBuffer::process` checks the budget before each
    /// step, and a step queues one server frame: a slice of one read buffer,
    /// or a frame echoed whole (payload at most read_sizing.max - 14, its
    /// header at most 4), plus its queue entries. `OutQueue::fill_batch`
    /// then slots in the pongs (at most `MAX_UNSENT_PONGS`), our ping and
    /// our close, each a control frame of at most 127 bytes (§5.5).
    fn check_cost(&mut self) {
        let cost = self.conn.output_cost();
        self.max_cost = self.max_cost.max(cost);
        let frame = self.largest_read_buffer.max(self.cfg.read_sizing.max)
            + (MAX_FRAME_PIECES + 1) * ENTRY_COST;
        let controls = (MAX_UNSENT_PONGS + 2) * (2 + MAX_CONTROL_PAYLOAD + ENTRY_COST);
        let bound = self.cfg.max_output_bytes + frame + controls;
        assert!(
            cost <= bound,
            "output cost {cost} over {bound} (largest read buffer {})",
            self.largest_read_buffer
        );
    }

    /// Once done, the engine reads nothing, wants no timer and stays done
    /// whatever the shell still calls.
    fn check_done(&mut self) {
        assert!(!self.conn.wants_read(), "done but wants a read");
        assert_eq!(self.conn.poll_timeout(), None, "done but wants a timer");
        self.conn.shutdown(self.now);
        self.conn
            .handle_timeout(self.now + Duration::from_secs(3600));
        assert!(self.conn.is_done() && !self.conn.wants_read());
    }

    /// A shell that only waits for its timer: no byte comes in and none
    /// goes out, yet every connection must end (only an open one without
    /// an idle timer may wait forever).
    fn finish(&mut self) {
        for _ in 0..8 {
            if !self.turn() {
                return;
            }
            let Some(t) = self.conn.poll_timeout() else {
                break;
            };
            self.now = self.now.max(t);
            self.timer();
            while let Some(event) = self.conn.poll_event() {
                self.events.push(event);
            }
        }
        assert!(
            self.conn.is_done()
                || (self.cfg.idle_timeout.is_zero() && self.conn.poll_timeout().is_none()),
            "still alive after its deadlines"
        );
    }

    /// What the peer received is one HTTP response and, after a 101 only,
    /// server frames; returns the status and the frames.
    fn check_wire(&self) -> (Option<u16>, Vec<(u8, usize)>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&self.wire) {
            Ok(httparse::Status::Complete(n)) => n,
            // Nothing, or a response cut off by the connection's end.
            Ok(httparse::Status::Partial) => return (None, Vec::new()),
            Err(e) => panic!(
                "§4.2.2: the peer's first bytes are no HTTP response ({e}): {:?}",
                self.wire
            ),
        };
        let status = resp.code.expect("a complete response has a status");
        if status == 101 {
            assert!(self.events.contains(&Event::Upgraded), "101 unannounced");
            return (Some(101), self.check_frames(&self.wire[head..]));
        }
        if let Some(answer) = &self.answer {
            assert!(
                answer.starts_with(&self.wire),
                "the peer got more or other than the shell's answer"
            );
        } else {
            assert!(
                self.events.contains(&Event::HandshakeRejected(status)),
                "{status} unannounced"
            );
            let declared = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .expect("a refusal declares its length");
            assert!(self.wire.len() <= head + declared, "bytes after a refusal");
        }
        (Some(status), Vec::new())
    }

    /// Server frames as a strict client reads them (§5.1: unmasked; no RSV
    /// without an extension; §5.2: minimal lengths; §5.4: continuations
    /// only inside a message; §5.5: control frames whole and short; §5.5.1:
    /// one close, nothing after it; §8.1: text is UTF-8). The stream may
    /// end mid-frame: the connection can end mid-write.
    fn check_frames(&self, mut rest: &[u8]) -> Vec<(u8, usize)> {
        let mut frames = Vec::new();
        let mut echoed = Vec::new();
        let mut open: Option<(OpCode, Vec<u8>)> = None;
        let mut closed = false;
        while !rest.is_empty() {
            assert!(!closed, "§5.5.1: bytes after our close");
            let h = match parse_server_header(rest) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => panic!("unreadable server header {e:?}: {rest:?}"),
            };
            assert!(!h.masked, "§5.1: a masked server frame");
            assert_eq!(h.rsv, 0, "RSV bits without an extension");
            assert_eq!(h.header_len, server_header_len(h.payload_len), "§5.2");
            let op = OpCode::from_u8(h.opcode).expect("a known opcode");
            let len = usize::try_from(h.payload_len).expect("a length that fits");
            let end = h.header_len.saturating_add(len);
            let complete = rest.len() >= end;
            let payload = &rest[h.header_len..end.min(rest.len())];
            frames.push((rest[0], len));
            if op.is_control() {
                assert!(h.fin && len <= MAX_CONTROL_PAYLOAD, "§5.5");
            }
            match op {
                OpCode::Close => {
                    closed = true;
                    assert_ne!(len, 1, "§5.5.1: a close body starts with a code");
                    if complete && len >= 2 {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        assert!(is_valid_close_code(code), "§7.4: close code {code}");
                        assert!(std::str::from_utf8(&payload[2..]).is_ok(), "§5.5.1");
                    }
                }
                OpCode::Ping | OpCode::Pong => {}
                OpCode::Text | OpCode::Binary => {
                    assert!(open.is_none(), "§5.4: a message inside a message");
                    open = Some((op, Vec::new()));
                }
                OpCode::Continuation => {
                    assert!(open.is_some(), "§5.4: a continuation outside a message");
                }
            }
            if !op.is_control() {
                echoed.extend_from_slice(payload);
                if let Some((OpCode::Text, text)) = &mut open {
                    text.extend_from_slice(payload);
                }
                if h.fin && complete {
                    if let Some((OpCode::Text, text)) = open.take() {
                        assert!(std::str::from_utf8(&text).is_ok(), "§8.1: text not UTF-8");
                    }
                }
            }
            if !complete {
                break;
            }
            rest = &rest[end..];
        }
        if let Some(from) = self.frames_from {
            let sent = client_data(&self.client[from..]);
            assert!(
                sent.starts_with(&echoed),
                "the echo is not the client's data: {} echoed bytes of {} sent",
                echoed.len(),
                sent.len()
            );
        }
        frames
    }
}

/// The unmasked payload of the client's data frames, in order, up to the
/// first header the engine would refuse too. The echo re-fragments and may
/// stop early (a failure, our close) but never reorders, drops from the
/// middle or adds: it is a prefix of this.
fn client_data(mut rest: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    while let Ok(Some(h)) = parse_client_header(rest, 0) {
        let end = usize::try_from(h.payload_len)
            .ok()
            .and_then(|len| len.checked_add(h.header_len))
            .unwrap_or(usize::MAX);
        let have = end.min(rest.len());
        if !h.opcode.is_control() {
            let start = data.len();
            data.extend_from_slice(&rest[h.header_len..have]);
            apply_mask(&mut data[start..], h.key, 0);
        }
        if have < end {
            break;
        }
        rest = &rest[end..];
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    // Operation bytes: the kind in the low nibble, the argument above it.
    const READ_ALL: u8 = 13;
    const WRITE_ALL: u8 = 5;
    const TIMER_AT_DEADLINE: u8 = 7 | 15 << 4;
    const SHUTDOWN: u8 = 9;
    const EOF: u8 = 10;
    const RESPOND: u8 = 12;

    fn read(arg: u8) -> u8 {
        arg << 4
    }

    fn write(arg: u8) -> u8 {
        5 | arg << 4
    }

    /// A generated frame: `len_arg` indexes `FRAME_LENS`; `flags` holds FIN
    /// (0x80), the opcode nibble and the payload mode.
    fn frame(len_arg: u8, flags: u8) -> [u8; 2] {
        [3 | len_arg << 4, flags]
    }

    /// 256 slices per write, the RFC sample request, 64/1024 reads, 4 KiB.
    const UPGRADE: u8 = 0xC0;

    fn script(setup: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut s = vec![setup];
        for p in parts {
            s.extend_from_slice(p);
        }
        s
    }

    /// Hand-made scripts, one per path the fuzzer should start from; they
    /// are the committed seeds of `fuzz/corpus/connection/`.
    pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let open: &[u8] = &[READ_ALL, WRITE_ALL];
        let mut backpressure = vec![UPGRADE | 32, READ_ALL];
        for _ in 0..12 {
            backpressure.extend(frame(10, 0x82));
        }
        backpressure.extend([READ_ALL; 16]);
        backpressure.extend([write(9), READ_ALL, write(1), READ_ALL]);
        backpressure.extend([WRITE_ALL, READ_ALL].repeat(16));
        vec![
            (
                "echo",
                script(
                    UPGRADE,
                    &[
                        open,
                        &frame(3, 0x81),
                        &frame(9, 0x82),
                        &[READ_ALL, READ_ALL, WRITE_ALL, WRITE_ALL],
                    ],
                ),
            ),
            (
                "ping",
                script(
                    UPGRADE,
                    &[
                        open,
                        &frame(3, 0x89),
                        &frame(3, 0x89),
                        &frame(0, 0x89),
                        &[READ_ALL, WRITE_ALL],
                    ],
                ),
            ),
            (
                "close",
                script(
                    UPGRADE,
                    &[
                        open,
                        &frame(4, 0x81),
                        &frame(4, 0x88),
                        &[READ_ALL, WRITE_ALL],
                    ],
                ),
            ),
            ("backpressure", backpressure),
            (
                "timeouts",
                script(
                    UPGRADE,
                    &[
                        open,
                        &[TIMER_AT_DEADLINE, WRITE_ALL],
                        &[TIMER_AT_DEADLINE, WRITE_ALL, TIMER_AT_DEADLINE],
                    ],
                ),
            ),
            (
                "http-get",
                script(0xC5, &[&[READ_ALL, RESPOND, WRITE_ALL, READ_ALL, EOF]]),
            ),
            (
                "shutdown-mid-frame",
                script(
                    UPGRADE,
                    &[
                        open,
                        &frame(12, 0x82),
                        &[read(8), write(0), SHUTDOWN, READ_ALL, READ_ALL],
                        &[READ_ALL, READ_ALL, write(3), WRITE_ALL],
                        &frame(3, 0x88),
                        &[READ_ALL, WRITE_ALL],
                    ],
                ),
            ),
            (
                "fragments-small-reads",
                script(
                    UPGRADE | 16,
                    &[
                        open,
                        &frame(8, 0x01),
                        &frame(3, 0x89),
                        &frame(7, 0x80),
                        &[read(4); 80],
                        &[WRITE_ALL, WRITE_ALL],
                    ],
                ),
            ),
            (
                "protocol-error",
                script(
                    UPGRADE,
                    &[open, &frame(3, 0x83), &[READ_ALL, WRITE_ALL, READ_ALL, EOF]],
                ),
            ),
            (
                "slow-handshake",
                script(UPGRADE, &[&[read(0), read(3), TIMER_AT_DEADLINE]]),
            ),
            (
                "own-request",
                script(
                    0xC7,
                    &[
                        &[2 | 15 << 4, REQUEST_RFC.len() as u8],
                        REQUEST_RFC,
                        &frame(2, 0xC2),
                        b"hi",
                        &[READ_ALL, WRITE_ALL, READ_ALL, WRITE_ALL],
                    ],
                ),
            ),
        ]
    }

    /// The seeds reach what they are named after, so the fuzzer starts
    /// from every path and a driver that silently did nothing would fail.
    #[test]
    fn each_seed_reaches_its_path() {
        for (name, data) in seeds() {
            let o = run(&data);
            let ops: Vec<u8> = o.frames.iter().map(|f| f.0).collect();
            match name {
                "echo" => assert_eq!(o.frames, vec![(0x81, 5), (0x82, 300)]),
                "ping" => assert_eq!(ops, vec![0x8A; 3]),
                "close" => {
                    assert_eq!(ops, vec![0x81, 0x88]);
                    assert!(o.done_in_script, "§7.1.1: the server closes first");
                }
                "backpressure" => {
                    assert!(o.max_cost >= 1024, "never reached the budget");
                    assert_eq!(ops, vec![0x82; 12]);
                    assert_eq!(o.unread, 0, "reading resumed as the echo drained");
                }
                "timeouts" => {
                    assert_eq!(ops, vec![0x89, 0x88]);
                    assert!(o.events.contains(&Event::IdleClosed));
                    assert!(o.done_in_script);
                }
                "http-get" => {
                    assert_eq!(o.status, Some(200));
                    assert!(o.done_in_script);
                }
                "shutdown-mid-frame" => {
                    assert_eq!(ops.last(), Some(&0x88));
                    assert!(o.done_in_script);
                }
                "fragments-small-reads" => {
                    // The streamed frame's pieces, the pong at a frame
                    // boundary (§5.4), the whole-echoed final fragment.
                    assert_eq!((ops[0], ops.last()), (0x01, Some(&0x80)));
                    assert!(ops.len() > 10 && ops.contains(&0x8A));
                }
                "protocol-error" => {
                    assert_eq!(ops, vec![0x88]);
                    assert!(o.events.contains(&Event::ProtocolError(1002)));
                    assert!(o.done_in_script);
                }
                "slow-handshake" => {
                    assert!(o
                        .events
                        .contains(&Event::TimedOut(crate::connection::Deadline::Handshake)));
                    assert!(o.done_in_script);
                }
                "own-request" => assert_eq!(o.frames, vec![(0x82, 2)]),
                _ => unreachable!("{name}"),
            }
        }
    }

    /// Writes the seeds into the fuzz corpus:
    /// `cargo test -p ringecho-proto write_connection_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_connection_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/connection");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
