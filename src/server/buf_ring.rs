//! A shard's receive buffers: an io_uring provided-buffer ring (kernel
//! 5.19+) that every connection of the shard receives into, so that an idle
//! connection holds no read buffer.
//!
//! A multishot receive picks the next buffer from the ring when data
//! arrives. The shell hands it to the connection engine, which echoes from
//! it in place and gives it back once processing is done with it. A buffer
//! returns to the ring only once no echo points into it any more (its last
//! `BytesMut` view reclaims the whole allocation), so the kernel never
//! writes under a send that is still reading it.
//!
//! Where the kernel has it (6.12+), the ring consumes buffers incrementally
//! (IOU_PBUF_RING_INC): each receive takes only the bytes it needs from the
//! buffer at the head, and the next receive, from any connection, goes on
//! in the same buffer. Ten thousand connections sending 20 B each then fill
//! a few buffers instead of taking one each. Each receive is handed out as
//! its own view of the buffer; the buffer goes back once the kernel has
//! moved past it and every view is gone. Without it, each receive takes a
//! whole buffer, with headroom in front for the engine.
//!
//! The pool starts small and grows, up to its memory budget, only when the
//! kernel runs short: memory follows the data in flight, not the number of
//! connections. Past the budget, receives that find the ring empty end with
//! ENOBUFS and the shell falls back to a per-connection buffer for them.

use std::alloc::{self, Layout};
use std::io;

use bytes::BytesMut;
use uring::types::BufRingEntry;

use crate::protocol::connection::ADOPT_HEADROOM;
use crate::protocol::frame::MAX_CLIENT_HEADER;

/// The buffer group id of the shard's ring (one ring per io_uring).
pub(crate) const GROUP: u16 = 0;
/// Memory allocated up front; the pool doubles from here on demand.
const INITIAL_BYTES: usize = 1 << 20;
/// `IOU_PBUF_RING_INC` (include/uapi/linux/io_uring.h): consume buffers
/// incrementally.
const PBUF_RING_INC: u16 = 2;

pub(crate) struct BufRing {
    /// The ring the kernel reads buffer addresses from: `entries` entries,
    /// page aligned, registered with the io_uring.
    ring: *mut BufRingEntry,
    layout: Layout,
    mask: u16,
    /// Our producer index; published to the kernel by `publish`.
    tail: u16,
    published: u16,
    /// Bytes each buffer receives into.
    room: usize,
    /// Size of each allocation: the room, plus headroom in front of it for
    /// the engine, plus room for a frame header, so that a message of
    /// `room` bytes (a 16 KiB one, say) fits one buffer with its header.
    size: usize,
    /// Most buffers the budget allows.
    budget: usize,
    /// Buffers in the ring, by buffer id.
    in_ring: Vec<Option<BytesMut>>,
    free_ids: Vec<u16>,
    /// Buffers the engines gave back, waiting for their echo to be written.
    returned: Vec<BytesMut>,
    allocated: usize,
    /// Receives that found the ring empty since the last `maintain`.
    starved: bool,
    /// Buffers are consumed incrementally: `in_ring` holds, for each buffer
    /// the kernel is filling, the view of what it has not filled yet.
    incremental: bool,
}

impl BufRing {
    /// Register a ring for up to `budget` bytes of buffers that receive
    /// `room` bytes each with `ring`.
    pub fn new(ring: &uring::IoUring, room: usize, budget: usize) -> io::Result<BufRing> {
        let room = room.max(ADOPT_HEADROOM);
        let budget = (budget / room).clamp(1, 1 << 15);
        let entries = budget.next_power_of_two();
        let layout = Layout::from_size_align(entries * std::mem::size_of::<BufRingEntry>(), 4096)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size (at least one entry).
        let mem = unsafe { alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if mem.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: `mem` is a zeroed, page-aligned array of `entries` ring
        // entries (a power of two, at most 2^15) that is never freed once
        // registered (see `Drop`).
        let register = |flags| unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(mem as u64, entries as u16, GROUP, flags)
        };
        let mut incremental = true;
        let mut registered = register(PBUF_RING_INC);
        if registered.is_err() {
            incremental = false;
            registered = register(0);
        }
        // Incremental buffers are cut into views back to back; whole ones
        // keep headroom in front for the engine and room for a frame header
        // behind, so a message of `room` bytes fits one.
        let size = if incremental {
            room
        } else {
            ADOPT_HEADROOM + room + MAX_CLIENT_HEADER
        };
        if let Err(e) = registered {
            // SAFETY: allocated above with this layout and not shared.
            unsafe { alloc::dealloc(mem.cast(), layout) };
            return Err(e);
        }
        let mut pool = BufRing {
            ring: mem,
            layout,
            mask: (entries - 1) as u16,
            tail: 0,
            published: 0,
            room,
            size,
            budget,
            in_ring: (0..entries).map(|_| None).collect(),
            free_ids: (0..entries as u16).rev().collect(),
            returned: Vec::new(),
            allocated: 0,
            starved: false,
            incremental,
        };
        let initial = (INITIAL_BYTES / room).max(1);
        pool.grow(initial.min(budget));
        pool.publish();
        Ok(pool)
    }

    /// Buffers the kernel can pick from now.
    pub fn available(&self) -> usize {
        self.in_ring.len() - self.free_ids.len()
    }

    /// The most bytes one arming of a connection's multishot receive may
    /// take from the pool: what a peer can land beyond the engine's
    /// backpressure before the receive ends.
    pub fn arm_limit(&self) -> u32 {
        (self.room * 4).min(u32::MAX as usize) as u32
    }

    /// Pieces of a buffer smaller than this are copied rather than pin it.
    pub fn min_pin(&self) -> usize {
        self.room / 4
    }

    /// Where a received buffer's data starts: the engine's headroom, or 0
    /// for an incremental view (the bytes before it are another receive's).
    pub fn data_at(&self) -> usize {
        if self.incremental {
            0
        } else {
            ADOPT_HEADROOM
        }
    }

    #[cfg(test)]
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Views of buffers a connection is done with. Whole buffers wait in
    /// `returned` to be reused; incremental views are simply dropped, since
    /// the buffer's own remaining view is what comes back.
    pub fn give_back(&mut self, views: &mut Vec<BytesMut>) {
        if self.incremental {
            views.clear();
        } else {
            self.returned.append(views);
        }
    }

    /// Buffers in use by engines or waiting for their echo (for /stats).
    pub fn outstanding(&self) -> usize {
        self.allocated - self.available()
    }

    /// Receive room allocated, the measure `--recv-pool` bounds (each
    /// buffer carries `ADOPT_HEADROOM` and a frame header's worth more).
    pub fn allocated_bytes(&self) -> usize {
        self.allocated * self.room
    }

    /// A receive completed into buffer `id` with `n` bytes; `more` is the
    /// completion's IORING_CQE_F_BUF_MORE (the kernel goes on filling the
    /// buffer). Returns the received bytes, at `data_at`.
    pub fn take(&mut self, id: u16, n: usize, more: bool) -> Option<BytesMut> {
        let slot = self.in_ring.get_mut(id as usize)?;
        if self.incremental {
            let rest = slot.as_mut()?;
            // The kernel filled this buffer from its start, receive after
            // receive, in completion order: these bytes follow the last.
            let view = rest.split_to(n.min(rest.len()));
            if !more {
                // The kernel is done with it: it comes back once every view
                // is gone.
                if let Some(rest) = slot.take() {
                    self.returned.push(rest);
                }
                self.free_ids.push(id);
            }
            return Some(view);
        }
        let mut buf = slot.take()?;
        self.free_ids.push(id);
        buf.truncate(ADOPT_HEADROOM + n);
        Some(buf)
    }

    /// A receive found the ring empty.
    pub fn note_starved(&mut self) {
        self.starved = true;
    }

    /// Once per loop turn: buffers whose echo is written go back to the
    /// ring, the pool grows if the kernel ran short, and the kernel sees
    /// the new tail.
    pub fn maintain(&mut self) {
        let size = self.size;
        let mut i = 0;
        while i < self.returned.len() {
            let buf = &mut self.returned[i];
            buf.clear();
            if !buf.try_reclaim(size) {
                i += 1;
                continue;
            }
            let mut buf = self.returned.swap_remove(i);
            if buf.capacity() != size {
                // Not one of ours as it was made: let it go.
                self.allocated -= 1;
                continue;
            }
            // SAFETY: the allocation is this pool's, made by
            // `BytesMut::zeroed(size)`, so all `size` bytes were initialised
            // then; nothing de-initialises bytes, and `try_reclaim` made
            // this view the allocation's only owner, starting at its start.
            unsafe { buf.set_len(size) };
            self.provide(buf);
        }
        if self.starved || self.available() < self.allocated / 4 {
            let more = self.allocated.max(1);
            self.grow(more.min(self.budget - self.allocated));
        }
        self.starved = false;
        self.publish();
    }

    fn grow(&mut self, n: usize) {
        for _ in 0..n {
            self.allocated += 1;
            self.provide(BytesMut::zeroed(self.size));
        }
    }

    fn provide(&mut self, buf: BytesMut) {
        let Some(id) = self.free_ids.pop() else {
            // The ring has an entry for every buffer the budget allows.
            self.allocated -= 1;
            return;
        };
        // SAFETY: `tail & mask` is below `entries`, the ring's length; the
        // kernel reads only entries between its head and the published
        // tail, and this one is past the published tail. (The tail itself
        // overlays entry 0's reserved field, which the setters below do not
        // write.)
        let entry = unsafe { &mut *self.ring.add((self.tail & self.mask) as usize) };
        // Whole buffers: the kernel writes past the headroom, scratch the
        // engine needs in front of the data.
        let skip = self.data_at();
        entry.set_addr(buf.as_ptr() as u64 + skip as u64);
        entry.set_len((self.size - skip) as u32);
        entry.set_bid(id);
        self.in_ring[id as usize] = Some(buf);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field lives in the first entry of the ring,
        // which is valid for the pool's life; the release store orders the
        // entries written above before the kernel can see the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail)
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
        self.published = self.tail;
    }
}

impl Drop for BufRing {
    /// The pool goes with its shard, while the kernel may still hold
    /// buffers from the ring (the io_uring's teardown runs on after its
    /// descriptor is closed): the ring and the buffers in it are leaked
    /// rather than freed under the kernel. A shard ends only when the
    /// server does.
    fn drop(&mut self) {
        let _ = self.layout;
        for buf in self.in_ring.drain(..).flatten() {
            std::mem::forget(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use uring::{cqueue, opcode, types, IoUring};

    /// A buffer the kernel filled comes back to the ring only once the last
    /// view of it is gone, and the kernel can fill it again. With
    /// incremental consumption (this kernel), two receives share a buffer.
    #[test]
    fn a_received_buffer_returns_to_the_ring_once_nothing_points_into_it() {
        let mut ring = IoUring::new(8).unwrap();
        let mut pool = BufRing::new(&ring, ADOPT_HEADROOM, 4 * ADOPT_HEADROOM).unwrap();
        assert!(
            pool.incremental(),
            "Linux 6.12+ consumes buffers incrementally"
        );
        assert_eq!(pool.available(), 4);
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let recv = opcode::RecvMulti::new(types::Fd(b.as_raw_fd()), GROUP).build();
        // SAFETY: a buffer-select receive points to no memory of ours but the
        // pool's, which outlives the ring's use of it (it is leaked on drop).
        unsafe { ring.submission().push(&recv).unwrap() };
        ring.submit().unwrap();
        let mut views = Vec::new();
        let mut ids = Vec::new();
        // 100 bytes, then 60: together they fill one 160-byte buffer.
        for msg in [vec![1u8; 100], vec![2u8; 60]] {
            a.write_all(&msg).unwrap();
            ring.submit_and_wait(1).unwrap();
            let cqe = ring.completion().next().unwrap();
            let id = cqueue::buffer_select(cqe.flags()).expect("a pool buffer");
            let more = cqueue::buffer_more(cqe.flags());
            let view = pool.take(id, cqe.result() as usize, more).unwrap();
            assert_eq!(&view[..], &msg[..]);
            views.push(view);
            ids.push((id, more));
        }
        assert_eq!(ids[0].0, ids[1].0, "both receives landed in one buffer");
        assert_eq!((ids[0].1, ids[1].1), (true, false), "filled, then retired");
        assert_eq!(
            views[1].as_ptr() as usize,
            views[0].as_ptr() as usize + 100,
            "back to back"
        );
        pool.maintain();
        assert_eq!(pool.available(), 3, "a view still points into it");
        assert_eq!(pool.outstanding(), 1);
        let mut back = vec![views.remove(1)];
        pool.give_back(&mut back);
        pool.maintain();
        assert_eq!(pool.outstanding(), 1);
        drop(views);
        pool.maintain();
        assert_eq!(pool.available(), 4);
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn the_pool_grows_when_the_kernel_runs_short_and_never_past_its_budget() {
        let ring = IoUring::new(8).unwrap();
        let mut pool = BufRing::new(&ring, 16 * 1024, 5 << 20).unwrap();
        assert_eq!(pool.allocated_bytes(), 1 << 20, "1 MiB up front");
        for _ in 0..5 {
            pool.note_starved();
            pool.maintain();
        }
        assert_eq!(pool.allocated_bytes(), 5 << 20, "doubled, up to the budget");
    }
}
