//! The io_uring ceiling: a raw TCP echo as one completion loop on the
//! `io-uring` crate, built the way ringecho's ring shell is: SINGLE_ISSUER
//! and DEFER_TASKRUN, multishot accept, a multishot receive per connection
//! into a provided-buffer ring, each buffer echoed from where it landed
//! (small ones with a MSG_DONTWAIT send that completes inside the next
//! `io_uring_enter`, 4 KiB or more with a plain `send` first) and returned
//! to the ring once written, and one `io_uring_enter` per loop turn. Same
//! bytes in and out as a WebSocket echo, no WebSocket work: what the ring
//! shell could at most reach.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};

use uring::types::BufRingEntry;
use uring::{cqueue, opcode, squeue, types, IoUring};

use super::announce;
use crate::cli::PeerArgs;

/// Buffers in the ring, and the bytes each receives (a 16 KiB message and
/// its frame header fit one).
const BUFS: usize = 4096;
const ROOM: usize = 16 * 1024 + 64;
const GROUP: u16 = 0;
/// Sends at least this large go out with a plain `send` first.
const DIRECT_MIN: usize = 4096;
const ACCEPT: u64 = u64::MAX;
// The low bits of user_data: the operation; the rest the slot.
const RECV: u64 = 0;
const SEND: u64 = 1;
const OP_BITS: u32 = 1;

struct Conn {
    stream: TcpStream,
    /// Received buffers not yet echoed whole: (buffer id, start, end).
    pending: VecDeque<(u16, usize, usize)>,
    sending: bool,
    receiving: bool,
    /// The peer's stream ended (or failed): receive no more.
    eof: bool,
    /// The last MSG_DONTWAIT send found the socket full: the next one waits
    /// in the kernel for room.
    full: bool,
}

struct Pool {
    mem: Vec<u8>,
    ring: *mut BufRingEntry,
    tail: u16,
}

impl Pool {
    fn buf(&self, id: u16) -> *const u8 {
        self.mem[id as usize * ROOM..].as_ptr()
    }

    fn provide(&mut self, id: u16) {
        // SAFETY: `tail % BUFS` is inside the ring of BUFS entries, and an
        // entry past the published tail is not read by the kernel.
        let e = unsafe { &mut *self.ring.add(self.tail as usize % BUFS) };
        e.set_addr(self.buf(id) as u64);
        e.set_len(ROOM as u32);
        e.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail overlays the first entry's reserved field; the
        // release store orders the entries before it for the kernel.
        unsafe {
            std::sync::atomic::AtomicU16::from_ptr(BufRingEntry::tail(self.ring).cast_mut())
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

fn ring() -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)
        .or_else(|_| {
            IoUring::builder()
                .setup_single_issuer()
                .setup_coop_taskrun()
                .build(1024)
        })
        .or_else(|_| IoUring::builder().build(1024))
}

/// Push `e`, submitting first if the queue is full.
///
/// # Safety
/// Whatever `e` points to must stay valid until its completion is reaped.
unsafe fn push(ring: &mut IoUring, e: squeue::Entry) {
    for _ in 0..64 {
        // SAFETY: the caller's promise, passed on.
        if unsafe { ring.submission().push(&e) }.is_ok() {
            return;
        }
        let _ = ring.submit();
    }
}

fn arm_recv(ring: &mut IoUring, slot: usize, c: &mut Conn) {
    let e = opcode::RecvMulti::new(types::Fd(c.stream.as_raw_fd()), GROUP)
        .build()
        .user_data(((slot as u64) << OP_BITS) | RECV);
    // SAFETY: a buffer-select receive writes only into the pool, which
    // lives as long as the loop.
    unsafe { push(ring, e) };
    c.receiving = true;
}

/// Echo the pending buffers in order: each goes back to the ring once
/// written. Returns the MSG_DONTWAIT sends pushed (they complete inside the
/// next enter).
fn echo(ring: &mut IoUring, pool: &mut Pool, slot: usize, c: &mut Conn) -> usize {
    while let Some(&(id, start, end)) = c.pending.front() {
        // SAFETY: buffer `id` holds `end` received bytes and is out of the
        // ring until it is provided again below.
        let data = unsafe { std::slice::from_raw_parts(pool.buf(id).add(start), end - start) };
        let mut flags = libc::MSG_NOSIGNAL;
        if data.len() >= DIRECT_MIN {
            // SAFETY: `data` is valid for reads for the call; the fd is open.
            let n = unsafe {
                libc::send(
                    c.stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            let n = usize::try_from(n).unwrap_or(0);
            if n == data.len() {
                c.pending.pop_front();
                pool.provide(id);
                continue;
            }
            c.pending[0].1 += n;
        } else if !c.full {
            flags |= libc::MSG_DONTWAIT;
        }
        let rest = &data[(c.pending[0].1 - start)..];
        let e = opcode::Send::new(
            types::Fd(c.stream.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(flags)
        .build()
        .user_data(((slot as u64) << OP_BITS) | SEND);
        // SAFETY: the buffer stays out of the ring until the send completes.
        unsafe { push(ring, e) };
        c.sending = true;
        return usize::from(flags & libc::MSG_DONTWAIT != 0);
    }
    0
}

pub fn run(p: &PeerArgs) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(p.listen).map_err(|e| format!("bind {}: {e}", p.listen))?;
    let mut ring = ring().map_err(|e| format!("io_uring: {e}"))?;
    let layout = std::alloc::Layout::from_size_align(BUFS * 16, 4096).map_err(|e| e.to_string())?;
    // SAFETY: a non-zero size; the memory is never freed (the peer runs
    // until it is killed).
    let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
    if entries.is_null() {
        return Err("out of memory".into());
    }
    let mut pool = Pool {
        mem: vec![0; BUFS * ROOM],
        ring: entries,
        tail: 0,
    };
    // SAFETY: a zeroed, page-aligned ring of BUFS entries that outlives the
    // io_uring (it is never freed).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(entries as u64, BUFS as u16, GROUP, 0)
    }
    .map_err(|e| format!("provided-buffer ring: {e}"))?;
    for id in 0..BUFS as u16 {
        pool.provide(id);
    }
    pool.publish();
    announce(listener.local_addr().map_err(|e| e.to_string())?);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Connections whose receive ended while their stream goes on.
    let mut starved: Vec<usize> = Vec::new();
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    // SAFETY: accept points to no buffer.
    unsafe { push(&mut ring, accept.clone()) };
    let mut done: Vec<(u64, i32, u32)> = Vec::new();
    let mut dontwait = 0;
    // No signal handling: SIGTERM's default action ends the process, which
    // is all a benchmark peer needs.
    loop {
        pool.publish();
        if let Err(e) = ring.submit_and_wait(dontwait + 1) {
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("io_uring_enter: {e}"));
            }
        }
        dontwait = 0;
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &done {
            if ud == ACCEPT {
                if !cqueue::more(flags) {
                    // SAFETY: as above.
                    unsafe { push(&mut ring, accept.clone()) };
                }
                if res < 0 {
                    continue;
                }
                // SAFETY: a successful accept's result is a new descriptor
                // nothing else owns.
                let stream = unsafe { TcpStream::from_raw_fd(res) };
                let _ = stream.set_nodelay(true);
                let slot = free.pop().unwrap_or_else(|| {
                    conns.push(None);
                    conns.len() - 1
                });
                let c = conns[slot].insert(Conn {
                    stream,
                    pending: VecDeque::new(),
                    sending: false,
                    receiving: false,
                    full: false,
                    eof: false,
                });
                arm_recv(&mut ring, slot, c);
                continue;
            }
            let slot = (ud >> OP_BITS) as usize;
            let Some(Some(c)) = conns.get_mut(slot) else {
                continue;
            };
            if ud & SEND == 0 {
                if !cqueue::more(flags) {
                    c.receiving = false;
                }
                match (res, cqueue::buffer_select(flags)) {
                    (n, Some(id)) if n > 0 => c.pending.push_back((id, 0, n as usize)),
                    (e, _) if e == -libc::ENOBUFS => {}
                    (_, id) => {
                        c.eof = true;
                        if let Some(id) = id {
                            pool.provide(id);
                        }
                        let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            } else {
                c.sending = false;
                c.full = res == -libc::EAGAIN;
                match res {
                    n if n > 0 => {
                        if let Some(front) = c.pending.front_mut() {
                            front.1 += n as usize;
                            if front.1 >= front.2 {
                                pool.provide(front.0);
                                c.pending.pop_front();
                            }
                        }
                    }
                    // Full: the next send waits in the kernel for room.
                    e if e == -libc::EAGAIN => {}
                    _ => {
                        c.eof = true;
                        let _ = c.stream.shutdown(std::net::Shutdown::Both);
                        for (id, _, _) in c.pending.drain(..) {
                            pool.provide(id);
                        }
                    }
                }
            }
            if !c.sending {
                dontwait += echo(&mut ring, &mut pool, slot, c);
            }
            if !c.receiving && !c.eof {
                // The receive ended without the stream ending (the ring ran
                // dry, or the kernel stopped it): arm it again this turn.
                starved.push(slot);
            } else if !c.receiving && !c.sending && c.pending.is_empty() {
                // The stream is over and everything written: nothing of the
                // connection is in flight.
                conns[slot] = None;
                free.push(slot);
            }
        }
        for slot in std::mem::take(&mut starved) {
            if let Some(Some(c)) = conns.get_mut(slot) {
                if !c.receiving {
                    arm_recv(&mut ring, slot, c);
                }
            }
        }
    }
}
