//! What a shard's tasks share: its configuration, counters, coarse clock and
//! the registry of live connections that the sweep and shutdown walk.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::stats::ShardStats;
use super::Config;
use crate::protocol::connection;

/// State every task of a shard shares (single-threaded: `Rc`, `Cell`).
pub(crate) struct ShardCtx {
    pub cfg: Arc<Config>,
    /// The engine's part of the configuration, shared by every connection.
    pub engine: Arc<connection::Config>,
    pub stats: Arc<ShardStats>,
    /// Coarse clock, advanced by the sweep: reading it on every I/O
    /// completion costs nothing.
    now: Cell<Instant>,
    pub conns: RefCell<Registry>,
    pub shutting_down: Cell<bool>,
}

impl ShardCtx {
    pub fn new(cfg: Arc<Config>, stats: Arc<ShardStats>) -> ShardCtx {
        ShardCtx {
            engine: Arc::new(cfg.engine.clone()),
            cfg,
            stats,
            now: Cell::new(Instant::now()),
            conns: RefCell::new(Registry::default()),
            shutting_down: Cell::new(false),
        }
    }

    pub fn now(&self) -> Instant {
        self.now.get()
    }

    pub fn tick(&self) -> Instant {
        let now = Instant::now();
        self.now.set(now);
        now
    }
}

/// Requests from the shard's sweep or shutdown to a connection task.
pub(crate) mod signal {
    /// The engine's deadline has passed.
    pub const TIMER: u8 = 1;
    /// Graceful shutdown: close 1001.
    pub const GOING_AWAY: u8 = 2;
    /// The drain timeout passed: stop now.
    pub const KILL: u8 = 4;
}

/// The part of a connection the shard sees: its next deadline, and a way to
/// wake its task.
pub(crate) struct ConnCtl {
    pub fd: RawFd,
    /// The engine's next deadline, as the task last saw it.
    pub deadline: Cell<Option<Instant>>,
    pub signals: Cell<u8>,
    pub waker: Cell<Option<Waker>>,
}

impl ConnCtl {
    pub fn new(fd: RawFd) -> ConnCtl {
        ConnCtl {
            fd,
            deadline: Cell::new(None),
            signals: Cell::new(0),
            waker: Cell::new(None),
        }
    }

    pub fn raise(&self, sig: u8) {
        self.signals.set(self.signals.get() | sig);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Cut the connection: every op in flight on it completes at once.
    pub fn kill(&self) {
        // SAFETY: shutdown(2) takes no pointers; `fd` is the connection's
        // socket, which stays open while its ConnCtl is registered (the task
        // unregisters before its TcpStream closes the descriptor).
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
        self.raise(signal::KILL);
    }
}

/// Live connections of a shard, for the sweep and for shutdown.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Vec<Option<Rc<ConnCtl>>>,
    free: Vec<usize>,
    pub live: usize,
}

impl Registry {
    pub fn insert(&mut self, ctl: Rc<ConnCtl>) -> usize {
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

    pub fn remove(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            if slot.take().is_some() {
                self.live -= 1;
                self.free.push(i);
            }
        }
    }

    pub fn each(&self, mut f: impl FnMut(&ConnCtl)) {
        for ctl in self.slots.iter().flatten() {
            f(ctl);
        }
    }
}
