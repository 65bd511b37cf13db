//! One shard: an OS thread with its own io_uring runtime and its own
//! SO_REUSEPORT listener. The kernel spreads connections across shards; a
//! connection never leaves the shard that accepted it, so nothing on the
//! data path is shared between threads.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_uring::net::TcpListener;

use super::conn;
use super::context::{signal, ConnCtl, ShardCtx};
use super::socket::out_of_resources;
use super::stats::AllStats;
use super::{uring, Config};

/// Accepts kept in flight at once, so a completion is always near.
const ACCEPTORS: usize = 4;

/// Connections taken from the listen queue with plain non-blocking accepts
/// after each ring accept completes. A ring accept yields one connection per
/// turn of the runtime's scheduler, and a turn of a shard busy echoing for
/// thousands of connections is tens of milliseconds: one at a time, a
/// reconnect storm after a deploy would open connections far slower than they
/// come. Draining the queue keeps accepting in step with it.
const ACCEPT_BURST: usize = 256;

/// Unregisters a connection when its task ends, before its socket closes:
/// the sweep must never act on a descriptor number that was reused.
struct Registered {
    ctx: Rc<ShardCtx>,
    slot: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ctx.conns.borrow_mut().remove(self.slot);
        self.ctx.stats.active.sub(1);
    }
}

/// Run shard `id` until shutdown completes. `ready` is told once the ring
/// is up, so start-up can report a ring failure instead of hanging.
pub(crate) fn run(
    id: usize,
    cfg: Arc<Config>,
    listener: std::net::TcpListener,
    all_stats: Arc<AllStats>,
    mut shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    let rt = match uring::runtime(&cfg) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(uring::explain(&e)));
            return;
        }
    };
    // A second descriptor for the same listening socket, non-blocking, to
    // drain the listen queue between ring accepts.
    let backlog = match listener.try_clone().and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => Rc::new(l),
        Err(e) => {
            let _ = ready.send(Err(format!("cannot share shard {id}'s listener: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(id));
    rt.block_on(async move {
        let listen_fd = listener.as_raw_fd();
        let listener = Rc::new(TcpListener::from_std(listener));
        let stats = all_stats.0.get(id).cloned().unwrap_or_default();
        let ctx = Rc::new(ShardCtx::new(cfg.clone(), stats));

        let sweeper = tokio_uring::spawn(sweep(ctx.clone()));
        let stopper = {
            let ctx = ctx.clone();
            tokio_uring::spawn(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                ctx.shutting_down.set(true);
                // Stop listening: wakes the accepts in flight with an error,
                // and new connections to this shard are refused.
                // SAFETY: no pointers; `listen_fd` is the listener, which the
                // accept loops keep open until they see `shutting_down`.
                unsafe {
                    libc::shutdown(listen_fd, libc::SHUT_RDWR);
                }
            })
        };

        let acceptors: Vec<_> = (0..ACCEPTORS)
            .map(|_| {
                tokio_uring::spawn(accept_loop(listener.clone(), backlog.clone(), ctx.clone()))
            })
            .collect();
        for a in acceptors {
            let _ = a.await;
        }
        let _ = stopper.await;
        drain(&ctx).await;
        sweeper.abort();
    });
}

async fn accept_loop(
    listener: Rc<TcpListener>,
    backlog: Rc<std::net::TcpListener>,
    ctx: Rc<ShardCtx>,
) {
    loop {
        let accepted = listener.accept().await;
        if ctx.shutting_down.get() {
            return;
        }
        match accepted {
            Ok((stream, _peer)) => admit(stream, &ctx),
            Err(e) => {
                if e.raw_os_error().is_some_and(out_of_resources) {
                    // Out of descriptors or memory: keep serving the open
                    // connections and try again shortly, without spinning.
                    ctx.stats.accept_backoffs.incr();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        }
        for _ in 0..ACCEPT_BURST {
            match backlog.accept() {
                Ok((stream, _peer)) => admit(tokio_uring::net::TcpStream::from_std(stream), &ctx),
                // Empty queue, or out of resources: the ring accept in
                // flight (and its back-off) takes it from here.
                Err(_) => break,
            }
        }
    }
}

/// Start serving an accepted connection, or refuse it at the per-shard cap.
fn admit(stream: tokio_uring::net::TcpStream, ctx: &Rc<ShardCtx>) {
    ctx.stats.accepted.incr();
    if ctx.conns.borrow().live >= ctx.cfg.max_connections_per_shard {
        // Refuse at once rather than let the listen queue hide overload.
        ctx.stats.rejected.incr();
        drop(stream);
        return;
    }
    let _ = stream.set_nodelay(true);
    let ctl = Rc::new(ConnCtl::new(stream.as_raw_fd()));
    let slot = ctx.conns.borrow_mut().insert(ctl.clone());
    ctx.stats.active.incr();
    let registered = Registered {
        ctx: ctx.clone(),
        slot,
    };
    tokio_uring::spawn(async move {
        // Dropped after `serve` returns, before the stream it owned is
        // closed by tokio-uring's deferred close.
        let registered = registered;
        conn::serve(stream, &registered.ctx, &ctl).await;
    });
}

/// Coarse timers for every connection of the shard: one pass per tick
/// instead of one timer per connection. Each connection's engine says when
/// it next needs the time; the sweep wakes it once that has passed.
async fn sweep(ctx: Rc<ShardCtx>) {
    let tick = ctx.cfg.tick();
    loop {
        tokio::time::sleep(tick).await;
        let now = ctx.tick();
        ctx.conns.borrow().each(|c| {
            if c.deadline.get().is_some_and(|d| d <= now) {
                c.raise(signal::TIMER);
            }
        });
    }
}

/// Graceful shutdown of the shard's connections: close 1001 to each, wait up
/// to the drain timeout for the close handshakes, then cut what is left.
async fn drain(ctx: &Rc<ShardCtx>) {
    ctx.conns.borrow().each(|c| c.raise(signal::GOING_AWAY));
    let deadline = Instant::now() + ctx.cfg.drain_timeout;
    while ctx.conns.borrow().live > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.conns.borrow().each(|c| {
        ctx.stats.timed_out.incr();
        c.kill();
    });
    // Killed connections finish within a few completions.
    let deadline = Instant::now() + Duration::from_secs(2);
    while ctx.conns.borrow().live > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
