//! Buffers of one connection: the read buffer the echo is cut from, and the
//! output queue that orders what goes back out. No I/O here, so the
//! zero-copy and ordering guarantees are unit-tested without sockets.
//!
//! The in-place echo: bytes are read into a `BytesMut`; the protocol core
//! unmasks and validates them where they lie and writes each server header
//! just before its payload; the shell then splits that range off and
//! freezes it into a `Bytes` that the output queue hands to `writev`. The
//! allocation is shared by reference count, so no payload byte is copied in
//! user space. Once every `Bytes` cut from an allocation has been written and
//! dropped, `BytesMut::reserve` reclaims the same allocation for the next
//! read, which makes each connection's buffer its own pool.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::frame::ControlFrame;
use crate::protocol::message::{Event, Session, HEADROOM};
use crate::protocol::Error;

/// How a connection's read buffer grows and shrinks: small for idle or
/// chatty connections (many connections, little memory each), large for
/// bulk transfers (fewer, larger reads).
#[derive(Debug, Clone, Copy)]
pub struct ReadSizing {
    pub min: usize,
    pub max: usize,
}

/// The connection's read buffer.
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    /// Start of unprocessed input; bytes before it are scratch (headroom).
    pos: usize,
    /// Allocation size to ask for next.
    size: usize,
    sizing: ReadSizing,
    /// Bytes carried over into a new allocation (partial headers and
    /// control frames only: data payload is never left unconsumed).
    pub carried: u64,
}

/// What processing a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Open,
    /// The peer's close arrived (and our reply, if any, is queued).
    PeerClosed,
}

impl ReadBuffer {
    pub fn new(sizing: ReadSizing) -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::new(),
            pos: 0,
            size: sizing.min,
            sizing,
            carried: 0,
        }
    }

    /// Unprocessed input (for the handshake parser).
    pub fn unprocessed(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Drop `n` processed bytes from the front of the unprocessed input.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len() - self.pos);
        self.buf.advance(self.pos + n);
        self.pos = 0;
    }

    /// Make room for the next read and hand the buffer out for it: the read
    /// goes into its spare capacity. `at_least` is the spare room wanted (the
    /// handshake asks for enough to see its header limit crossed).
    pub fn take_for_read(&mut self, expects_payload: bool, at_least: usize) -> BytesMut {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let want = self.size.max(at_least);
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.carried += self.buf.len() as u64;
            // Reclaims the allocation when every echo cut from it is gone,
            // else allocates; carries at most a partial header along.
            self.buf.reserve(want);
        }
        if expects_payload && self.buf.is_empty() {
            self.buf.put_bytes(0, HEADROOM);
            self.pos = HEADROOM;
        }
        std::mem::take(&mut self.buf)
    }

    /// Take the buffer back after a read of `n` bytes, and adapt the next
    /// allocation size to how full this read was.
    pub fn restore(&mut self, buf: BytesMut, n: usize, spare_before: usize) {
        self.buf = buf;
        if n >= spare_before * 3 / 4 {
            self.size = (self.size * 2).min(self.sizing.max);
        } else if n < self.size / 8 {
            self.size = (self.size / 2).max(self.sizing.min);
        }
    }

    /// Run the protocol core over the unprocessed input, queueing what it
    /// produces. Returns the error that failed the session, if any; the
    /// caller then queues the session's close frame.
    pub fn process(&mut self, session: &mut Session, out: &mut OutQueue) -> Result<Flow, Error> {
        loop {
            let step = session.step(&mut self.buf, self.pos)?;
            match step.event {
                Event::NeedMore => {
                    // Drop what was consumed; keep a partial header or control frame.
                    self.buf.advance(step.next);
                    self.pos = 0;
                    return Ok(Flow::Open);
                }
                Event::Nothing => self.pos = step.next,
                Event::Echo { frame } => {
                    out.push_echo(self.cut(frame.start, frame.end), true);
                }
                Event::EchoDetached {
                    header,
                    header_len,
                    payload,
                } => {
                    let header =
                        Bytes::copy_from_slice(header.get(..header_len).unwrap_or_default());
                    out.push_echo(header, false);
                    out.push_echo(self.cut(payload.start, payload.end), true);
                }
                Event::Pong(frame) => {
                    out.push_pong(frame);
                    self.pos = step.next;
                }
                Event::Closed { reply } => {
                    if let Some(frame) = reply {
                        out.push_close(frame, CloseOrder::AfterData);
                    }
                    self.buf.clear();
                    self.pos = 0;
                    return Ok(Flow::PeerClosed);
                }
            }
        }
    }

    /// Split `buf[start..end]` off as a shared, immutable slice of the same
    /// allocation; everything before `end` leaves the buffer.
    fn cut(&mut self, start: usize, end: usize) -> Bytes {
        let mut head = self.buf.split_to(end);
        head.advance(start);
        self.pos = 0;
        head.freeze()
    }
}

/// Where a close frame goes relative to echo data already queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOrder {
    /// After everything queued: replies to the peer's close and protocol
    /// failures, so every message the peer sent before is still echoed.
    AfterData,
    /// Ahead of queued echo data, which is dropped: shutdown and idle closes
    /// should not wait behind a backlog the peer is not reading.
    AheadOfData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Control,
    Close,
}

#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    kind: Kind,
    /// The last chunk of a server frame: after it, a control frame may go.
    ends_frame: bool,
}

/// Output queue of one connection: echo frames in order, with pongs and
/// closes slotted in at the first frame boundary (§5.4: control frames may be
/// injected between fragments, never inside a frame).
#[derive(Debug, Default)]
pub struct OutQueue {
    q: VecDeque<Chunk>,
    /// The latest unanswered ping's pong: only the most recent ping needs
    /// an answer (§5.5.3), so a ping flood queues one pong.
    pong: Option<ControlFrame>,
    /// A server ping to send (idle probe).
    ping: Option<ControlFrame>,
    close: Option<(ControlFrame, CloseOrder)>,
    /// The front chunk's frame is partly on the wire.
    front_mid_frame: bool,
    /// Echo bytes queued and not yet written: the backpressure measure.
    queued: usize,
    close_queued: bool,
    close_written: bool,
}

impl OutQueue {
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    fn push_echo(&mut self, bytes: Bytes, ends_frame: bool) {
        self.queued += bytes.len();
        self.q.push_back(Chunk {
            bytes,
            kind: Kind::Data,
            ends_frame,
        });
    }

    pub fn push_pong(&mut self, frame: ControlFrame) {
        self.pong = Some(frame);
    }

    pub fn push_ping(&mut self, frame: ControlFrame) {
        self.ping = Some(frame);
    }

    /// Queue a close frame; only the first one counts.
    pub fn push_close(&mut self, frame: ControlFrame, order: CloseOrder) {
        if self.close.is_none() && !self.close_queued {
            self.close = Some((frame, order));
        }
    }

    /// Echo bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    pub fn has_pending(&self) -> bool {
        !self.q.is_empty() || self.pong.is_some() || self.ping.is_some() || self.close.is_some()
    }

    pub fn close_written(&self) -> bool {
        self.close_written
    }

    /// Index of the first frame boundary in the queue.
    fn boundary(&self) -> usize {
        if !self.front_mid_frame {
            return 0;
        }
        self.q
            .iter()
            .position(|c| c.ends_frame)
            .map_or(self.q.len(), |i| i + 1)
    }

    /// Fill `batch` with up to `max` slices to write next, control frames
    /// first. Slices are reference-counted views: nothing is copied.
    pub fn fill_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        if self.close.is_none() || matches!(self.close, Some((_, CloseOrder::AfterData))) {
            for frame in [self.pong.take(), self.ping.take()].into_iter().flatten() {
                if self.close_queued {
                    break;
                }
                let at = self.boundary();
                self.q.insert(at, control_chunk(frame, Kind::Control));
            }
        }
        if let Some((frame, order)) = self.close.take() {
            self.pong = None;
            self.ping = None;
            if order == CloseOrder::AheadOfData {
                let at = self.boundary();
                let dropped: usize = self.q.drain(at..).map(|c| c.bytes.len()).sum();
                self.queued -= dropped.min(self.queued);
            }
            self.q.push_back(control_chunk(frame, Kind::Close));
            self.close_queued = true;
        }
        batch.clear();
        batch.extend(self.q.iter().take(max).map(|c| c.bytes.clone()));
    }

    /// Account for `written` bytes of the last batch having gone out.
    pub fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.q.front_mut() else {
                return;
            };
            let len = front.bytes.len();
            let n = written.min(len);
            if front.kind == Kind::Data {
                self.queued -= n.min(self.queued);
            }
            written -= n;
            if n < len {
                front.bytes.advance(n);
                self.front_mid_frame = true;
                return;
            }
            self.front_mid_frame = !front.ends_frame;
            if front.kind == Kind::Close {
                self.close_written = true;
            }
            self.q.pop_front();
        }
    }
}

fn control_chunk(frame: ControlFrame, kind: Kind) -> Chunk {
    Chunk {
        bytes: Bytes::copy_from_slice(frame.as_bytes()),
        kind,
        ends_frame: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{encode_client_frame, OpCode};
    use crate::protocol::message::Config;

    fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(true, op, [9, 8, 7, 6], payload, &mut v);
        v
    }

    /// Play the connection loop: read `input` in pieces of at most `read`
    /// bytes, process, and drain the queue. Returns the bytes written and,
    /// for every data slice written, whether it lay inside a region that a
    /// read filled (the zero-copy proof).
    fn pump(input: &[u8], read: usize) -> (Vec<u8>, Vec<bool>, ReadBuffer) {
        let mut session = Session::new(Config::default());
        let mut rb = ReadBuffer::new(ReadSizing {
            min: 4096,
            max: 65536,
        });
        let mut out = OutQueue::new();
        let mut regions: Vec<(usize, usize)> = Vec::new();
        let mut wire = Vec::new();
        let mut in_place = Vec::new();
        let mut batch = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let mut buf = rb.take_for_read(session.expects_payload(), 0);
            let spare = buf.capacity() - buf.len();
            let n = read.min(spare).min(rest.len());
            let start = buf.as_ptr() as usize + buf.len();
            buf.extend_from_slice(&rest[..n]); // stands in for the kernel's write into spare capacity
            assert_eq!(
                buf.as_ptr() as usize + buf.len() - n,
                start,
                "read went into the spare capacity"
            );
            regions.push((start, start + n));
            rest = &rest[n..];
            rb.restore(buf, n, spare);
            rb.process(&mut session, &mut out).unwrap();
            // Drain the queue as the connection loop does, batch by batch.
            loop {
                out.fill_batch(&mut batch, 64);
                if batch.is_empty() {
                    break;
                }
                for b in &batch {
                    wire.extend_from_slice(b);
                    let (p, l) = (b.as_ptr() as usize, b.len());
                    // Control frames are built inline; data must come from a read.
                    if l > 8 {
                        in_place.push(
                            regions
                                .iter()
                                .any(|&(s, e)| p >= s.saturating_sub(HEADROOM + 14) && p + l <= e),
                        );
                    }
                }
                let total: usize = batch.iter().map(|b| b.len()).sum();
                out.advance(total);
            }
        }
        (wire, in_place, rb)
    }

    #[test]
    fn a_1_mib_message_is_echoed_without_copying_its_payload() {
        let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let input = frame(OpCode::Binary, &payload);
        let (wire, in_place, rb) = pump(&input, 65536);
        assert!(!in_place.is_empty());
        assert!(
            in_place.iter().all(|&b| b),
            "every echoed slice lies in a read region"
        );
        // Reassemble the echoed fragments and compare.
        let mut got = Vec::new();
        let mut w = &wire[..];
        while !w.is_empty() {
            let (len, at) = match w[1] & 0x7F {
                126 => (u16::from_be_bytes([w[2], w[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(w[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            got.extend_from_slice(&w[at..at + len]);
            w = &w[at + len..];
        }
        assert_eq!(got, payload);
        assert!(
            rb.carried <= 14,
            "only a partial header may be carried: {}",
            rb.carried
        );
    }

    #[test]
    fn many_small_frames_in_one_read_are_echoed_as_slices_of_it() {
        let mut input = Vec::new();
        for i in 0..100u8 {
            input.extend(frame(OpCode::Text, &[b'a' + i % 26; 20]));
        }
        let (wire, in_place, _) = pump(&input, 65536);
        assert_eq!(wire.len(), 100 * 22);
        assert!(in_place.iter().all(|&b| b));
    }

    #[test]
    fn pong_goes_ahead_of_queued_echo_but_never_inside_a_frame_section_5_4() {
        let mut out = OutQueue::new();
        out.push_echo(Bytes::from_static(b"AAAA"), true);
        out.push_echo(Bytes::from_static(b"hh"), false);
        out.push_echo(Bytes::from_static(b"BBBB"), true);
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        assert_eq!(batch.len(), 3);
        // Half of the first frame went out.
        out.advance(2);
        out.push_pong(ControlFrame::pong(b"p"));
        out.fill_batch(&mut batch, 64);
        let order: Vec<&[u8]> = batch.iter().map(|b| &b[..]).collect();
        assert_eq!(
            order,
            vec![&b"AA"[..], &[0x8A, 1, b'p'][..], b"hh", b"BBBB"]
        );
        // Write up to the middle of the detached header/payload pair: a new
        // pong must wait until that frame is complete.
        out.advance(2 + 3 + 2);
        out.push_pong(ControlFrame::pong(b"q"));
        out.fill_batch(&mut batch, 64);
        let order: Vec<&[u8]> = batch.iter().map(|b| &b[..]).collect();
        assert_eq!(order, vec![&b"BBBB"[..], &[0x8A, 1, b'q'][..]]);
    }

    #[test]
    fn a_ping_flood_queues_one_pong_section_5_5_3() {
        let mut out = OutQueue::new();
        for i in 0..1000u32 {
            out.push_pong(ControlFrame::pong(&i.to_be_bytes()));
        }
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        assert_eq!(batch.len(), 1);
        assert_eq!(&batch[0][2..], &999u32.to_be_bytes());
    }

    #[test]
    fn shutdown_close_goes_ahead_and_drops_unsent_echo() {
        let mut out = OutQueue::new();
        for _ in 0..10 {
            out.push_echo(Bytes::from_static(b"data"), true);
        }
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        out.advance(1);
        out.push_close(
            ControlFrame::close(Some(1001), "bye"),
            CloseOrder::AheadOfData,
        );
        out.fill_batch(&mut batch, 64);
        assert_eq!(
            batch.len(),
            2,
            "rest of the partly written frame, then close"
        );
        assert_eq!(&batch[0][..], b"ata");
        assert_eq!(&batch[1][..4], &[0x88, 5, 0x03, 0xE9]);
        assert_eq!(out.queued_bytes(), 3);
        out.advance(3 + 7);
        assert!(out.close_written());
        assert!(!out.has_pending());
    }

    #[test]
    fn reply_to_peer_close_goes_after_queued_echo_section_5_5_1() {
        let mut out = OutQueue::new();
        out.push_echo(Bytes::from_static(b"echo"), true);
        out.push_close(ControlFrame::close(Some(1000), ""), CloseOrder::AfterData);
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        assert_eq!(&batch[0][..], b"echo");
        assert_eq!(&batch[1][..], &[0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn backpressure_measure_counts_only_unsent_echo_bytes() {
        let mut out = OutQueue::new();
        out.push_echo(Bytes::from(vec![0; 1000]), true);
        out.push_echo(Bytes::from(vec![0; 500]), true);
        assert_eq!(out.queued_bytes(), 1500);
        out.advance(1200);
        assert_eq!(out.queued_bytes(), 300);
    }

    #[test]
    fn the_read_allocation_is_reclaimed_once_its_echo_is_written() {
        let mut session = Session::new(Config::default());
        let mut rb = ReadBuffer::new(ReadSizing {
            min: 4096,
            max: 4096,
        });
        let mut out = OutQueue::new();
        let mut batch = Vec::new();
        let mut first = None;
        for _ in 0..50 {
            let mut buf = rb.take_for_read(session.expects_payload(), 0);
            let base = buf.as_ptr() as usize;
            assert_eq!(
                *first.get_or_insert(base),
                base,
                "a new allocation was made"
            );
            let spare = buf.capacity() - buf.len();
            buf.extend_from_slice(&frame(OpCode::Binary, &[1; 3000]));
            rb.restore(buf, 3006, spare);
            rb.process(&mut session, &mut out).unwrap();
            out.fill_batch(&mut batch, 64);
            let n = batch.iter().map(|b| b.len()).sum();
            batch.clear();
            out.advance(n);
        }
    }
}
