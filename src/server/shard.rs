//! One shard: an OS thread with its own io_uring runtime and its own
//! SO_REUSEPORT listener. The kernel spreads connections across shards; a
//! connection never leaves the shard that accepted it, so nothing on the
//! data path is shared between threads.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_uring::net::TcpListener;

use super::conn::{self, signal, ConnCtl, Phase};
use super::stats::{AllStats, ShardStats};
use super::{uring, Config};

/// State every task of a shard shares (single-threaded: `Rc`, `Cell`).
pub(crate) struct ShardCtx {
    pub cfg: Arc<Config>,
    pub stats: Arc<ShardStats>,
    pub all_stats: Arc<AllStats>,
    start: Instant,
    /// Coarse clock in ms since start, advanced by the sweep: reading it on
    /// every I/O completion costs nothing.
    now: Cell<u64>,
    conns: RefCell<Registry>,
    shutting_down: Cell<bool>,
}

impl ShardCtx {
    pub fn now(&self) -> u64 {
        self.now.get()
    }
}

/// Live connections of a shard, for the sweep and for shutdown.
#[derive(Default)]
struct Registry {
    slots: Vec<Option<Rc<ConnCtl>>>,
    free: Vec<usize>,
    live: usize,
}

impl Registry {
    fn insert(&mut self, ctl: Rc<ConnCtl>) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.slots.get_mut(i) {
                    *slot = Some(ctl);
                }
                i
            }
            None => {
                self.slots.push(Some(ctl));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            if slot.take().is_some() {
                self.live -= 1;
                self.free.push(i);
            }
        }
    }

    fn each(&self, mut f: impl FnMut(&ConnCtl)) {
        for ctl in self.slots.iter().flatten() {
            f(ctl);
        }
    }
}

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
    let _ = ready.send(Ok(id));
    rt.block_on(async move {
        let listen_fd = listener.as_raw_fd();
        let listener = TcpListener::from_std(listener);
        let ctx = Rc::new(ShardCtx {
            cfg: cfg.clone(),
            stats: all_stats.0.get(id).cloned().unwrap_or_default(),
            all_stats,
            start: Instant::now(),
            now: Cell::new(0),
            conns: RefCell::new(Registry::default()),
            shutting_down: Cell::new(false),
        });

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
                // Stop listening: wakes the accept in flight with an error,
                // and new connections to this shard are refused.
                // SAFETY: no pointers; `listen_fd` is the listener, which the
                // accept loop keeps open until it sees `shutting_down`.
                unsafe {
                    libc::shutdown(listen_fd, libc::SHUT_RDWR);
                }
            })
        };

        accept_loop(&listener, &ctx).await;
        let _ = stopper.await;
        drain(&ctx).await;
        sweeper.abort();
    });
}

async fn accept_loop(listener: &TcpListener, ctx: &Rc<ShardCtx>) {
    loop {
        let accepted = listener.accept().await;
        if ctx.shutting_down.get() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    // Out of descriptors or memory: keep serving the open
                    // connections and try again shortly, without spinning.
                    ctx.stats.accept_backoffs.incr();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        ctx.stats.accepted.incr();
        if ctx.conns.borrow().live >= ctx.cfg.max_connections_per_shard {
            // Refuse at once rather than let the listen queue hide overload.
            ctx.stats.rejected.incr();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let ctl = Rc::new(ConnCtl::new(stream.as_raw_fd(), ctx.now()));
        let slot = ctx.conns.borrow_mut().insert(ctl.clone());
        ctx.stats.active.incr();
        let registered = Registered {
            ctx: ctx.clone(),
            slot,
        };
        let ctx = ctx.clone();
        tokio_uring::spawn(async move {
            // Dropped after `serve` returns, before the stream it owned is
            // closed by tokio-uring's deferred close.
            let _registered = registered;
            conn::serve(stream, ctx, ctl).await;
        });
    }
}

/// Coarse timers for every connection of the shard: one pass per tick
/// instead of one timer per connection.
async fn sweep(ctx: Rc<ShardCtx>) {
    let cfg = &ctx.cfg;
    let tick = cfg.tick();
    let ms = |d: Duration| d.as_millis() as u64;
    loop {
        tokio::time::sleep(tick).await;
        let now = ctx.start.elapsed().as_millis() as u64;
        ctx.now.set(now);
        let conns = ctx.conns.borrow();
        conns.each(|c| {
            let age = now.saturating_sub(c.since.get());
            match c.phase.get() {
                Phase::Handshake if age >= ms(cfg.handshake_timeout) => {
                    ctx.stats.timed_out.incr();
                    c.kill();
                }
                Phase::Closing if age >= ms(cfg.close_timeout) => {
                    ctx.stats.timed_out.incr();
                    c.kill();
                }
                Phase::Open if !cfg.idle_timeout.is_zero() => {
                    let idle = ms(cfg.idle_timeout);
                    match c.ping_at.get() {
                        None if now.saturating_sub(c.last_read.get()) >= idle => {
                            c.ping_at.set(Some(now));
                            c.raise(signal::PING);
                        }
                        Some(at) if now.saturating_sub(at) >= idle => c.raise(signal::IDLE_CLOSE),
                        _ => {}
                    }
                }
                _ => {}
            }
        });
    }
}

/// Graceful shutdown of the shard's connections: close 1001 to each, wait up
/// to the drain timeout for the close handshakes, then cut what is left.
async fn drain(ctx: &Rc<ShardCtx>) {
    ctx.conns.borrow().each(|c| match c.phase.get() {
        Phase::Handshake => c.kill(),
        _ => c.raise(signal::GOING_AWAY),
    });
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

impl Config {
    /// Sweep period: fine enough for the shortest timeout, never busier than
    /// 100 times a second.
    fn tick(&self) -> Duration {
        let shortest = [
            self.handshake_timeout,
            self.close_timeout,
            self.idle_timeout,
        ]
        .into_iter()
        .filter(|d| !d.is_zero())
        .min()
        .unwrap_or(Duration::from_secs(1));
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}
