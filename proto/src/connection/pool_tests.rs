//! The engine driven the way the ring shell drives it: every read lands in
//! a buffer from a shared pool (a provided-buffer ring), which the engine
//! adopts, echoes from in place and gives back.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::tests::frames;
use super::{Config, Connection, Event, ADOPT_HEADROOM};
use crate::frame::{encode_client_frame, OpCode};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A shard's pool of fixed-size buffers, as the ring shell keeps it.
struct Pool {
    size: usize,
    free: Vec<BytesMut>,
    returned: Vec<BytesMut>,
    /// Address ranges of every buffer ever allocated.
    regions: Vec<(usize, usize)>,
}

impl Pool {
    fn new(size: usize) -> Pool {
        Pool {
            size,
            free: Vec::new(),
            returned: Vec::new(),
            regions: Vec::new(),
        }
    }

    /// A buffer holding `data` after the headroom, as a receive leaves it.
    fn receive(&mut self, data: &[u8]) -> BytesMut {
        assert!(data.len() <= self.size - ADOPT_HEADROOM);
        self.reclaim();
        let mut buf = self.free.pop().unwrap_or_else(|| {
            let b = BytesMut::zeroed(self.size);
            self.regions
                .push((b.as_ptr() as usize, b.as_ptr() as usize + self.size));
            b
        });
        buf.truncate(ADOPT_HEADROOM);
        buf.extend_from_slice(data);
        buf
    }

    /// Buffers nothing points into any more become free again.
    fn reclaim(&mut self) {
        let size = self.size;
        let mut still = Vec::new();
        for mut b in self.returned.drain(..) {
            b.clear();
            if b.try_reclaim(size) {
                assert_eq!(b.capacity(), size, "the whole allocation came back");
                b.resize(size, 0);
                self.free.push(b);
            } else {
                still.push(b);
            }
        }
        self.returned = still;
    }

    /// Buffers not (yet) reusable: held by the engine or pinned by echo.
    fn outstanding(&mut self) -> usize {
        self.reclaim();
        self.regions.len() - self.free.len()
    }

    fn inside(&self, p: usize, len: usize) -> bool {
        self.regions.iter().any(|&(s, e)| p >= s && p + len <= e)
    }
}

struct PoolShell {
    conn: Connection,
    pool: Pool,
    now: Instant,
    /// Data slices written that lay in pool buffers, and those that did not.
    in_place: usize,
    copied: usize,
    copied_lens: Vec<usize>,
    min_pin: usize,
}

impl PoolShell {
    fn open(cfg: Config, size: usize) -> PoolShell {
        let now = Instant::now();
        let mut s = PoolShell {
            conn: Connection::new(Arc::new(cfg), now),
            pool: Pool::new(size),
            now,
            in_place: 0,
            copied: 0,
            copied_lens: Vec::new(),
            min_pin: size / 2,
        };
        s.receive(REQUEST);
        let wire = s.drain();
        assert!(wire.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert_eq!(s.conn.poll_event(), Some(Event::Upgraded));
        // The 101 response is not echo.
        s.copied = 0;
        s.copied_lens.clear();
        s
    }

    fn receive(&mut self, data: &[u8]) {
        let buf = self.pool.receive(data);
        self.conn.handle_received(buf, ADOPT_HEADROOM, self.now);
    }

    fn release(&mut self) {
        self.conn
            .release_buffers(&mut self.pool.returned, self.min_pin);
    }

    /// Write everything, as a socket that takes it all, then release.
    fn drain(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..100_000 {
            self.conn.poll_transmit(&mut batch, 64);
            if batch.is_empty() {
                break;
            }
            for b in &batch {
                wire.extend_from_slice(b);
                if b.len() > 8 {
                    if self.pool.inside(b.as_ptr() as usize, b.len()) {
                        self.in_place += 1;
                    } else {
                        self.copied += 1;
                        self.copied_lens.push(b.len());
                    }
                }
            }
            let n = batch.iter().map(|b| b.len()).sum();
            batch.clear();
            self.conn.handle_written(n, self.now);
        }
        self.release();
        wire
    }

    /// Receive `input` in pieces of the given sizes (cycled), draining after
    /// each, as a peer that reads everything.
    fn pump(&mut self, mut input: &[u8], pieces: &[usize]) -> Vec<u8> {
        let mut wire = Vec::new();
        let room = self.pool.size - ADOPT_HEADROOM;
        for &piece in pieces.iter().cycle().take(1_000_000) {
            if input.is_empty() {
                break;
            }
            assert!(self.conn.wants_read(), "the engine stopped reading");
            let n = piece.clamp(1, room).min(input.len());
            self.receive(&input[..n]);
            input = &input[n..];
            wire.extend(self.drain());
        }
        assert!(input.is_empty());
        wire
    }
}

fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(fin, op, [7, 1, 9, 3], payload, &mut v);
    v
}

/// Deterministic sizes in `0..max`.
fn sizes(n: usize, max: usize, mut seed: u64) -> Vec<usize> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % max
        })
        .collect()
}

#[test]
fn frames_received_into_pool_buffers_are_echoed_in_place_and_every_buffer_comes_back() {
    let lens = sizes(300, 20_000, 1);
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        let op = if i % 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        input.extend(frame(true, op, &payload));
        expected.push((0x80 | op as u8, payload));
        if i % 7 == 0 {
            input.extend(frame(true, OpCode::Ping, b"hi"));
            expected.push((0x8A, b"hi".to_vec()));
        }
    }
    // Pieces of at least half a buffer are never copied; smaller ones of a
    // frame still arriving may be (so a trickling peer cannot pin a buffer
    // per byte).
    let big: Vec<usize> = sizes(50, 1800, 2).iter().map(|n| n + 2048).collect();
    for (size, pieces, zero_copy) in [
        (4096, big, true),
        (16384, sizes(50, 16000, 3), false),
        (16384, vec![1, 2, 3, 5, 8, 13], false),
    ] {
        let mut s = PoolShell::open(Config::default(), size);
        let wire = s.pump(&input, &pieces);
        // Pongs may go ahead of queued echo (§5.4: at any frame boundary);
        // the data frames keep their order.
        let (pongs, data): (Vec<_>, Vec<_>) = frames(&wire).into_iter().partition(|f| f.0 == 0x8A);
        let (want_pongs, want_data): (Vec<_>, Vec<_>) =
            expected.iter().cloned().partition(|f| f.0 == 0x8A);
        assert_eq!(pongs, want_pongs, "{size}: every ping answered");
        assert!(data == want_data, "{size}: echo differs");
        assert!(s.in_place > 0, "{size}: nothing was echoed in place");
        assert_eq!(
            s.conn.read_buffer_bytes(),
            0,
            "{size}: an idle connection holds no read buffer"
        );
        drop(wire);
        assert_eq!(s.pool.outstanding(), 0, "{size}: a pool buffer was kept");
        if zero_copy {
            // Only the head of a frame that starts late in a buffer, smaller
            // than half a buffer, is copied; every larger piece stays.
            assert!(
                s.copied_lens.iter().all(|&n| n < size / 2),
                "{size}: copied {:?}",
                s.copied_lens
            );
            assert!(s.in_place > s.copied_lens.len());
        }
    }
}

#[test]
fn a_frame_spread_over_several_pool_buffers_is_echoed_as_one_frame_from_them() {
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let input = frame(true, OpCode::Binary, &payload);
    let mut s = PoolShell::open(Config::default(), 4096);
    let wire = s.pump(&input, &[4096]);
    assert_eq!(frames(&wire), vec![(0x82, payload)]);
    assert_eq!(s.copied, 0, "the pieces were not copied");
    assert!(s.in_place >= 10, "cut from {} buffers", s.in_place);
    drop(wire);
    assert_eq!(s.pool.outstanding(), 0);
}

#[test]
fn a_partial_header_or_control_frame_is_carried_in_front_of_the_next_buffer() {
    let mut input = Vec::new();
    for i in 0..50u8 {
        input.extend(frame(true, OpCode::Ping, &[i; 125]));
        input.extend(frame(true, OpCode::Binary, &[i; 300]));
    }
    // Every cut lands inside a header or a control frame somewhere.
    let mut s = PoolShell::open(Config::default(), 4096);
    let wire = s.pump(&input, &[97, 5, 131, 3]);
    let got = frames(&wire);
    assert_eq!(got.len(), 100);
    for (i, pair) in got.chunks(2).enumerate() {
        assert_eq!(pair[0], (0x8A, vec![i as u8; 125]));
        assert_eq!(pair[1], (0x82, vec![i as u8; 300]));
    }
    assert_eq!(s.conn.read_buffer_bytes(), 0);
    // At most a partial control frame moves per receive.
    let receives = input.len().div_ceil(59) as u64;
    assert!(
        s.conn.carried_bytes() <= 131 * receives,
        "{} carried over {receives} receives",
        s.conn.carried_bytes()
    );
}

#[test]
fn buffers_received_behind_a_backlog_wait_their_turn_in_order() {
    let cfg = Config {
        max_output_bytes: 2048,
        ..Config::default()
    };
    let mut s = PoolShell::open(cfg, 16384);
    // A multishot receive delivers several buffers before its cancel lands:
    // the engine takes them all, though the first already filled its
    // output budget.
    let mut expected = Vec::new();
    for b in 0..6u8 {
        let mut chunk = Vec::new();
        for i in 0..10u8 {
            let payload = vec![b * 10 + i; 1000];
            chunk.extend(frame(true, OpCode::Binary, &payload));
            expected.push((0x82, payload));
        }
        s.receive(&chunk);
        s.release();
    }
    assert!(!s.conn.wants_read(), "backpressure holds reading");
    let wire = s.drain();
    assert!(
        frames(&wire) == expected,
        "every frame echoed once, in order"
    );
    assert!(s.conn.wants_read());
    drop(wire);
    assert_eq!(s.pool.outstanding(), 0);
}

#[test]
fn a_peer_that_does_not_read_pins_no_pool_buffer_per_small_echo() {
    let mut s = PoolShell::open(Config::default(), 16384);
    // Tiny frames, each in a buffer of its own, until backpressure stops
    // reading; nothing is written.
    let mut received = 0;
    while s.conn.wants_read() && received < 100_000 {
        s.receive(&frame(true, OpCode::Binary, b"0123456789"));
        s.release();
        received += 1;
    }
    assert!(received > 100, "{received}");
    assert!(
        s.pool.outstanding() <= 1,
        "{} pool buffers pinned by {received} queued echoes",
        s.pool.outstanding()
    );
    // The copies still echo correctly.
    let wire = s.drain();
    let got = frames(&wire);
    assert_eq!(got.len(), received);
    assert!(got.iter().all(|f| f == &(0x82, b"0123456789".to_vec())));
}

#[test]
fn the_handshake_is_copied_out_and_its_buffers_go_back_at_once() {
    let mut s = PoolShell::open(Config::default(), 4096);
    assert_eq!(s.pool.outstanding(), 0);
    assert_eq!(s.conn.read_buffer_bytes(), 0);
    // A request in pieces, with a frame pipelined behind it.
    let now = Instant::now();
    let mut conn = Connection::new(Arc::new(Config::default()), now);
    let mut pool = Pool::new(4096);
    let mut input = REQUEST.to_vec();
    input.extend(frame(true, OpCode::Text, b"pipelined"));
    for piece in input.chunks(40) {
        let buf = pool.receive(piece);
        conn.handle_received(buf, ADOPT_HEADROOM, now);
        conn.release_buffers(&mut pool.returned, 2048);
    }
    let mut batch = Vec::new();
    let mut wire = Vec::new();
    conn.poll_transmit(&mut batch, 64);
    for b in &batch {
        wire.extend_from_slice(b);
    }
    let n = wire.len();
    conn.handle_written(n, now);
    conn.release_buffers(&mut pool.returned, 2048);
    let head = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(frames(&wire[head..]), vec![(0x81, b"pipelined".to_vec())]);
    assert_eq!(conn.read_buffer_bytes(), 0);
    drop(batch);
    assert_eq!(pool.outstanding(), 0);
}

#[test]
fn the_end_of_the_stream_and_a_closing_connection_give_every_buffer_back() {
    let cfg = Config {
        max_output_bytes: 1024,
        ..Config::default()
    };
    let mut s = PoolShell::open(cfg, 4096);
    for _ in 0..5 {
        s.receive(&frame(true, OpCode::Binary, &[1; 3000]));
    }
    s.conn.handle_eof(s.now);
    let mut back = Vec::new();
    s.conn.release_all(&mut back);
    s.pool.returned.extend(back);
    drop(s.conn);
    assert_eq!(s.pool.outstanding(), 0);
}

#[test]
fn a_frame_trickled_byte_by_byte_pins_no_pool_buffer_and_is_one_frame() {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
    let input = frame(true, OpCode::Binary, &payload);
    let mut s = PoolShell::open(Config::default(), 16384);
    let (head, rest) = input.split_at(input.len() - 1);
    let mut wire = s.pump(head, &[1, 2, 1, 3]);
    assert!(
        wire.is_empty(),
        "nothing goes out before the frame is whole"
    );
    assert_eq!(s.pool.outstanding(), 0, "no pool buffer is held meanwhile");
    assert!(
        s.conn.read_buffer_bytes() < 256,
        "{}",
        s.conn.read_buffer_bytes()
    );
    wire.extend(s.pump(rest, &[1]));
    assert_eq!(frames(&wire), vec![(0x82, payload)]);
}
/// Idle connections at 19,000 per process are mostly this struct: its
/// size is the bulk of the ring shell's memory per idle connection.
#[test]
fn an_engine_is_small_enough_for_an_idle_connection_to_cost_under_1_kib() {
    let size = std::mem::size_of::<Connection>();
    // 568: 560 plus the permessage-deflate inflater's pointer; the TLS
    // session's pointer fits because a plain request and a proxy's client
    // address now share one box.
    assert!(size <= 568, "Connection is {size} bytes");
}

/// Incrementally consumed provided buffers: receives from several
/// connections are cut back to back from one buffer, with no headroom.
#[test]
fn views_cut_back_to_back_from_one_shared_buffer_are_echoed_in_place() {
    let now = Instant::now();
    let mut conns: Vec<Connection> = (0..3)
        .map(|_| Connection::new(Arc::new(Config::default()), now))
        .collect();
    // Handshakes first, through buffers of their own.
    let mut pool = Pool::new(4096);
    let mut batch = Vec::new();
    for c in conns.iter_mut() {
        let mut req = pool.receive(REQUEST);
        let _ = req.split_to(ADOPT_HEADROOM);
        c.handle_received(req, 0, now);
        c.poll_transmit(&mut batch, 64);
        let n = batch.iter().map(|b| b.len()).sum();
        c.handle_written(n, now);
        c.release_buffers(&mut pool.returned, 1024);
    }
    let mut shared = BytesMut::zeroed(64 * 1024);
    let (start, end) = (
        shared.as_ptr() as usize,
        shared.as_ptr() as usize + shared.len(),
    );
    let mut wires = vec![Vec::new(); 3];
    let mut in_place = 0;
    for round in 0..20u8 {
        for (i, c) in conns.iter_mut().enumerate() {
            let payload = vec![round ^ i as u8; 50 + 100 * i];
            let input = frame(true, OpCode::Binary, &payload);
            let mut view = shared.split_to(input.len());
            view.copy_from_slice(&input);
            c.handle_received(view, 0, now);
            c.poll_transmit(&mut batch, 64);
            for b in &batch {
                wires[i].extend_from_slice(b);
                let p = b.as_ptr() as usize;
                in_place += usize::from(p >= start && p < end);
            }
            let n = batch.iter().map(|b| b.len()).sum();
            batch.clear();
            c.handle_written(n, now);
            // Views are dropped, not reused one by one.
            let mut back = Vec::new();
            c.release_buffers(&mut back, 1024);
        }
    }
    assert_eq!(in_place, 60, "every echo is a slice of the shared buffer");
    assert!(
        conns.iter().all(|c| c.carried_bytes() == 0),
        "nothing carried"
    );
    for (i, wire) in wires.iter().enumerate() {
        let got = frames(wire);
        assert_eq!(got.len(), 20);
        for (round, f) in got.iter().enumerate() {
            assert_eq!(f, &(0x82, vec![round as u8 ^ i as u8; 50 + 100 * i]));
        }
        assert_eq!(conns[i].read_buffer_bytes(), 0);
    }
    // Once every view is gone, the buffer's remaining view owns it whole.
    shared.clear();
    assert!(shared.try_reclaim(64 * 1024));
}

/// The request is parsed and answered: its bytes are not kept while the
/// connection waits for its first frame, however large the header block
/// was (up to --max-header-bytes, a client's choice).
#[test]
fn an_upgraded_connection_keeps_no_copy_of_its_request() {
    let now = Instant::now();
    let mut pool = Pool::new(16 * 1024);
    let padding = format!("X-Padding: {}\r\n\r\n", "p".repeat(6000));
    let request = String::from_utf8(REQUEST.to_vec())
        .unwrap()
        .replace("\r\n\r\n", &format!("\r\n{padding}"));
    let mut conn = Connection::new(Arc::new(Config::default()), now);
    let buf = pool.receive(request.as_bytes());
    conn.handle_received(buf, ADOPT_HEADROOM, now);
    assert_eq!(conn.poll_event(), Some(Event::Upgraded));
    assert_eq!(conn.read_buffer_bytes(), 0);
    // The same through the engine's own read buffers.
    let mut conn = Connection::new(Arc::new(Config::default()), now);
    let mut buf = conn.read_buffer();
    buf.extend_from_slice(request.as_bytes());
    conn.handle_read(buf, request.len(), now);
    assert_eq!(conn.poll_event(), Some(Event::Upgraded));
    assert_eq!(conn.read_buffer_bytes(), 0);
}
