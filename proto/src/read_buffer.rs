//! The connection's read buffer, which the echo is cut from.
//!
//! Bytes are read into the spare capacity of a `BytesMut`; the session
//! unmasks and validates them where they lie and writes each server header
//! just before its payload; the engine then splits that range off and
//! freezes it into a `Bytes` for the output queue. The allocation is shared
//! by reference count, so no payload byte is copied in user space. Once every
//! `Bytes` cut from an allocation has been written and dropped,
//! `BytesMut::reserve` reclaims the same allocation for the next read, which
//! makes each connection's buffer its own pool.
//!
//! A shell that receives into buffers of its own (an io_uring
//! provided-buffer ring, shared by every connection of a shard) hands each
//! one over instead ([`ReadBuffer::adopt`]). The echo is cut from it the same
//! way; once processing is done with it, the buffer goes back to the shell
//! ([`ReadBuffer::release_current`], [`ReadBuffer::take_released`]), which
//! reuses it when every echo cut from it has been written. An idle
//! connection then holds no read buffer at all: at most a partial header,
//! copied into a few bytes of its own.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{Event, Session, HEADROOM};
use crate::out_queue::{CloseOrder, OutQueue};
use crate::Error;

/// How a connection's read buffer grows and shrinks: small for idle or
/// chatty connections (many connections, little memory each), large for
/// bulk transfers (fewer, larger reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSizing {
    pub min: usize,
    pub max: usize,
}

/// What processing the buffered input produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// All input was processed; read more.
    NeedMore,
    /// The output queue reached its budget with input left unprocessed:
    /// process again once output drains, before reading more.
    Backlog,
    /// The peer's close arrived (and our reply, if any, is queued).
    PeerClosed,
}

/// The connection's read buffer.
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    /// Start of unprocessed input; bytes before it are scratch (headroom) or
    /// held pieces.
    pos: usize,
    /// Start of the pieces of a frame echoed whole that are not cut off yet.
    held: Option<usize>,
    /// Allocation size to ask for next.
    size: usize,
    sizing: ReadSizing,
    /// Spare room the buffer out for a read was offered.
    offered: usize,
    /// Bytes carried over into a new allocation (partial headers and
    /// control frames only: data payload is never moved).
    carried: u64,
    /// `buf` is a shell's buffer: it goes back through `released`, and is
    /// never grown or reallocated here.
    adopted: bool,
    /// Address range of the adopted buffer's allocation, to find the queued
    /// echo that points into it.
    adopted_range: (usize, usize),
    /// Shell buffers received while input waits behind a backlog, each with
    /// the offset its data starts at.
    queued: VecDeque<(BytesMut, usize)>,
    /// Shell buffers this connection is done with.
    released: Vec<BytesMut>,
    /// Held pieces smaller than this are copied rather than keep a shell
    /// buffer from going back (set by the shell with each release).
    min_pin: usize,
}

/// Scratch an adopted buffer needs in front of its data: room for a carried
/// partial control frame (at most 2 + 4 + 125 bytes) or header, and for a
/// server header written before a payload that starts the buffer. A shell
/// may hand out views with no headroom (incremental provided buffers): the
/// engine then writes streamed headers apart, and only when a partial header
/// must be carried into such a view is the view's data copied instead.
pub const ADOPT_HEADROOM: usize = 160;

impl ReadBuffer {
    pub fn new(sizing: ReadSizing) -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::new(),
            pos: 0,
            held: None,
            size: sizing.min,
            sizing,
            offered: 0,
            carried: 0,
            adopted: false,
            adopted_range: (0, 0),
            queued: VecDeque::new(),
            released: Vec::new(),
            min_pin: 0,
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
        self.held = None;
    }

    /// Free the buffer once all of it has been processed and nothing
    /// points into it: the request after an upgrade, which a client may
    /// have made as large as the header limit, is not kept while the
    /// connection waits for its first frame.
    pub fn release_drained(&mut self) {
        if self.buf.is_empty() && self.held.is_none() && self.queued.is_empty() {
            self.retire();
        }
    }

    /// Bytes of input copied from one allocation to the next so far.
    pub fn carried(&self) -> u64 {
        self.carried
    }

    /// Allocated bytes this buffer holds now (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Make room for the next read and hand the buffer out for it: the read
    /// goes into its spare capacity. `at_least` is the spare room wanted (the
    /// handshake asks for enough to see its header limit crossed).
    pub fn take_for_read(
        &mut self,
        session: Option<&Session>,
        out: &mut OutQueue,
        at_least: usize,
    ) -> BytesMut {
        // A shell buffer is never grown: what is left of it moves to a
        // buffer of our own first.
        self.make_own(out);
        if self.pos == self.buf.len() && self.held.is_none() {
            self.buf.clear();
            self.pos = 0;
        }
        // A frame echoed whole gets room for all of its rest, so it is cut
        // from at most two allocations.
        let rest = session
            .and_then(Session::whole_frame_remaining)
            .map_or(0, |r| r as usize);
        let want = self.size.max(at_least).max(rest);
        if self.buf.capacity() - self.buf.len() < (want / 2).max(rest) {
            if let Some(from) = self.held.take() {
                // Its pieces so far stay where they are, as a held slice.
                out.push_part(self.cut(from, self.pos));
            }
            self.carried += self.buf.len() as u64;
            // Reclaims the allocation when every echo cut from it is gone,
            // else allocates; carries at most a partial header along.
            self.buf.reserve(want);
        }
        if session.is_some_and(Session::needs_headroom) && self.buf.is_empty() {
            self.buf.put_bytes(0, HEADROOM);
            self.pos = HEADROOM;
        }
        let buf = std::mem::take(&mut self.buf);
        self.offered = buf.capacity() - buf.len();
        buf
    }

    /// Append bytes that did not come from a read into this buffer (the
    /// plaintext of a TLS record), with the same room rules as a read.
    pub fn append(&mut self, data: &[u8], session: Option<&Session>, out: &mut OutQueue) {
        let mut buf = self.take_for_read(session, out, data.len());
        buf.extend_from_slice(data);
        self.restore(buf, data.len());
    }

    /// Take the buffer back unchanged: the read found nothing to read (a
    /// non-blocking shell's would-block).
    pub fn put_back(&mut self, buf: BytesMut) {
        self.buf = buf;
    }

    /// Take the buffer back after a read of `n` bytes, and adapt the next
    /// allocation size to how full this read was.
    pub fn restore(&mut self, buf: BytesMut, n: usize) {
        self.buf = buf;
        if n >= self.offered * 3 / 4 {
            self.size = (self.size * 2).min(self.sizing.max);
        } else if n < self.size / 8 {
            self.size = (self.size / 2).max(self.sizing.min);
        }
    }

    /// Take over a shell's buffer whose data starts at `data_at`; the bytes
    /// before it are scratch this buffer may overwrite. Input left in the
    /// current buffer (a partial header or control frame) is copied in front
    /// of the data; a frame echoed whole keeps its pieces where they are.
    /// Behind a backlog the buffer waits its turn.
    pub fn adopt(&mut self, buf: BytesMut, data_at: usize, out: &mut OutQueue) {
        let data_at = data_at.min(buf.len());
        if !self.queued.is_empty() || self.unprocessed_len() > ADOPT_HEADROOM - HEADROOM {
            self.queued.push_back((buf, data_at));
            return;
        }
        self.switch_to(buf, data_at, out);
    }

    /// Make the next queued buffer current, if the current one is used up.
    fn next_queued(&mut self, out: &mut OutQueue) -> bool {
        if self.unprocessed_len() > ADOPT_HEADROOM - HEADROOM {
            return false;
        }
        match self.queued.pop_front() {
            Some((buf, data_at)) => {
                self.switch_to(buf, data_at, out);
                true
            }
            None => false,
        }
    }

    /// The pieces so far of a frame echoed whole stay where they are, as a
    /// held slice of the current buffer, unless a shell buffer would be
    /// pinned for a few bytes: those are copied.
    fn cut_held(&mut self, out: &mut OutQueue) {
        let Some(from) = self.held.take() else {
            return;
        };
        if self.adopted && self.pos - from < self.min_pin {
            out.push_part_copy(self.buf.get(from..self.pos).unwrap_or_default());
            self.buf.advance(self.pos);
            self.pos = 0;
        } else {
            let part = self.cut(from, self.pos);
            out.push_part(part);
        }
    }

    fn switch_to(&mut self, mut buf: BytesMut, data_at: usize, out: &mut OutQueue) {
        self.cut_held(out);
        let left = self.unprocessed_len();
        if left > 0 && left + HEADROOM > data_at {
            // A partial header to carry and no room in front of the data
            // for it (a shell that hands out views without headroom): keep
            // going in a buffer of our own, with a copy of the data.
            self.make_own(out);
            self.buf
                .extend_from_slice(buf.get(data_at..).unwrap_or_default());
            self.carried += (buf.len() - data_at) as u64;
            self.released.push(buf);
            return;
        }
        let start = data_at - left;
        if let (Some(to), Some(from)) = (buf.get_mut(start..data_at), self.buf.get(self.pos..)) {
            to.copy_from_slice(from);
        }
        self.carried += left as u64;
        self.retire();
        self.adopted_range = (
            buf.as_ptr() as usize,
            buf.as_ptr() as usize + buf.capacity(),
        );
        self.buf = buf;
        self.pos = start;
        self.adopted = true;
    }

    /// Give the current shell buffer back if processing is done with it:
    /// the pieces of a frame echoed whole stay in it as held slices, and a
    /// partial header moves to a few bytes of our own. Queued echo that
    /// points into it and is smaller than `min_pin` is copied, so a peer
    /// that does not read cannot pin a whole shell buffer per tiny echo.
    /// Returns the bytes so copied.
    pub fn release_current(&mut self, out: &mut OutQueue, min_pin: usize) -> usize {
        if !self.queued.is_empty() || self.unprocessed_len() > ADOPT_HEADROOM - HEADROOM {
            return 0;
        }
        if !self.adopted {
            // Our own buffer (the handshake's) is freed once it is used up.
            if self.unprocessed_len() == 0 && self.held.is_none() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
                self.pos = 0;
            }
            return 0;
        }
        let range = self.adopted_range;
        self.min_pin = min_pin;
        self.make_own(out);
        out.compact(range, min_pin)
    }

    /// Move the current shell buffer's remains to a buffer of our own: its
    /// held pieces are cut off, unprocessed input is copied behind scratch
    /// for a server header, and the shell buffer is released.
    fn make_own(&mut self, out: &mut OutQueue) {
        if !self.adopted {
            return;
        }
        self.cut_held(out);
        let left = self.buf.get(self.pos..).unwrap_or_default();
        let mut own = BytesMut::new();
        if !left.is_empty() {
            own.reserve(HEADROOM + left.len());
            own.put_bytes(0, HEADROOM);
            own.extend_from_slice(left);
            self.carried += left.len() as u64;
        }
        let pos = own.len() - left.len();
        self.retire();
        self.buf = own;
        self.pos = pos;
    }

    /// Let go of the current buffer: a shell's goes back, our own is freed.
    fn retire(&mut self) {
        let old = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.adopted) {
            self.released.push(old);
        }
        self.pos = 0;
    }

    /// A shell buffer whose data is not wanted goes straight back.
    pub fn discard(&mut self, buf: BytesMut) {
        self.released.push(buf);
    }

    /// Copy a shell buffer's data onto the end of the input (a handshake
    /// request, which is parsed whole) and give the buffer back.
    pub fn absorb(&mut self, buf: BytesMut, data_at: usize, out: &mut OutQueue) {
        self.make_own(out);
        self.buf
            .extend_from_slice(buf.get(data_at..).unwrap_or_default());
        self.released.push(buf);
    }

    /// Every shell buffer this connection holds goes back now (it is
    /// closing; echo still queued keeps its slices alive until it is
    /// dropped).
    pub fn release_all(&mut self) {
        self.held = None;
        self.retire();
        self.released.extend(self.queued.drain(..).map(|(b, _)| b));
    }

    /// Shell buffers this connection is done with, for the shell to reuse
    /// once nothing points into them.
    pub fn take_released(&mut self, into: &mut Vec<BytesMut>) {
        into.append(&mut self.released);
    }

    /// Free bookkeeping allocations an idle connection does not need.
    pub fn shrink_idle(&mut self) {
        if self.released.is_empty() {
            self.released = Vec::new();
        }
        if self.queued.is_empty() {
            self.queued = VecDeque::new();
        }
    }

    /// Allocated bytes held: the current buffer and those queued.
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.queued.iter().map(|(b, _)| b.capacity()).sum::<usize>()
    }

    fn unprocessed_len(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Run the session over the unprocessed input, queueing what it produces,
    /// until the input runs out or the queue's cost reaches `budget`.
    /// On `Err` the session has failed; the caller queues its close frame.
    pub fn process(
        &mut self,
        session: &mut Session,
        out: &mut OutQueue,
        budget: usize,
    ) -> Result<Flow, Error> {
        loop {
            if out.cost() >= budget {
                return Ok(Flow::Backlog);
            }
            let step = session.step(&mut self.buf, self.pos)?;
            match step.event {
                Event::NeedMore => {
                    // Drop what was consumed; keep held pieces and a partial
                    // header or control frame.
                    let keep = self.held.unwrap_or(step.next).min(step.next);
                    self.buf.advance(keep);
                    self.pos = step.next - keep;
                    self.held = self.held.map(|_| 0);
                    if self.next_queued(out) {
                        continue;
                    }
                    return Ok(Flow::NeedMore);
                }
                Event::Nothing => self.pos = step.next,
                Event::Echo { frame } => {
                    let bytes = self.cut(frame.start, frame.end);
                    out.push_frame(bytes);
                }
                Event::EchoPart { frame, last } => {
                    let from = *self.held.get_or_insert(frame.start);
                    if last {
                        self.held = None;
                        let bytes = self.cut(from, frame.end);
                        out.push_frame(bytes);
                    } else {
                        self.pos = step.next;
                    }
                }
                Event::EchoDetached {
                    header,
                    header_len,
                    payload,
                } => {
                    let header =
                        Bytes::copy_from_slice(header.get(..header_len).unwrap_or_default());
                    let payload = self.cut(payload.start, payload.end);
                    out.push_detached(header, payload);
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
                    self.held = None;
                    // Nothing after the close is read (§5.5.1).
                    self.released.extend(self.queued.drain(..).map(|(b, _)| b));
                    return Ok(Flow::PeerClosed);
                }
            }
        }
    }

    /// Forget held pieces of a frame that will not be echoed (our close went
    /// ahead of it); their bytes go with the next consumed input.
    pub fn drop_held(&mut self) {
        self.held = None;
    }

    /// Split `buf[start..end]` off as a shared, immutable slice of the same
    /// allocation; everything before `end` leaves the buffer.
    fn cut(&mut self, start: usize, end: usize) -> Bytes {
        let mut head = self.buf.split_to(end);
        head.advance(start);
        self.pos -= end.min(self.pos);
        head.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_client_frame, parse_server_header, OpCode};
    use crate::message::Config;

    fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(true, op, [9, 8, 7, 6], payload, &mut v);
        v
    }

    /// Play the engine's read path: read `input` in pieces of at most `read`
    /// bytes, process, and drain the queue. Returns the bytes written and,
    /// for every data slice written, whether it lay inside a region that a
    /// read filled (the zero-copy proof).
    fn pump(input: &[u8], read: usize, config: Config) -> (Vec<u8>, Vec<bool>, ReadBuffer) {
        let mut session = Session::new(config);
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
            let mut buf = rb.take_for_read(Some(&session), &mut out, 0);
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
            rb.restore(buf, n);
            assert_eq!(
                rb.process(&mut session, &mut out, usize::MAX),
                Ok(Flow::NeedMore)
            );
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
                        in_place.push(covered(p, p + l, &regions));
                    }
                }
                let total: usize = batch.iter().map(|b| b.len()).sum();
                out.advance(total);
            }
        }
        (wire, in_place, rb)
    }

    /// True when `[from, to)` lies in reads: the first may start up to a
    /// header before its read (the header written in place), and a slice of
    /// a frame held over several reads runs through adjacent ones.
    fn covered(from: usize, to: usize, regions: &[(usize, usize)]) -> bool {
        let mut at = from;
        let mut first = true;
        while at < to {
            let slack = if first { HEADROOM + 14 } else { 0 };
            match regions
                .iter()
                .find(|&&(s, e)| at >= s.saturating_sub(slack) && at < e)
            {
                Some(&(_, e)) => at = e,
                None => return false,
            }
            first = false;
        }
        true
    }

    fn payloads(mut wire: &[u8]) -> (usize, Vec<u8>) {
        let (mut frames, mut got) = (0, Vec::new());
        while let Ok(Some(h)) = parse_server_header(wire) {
            let end = h.header_len + h.payload_len as usize;
            got.extend_from_slice(&wire[h.header_len..end]);
            wire = &wire[end..];
            frames += 1;
        }
        assert!(wire.is_empty());
        (frames, got)
    }

    #[test]
    fn a_1_mib_message_is_streamed_without_copying_its_payload() {
        let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let input = frame(OpCode::Binary, &payload);
        let (wire, in_place, rb) = pump(&input, 65536, Config::default());
        assert!(!in_place.is_empty());
        assert!(
            in_place.iter().all(|&b| b),
            "every echoed slice lies in a read region"
        );
        let (frames, got) = payloads(&wire);
        assert!(frames > 1, "streamed as fragments");
        assert!(got == payload);
        assert!(
            rb.carried() <= 14,
            "only a partial header may be carried: {}",
            rb.carried()
        );
    }

    #[test]
    fn a_held_frame_read_in_small_pieces_is_one_frame_cut_from_its_reads() {
        let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 249) as u8).collect();
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend(frame(OpCode::Binary, &payload));
        }
        let (wire, in_place, rb) = pump(&input, 3000, Config::default());
        assert!(in_place.iter().all(|&b| b), "held pieces are never copied");
        let (frames, got) = payloads(&wire);
        assert_eq!(frames, 3, "each frame echoed as it came");
        assert!(got == payload.repeat(3));
        assert!(rb.carried() <= 3 * 14, "{}", rb.carried());
    }

    #[test]
    fn many_small_frames_in_one_read_are_echoed_as_slices_of_it() {
        let mut input = Vec::new();
        for i in 0..100u8 {
            input.extend(frame(OpCode::Text, &[b'a' + i % 26; 20]));
        }
        let (wire, in_place, _) = pump(&input, 65536, Config::default());
        assert_eq!(wire.len(), 100 * 22);
        assert!(in_place.iter().all(|&b| b));
    }

    #[test]
    fn processing_stops_at_the_budget_and_resumes_where_it_stopped() {
        let mut session = Session::new(Config::default());
        let mut rb = ReadBuffer::new(ReadSizing {
            min: 65536,
            max: 65536,
        });
        let mut out = OutQueue::new();
        let mut buf = rb.take_for_read(Some(&session), &mut out, 0);
        let input = frame(OpCode::Binary, b"").repeat(1000);
        buf.extend_from_slice(&input);
        rb.restore(buf, input.len());
        let budget = 100 * (2 + crate::out_queue::ENTRY_COST);
        assert_eq!(
            rb.process(&mut session, &mut out, budget),
            Ok(Flow::Backlog)
        );
        assert_eq!(out.cost(), budget, "stopped exactly at the budget");
        let mut batch = Vec::new();
        let mut echoed = 0;
        for _ in 0..100 {
            out.fill_batch(&mut batch, 1024);
            let n: usize = batch.iter().map(|b| b.len()).sum();
            echoed += n;
            out.advance(n);
            if rb.process(&mut session, &mut out, budget) == Ok(Flow::NeedMore) {
                break;
            }
        }
        out.fill_batch(&mut batch, 1024);
        echoed += batch.iter().map(|b| b.len()).sum::<usize>();
        assert_eq!(echoed, 1000 * 2, "every frame echoed once");
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
            let mut buf = rb.take_for_read(Some(&session), &mut out, 0);
            let base = buf.as_ptr() as usize;
            assert_eq!(
                *first.get_or_insert(base),
                base,
                "a new allocation was made"
            );
            buf.extend_from_slice(&frame(OpCode::Binary, &[1; 3000]));
            rb.restore(buf, 3006);
            rb.process(&mut session, &mut out, usize::MAX).unwrap();
            out.fill_batch(&mut batch, 64);
            let n = batch.iter().map(|b| b.len()).sum();
            batch.clear();
            out.advance(n);
        }
    }
}
