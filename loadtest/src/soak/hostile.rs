//! The hostile half of `loadtest soak`: clients that stall, never read,
//! flood and reset, each kind on a thread of its own, all stopping when
//! told to or at a hard deadline, whichever comes first.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringecho_proto::frame::{encode_client_frame, OpCode};
use serde::Serialize;

/// What the hostile clients of one kind did.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections opened (and, past the handshake, upgraded).
    pub opened: AtomicU64,
    /// Connections the server ended (timeout, close, reset) while the
    /// client still held them.
    pub cut: AtomicU64,
    /// Connects or handshakes that failed.
    pub failed: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    pub kind: &'static str,
    pub clients: usize,
    pub opened: u64,
    pub cut_by_server: u64,
    pub failed: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub cpus: Vec<usize>,
    pub slowloris: usize,
    pub never_read: usize,
    pub flooders: usize,
    /// Frames per second per flooding connection; 0 floods unthrottled.
    pub flood_rate: f64,
    /// Resetting connections per second, over all kinds of reset.
    pub reset_rate: f64,
    /// Stop by then even if never told to.
    pub deadline: Instant,
}

pub struct Hostiles {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counts: Vec<(&'static str, usize, Arc<Counts>)>,
}

const KEY: [u8; 4] = [0x11, 0x5e, 0xa7, 0x3c];

impl Hostiles {
    pub fn start(plan: &Plan) -> Result<Hostiles, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut h = Hostiles {
            stop: stop.clone(),
            threads: Vec::new(),
            counts: Vec::new(),
        };
        type Body = fn(&Plan, &Counts, &AtomicBool);
        let kinds: [(&'static str, usize, Body); 4] = [
            ("slowloris", plan.slowloris, slowloris),
            ("never-read", plan.never_read, never_read),
            ("flood", plan.flooders, flood),
            ("reset", usize::from(plan.reset_rate > 0.0), reset),
        ];
        for (name, clients, body) in kinds {
            if clients == 0 {
                continue;
            }
            let counts = Arc::new(Counts::default());
            h.counts.push((name, clients, counts.clone()));
            let (plan, stop) = (plan.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("hostile-{name}"))
                .spawn(move || {
                    if let Err(e) = crate::affinity::pin_current_thread(&plan.cpus) {
                        eprintln!("soak: cannot pin the {name} clients: {e}");
                    }
                    body(&plan, &counts, &stop);
                })
                .map_err(|e| format!("cannot start the {name} clients: {e}"))?;
            h.threads.push(t);
        }
        Ok(h)
    }

    /// Stop every hostile client (their sockets close or reset) and report.
    pub fn stop(self) -> Vec<KindSummary> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.counts
            .iter()
            .map(|(kind, clients, c)| KindSummary {
                kind,
                clients: if *kind == "reset" { 0 } else { *clients },
                opened: c.opened.load(Ordering::Relaxed),
                cut_by_server: c.cut.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
            })
            .collect()
    }
}

fn incr(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn running(plan: &Plan, stop: &AtomicBool) -> bool {
    !stop.load(Ordering::Relaxed) && Instant::now() < plan.deadline
}

/// Sleep `d` in short steps so a stop is seen promptly.
fn pause(d: Duration, plan: &Plan, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while running(plan, stop) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn request(addr: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: c29hayBzb2FrIHNvYWshIQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Connect and upgrade; the socket comes back non-blocking.
fn upgraded(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request(addr).as_bytes())?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 || head.len() > 4096 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(ErrorKind::ConnectionRefused.into());
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Close with a reset (SO_LINGER 0), as a vanishing peer does.
fn reset_close(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// True when the server has ended the connection (EOF or an error).
fn server_ended(s: &mut TcpStream, discard: &mut [u8]) -> bool {
    loop {
        match s.read(discard) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Write as much of the endless repetition of `stream` from `*pos` as the
/// socket takes, at most `budget` bytes. Err when the connection is dead.
fn push(s: &mut TcpStream, stream: &[u8], pos: &mut usize, mut budget: usize) -> Result<(), ()> {
    while budget > 0 {
        let end = pos.saturating_add(budget).min(stream.len());
        match s.write(&stream[*pos..end]) {
            Ok(0) => return Err(()),
            Ok(n) => {
                budget -= n;
                *pos = (*pos + n) % stream.len();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// A hostile connection and its position in the byte stream it repeats.
type Slot = Option<(TcpStream, usize)>;

/// One round over `slots`: an empty one gets a new connection, a live one
/// is handed to `alive`, and one that `alive` finds dead (the server ended
/// it) is counted as cut and emptied for the next round.
fn tend(
    slots: &mut [Slot],
    c: &Counts,
    connect: impl Fn() -> std::io::Result<TcpStream>,
    mut alive: impl FnMut(&mut TcpStream, &mut usize) -> bool,
) {
    for slot in slots.iter_mut() {
        match slot {
            None => match connect() {
                Ok(s) => {
                    incr(&c.opened);
                    *slot = Some((s, 0));
                }
                Err(_) => incr(&c.failed),
            },
            Some((s, pos)) => {
                if !alive(s, pos) {
                    incr(&c.cut);
                    *slot = None;
                }
            }
        }
    }
}

/// Slowloris: a header block that never ends, one byte a second. The
/// server's handshake deadline cuts each; the client reconnects.
fn slowloris(plan: &Plan, c: &Counts, stop: &AtomicBool) {
    let mut conns: Vec<Slot> = (0..plan.slowloris).map(|_| None).collect();
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", plan.addr);
    let connect = || {
        let mut s = TcpStream::connect_timeout(&plan.addr, Duration::from_secs(2))?;
        s.write_all(head.as_bytes())?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let mut discard = [0u8; 1024];
    while running(plan, stop) {
        tend(&mut conns, c, connect, |s, _| {
            let mut one = 0;
            !server_ended(s, &mut discard) && push(s, b"a", &mut one, 1).is_ok()
        });
        pause(Duration::from_secs(1), plan, stop);
    }
}

/// Never-reading clients: push 64 KiB messages whenever the socket takes
/// them and never read an echo. Backpressure should stop the server
/// reading them; the idle and close timeouts should cut them eventually.
fn never_read(plan: &Plan, c: &Counts, stop: &AtomicBool) {
    let mut frame = Vec::new();
    encode_client_frame(true, OpCode::Binary, KEY, &[0x5a; 64 * 1024], &mut frame);
    let mut conns: Vec<Slot> = (0..plan.never_read).map(|_| None).collect();
    while running(plan, stop) {
        tend(
            &mut conns,
            c,
            || upgraded(plan.addr),
            |s, pos| push(s, &frame, pos, usize::MAX).is_ok(),
        );
        pause(Duration::from_millis(100), plan, stop);
    }
    for (s, _) in conns.into_iter().flatten() {
        reset_close(s);
    }
}

/// Flooders: pings and small text messages back to back at `flood_rate`
/// frames a second each (or as fast as the socket takes them), reading and
/// discarding whatever comes back.
fn flood(plan: &Plan, c: &Counts, stop: &AtomicBool) {
    let mut cycle = Vec::new();
    for i in 0..64u8 {
        let (op, fill) = if i % 2 == 0 {
            (OpCode::Ping, b'p')
        } else {
            (OpCode::Text, b'f')
        };
        let mut payload = [fill; 125];
        payload[0] = i;
        encode_client_frame(true, op, KEY, &payload, &mut cycle);
    }
    let frame_len = cycle.len() / 64;
    let tick = Duration::from_millis(10);
    let per_tick = if plan.flood_rate > 0.0 {
        ((plan.flood_rate * tick.as_secs_f64()).ceil() as usize).max(1) * frame_len
    } else {
        usize::MAX
    };
    let mut conns: Vec<Slot> = (0..plan.flooders).map(|_| None).collect();
    let mut discard = vec![0u8; 64 * 1024];
    while running(plan, stop) {
        tend(
            &mut conns,
            c,
            || upgraded(plan.addr),
            |s, pos| !server_ended(s, &mut discard) && push(s, &cycle, pos, per_tick).is_ok(),
        );
        std::thread::sleep(tick);
    }
    for (s, _) in conns.into_iter().flatten() {
        reset_close(s);
    }
}

/// Resetting clients, in turn: mid-handshake, mid-frame (the start of a
/// 1 MiB message) and mid-write (after pushing echo traffic without
/// reading, so the server's write is pending), each ended with a RST.
fn reset(plan: &Plan, c: &Counts, stop: &AtomicBool) {
    let mut big = Vec::new();
    encode_client_frame(true, OpCode::Binary, KEY, &vec![0x33; 1 << 20], &mut big);
    let interval = Duration::from_secs_f64(1.0 / plan.reset_rate.max(0.01));
    let start = Instant::now();
    let mut i = 0u64;
    while running(plan, stop) {
        let attempt = match i % 3 {
            0 => {
                TcpStream::connect_timeout(&plan.addr, Duration::from_secs(2)).and_then(|mut s| {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: soak\r\nUpgr")?;
                    Ok(s)
                })
            }
            1 => upgraded(plan.addr).map(|mut s| {
                let mut pos = 0;
                let _ = push(&mut s, &big, &mut pos, 10_000);
                s
            }),
            _ => upgraded(plan.addr).map(|mut s| {
                let mut pos = 0;
                let _ = push(&mut s, &big, &mut pos, big.len());
                std::thread::sleep(Duration::from_millis(5));
                s
            }),
        };
        match attempt {
            Ok(s) => {
                incr(&c.opened);
                reset_close(s);
            }
            Err(_) => incr(&c.failed),
        }
        i += 1;
        let next = start + interval.mul_f64(i as f64);
        pause(next.saturating_duration_since(Instant::now()), plan, stop);
    }
}
