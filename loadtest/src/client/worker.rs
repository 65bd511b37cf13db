//! One client thread: its own epoll loop (through mio) over its share of
//! the connections, through the connect, warm-up, measure and drain phases.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::conn::{Change, Conn, Ctx, State};
use super::payload::{MessageSet, Scratch, Workload};
use super::socket;
use crate::cli::LoadArgs;
use crate::stats::{ErrorKind, Stats};
use crate::tls::TlsClient;

/// Connections of one thread that may be connecting or handshaking at once;
/// more would overflow the server's accept backlog and turn into SYN
/// retransmits, which shows up as 1 s or 3 s connect times.
const MAX_PENDING: usize = 256;
const TIMER: Token = Token(usize::MAX - 1);

pub struct Plan {
    pub args: Arc<LoadArgs>,
    /// Global indices of this thread's connections.
    pub conns: Vec<usize>,
    pub source_ips: Option<u32>,
    pub pin: Option<usize>,
    /// This thread's share of the open-loop rate, messages per second.
    pub rate: Option<f64>,
    pub connect_rate: Option<f64>,
    /// Every client thread and the coordinator meet here once connected,
    /// so the load starts at the same time on all threads.
    pub barrier: Arc<Barrier>,
    pub progress: Arc<AtomicU64>,
    /// `--deflate` or `--compressible`: the process's messages.
    pub set: Option<Arc<MessageSet>>,
    /// wss://: the process's TLS client configuration.
    pub tls: Option<Arc<TlsClient>>,
}

/// A timerfd gives the open-loop schedule sub-millisecond wake-ups, which
/// epoll's millisecond timeout cannot.
struct Timer {
    fd: OwnedFd,
}

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; a non-negative return
        // is a new descriptor we own from here on.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create and nothing else
        // owns it.
        Ok(Timer {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn arm_in(&self, d: Duration) {
        // Zero would disarm the timer; due-now is handled by the caller.
        let d = d.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            },
        };
        // SAFETY: the fd is a live timerfd we own; `spec` lives on this
        // frame and the old-value pointer may be null.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8 on this frame;
        // the fd is non-blocking, so an empty timer returns EAGAIN at once.
        unsafe {
            libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
        }
    }
}

/// Starts this thread's connections (at most `MAX_PENDING` unfinished at
/// once, at `--connect-rate` when given) and gives up on them at `deadline`.
struct Opener {
    start: Instant,
    deadline: Instant,
    gap: Option<Duration>,
    next_connect: Instant,
    pending: usize,
    /// Every connection has opened or failed, or the thread gave up.
    done: bool,
}

impl Opener {
    fn new(plan: &Plan, start: Instant) -> Opener {
        Opener {
            start,
            deadline: start + plan.args.connect_timeout,
            gap: plan.connect_rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next_connect: start,
            pending: 0,
            done: plan.conns.is_empty(),
        }
    }

    /// Start every connection that is due.
    fn start_due(
        &mut self,
        plan: &Plan,
        poll: &Poll,
        slots: &mut Vec<Option<Conn>>,
        stats: &mut Stats,
        now: Instant,
    ) {
        let args = &plan.args;
        while slots.len() < plan.conns.len()
            && self.pending < MAX_PENDING
            && now >= self.next_connect
        {
            let global = plan.conns[slots.len()];
            let source = plan.source_ips.map(|k| 1 + (global % k as usize) as u8);
            let token = Token(slots.len());
            let conn = socket::start_connect(args.addr, source).and_then(|s| {
                let mut stream = TcpStream::from_std(s);
                poll.registry().register(
                    &mut stream,
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Conn::new(stream, args, plan.tls.as_ref(), now)
            });
            match conn {
                Ok(c) => {
                    slots.push(Some(c));
                    self.pending += 1;
                }
                Err(_) => {
                    stats.error(ErrorKind::ConnectFailed, 1);
                    slots.push(None);
                }
            }
            if let Some(g) = self.gap {
                self.next_connect += g;
            }
        }
        if slots.len() == plan.conns.len() && self.pending == 0 {
            self.done = true;
        }
    }

    /// How long the event loop may sleep before a connect is due.
    fn wait(&self, plan: &Plan, slots: &[Option<Conn>], now: Instant) -> Duration {
        let mut wait = self.deadline.saturating_duration_since(now);
        if slots.len() < plan.conns.len() && self.pending < MAX_PENDING {
            wait = wait.min(self.next_connect.saturating_duration_since(now));
        }
        wait
    }

    /// Account for what an event did to an unfinished connection.
    fn changed(&mut self, change: Change, stats: &mut Stats, now: Instant, echoes: u64) {
        if change == Change::None {
            return;
        }
        self.pending = self.pending.saturating_sub(1);
        if change == Change::Opened {
            let us = now.saturating_duration_since(self.start).as_micros() as u64;
            stats.open_us = stats.open_us.max(us);
            stats.echoes_while_opening = echoes;
        }
    }

    /// Stop opening: whatever is still connecting missed its chance, and
    /// connections never started count too.
    fn give_up(&mut self, plan: &Plan, slots: &mut [Option<Conn>], stats: &mut Stats) {
        if self.done {
            return;
        }
        self.done = true;
        let unstarted = plan.conns.len() - slots.len();
        stats.error(ErrorKind::ConnectTimeout, unstarted as u64);
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|c| !c.is_open()) {
                stats.error(ErrorKind::ConnectTimeout, 1);
                *slot = None;
            }
        }
    }
}

impl Plan {
    /// What every client thread does first: pin itself and make its epoll
    /// instance. Without one, every connection of the thread is counted
    /// failed and the others are not kept waiting at the barrier.
    pub(super) fn start_thread(&self, stats: &mut Stats) -> Option<Poll> {
        if let Some(cpu) = self.pin {
            if let Err(e) = crate::affinity::pin_current_thread(&[cpu]) {
                eprintln!("loadtest: cannot pin a client thread to CPU {cpu}: {e}");
            }
        }
        match Poll::new() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("loadtest: epoll: {e}");
                stats.error(ErrorKind::ConnectFailed, self.conns.len() as u64);
                self.barrier.wait();
                None
            }
        }
    }
}

pub fn run(plan: Plan) -> Stats {
    let mut stats = Stats::new();
    let Some(mut poll) = plan.start_thread(&mut stats) else {
        return stats;
    };
    let args = &plan.args;
    let key: [u8; 4] = std::array::from_fn(|_| fastrand::u8(..));
    let w = match &plan.set {
        Some(set) => Workload::with_set(Arc::clone(set), args.binary, key),
        None => Workload::new(args.size, args.binary, args.raw, key),
    };
    let mut scratch = Scratch::new();
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Conn>> = Vec::with_capacity(plan.conns.len());
    let mut echoes = 0u64;
    let idle = (Instant::now(), Instant::now());
    let echo_on_open = args.echo_on_open;

    // With --echo-on-open the threads start together and the run's clock
    // starts with the first connect; otherwise they meet once all are open.
    if echo_on_open {
        plan.barrier.wait();
    }
    let mut opener = Opener::new(&plan, Instant::now());

    // Connect phase, ended by the deadline if not by the last open.
    if !echo_on_open {
        loop {
            let now = Instant::now();
            opener.start_due(&plan, &poll, &mut slots, &mut stats, now);
            if opener.done || now >= opener.deadline {
                break;
            }
            let timeout = opener
                .wait(&plan, &slots, now)
                .min(Duration::from_millis(10));
            if poll.poll(&mut events, Some(timeout)).is_err() {
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                let Some(Some(c)) = slots.get_mut(ev.token().0) else {
                    continue;
                };
                let mut cx = Ctx {
                    w: &w,
                    stats: &mut stats,
                    now,
                    window: idle,
                    top_up_to: 0,
                    echoes: &mut echoes,
                    scratch: &mut scratch,
                };
                let change = c.on_event(&mut cx);
                if c.state == State::Done {
                    slots[ev.token().0] = None;
                }
                opener.changed(change, &mut stats, now, echoes);
            }
        }
        opener.give_up(&plan, &mut slots, &mut stats);
        plan.barrier.wait();
    }

    // Warm-up and measured window.
    let t0 = if echo_on_open {
        opener.start
    } else {
        Instant::now()
    };
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let closed_loop = plan.rate.is_none();
    let top_up_to = if closed_loop { args.in_flight } else { 0 };
    let open: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
    let timer = if closed_loop {
        None
    } else {
        match Timer::new().and_then(|t| {
            poll.registry().register(
                &mut SourceFd(&t.fd.as_raw_fd()),
                TIMER,
                Interest::READABLE,
            )?;
            Ok(t)
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("loadtest: timerfd: {e}; open-loop timing falls back to epoll's 1 ms");
                None
            }
        }
    };
    let period = plan
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let mut sent_k: u64 = 0;
    if closed_loop {
        for slot in slots.iter_mut() {
            if let Some(c) = slot {
                let mut cx = Ctx {
                    w: &w,
                    stats: &mut stats,
                    now: t0,
                    window,
                    top_up_to,
                    echoes: &mut echoes,
                    scratch: &mut scratch,
                };
                c.send_now(&mut cx);
                if c.state == State::Done {
                    *slot = None;
                }
            }
        }
    }
    let mut published = 0u64;
    loop {
        let mut now = Instant::now();
        if now >= window.1 {
            break;
        }
        let mut timeout = window.1 - now;
        if !opener.done {
            opener.start_due(&plan, &poll, &mut slots, &mut stats, now);
            if now >= opener.deadline {
                opener.give_up(&plan, &mut slots, &mut stats);
            }
        }
        if !opener.done {
            timeout = timeout.min(opener.wait(&plan, &slots, now));
        }
        if let (Some(period), false) = (period, open.is_empty()) {
            loop {
                let due = t0 + period.mul_f64(sent_k as f64);
                if due > now {
                    let wait = due - now;
                    match &timer {
                        Some(t) => t.arm_in(wait),
                        None => timeout = timeout.min(wait),
                    }
                    break;
                }
                let i = open[(sent_k % open.len() as u64) as usize];
                sent_k += 1;
                if let Some(c) = slots[i].as_mut() {
                    let mut cx = Ctx {
                        w: &w,
                        stats: &mut stats,
                        now,
                        window,
                        top_up_to,
                        echoes: &mut echoes,
                        scratch: &mut scratch,
                    };
                    c.queue(&mut cx, due);
                    c.flush(&mut cx);
                    if c.state == State::Done {
                        slots[i] = None;
                    }
                }
                // A long send burst must not starve the schedule's clock.
                if sent_k.is_multiple_of(64) {
                    now = Instant::now();
                }
            }
        }
        if poll.poll(&mut events, Some(timeout)).is_err() {
            continue;
        }
        let now = Instant::now();
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = &timer {
                    t.clear();
                }
                continue;
            }
            let Some(Some(c)) = slots.get_mut(ev.token().0) else {
                continue;
            };
            let mut cx = Ctx {
                w: &w,
                stats: &mut stats,
                now,
                window,
                top_up_to,
                echoes: &mut echoes,
                scratch: &mut scratch,
            };
            // Closed loop: a connection that opens here is topped up at once.
            let change = c.on_event(&mut cx);
            if c.state == State::Done {
                slots[ev.token().0] = None;
            }
            opener.changed(change, &mut stats, now, echoes);
        }
        plan.progress
            .fetch_add(echoes - published, Ordering::Relaxed);
        published = echoes;
    }

    // Drain: no new sends; wait for what is outstanding. With
    // --echo-on-open, connections still opening (a dropped SYN waits 1 s
    // for its retry) get until the connect deadline, so a run shorter than
    // the opening neither hides the open time nor counts them as failed.
    let drain_end = window.1 + args.drain;
    loop {
        let now = Instant::now();
        if !opener.done {
            opener.start_due(&plan, &poll, &mut slots, &mut stats, now);
            if now >= opener.deadline {
                opener.give_up(&plan, &mut slots, &mut stats);
            }
        }
        let outstanding = slots.iter().flatten().any(|c| c.outstanding() > 0);
        let draining = outstanding && now < drain_end;
        if !draining && opener.done {
            break;
        }
        let mut timeout = Duration::from_millis(50);
        if draining {
            timeout = timeout.min(drain_end - now);
        }
        if !opener.done {
            timeout = timeout.min(opener.wait(&plan, &slots, now));
        }
        if poll.poll(&mut events, Some(timeout)).is_err() {
            continue;
        }
        let now = Instant::now();
        for ev in events.iter() {
            let Some(Some(c)) = slots.get_mut(ev.token().0) else {
                continue;
            };
            let mut cx = Ctx {
                w: &w,
                stats: &mut stats,
                now,
                window,
                top_up_to: 0,
                echoes: &mut echoes,
                scratch: &mut scratch,
            };
            let change = c.on_event(&mut cx);
            if c.state == State::Done {
                slots[ev.token().0] = None;
            }
            opener.changed(change, &mut stats, now, echoes);
        }
    }
    plan.progress
        .fetch_add(echoes - published, Ordering::Relaxed);
    for c in slots.iter_mut().flatten() {
        stats.error(ErrorKind::Lost, c.outstanding() as u64);
        let mut cx = Ctx {
            w: &w,
            stats: &mut stats,
            now: Instant::now(),
            window,
            top_up_to: 0,
            echoes: &mut echoes,
            scratch: &mut scratch,
        };
        c.close(&mut cx);
    }
    stats
}
