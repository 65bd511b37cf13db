//! The epoll shell: one readiness loop per shard (mio), for machines where
//! io_uring is unavailable (an old kernel, `kernel.io_uring_disabled`, a
//! container's seccomp profile). It moves bytes between non-blocking
//! sockets and the connection engine, which decides everything else, so
//! every rule of the io_uring shells holds here unchanged.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::socket::out_of_resources;
use super::stats::{AllStats, Seen, ShardStats};
use super::{http, Config};
use crate::protocol::Connection;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection tokens start here; token - FIRST is the slab index.
const FIRST: usize = 2;

/// Slices per `writev`.
const MAX_IOV: usize = 64;
/// Connections accepted per readiness event before the others get a turn.
const ACCEPT_BURST: usize = 256;
/// Reads per connection per turn, so one fast sender cannot starve the rest.
const READS_PER_TURN: usize = 16;

/// How the server stops an epoll shard.
pub(crate) struct Stopper {
    stop: AtomicBool,
    waker: Waker,
}

impl Stopper {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

struct Conn {
    stream: TcpStream,
    conn: Connection,
    batch: Vec<Bytes>,
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
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    /// After EMFILE and the like: no accept before this.
    accept_paused_until: Option<Instant>,
    accepting: bool,
}

/// Set up shard `id`'s loop; `ready` hears whether that worked, and the
/// server gets the shard's stopper back to end it.
pub(crate) fn start(
    id: usize,
    cfg: Arc<Config>,
    listener: std::net::TcpListener,
    all_stats: Arc<AllStats>,
) -> io::Result<(Arc<Stopper>, impl FnOnce())> {
    listener.set_nonblocking(true)?;
    let poll = Poll::new()?;
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let stopper = Arc::new(Stopper {
        stop: AtomicBool::new(false),
        waker: Waker::new(poll.registry(), WAKER)?,
    });
    let mut shard = Shard {
        id,
        engine: Arc::new(cfg.engine.clone()),
        stats: all_stats.0.get(id).cloned().unwrap_or_default(),
        cfg,
        poll,
        listener,
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        accept_paused_until: None,
        accepting: true,
    };
    let stop = stopper.clone();
    Ok((stopper, move || shard.run(&stop)))
}

impl Shard {
    fn run(&mut self, stopper: &Stopper) {
        let tick = self.cfg.tick();
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + tick;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wait = next_sweep.saturating_duration_since(now);
            if let Some(until) = self.accept_paused_until {
                wait = wait.min(until.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("ringecho: shard {}: epoll failed: {e}", self.id);
                    return;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST, now),
                }
            }
            if self.accept_paused_until.is_some_and(|until| now >= until) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            if drain_deadline.is_none() && stopper.stop.load(Ordering::Acquire) {
                drain_deadline = Some(now + self.cfg.drain_timeout);
                self.begin_shutdown(now);
            }
            if now >= next_sweep {
                next_sweep = now + tick;
                self.sweep(now);
            }
            if let Some(deadline) = drain_deadline {
                if self.live == 0 {
                    return;
                }
                if now >= deadline {
                    // Cut what is left.
                    for i in 0..self.conns.len() {
                        if self.conns[i].is_some() {
                            self.stats.timed_out.incr();
                            self.remove(i);
                        }
                    }
                    return;
                }
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        if !self.accepting || self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BURST {
            let stream = match self.listener.accept() {
                Ok((stream, _peer)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if e.raw_os_error().is_some_and(out_of_resources) {
                        // Out of descriptors or memory: keep serving the
                        // open connections, try again shortly, never spin.
                        self.stats.accept_backoffs.incr();
                        self.accept_paused_until = Some(now + Duration::from_millis(100));
                        return;
                    }
                    continue;
                }
            };
            self.stats.accepted.incr();
            if self.live >= self.cfg.max_connections_per_shard {
                // Refuse at once rather than let the listen queue hide it.
                self.stats.rejected.incr();
                continue;
            }
            self.admit(stream, now);
        }
        // The burst ended with connections possibly still queued, and an
        // edge-triggered listener raises no new edge for them: re-arming it
        // raises one while the queue is not empty.
        let _ = self
            .poll
            .registry()
            .reregister(&mut self.listener, LISTENER, Interest::READABLE);
    }

    fn admit(&mut self, mut stream: TcpStream, now: Instant) {
        let _ = stream.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(slot + FIRST),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.free.push(slot);
            return;
        }
        let peer = super::log::peer_if_logged(&stream);
        self.conns[slot] = Some(Conn {
            stream,
            conn: super::open_connection(&self.cfg, &self.engine, now),
            batch: Vec::new(),
            seen: Seen::default(),
            peer,
        });
        self.live += 1;
        self.stats.active.incr();
        // Readiness is edge-triggered: bytes already there raise no new edge.
        self.drive(slot, now);
    }

    /// Move bytes for connection `i` until its socket would block, then do
    /// what its engine decided.
    fn drive(&mut self, i: usize, now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        let mut reads = 0;
        loop {
            let fd = c.stream.as_raw_fd();
            super::ktls::run_commands(fd, &mut c.conn, &self.stats, false);
            flush(c, &self.stats, now);
            // What was just written may be the last of a TLS handshake:
            // the session passes to the kernel before the next read.
            super::ktls::run_commands(fd, &mut c.conn, &self.stats, false);
            if c.conn.poll_shutdown_write() {
                let _ = c.stream.shutdown(Shutdown::Write);
            }
            if c.conn.is_done() || !c.conn.wants_read() || reads >= READS_PER_TURN {
                break;
            }
            reads += 1;
            let mut buf = c.conn.read_buffer();
            match recv_into(&c.stream, &mut buf) {
                Ok(n) => {
                    self.stats.bytes_in.add(n as u64);
                    c.conn.handle_read(buf, n, now);
                    http::answer_pending(&mut c.conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.conn.cancel_read(buf);
                    break;
                }
                Err(e) => {
                    c.conn.cancel_read(buf);
                    let errno = e.raw_os_error().unwrap_or(0);
                    super::ktls::read_failed(c.stream.as_raw_fd(), errno, &mut c.conn, now);
                }
            }
        }
        self.stats.sync(&mut c.conn, &mut c.seen);
        if c.conn.is_done() {
            self.remove(i);
        } else if reads >= READS_PER_TURN {
            // More may be waiting, and edge-triggered readiness will not say
            // so again: re-arming raises a fresh edge while the socket is
            // still readable, which brings it back next turn.
            let _ = self.poll.registry().reregister(
                &mut c.stream,
                Token(i + FIRST),
                Interest::READABLE | Interest::WRITABLE,
            );
        }
    }

    /// Wake every connection whose engine deadline has passed.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(i) {
                c.conn.shrink_idle();
            }
            let due = self.conns[i]
                .as_ref()
                .and_then(|c| c.conn.poll_timeout())
                .is_some_and(|d| d <= now);
            if due {
                if let Some(Some(c)) = self.conns.get_mut(i) {
                    c.conn.handle_timeout(now);
                }
                self.drive(i, now);
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        self.accepting = false;
        let _ = self.poll.registry().deregister(&mut self.listener);
        // Stop listening: new connections to this shard are refused.
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Both);
        for i in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(i) {
                c.conn.shutdown(now);
                self.drive(i, now);
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            super::log::connection_ended(c.peer.as_deref(), &c.conn, &self.cfg.trust_proxy);
            self.stats.forget(&c.seen);
            self.stats.copied_bytes.add(c.conn.carried_bytes());
            self.live -= 1;
            self.stats.active.sub(1);
            self.free.push(i);
        }
    }
}

/// Write what the engine has until the socket would block.
fn flush(c: &mut Conn, stats: &ShardStats, now: Instant) {
    loop {
        c.conn.poll_transmit(&mut c.batch, MAX_IOV);
        if c.batch.is_empty() {
            return;
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        for (s, b) in slices.iter_mut().zip(&c.batch) {
            *s = IoSlice::new(b);
        }
        let n = c.batch.len().min(MAX_IOV);
        let total: usize = c.batch[..n].iter().map(Bytes::len).sum();
        match (&c.stream).write_vectored(&slices[..n]) {
            Ok(n) => {
                stats.bytes_out.add(n as u64);
                c.conn.handle_written(n, now);
                if n < total {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                c.conn.handle_write_error();
                return;
            }
        }
    }
}

/// `recv` into the spare capacity of `buf`; 0 is EOF.
fn recv_into(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into `spare`, which is
    // allocated and owned by `buf` for the call; `fd` is the open socket.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            0,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` bytes of the spare
    // capacity, and `n <= spare.len()`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
