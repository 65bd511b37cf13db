//! `--handshakes`: one client thread's connection slots, each cycling
//! through connect, TLS (wss://), upgrade, one echo and the close
//! handshake, then again with a new connection, for the whole run. What
//! is measured is what a fresh client costs: no connection outlives its
//! cycle and no TLS session is resumed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::conn::{Change, Conn, Ctx, State};
use super::payload::{Scratch, Workload};
use super::socket;
use super::worker::Plan;
use crate::stats::{ErrorKind, Stats};

/// After a failed cycle a slot waits this long before its next: a server
/// that refuses every connection is reported, not hammered.
const RETRY_AFTER: Duration = Duration::from_millis(20);
/// How often cycles are checked against their deadline.
const SWEEP: Duration = Duration::from_millis(50);

struct Slot {
    conn: Option<Conn>,
    /// When this slot may start its next cycle.
    next_start: Instant,
}

/// The error a cycle that ran out of time is counted as, by how far it got.
fn timeout_kind(state: State) -> ErrorKind {
    match state {
        State::Connecting | State::Handshaking | State::Done => ErrorKind::ConnectTimeout,
        State::Open => ErrorKind::Lost,
        State::Closing => ErrorKind::CloseFailed,
    }
}

/// Start one cycle's connection on `token`.
fn start(
    plan: &Plan,
    poll: &Poll,
    token: Token,
    source: Option<u8>,
    now: Instant,
) -> Result<Conn, ErrorKind> {
    let s = socket::start_connect(plan.args.addr, source).map_err(|_| ErrorKind::ConnectFailed)?;
    let mut stream = TcpStream::from_std(s);
    poll.registry()
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        .map_err(|_| ErrorKind::ConnectFailed)?;
    // Only the TLS session can fail here (its configuration was checked
    // when it was built, so in practice it does not).
    Conn::new(stream, &plan.args, plan.tls.as_ref(), now).map_err(|_| ErrorKind::TlsFailed)
}

pub fn run(plan: Plan) -> Stats {
    let mut stats = Stats::new();
    let Some(mut poll) = plan.start_thread(&mut stats) else {
        return stats;
    };
    let args = Arc::clone(&plan.args);
    let key: [u8; 4] = std::array::from_fn(|_| fastrand::u8(..));
    let w = match &plan.set {
        Some(set) => Workload::with_set(Arc::clone(set), args.binary, key),
        None => Workload::new(args.size, args.binary, false, key),
    };
    let mut scratch = Scratch::new();
    let mut events = Events::with_capacity(1024);
    let mut echoes = 0u64;
    let mut published = 0u64;

    // No connect phase: opening connections is the workload, so every
    // thread starts at once and the warm-up runs from the first connect.
    plan.barrier.wait();
    let t0 = Instant::now();
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let drain_end = window.1 + args.drain;
    let mut slots: Vec<Slot> = plan
        .conns
        .iter()
        .map(|_| Slot {
            conn: None,
            next_start: t0,
        })
        .collect();
    // Spreads successive cycles of a slot over the source addresses.
    let mut cycle_no = 0usize;
    let mut next_sweep = t0 + SWEEP;
    loop {
        let now = Instant::now();
        // New cycles start until the window ends; those under way then
        // get the drain time to finish, uncounted.
        let starting = now < window.1;
        if !starting && (now >= drain_end || slots.iter().all(|s| s.conn.is_none())) {
            break;
        }
        let mut until = if starting { window.1 } else { drain_end };
        if starting {
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.conn.is_some() {
                    continue;
                }
                if now < slot.next_start {
                    until = until.min(slot.next_start);
                    continue;
                }
                let source = plan
                    .source_ips
                    .map(|k| 1 + ((plan.conns[i] + cycle_no) % k as usize) as u8);
                cycle_no += 1;
                match start(&plan, &poll, Token(i), source, now) {
                    Ok(c) => slot.conn = Some(c),
                    Err(kind) => {
                        stats.error(kind, 1);
                        slot.next_start = now + RETRY_AFTER;
                        until = until.min(slot.next_start);
                    }
                }
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP;
            for slot in &mut slots {
                let late = slot
                    .conn
                    .as_ref()
                    .filter(|c| now.saturating_duration_since(c.started()) >= args.connect_timeout)
                    .map(|c| c.state);
                if let Some(state) = late {
                    stats.error(timeout_kind(state), 1);
                    slot.conn = None;
                    slot.next_start = now;
                }
            }
        }
        until = until.min(next_sweep);
        if poll
            .poll(&mut events, Some(until.saturating_duration_since(now)))
            .is_err()
        {
            continue;
        }
        let now = Instant::now();
        for ev in events.iter() {
            let Some(slot) = slots.get_mut(ev.token().0) else {
                continue;
            };
            let Some(c) = slot.conn.as_mut() else {
                continue;
            };
            let mut cx = Ctx {
                w: &w,
                stats: &mut stats,
                now,
                window,
                top_up_to: 1,
                echoes: &mut echoes,
                scratch: &mut scratch,
            };
            let change = c.on_event(&mut cx);
            let (started, done) = (c.started(), c.state == State::Done);
            if change == Change::Cycled {
                if now >= window.0 && now < window.1 {
                    stats.cycles += 1;
                    let us = now.saturating_duration_since(started).as_micros() as u64;
                    Stats::record_us(&mut stats.cycle, us);
                }
                slot.conn = None;
                slot.next_start = now;
            } else if done {
                // The error is counted already, by kind.
                slot.conn = None;
                slot.next_start = now + RETRY_AFTER;
            }
        }
        plan.progress
            .fetch_add(echoes - published, Ordering::Relaxed);
        published = echoes;
    }
    plan.progress
        .fetch_add(echoes - published, Ordering::Relaxed);
    // A cycle takes milliseconds; one still going after the drain time
    // is stuck.
    for slot in &slots {
        if let Some(c) = &slot.conn {
            stats.error(timeout_kind(c.state), 1);
        }
    }
    stats
}
