//! The output queue of one connection: echo frames in the order they came,
//! control frames slotted in at frame boundaries (§5.4), and the cost of
//! everything unsent, which is what backpressure bounds.
//!
//! Slices are reference-counted views of read buffers: nothing is copied.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::ControlFrame;

/// What one queued slice costs beyond its bytes: its queue entry, with the
/// slack of a growing ring of entries. Charging it makes a flood of empty
/// frames as expensive as it really is.
pub const ENTRY_COST: usize = 2 * std::mem::size_of::<Chunk>();

/// Pongs waiting for a frame boundary beyond this many are coalesced: the
/// newest replaces the last queued one, so a ping flood costs a fixed amount
/// while every ping of an ordinary burst still gets its own pong (§5.5.3:
/// answering only the most recent of several pings is allowed).
pub const MAX_UNSENT_PONGS: usize = 16;

/// Entries a drained queue keeps allocated; a burst's worth beyond this is
/// given back.
const KEEP_ENTRIES: usize = 64;

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
    /// Not a frame: an HTTP response, which must reach the peer whole and
    /// before any frame (§4.2.2: frames follow the server's handshake).
    Raw,
}

#[derive(Debug)]
pub struct Chunk {
    bytes: Bytes,
    kind: Kind,
    /// The last chunk of a server frame: after it, a control frame may go.
    ends_frame: bool,
}

/// Output queue of one connection.
#[derive(Debug, Default)]
pub struct OutQueue {
    q: VecDeque<Chunk>,
    /// Pieces of a frame echoed whole whose last piece has not arrived:
    /// not sendable yet (a control frame must not wait behind them). Not in
    /// `cost`: they are at most one frame, and counting what cannot be sent
    /// could stop reading the rest of that frame forever.
    partial: Vec<Bytes>,
    /// Small pieces of that frame copied out of a buffer that had to go
    /// back, coalesced: they follow everything in `partial`.
    partial_copied: BytesMut,
    /// Pongs to send at the next frame boundary, oldest first.
    pongs: VecDeque<ControlFrame>,
    /// A server ping to send (idle probe).
    /// Boxed, like `close`: rare, and an idle connection should not carry
    /// room for them inline.
    ping: Option<Box<ControlFrame>>,
    close: Option<Box<(ControlFrame, CloseOrder)>>,
    /// The front chunk's frame is partly on the wire.
    front_mid_frame: bool,
    /// Raw (HTTP) chunks queued and not fully written: nothing may be put
    /// ahead of them.
    raw_queued: usize,
    /// Bytes plus entry costs of everything queued and unsent.
    cost: usize,
    /// Echo bytes ever queued (for counters).
    echoed: u64,
    close_queued: bool,
    close_written: bool,
    /// Front chunks handed out by the last `fill_batch`, until the send that
    /// carries them is reported: it holds its own references to them.
    handed: usize,
}

impl OutQueue {
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    fn push(&mut self, bytes: Bytes, kind: Kind, ends_frame: bool) {
        self.cost += bytes.len() + ENTRY_COST;
        self.q.push_back(Chunk {
            bytes,
            kind,
            ends_frame,
        });
    }

    /// Queue a complete server frame (or the last piece of one echoed
    /// whole, which releases its held pieces).
    pub fn push_frame(&mut self, bytes: Bytes) {
        self.echoed += bytes.len() as u64;
        self.flush_copied();
        let held = std::mem::take(&mut self.partial);
        if held.is_empty() {
            return self.push(bytes, Kind::Data, true);
        }
        for piece in held {
            self.push(piece, Kind::Data, false);
        }
        self.push(bytes, Kind::Data, true);
    }

    /// Queue the first `header` of a frame whose payload follows in
    /// `payload`, when the header could not be written in place.
    pub fn push_detached(&mut self, header: Bytes, payload: Bytes) {
        self.echoed += header.len() as u64;
        self.push(header, Kind::Data, false);
        self.push_frame(payload);
    }

    /// Hold a piece of a frame echoed whole until its last piece comes.
    pub fn push_part(&mut self, bytes: Bytes) {
        self.echoed += bytes.len() as u64;
        self.flush_copied();
        self.partial.push(bytes);
    }

    /// Hold a copy of a small piece of a frame echoed whole, coalesced with
    /// the copied pieces before it (a peer that trickles a frame byte by
    /// byte costs one growing buffer, not a slice per byte).
    pub fn push_part_copy(&mut self, piece: &[u8]) {
        self.echoed += piece.len() as u64;
        self.partial_copied.extend_from_slice(piece);
    }

    fn flush_copied(&mut self) {
        if !self.partial_copied.is_empty() {
            // Taken, not split: an empty split-off view would keep the
            // allocation alive for the rest of the connection.
            let copied = std::mem::take(&mut self.partial_copied).freeze();
            self.partial.push(copied);
        }
    }

    /// Forget the held pieces of a frame that will not be finished.
    fn drop_partial(&mut self) {
        self.partial.clear();
        self.partial_copied = BytesMut::new();
    }

    /// Queue raw bytes that are not a WebSocket frame (an HTTP response).
    pub fn push_raw(&mut self, bytes: Bytes) {
        self.raw_queued += 1;
        self.push(bytes, Kind::Raw, true);
    }

    pub fn push_pong(&mut self, frame: ControlFrame) {
        if self.pongs.len() >= MAX_UNSENT_PONGS {
            self.pongs.pop_back();
        }
        self.pongs.push_back(frame);
    }

    pub fn push_ping(&mut self, frame: ControlFrame) {
        self.ping = Some(Box::new(frame));
    }

    /// Queue a close frame; only the first one counts. Ahead of data, the
    /// pieces of a frame still arriving are dropped at once.
    pub fn push_close(&mut self, frame: ControlFrame, order: CloseOrder) {
        if self.close.is_none() && !self.close_queued {
            if order == CloseOrder::AheadOfData {
                self.drop_partial();
            }
            self.close = Some(Box::new((frame, order)));
        }
    }

    /// Free the queue's allocations if it is empty (an idle connection).
    pub fn shrink_idle(&mut self) {
        if self.q.is_empty() {
            self.q = VecDeque::new();
        }
        if self.pongs.is_empty() {
            self.pongs = VecDeque::new();
        }
        if self.partial.is_empty() {
            self.partial = Vec::new();
        }
    }

    /// What everything sendable and unsent costs: the measure backpressure
    /// bounds.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Echo bytes queued over the connection's life.
    pub fn echoed(&self) -> u64 {
        self.echoed
    }

    /// Something can be written now.
    pub fn has_pending(&self) -> bool {
        !self.q.is_empty() || !self.pongs.is_empty() || self.ping.is_some() || self.close.is_some()
    }

    pub fn close_written(&self) -> bool {
        self.close_written
    }

    /// Index of the first place a control frame may go, or a close ahead of
    /// data may cut: the first frame boundary after any HTTP response.
    fn boundary(&self) -> usize {
        if self.raw_queued > 0 {
            return self
                .q
                .iter()
                .rposition(|c| c.kind == Kind::Raw)
                .map_or(0, |i| i + 1);
        }
        if !self.front_mid_frame {
            return 0;
        }
        self.q
            .iter()
            .position(|c| c.ends_frame)
            .map_or(self.q.len(), |i| i + 1)
    }

    /// Fill `batch` with up to `max` slices to write next, control frames
    /// at the first frame boundary. Nothing is copied.
    pub fn fill_batch(&mut self, batch: &mut Vec<Bytes>, max: usize) {
        let ahead = matches!(self.close.as_deref(), Some((_, CloseOrder::AheadOfData)));
        if !self.close_queued && !ahead && (!self.pongs.is_empty() || self.ping.is_some()) {
            let pongs = std::mem::take(&mut self.pongs);
            let controls = pongs.into_iter().chain(self.ping.take().map(|p| *p));
            for (at, frame) in (self.boundary()..).zip(controls) {
                let bytes = Bytes::copy_from_slice(frame.as_bytes());
                self.cost += bytes.len() + ENTRY_COST;
                self.q.insert(
                    at,
                    Chunk {
                        bytes,
                        kind: Kind::Control,
                        ends_frame: true,
                    },
                );
            }
        }
        if let Some((frame, order)) = self.close.take().map(|c| *c) {
            self.pongs.clear();
            self.ping = None;
            if order == CloseOrder::AheadOfData {
                let at = self.boundary();
                let dropped: usize = self.q.drain(at..).map(|c| c.bytes.len() + ENTRY_COST).sum();
                self.cost -= dropped.min(self.cost);
            }
            self.push(Bytes::copy_from_slice(frame.as_bytes()), Kind::Close, true);
            self.close_queued = true;
        }
        batch.clear();
        batch.extend(self.q.iter().take(max).map(|c| c.bytes.clone()));
        self.handed = batch.len();
    }

    /// Replace queued slices shorter than `min_pin` that point into the
    /// allocation at `range` with copies, so that allocation can be reused
    /// once the send in flight is written. Returns the bytes copied.
    pub fn compact(&mut self, range: (usize, usize), min_pin: usize) -> usize {
        let inside = |b: &Bytes| {
            let p = b.as_ptr() as usize;
            !b.is_empty() && p >= range.0 && p < range.1 && b.len() < min_pin
        };
        let mut copied = 0;
        for bytes in self.q.iter_mut().skip(self.handed).map(|c| &mut c.bytes) {
            if inside(bytes) {
                copied += bytes.len();
                *bytes = Bytes::copy_from_slice(bytes);
            }
        }
        copied
    }

    /// Account for `written` bytes of the last batch having gone out.
    pub fn advance(&mut self, mut written: usize) {
        // The send is over: nothing is in flight until the next batch.
        self.handed = 0;
        while written > 0 {
            let Some(front) = self.q.front_mut() else {
                break;
            };
            let len = front.bytes.len();
            let n = written.min(len);
            self.cost -= n.min(self.cost);
            written -= n;
            if n < len {
                front.bytes.advance(n);
                self.front_mid_frame = true;
                return;
            }
            self.cost -= ENTRY_COST.min(self.cost);
            self.front_mid_frame = !front.ends_frame;
            match front.kind {
                Kind::Close => self.close_written = true,
                Kind::Raw => self.raw_queued -= 1,
                Kind::Data | Kind::Control => {}
            }
            self.q.pop_front();
        }
        if self.q.is_empty() && self.q.capacity() > KEEP_ENTRIES {
            self.q.shrink_to(KEEP_ENTRIES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut OutQueue) -> Vec<Vec<u8>> {
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        let n = batch.iter().map(|b| b.len()).sum();
        out.advance(n);
        batch.iter().map(|b| b.to_vec()).collect()
    }

    #[test]
    fn pong_goes_ahead_of_queued_echo_but_never_inside_a_frame_section_5_4() {
        let mut out = OutQueue::new();
        out.push_frame(Bytes::from_static(b"AAAA"));
        out.push_detached(Bytes::from_static(b"hh"), Bytes::from_static(b"BBBB"));
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
    fn every_ping_of_a_burst_gets_its_pong_in_order_section_5_5_2() {
        let mut out = OutQueue::new();
        for i in 0..10u8 {
            out.push_pong(ControlFrame::pong(&[i]));
        }
        let sent = drain(&mut out);
        let expected: Vec<Vec<u8>> = (0..10u8).map(|i| vec![0x8A, 1, i]).collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_ping_flood_is_coalesced_and_the_latest_ping_answered_section_5_5_3() {
        let mut out = OutQueue::new();
        for i in 0..1000u32 {
            out.push_pong(ControlFrame::pong(&i.to_be_bytes()));
        }
        let sent = drain(&mut out);
        assert_eq!(sent.len(), MAX_UNSENT_PONGS);
        assert_eq!(&sent[0][2..], &0u32.to_be_bytes(), "oldest first");
        assert_eq!(&sent.last().unwrap()[2..], &999u32.to_be_bytes());
    }

    #[test]
    fn held_pieces_wait_for_their_last_piece_and_pongs_go_first_section_5_4() {
        let mut out = OutQueue::new();
        out.push_part(Bytes::from_static(b"\x82\x04ab"));
        out.push_pong(ControlFrame::pong(b"p"));
        assert_eq!(drain(&mut out), vec![vec![0x8A, 1, b'p']]);
        out.push_frame(Bytes::from_static(b"cd"));
        assert_eq!(
            drain(&mut out),
            vec![b"\x82\x04ab".to_vec(), b"cd".to_vec()]
        );
        assert_eq!(out.cost(), 0);
    }

    #[test]
    fn copied_pieces_are_freed_with_their_frame_not_kept_by_the_queue() {
        // A queue that kept a reference to the last copy would hold one
        // allocation per connection for as long as the connection lives.
        let mut out = OutQueue::new();
        out.push_part_copy(b"\x82\x04a");
        out.push_part_copy(b"b");
        out.push_frame(Bytes::from_static(b"cd"));
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        assert_eq!(batch[0], b"\x82\x04ab"[..]);
        out.advance(batch.iter().map(|b| b.len()).sum());
        let copy = batch.swap_remove(0);
        drop(batch);
        assert!(
            copy.is_unique(),
            "the echoed copy is the allocation's only owner"
        );
    }

    #[test]
    fn shutdown_close_goes_ahead_and_drops_unsent_and_held_echo() {
        let mut out = OutQueue::new();
        for _ in 0..10 {
            out.push_frame(Bytes::from_static(b"data"));
        }
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        out.advance(1);
        out.push_part(Bytes::from_static(b"held"));
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
        out.advance(3 + 7);
        assert!(out.close_written());
        assert!(!out.has_pending());
        assert_eq!(out.cost(), 0, "nothing is left to pay for");
    }

    #[test]
    fn nothing_goes_ahead_of_the_handshake_response_section_4_2_2() {
        let mut out = OutQueue::new();
        out.push_raw(Bytes::from_static(b"HTTP/1.1 101 \r\n\r\n"));
        out.push_frame(Bytes::from_static(b"\x82\x01e"));
        out.push_pong(ControlFrame::pong(b"p"));
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        assert_eq!(&batch[0][..], b"HTTP/1.1 101 \r\n\r\n");
        assert_eq!(&batch[1][..], &[0x8A, 1, b'p'], "the pong right after it");
        // Part of the response is out when a shutdown close comes: the rest
        // of the response still goes, then the close; what was queued after
        // the response is dropped.
        out.advance(5);
        out.push_close(ControlFrame::close(Some(1001), ""), CloseOrder::AheadOfData);
        out.fill_batch(&mut batch, 64);
        let order: Vec<&[u8]> = batch.iter().map(|b| &b[..]).collect();
        assert_eq!(order.len(), 2);
        assert_eq!(order[0], b"1.1 101 \r\n\r\n");
        assert_eq!(&order[1][..4], &[0x88, 2, 0x03, 0xE9]);
    }

    #[test]
    fn reply_to_peer_close_goes_after_queued_echo_section_5_5_1() {
        let mut out = OutQueue::new();
        out.push_frame(Bytes::from_static(b"echo"));
        out.push_close(ControlFrame::close(Some(1000), ""), CloseOrder::AfterData);
        let mut batch = Vec::new();
        out.fill_batch(&mut batch, 64);
        assert_eq!(&batch[0][..], b"echo");
        assert_eq!(&batch[1][..], &[0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn the_cost_counts_entries_as_well_as_bytes() {
        let mut out = OutQueue::new();
        out.push_frame(Bytes::from(vec![0; 1000]));
        out.push_frame(Bytes::from(vec![0; 500]));
        assert_eq!(out.cost(), 1500 + 2 * ENTRY_COST);
        out.advance(1200);
        assert_eq!(out.cost(), 300 + ENTRY_COST);
        // Empty frames are not free: each is an entry.
        let mut empty = OutQueue::new();
        for _ in 0..1000 {
            empty.push_frame(Bytes::from_static(b"\x82\x00"));
        }
        assert_eq!(empty.cost(), 1000 * (2 + ENTRY_COST));
    }

    #[test]
    fn a_drained_queue_gives_back_a_burst_of_entries() {
        let mut out = OutQueue::new();
        for _ in 0..10_000 {
            out.push_frame(Bytes::from_static(b"\x82\x00"));
        }
        let mut batch = Vec::new();
        while out.has_pending() {
            out.fill_batch(&mut batch, 256);
            out.advance(batch.iter().map(|b| b.len()).sum());
        }
        assert!(out.q.capacity() <= KEEP_ENTRIES, "{}", out.q.capacity());
    }

    #[test]
    fn an_idle_queue_gives_its_allocations_back_and_a_busy_one_keeps_them() {
        let mut out = OutQueue::new();
        for _ in 0..10 {
            out.push_frame(Bytes::from_static(b"abc"));
        }
        out.push_pong(ControlFrame::pong(b"p"));
        out.shrink_idle();
        assert!(out.q.capacity() >= 10, "queued output is kept");
        drain(&mut out);
        assert!(out.q.capacity() > 0);
        out.shrink_idle();
        assert_eq!(out.q.capacity(), 0);
        assert_eq!(out.pongs.capacity(), 0);
    }
}
