//! The ring shell: one io_uring completion loop per shard, on the
//! `io-uring` crate, with no futures, tasks or wakers on the data path.
//!
//! Each turn of the loop makes one `io_uring_enter` that both submits what
//! the last turn queued and waits for completions (or the next sweep). Each
//! completion is matched to its connection by `user_data` (a slab index and
//! the operation), handed to the connection engine, and the engine's wishes
//! become the next submissions. The engine decides everything else.
//!
//! - Receiving: a multishot receive per connection into the shard's
//!   provided-buffer ring (`buf_ring`), so an idle connection holds no
//!   buffer; the engine echoes from the buffer in place and gives it back.
//!   Backpressure cancels the receive; a byte limit on it bounds what a fast
//!   peer can land before the cancel does. When the ring runs dry, the
//!   connection receives into a buffer of its own until buffers come back.
//! - Sending: small output as a MSG_DONTWAIT send that completes inside the
//!   next enter (so a turn that echoes and waits stays one system call),
//!   large output with a plain `sendmsg` at once, a full socket with a poll.
//!
//! Every buffer the kernel reads or writes lives in the connection's slot
//! or the shard's pool until its completion arrives, and a slot is freed
//! only when nothing is in flight on it: that is what makes each submission
//! below sound.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf_ring::{self, BufRing};
use super::socket::{out_of_resources, send_now};
use super::stats::{AllStats, Seen, ShardStats};
use super::{http, Config};
use crate::protocol::Connection;

/// Slices per `writev`.
const MAX_IOV: usize = 256;
/// A batch vector that grew past this for a burst is given back.
const KEEP_IOV: usize = 16;

// What a completion is for: the low bits of its user_data.
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1;
const OP_ACCEPT: u64 = 2;
const OP_WAKE: u64 = 3;
/// A cancellation's own completion: nothing to do.
const OP_CANCEL: u64 = 4;
/// A poll for room in the socket's send buffer.
const OP_WRITABLE: u64 = 5;
/// A multishot receive into the shard's provided-buffer ring.
const OP_RECV_MULTI: u64 = 6;
const OP_BITS: u32 = 3;

/// Sends carry MSG_DONTWAIT, so the kernel never parks them: each one
/// completes inside the `io_uring_enter` that submits it (success, a short
/// send or EAGAIN). The loop counts on that to wait for one completion
/// beyond the sends after which their connections only wait for input, so
/// that a turn that submits echoes and waits for the next receive is still a
/// single system call. A full socket is waited for with a poll for POLLOUT.
const SEND_FLAGS: u32 = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32;
/// Output of at least this many bytes is sent at once with a plain
/// `sendmsg`: beside copying it the system call costs little, and the read
/// buffers it points into are free again at once instead of a loop turn
/// later (200 × 16 KiB echoes: 1.10× the msgs/s of sending through the
/// ring). Smaller output rides the next `io_uring_enter`, which saves a
/// system call per echo (100 × 20 B: the same msgs/s either way).
const DIRECT_SEND_MIN: usize = 4096;
/// Idle send states kept for reuse by the shard (not by each connection, so
/// an idle connection holds none).
const KEEP_OUTGOING: usize = 1024;

/// How the server stops a ring shard: a write to its eventfd, on which the
/// shard keeps a read in flight.
pub(crate) struct Stopper {
    stop: AtomicBool,
    eventfd: std::fs::File,
}

impl Stopper {
    pub fn stop(&self) {
        use std::io::Write;
        self.stop.store(true, Ordering::Release);
        let _ = (&self.eventfd).write_all(&1u64.to_ne_bytes());
    }
}

/// One send: the slices, their iovecs and the msghdr the kernel reads. It is
/// boxed so the msghdr's address is stable while the send is in flight.
struct Outgoing {
    batch: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl Outgoing {
    fn new() -> Box<Outgoing> {
        Box::new(Outgoing {
            batch: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all zeroes is a valid empty one
            // (no name, no iovecs, no control data).
            msg: unsafe { std::mem::zeroed() },
        })
    }

    /// Point the iovecs and the msghdr at `batch`.
    fn prepare(&mut self) -> *const libc::msghdr {
        self.iov.clear();
        self.iov.extend(self.batch.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        &self.msg
    }

    fn total(&self) -> usize {
        self.batch.iter().map(|b| b.len()).sum()
    }

    fn reset(&mut self) {
        self.batch.clear();
        self.iov.clear();
        if self.batch.capacity() > KEEP_IOV {
            self.batch.shrink_to(KEEP_IOV);
            self.iov.shrink_to(KEEP_IOV);
        }
    }
}

struct Slot {
    stream: TcpStream,
    conn: Connection,
    /// The connection's own buffer a receive in flight writes into (when
    /// the shard's buffer ring is off or ran dry).
    recv: Option<BytesMut>,
    /// A multishot receive into the shard's buffer ring is armed.
    recv_multi: bool,
    /// Its cancellation is on the way (backpressure stopped reading).
    recv_cancelling: bool,
    /// Waiting for the shard's buffer ring to have buffers again.
    starved: bool,
    /// Waited a whole sweep: receive into a buffer of its own instead.
    starved_long: bool,
    /// The slices, iovecs and msghdr a send in flight reads.
    send: Option<Box<Outgoing>>,
    /// The last send found the socket buffer full: poll for room before
    /// the next.
    socket_full: bool,
    /// A poll for POLLOUT is in flight.
    awaiting_room: bool,
    /// The socket is shut down; the slot goes once nothing is in flight.
    closing: bool,
    /// What the engine had reported when the shard last counted.
    seen: Seen,
    /// The peer, kept for the connection's log line at debug level only.
    peer: Option<Box<std::net::SocketAddr>>,
}

struct Shard {
    id: usize,
    cfg: Arc<Config>,
    engine: Arc<crate::protocol::connection::Config>,
    stats: Arc<ShardStats>,
    ring: IoUring,
    /// Receive buffers shared by the shard's connections; declared after
    /// `ring` so the ring is gone first.
    pool: Option<BufRing>,
    listen_fd: RawFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
    accept_armed: bool,
    accept_multishot: bool,
    /// Receives are multishot with a byte limit; off when the kernel
    /// refuses the limit (before 6.17) or `--recv-single-shot` says so.
    recv_multishot: bool,
    accept_paused_until: Option<Instant>,
    accepting: bool,
    stopper: Arc<Stopper>,
    /// The eventfd read's target; boxed so its address is stable.
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    /// Buffers connections hand back, on their way to the pool.
    released: Vec<BytesMut>,
    /// Connections waiting for the buffer ring to have buffers.
    starved: Vec<usize>,
    /// Send states not in use, kept boxed: a send in flight needs its
    /// msghdr at a fixed address, and reuse should not re-box.
    #[allow(clippy::vec_box)]
    outgoing: Vec<Box<Outgoing>>,
    /// Sends pushed since the completion queue was last reaped: each posts
    /// its completion during the submitting enter (see [`SEND_FLAGS`]).
    sends_unreaped: u32,
}

/// Build a ring with the flags that fit one thread per ring: completions
/// run only when this thread enters the kernel to wait for them
/// (DEFER_TASKRUN), and the kernel skips locking for a single submitter
/// (SINGLE_ISSUER). Kernels that refuse them get COOP_TASKRUN, then a plain
/// ring.
fn build_ring(cfg: &Config) -> io::Result<IoUring> {
    let entries = cfg.ring_entries;
    if cfg.ring_tuning {
        let deferred = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries);
        if deferred.is_ok() {
            return deferred;
        }
        let coop = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries);
        if coop.is_ok() {
            return coop;
        }
    }
    IoUring::builder().build(entries)
}

/// Set up shard `id`: the stopper for the server, and the shard's body for
/// its thread. The ring is built in the body, on the thread that will submit
/// to it (a single-issuer ring belongs to that thread); `ready` hears
/// whether that worked.
pub(crate) fn start(
    id: usize,
    cfg: Arc<Config>,
    listener: std::net::TcpListener,
    all_stats: Arc<AllStats>,
) -> io::Result<(Arc<Stopper>, impl FnOnce(Ready) + Send)> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns, so File may own and close it.
    let eventfd = unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        std::fs::File::from_raw_fd(fd)
    };
    let stopper = Arc::new(Stopper {
        stop: AtomicBool::new(false),
        eventfd,
    });
    let stop = stopper.clone();
    let body = move |ready: Ready| {
        let ring = match build_ring(&cfg) {
            Ok(ring) => ring,
            Err(e) => {
                let _ = ready.send(Err(super::uring::explain(&e)));
                return;
            }
        };
        let pool = match cfg.recv_pool {
            0 => None,
            budget => match BufRing::new(&ring, cfg.recv_buffer, budget) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    eprintln!(
                        "ringecho: shard {id}: no provided-buffer ring ({e}); \
                         each connection receives into a buffer of its own"
                    );
                    None
                }
            },
        };
        let _ = ready.send(Ok(id));
        let mut shard = Shard {
            pool,
            id,
            recv_multishot: cfg.recv_multishot,
            engine: Arc::new(cfg.engine.clone()),
            stats: all_stats.0.get(id).cloned().unwrap_or_default(),
            cfg,
            ring,
            listen_fd: listener.as_raw_fd(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            accept_armed: false,
            accept_multishot: true,
            accept_paused_until: None,
            accepting: true,
            stopper: stop,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            outgoing: Vec::new(),
            released: Vec::new(),
            starved: Vec::new(),
            sends_unreaped: 0,
        };
        shard.run();
        // The listener stays open until the loop is over.
        drop(listener);
    };
    Ok((stopper, body))
}

/// Where a shard reports whether it started.
pub(crate) type Ready = std::sync::mpsc::Sender<Result<usize, String>>;

/// Set an entry's `optlen` field, which the `io-uring` crate's `RecvMulti`
/// does not expose: for a multishot receive it is the most bytes the
/// receive may land before it ends (IORING_RECV_MSHOT_LIM, Linux 6.17).
fn with_optlen(entry: squeue::Entry, optlen: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte
    // `io_uring_sqe` (the transmute checks the size), whose fields are all
    // plain integers, so every byte pattern is a valid entry; `optlen` is
    // the native-endian u32 at offset 44 (include/uapi/linux/io_uring.h).
    unsafe {
        let mut raw: [u8; 64] = std::mem::transmute(entry);
        raw[44..48].copy_from_slice(&optlen.to_ne_bytes());
        std::mem::transmute::<[u8; 64], squeue::Entry>(raw)
    }
}

fn user_data(slot: usize, op: u64) -> u64 {
    ((slot as u64) << OP_BITS) | op
}

impl Shard {
    fn run(&mut self) {
        let tick = self.cfg.tick();
        let mut next_sweep = Instant::now() + tick;
        let mut drain_deadline: Option<Instant> = None;
        let mut cut_deadline: Option<Instant> = None;
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        let mut quiet = true;
        loop {
            let now = Instant::now();
            if self.accepting
                && !self.accept_armed
                && self.accept_paused_until.is_none_or(|t| now >= t)
            {
                self.accept_paused_until = None;
                self.arm_accept();
            }
            if !self.wake_armed && drain_deadline.is_none() {
                self.arm_wake();
            }
            let mut wait = next_sweep.saturating_duration_since(now);
            if let Some(t) = self.accept_paused_until {
                wait = wait.min(t.saturating_duration_since(now));
            }
            let ts = types::Timespec::new()
                .sec(wait.as_secs())
                .nsec(wait.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            self.stats.ring_enters.incr();
            // A quiet loop (the last turn brought one event) waits past the
            // sends' own completions, which are already due, for the next
            // event: one system call per echo. A busy one asks for one
            // completion: waiting for more than the sends makes the kernel
            // return after running a single piece of deferred work, and
            // accepts starve behind receives (10,000 connections opening
            // while the open ones echo took 20 s instead of 3.6).
            let want = if quiet {
                self.sends_unreaped as usize + 1
            } else {
                1
            };
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    eprintln!("ringecho: shard {}: io_uring_enter failed: {e}", self.id);
                    return;
                }
            }
            let now = Instant::now();
            let sends = self.sends_unreaped as usize;
            self.sends_unreaped = 0;
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            quiet = completions.len() <= sends + 1;
            for &(ud, res, flags) in &completions {
                self.complete(ud, res, flags, now);
            }
            if let Some(pool) = self.pool.as_mut() {
                if !self.starved.is_empty() {
                    pool.note_starved();
                }
                pool.maintain();
                self.stats
                    .recv_pool_bytes
                    .set(pool.allocated_bytes() as u64);
                self.stats.recv_pool_in_use.set(pool.outstanding() as u64);
            }
            self.feed_starved(now);
            if drain_deadline.is_none() && self.stopper.stop.load(Ordering::Acquire) {
                drain_deadline = Some(now + self.cfg.drain_timeout);
                self.begin_shutdown(now);
            }
            if now >= next_sweep {
                next_sweep = now + tick;
                self.sweep(now);
            }
            if let Some(deadline) = drain_deadline {
                if self.live == 0 {
                    return self.finish();
                }
                if now >= deadline && cut_deadline.is_none() {
                    // Cut what is left; its completions arrive at once.
                    for i in 0..self.slots.len() {
                        if let Some(s) = self.slots[i].as_mut() {
                            if !s.closing {
                                self.stats.timed_out.incr();
                            }
                        }
                        self.close(i);
                    }
                    cut_deadline = Some(now + Duration::from_secs(2));
                }
                if cut_deadline.is_some_and(|t| now >= t) {
                    return self.finish();
                }
            }
        }
    }

    /// Push `entry`; a full submission queue is submitted first.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid, and unmoved, until its
    /// completion has been reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) -> bool {
        for _ in 0..64 {
            // SAFETY: the caller's promise, passed on.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return true;
            }
            self.stats.ring_enters.incr();
            let _ = self.ring.submit();
        }
        // The kernel does not drain the queue: something is badly wrong,
        // and pushing on would spin. Leave the op unsubmitted; the engine's
        // timers end the connection.
        eprintln!("ringecho: shard {}: submission queue stuck", self.id);
        false
    }

    fn arm_accept(&mut self) {
        let fd = types::Fd(self.listen_fd);
        let entry = if self.accept_multishot {
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        // SAFETY: accept is given no address buffers.
        unsafe { self.push(entry.user_data(user_data(0, OP_ACCEPT))) };
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let buf = self.wake_buf.as_mut_ptr();
        let entry = opcode::Read::new(types::Fd(self.stopper.eventfd.as_raw_fd()), buf, 8)
            .build()
            .user_data(user_data(0, OP_WAKE));
        // SAFETY: `wake_buf` is boxed in the shard, which outlives the ring's
        // use (`finish` waits for in-flight ops or leaks their buffers).
        unsafe { self.push(entry) };
        self.wake_armed = true;
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, now: Instant) {
        let slot = (ud >> OP_BITS) as usize;
        match ud & ((1 << OP_BITS) - 1) {
            OP_ACCEPT => self.accepted(res, flags, now),
            OP_WAKE => self.wake_armed = false,
            OP_RECV => {
                let Some(Some(s)) = self.slots.get_mut(slot) else {
                    return;
                };
                let Some(mut buf) = s.recv.take() else {
                    return;
                };
                let n = usize::try_from(res).unwrap_or(0);
                // SAFETY: the kernel wrote `n` bytes into the spare capacity
                // the receive was given, which was at least `n` long.
                unsafe { buf.set_len(buf.len() + n.min(buf.capacity() - buf.len())) };
                if s.closing {
                    drop(buf);
                } else if res < 0 {
                    s.conn.cancel_read(buf);
                    let fd = s.stream.as_raw_fd();
                    super::ktls::read_failed(fd, -res, &mut s.conn, now);
                } else {
                    self.stats.bytes_in.add(n as u64);
                    s.conn.handle_read(buf, n, now);
                    http::answer_pending(&mut s.conn);
                }
                self.drive(slot, now);
            }
            OP_RECV_MULTI => self.received(slot, res, flags, now),
            OP_SEND => {
                let Some(Some(s)) = self.slots.get_mut(slot) else {
                    return;
                };
                let Some(mut send) = s.send.take() else {
                    return;
                };
                if !s.closing {
                    match res {
                        n if n > 0 => {
                            let n = n as usize;
                            self.stats.bytes_out.add(n as u64);
                            s.conn.handle_written(n, now);
                            // A short send: the socket buffer is full.
                            s.socket_full = n < send.total();
                        }
                        e if e == -libc::EAGAIN => s.socket_full = true,
                        _ => s.conn.handle_write_error(),
                    }
                }
                send.reset();
                if self.outgoing.len() < KEEP_OUTGOING {
                    self.outgoing.push(send);
                }
                self.drive(slot, now);
            }
            OP_WRITABLE => {
                let Some(Some(s)) = self.slots.get_mut(slot) else {
                    return;
                };
                s.awaiting_room = false;
                self.drive(slot, now);
            }
            _ => {}
        }
    }

    /// A completion of the multishot receive of `slot`.
    fn received(&mut self, slot: usize, res: i32, flags: u32, now: Instant) {
        let buf = match (cqueue::buffer_select(flags), self.pool.as_mut()) {
            (Some(id), Some(pool)) => pool.take(
                id,
                usize::try_from(res).unwrap_or(0),
                cqueue::buffer_more(flags),
            ),
            _ => None,
        };
        let Some(Some(s)) = self.slots.get_mut(slot) else {
            if let (Some(buf), Some(pool)) = (buf, self.pool.as_mut()) {
                pool.give_back(&mut vec![buf]);
            }
            return;
        };
        if !cqueue::more(flags) {
            s.recv_multi = false;
            s.recv_cancelling = false;
        }
        match (res, buf) {
            (n, Some(buf)) if n > 0 => {
                if s.closing {
                    if let Some(pool) = self.pool.as_mut() {
                        pool.give_back(&mut vec![buf]);
                    }
                } else {
                    self.stats.bytes_in.add(n as u64);
                    let data_at = self.pool.as_ref().map_or(0, BufRing::data_at);
                    s.conn.handle_received(buf, data_at, now);
                    http::answer_pending(&mut s.conn);
                }
            }
            (e, _) if e == -libc::ENOBUFS => {
                // The ring ran dry: `drive` re-arms once it has buffers, or
                // receives into the connection's own buffer meanwhile.
                if let Some(pool) = self.pool.as_mut() {
                    pool.note_starved();
                }
            }
            (e, _) if e == -libc::ECANCELED => {}
            (e, None) if e == -libc::EINVAL && self.recv_multishot => {
                // A kernel without the byte limit on multishot receives
                // (before 6.17) refuses it: one receive at a time, shard-wide.
                self.recv_multishot = false;
            }
            (res, buf) => {
                // The end of the stream, or an error that ends it (but for
                // a record kernel TLS hands over only with its type).
                if let (Some(buf), Some(pool)) = (buf, self.pool.as_mut()) {
                    pool.give_back(&mut vec![buf]);
                }
                if !s.closing {
                    let fd = s.stream.as_raw_fd();
                    super::ktls::read_failed(fd, res.saturating_neg(), &mut s.conn, now);
                }
            }
        }
        self.drive(slot, now);
    }

    fn accepted(&mut self, res: i32, flags: u32, now: Instant) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            match -res {
                libc::EINVAL if self.accept_multishot => {
                    // A kernel before 5.19: one accept per submission.
                    self.accept_multishot = false;
                }
                errno if out_of_resources(errno) => {
                    // Out of descriptors or memory: keep serving the open
                    // connections and try again shortly, without spinning.
                    self.stats.accept_backoffs.incr();
                    self.accept_paused_until = Some(now + Duration::from_millis(100));
                    if self.accept_armed {
                        self.cancel_accept();
                    }
                }
                _ => {}
            }
            return;
        }
        // SAFETY: a successful accept's result is a new descriptor that
        // nothing else owns.
        let stream = unsafe { TcpStream::from_raw_fd(res) };
        self.stats.accepted.incr();
        if !self.accepting || self.live >= self.cfg.max_connections_per_shard {
            // Refuse at once rather than let the listen queue hide overload.
            self.stats.rejected.incr();
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.slots[slot] = Some(Slot {
            peer: super::log::peer_if_logged(&stream),
            stream,
            conn: super::open_connection(&self.cfg, &self.engine, now),
            recv: None,
            recv_multi: false,
            recv_cancelling: false,
            starved: false,
            starved_long: false,
            send: None,
            socket_full: false,
            awaiting_room: false,
            closing: false,
            seen: Seen::default(),
        });
        self.live += 1;
        self.stats.active.incr();
        self.drive(slot, now);
    }

    fn cancel_accept(&mut self) {
        let entry = opcode::AsyncCancel::new(user_data(0, OP_ACCEPT))
            .build()
            .user_data(user_data(0, OP_CANCEL));
        // SAFETY: a cancel points to no buffer.
        unsafe { self.push(entry) };
    }

    /// Turn what the engine of `slot` wants into submissions, and free the
    /// slot once it is over and nothing is in flight.
    fn drive(&mut self, i: usize, now: Instant) {
        let direct = self.cfg.direct_send;
        let Some(Some(s)) = self.slots.get_mut(i) else {
            return;
        };
        let mut push: [Option<squeue::Entry>; 2] = [None, None];
        if !s.closing {
            let reading = s.recv.is_some() || s.recv_multi;
            super::ktls::run_commands(s.stream.as_raw_fd(), &mut s.conn, &self.stats, reading);
            if s.send.is_none() && !s.awaiting_room && !s.socket_full {
                let mut send = self.outgoing.pop().unwrap_or_else(Outgoing::new);
                s.conn.poll_transmit(&mut send.batch, MAX_IOV);
                let fd = s.stream.as_raw_fd();
                // Plain sendmsg calls while the socket takes everything (a
                // drained queue may let the engine produce more), and a poll
                // for room once it does not.
                let mut rounds = 0;
                while direct && send.total() >= DIRECT_SEND_MIN && rounds < 8 {
                    self.stats.direct_sends.incr();
                    let total = send.total();
                    let result = send_now(fd, &send.batch);
                    send.batch.clear();
                    match result {
                        Ok(sent) => {
                            self.stats.bytes_out.add(sent as u64);
                            if sent > 0 {
                                s.conn.handle_written(sent, now);
                            }
                            s.socket_full = sent < total;
                        }
                        Err(_) => s.conn.handle_write_error(),
                    }
                    if s.socket_full || s.conn.is_done() {
                        break;
                    }
                    // What the socket took may have let the engine go on.
                    s.conn.poll_transmit(&mut send.batch, MAX_IOV);
                    rounds += 1;
                }
                if send.batch.is_empty() {
                    send.reset();
                    if self.outgoing.len() < KEEP_OUTGOING {
                        self.outgoing.push(send);
                    }
                } else {
                    // One slice (most echoes: the header is written in
                    // place) goes as a plain send, which spares the kernel
                    // copying a msghdr and an iovec array.
                    let entry = match send.batch.as_slice() {
                        [one] => opcode::Send::new(types::Fd(fd), one.as_ptr(), one.len() as u32)
                            .flags(SEND_FLAGS as i32)
                            .build(),
                        _ => opcode::SendMsg::new(types::Fd(fd), send.prepare())
                            .flags(SEND_FLAGS)
                            .build(),
                    };
                    push[0] = Some(entry.user_data(user_data(i, OP_SEND)));
                    // Count only a send after which the connection just waits
                    // for input: if more output or a close step follows its
                    // completion, that completion must end the wait.
                    if send.batch.len() < MAX_IOV && s.conn.wants_read() {
                        self.sends_unreaped += 1;
                    }
                    s.send = Some(send);
                }
            }
            if s.socket_full && !s.awaiting_room {
                s.socket_full = false;
                s.awaiting_room = true;
                push[0] = Some(
                    opcode::PollAdd::new(types::Fd(s.stream.as_raw_fd()), libc::POLLOUT as u32)
                        .build()
                        .user_data(user_data(i, OP_WRITABLE)),
                );
            }
            if s.conn.poll_shutdown_write() {
                let _ = s.stream.shutdown(std::net::Shutdown::Write);
            }
            if s.conn.tls_hand_off_pending() {
                // A direct send may have written the last of a TLS
                // handshake: the session passes before a read is armed.
                let reading = s.recv.is_some() || s.recv_multi;
                super::ktls::run_commands(s.stream.as_raw_fd(), &mut s.conn, &self.stats, reading);
            }
            let wants_read = !s.conn.is_done() && s.conn.wants_read();
            let ring_ready = self.pool.as_ref().is_some_and(|p| p.available() > 0);
            if s.recv_multi && !wants_read && !s.recv_cancelling {
                // Backpressure: stop receiving. Buffers that land before
                // the cancel does wait in the engine.
                s.recv_cancelling = true;
                push[1] = Some(
                    opcode::AsyncCancel::new(user_data(i, OP_RECV_MULTI))
                        .build()
                        .user_data(user_data(i, OP_CANCEL)),
                );
            } else if wants_read && s.recv.is_none() && !s.recv_multi && ring_ready {
                s.recv_multi = true;
                let fd = types::Fd(s.stream.as_raw_fd());
                // A multishot receive stays armed while data flows, so a
                // message that straddles two buffers arrives in one turn.
                // Its byte limit (Linux 6.17) bounds what it lands beyond
                // the engine's backpressure: it ends after `arm_limit`
                // bytes and is re-armed only if the engine still wants
                // input. Without the limit, one receive at a time.
                // A session that may still pass to the kernel takes one
                // receive at a time, so that none is in flight when it does.
                let entry = if self.recv_multishot && !s.conn.tls_hand_off_pending() {
                    let limit = self.pool.as_ref().map_or(0, |p| p.arm_limit());
                    with_optlen(opcode::RecvMulti::new(fd, buf_ring::GROUP).build(), limit)
                } else {
                    opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                        .buf_group(buf_ring::GROUP)
                        .build()
                        .flags(squeue::Flags::BUFFER_SELECT)
                };
                push[1] = Some(entry.user_data(user_data(i, OP_RECV_MULTI)));
            } else if wants_read
                && s.recv.is_none()
                && !s.recv_multi
                && self.pool.is_some()
                && !s.starved_long
            {
                // The shared buffers ran dry: wait for them (they come back
                // as echoes are written, or the pool grows) rather than
                // give the connection a buffer of its own at once.
                if !s.starved {
                    s.starved = true;
                    self.starved.push(i);
                }
            } else if wants_read && s.recv.is_none() && !s.recv_multi {
                // No pool, or starved for a whole sweep (every shared
                // buffer may be held by frames still arriving): a buffer of
                // the connection's own.
                let mut buf = s.conn.read_buffer();
                let spare = buf.spare_capacity_mut();
                push[1] = Some(
                    opcode::Recv::new(
                        types::Fd(s.stream.as_raw_fd()),
                        spare.as_mut_ptr().cast(),
                        spare.len().min(u32::MAX as usize) as u32,
                    )
                    .build()
                    .user_data(user_data(i, OP_RECV)),
                );
                s.recv = Some(buf);
            }
            self.stats.sync(&mut s.conn, &mut s.seen);
        }
        if let Some(pool) = self.pool.as_mut() {
            let min_pin = pool.min_pin();
            let copied = s.conn.release_buffers(&mut self.released, min_pin);
            pool.give_back(&mut self.released);
            self.stats.copied_bytes.add(copied as u64);
        }
        let (done, closing) = (s.conn.is_done(), s.closing);
        for entry in push.into_iter().flatten() {
            // SAFETY: a send's msghdr, iovecs and the slices they point to
            // live in the boxed `s.send`, and a receive's buffer in `s.recv`;
            // both are heap allocations that stay in the slot, unmoved, until
            // the completion takes them out, and the slot is not freed while
            // either is in flight. A poll points to no memory, and a
            // receive into the shard's buffer ring only to the pool's
            // buffers, which outlive the ring (see `buf_ring`).
            unsafe { self.push(entry) };
        }
        if done || closing {
            self.close(i);
        }
    }

    /// End connection `i`: shut its socket down, which completes whatever is
    /// in flight, and free the slot once nothing is.
    fn close(&mut self, i: usize) {
        let Some(Some(s)) = self.slots.get_mut(i) else {
            return;
        };
        let fd = s.stream.as_raw_fd();
        let in_flight = s.recv.is_some() || s.recv_multi || s.send.is_some() || s.awaiting_room;
        if !s.closing {
            s.closing = true;
            if in_flight {
                // What is in flight completes at once. A plain call, not
                // the ring's IORING_OP_SHUTDOWN: that one always runs in a
                // kernel worker, which looks the descriptor up by number
                // later, possibly after the close below and an accept that
                // reuses the number, and would shut the new connection down.
                // SAFETY: shutdown(2) takes no pointers; `fd` is open.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
        if !in_flight {
            if let Some(mut s) = self.slots[i].take() {
                super::log::connection_ended(s.peer.as_deref(), &s.conn, &self.cfg.trust_proxy);
                self.stats.forget(&s.seen);
                if let Some(pool) = self.pool.as_mut() {
                    s.conn.release_all(&mut self.released);
                    pool.give_back(&mut self.released);
                }
                // Closed through the ring too: nothing is in flight on it,
                // and its number is not reused before the close runs.
                let fd = s.stream.into_raw_fd();
                let entry = opcode::Close::new(types::Fd(fd))
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(user_data(i, OP_CANCEL));
                // SAFETY: a close points to no memory, and `fd` is owned
                // by nothing else now.
                if !unsafe { self.push(entry) } {
                    // SAFETY: as above; the ring will not close it.
                    unsafe { libc::close(fd) };
                }
                self.stats.copied_bytes.add(s.conn.carried_bytes());
                self.live -= 1;
                self.stats.active.sub(1);
                self.free.push(i);
            }
        }
    }

    /// Connections that found the buffer ring empty arm their receive now
    /// that it has buffers again, oldest first.
    fn feed_starved(&mut self, now: Instant) {
        let mut waiting = std::mem::take(&mut self.starved);
        let mut fed = 0;
        for &i in &waiting {
            if self.pool.as_ref().is_none_or(|p| p.available() == 0) {
                break;
            }
            if let Some(Some(s)) = self.slots.get_mut(i) {
                s.starved = false;
                self.drive(i, now);
            }
            fed += 1;
        }
        waiting.drain(..fed);
        // Those still waiting (and any `drive` just added) keep their turn.
        waiting.append(&mut self.starved);
        self.starved = waiting;
    }

    /// Let every connection whose engine deadline has passed act on it.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let Some(Some(s)) = self.slots.get_mut(i) else {
                continue;
            };
            if s.closing {
                continue;
            }
            s.conn.shrink_idle();
            if s.starved {
                // A whole sweep without a shared buffer: take its own.
                s.starved_long = true;
                s.starved = false;
                self.drive(i, now);
                continue;
            }
            s.starved_long = false;
            if s.conn.poll_timeout().is_some_and(|d| d <= now) {
                s.conn.handle_timeout(now);
                self.drive(i, now);
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        self.accepting = false;
        // Stop listening: the accept in flight ends, and new connections to
        // this shard are refused.
        // SAFETY: shutdown(2) takes no pointers; the listener is open until
        // the shard's body returns.
        unsafe { libc::shutdown(self.listen_fd, libc::SHUT_RDWR) };
        for i in 0..self.slots.len() {
            if let Some(Some(s)) = self.slots.get_mut(i) {
                if !s.closing {
                    s.conn.shutdown(now);
                    self.drive(i, now);
                }
            }
        }
    }

    /// Before the ring goes: anything still in flight may yet be written
    /// by the kernel, so its buffer is leaked rather than freed.
    fn finish(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            if let Some(buf) = s.recv.take() {
                std::mem::forget(buf);
            }
            if let Some(send) = s.send.take() {
                std::mem::forget(send);
            }
        }
        if self.wake_armed {
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's wait count rests on this: a MSG_DONTWAIT send posts its
    /// completion inside the enter that submits it, whether it succeeds or
    /// finds the socket full, on the ring flags the shard uses.
    #[test]
    fn a_dontwait_send_completes_inside_its_submitting_enter() {
        let cfg = Config::default();
        let mut ring = build_ring(&cfg).expect("io_uring is available here");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 65536];
        let mut results = Vec::new();
        // Until the socket is full: then the send must fail at once with
        // EAGAIN, not wait in the kernel for room.
        for round in 0..10_000 {
            let entry =
                opcode::Send::new(types::Fd(a.as_raw_fd()), chunk.as_ptr(), chunk.len() as u32)
                    .flags(SEND_FLAGS as i32)
                    .build()
                    .user_data(round);
            // SAFETY: `chunk` outlives the completion, which is reaped below
            // before the next round.
            unsafe { ring.submission().push(&entry).unwrap() };
            ring.submit().unwrap();
            let cqe = ring
                .completion()
                .next()
                .expect("the completion was posted during the submit");
            results.push(cqe.result());
            if cqe.result() == -libc::EAGAIN {
                break;
            }
        }
        assert!(results.first().is_some_and(|&r| r > 0), "{results:?}");
        assert_eq!(results.last(), Some(&-libc::EAGAIN));
    }

    /// The flood bound rests on this: a multishot receive given a byte
    /// limit through `with_optlen` ends once it has landed that much, with
    /// more data waiting, and lands nothing more until it is armed again.
    #[test]
    fn a_multishot_receive_with_a_byte_limit_ends_at_the_limit() {
        use std::io::Write;
        let cfg = Config::default();
        let mut ring = build_ring(&cfg).expect("io_uring is available here");
        let room = 1024;
        let mut pool = BufRing::new(&ring, room, 64 * room).unwrap();
        let limit = pool.arm_limit();
        assert_eq!(limit as usize, 4 * room);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Ten times the limit, waiting in the socket before the receive.
        client.write_all(&vec![5u8; 10 * limit as usize]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let fd = types::Fd(server.as_raw_fd());
        let entry = with_optlen(opcode::RecvMulti::new(fd, buf_ring::GROUP).build(), limit);
        // SAFETY: a buffer-select receive points to no memory of ours but
        // the pool's, which outlives the ring's use of it.
        unsafe { ring.submission().push(&entry).unwrap() };
        let mut landed = 0;
        let mut views = Vec::new();
        let mut ended = false;
        let wait = types::Timespec::new().nsec(200_000_000);
        for _ in 0..100 {
            // Bounded: a receive that never ended would post nothing more.
            let args = types::SubmitArgs::new().timespec(&wait);
            match ring.submitter().submit_with_args(1, &args) {
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => break,
                other => other.map(drop).unwrap(),
            }
            let cqes: Vec<_> = ring.completion().collect();
            for cqe in cqes {
                assert!(cqe.result() > 0, "{}", cqe.result());
                let id = cqueue::buffer_select(cqe.flags()).unwrap();
                let n = cqe.result() as usize;
                views.push(pool.take(id, n, cqueue::buffer_more(cqe.flags())).unwrap());
                landed += n;
                assert!(!ended, "a completion after the last");
                ended = !cqueue::more(cqe.flags());
            }
            if ended {
                break;
            }
        }
        assert!(ended, "the receive ended");
        assert!(
            landed >= limit as usize && landed < limit as usize + room,
            "landed {landed} for a limit of {limit}"
        );
        assert!(views.iter().all(|v| v.iter().all(|&b| b == 5)));
    }
}
