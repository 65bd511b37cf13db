//! The io_uring ceiling: a raw TCP echo as one completion loop on the
//! `io-uring` crate, with the ring shell's ring flags (SINGLE_ISSUER,
//! DEFER_TASKRUN), multishot accept and a non-blocking send before any ring
//! send. Same bytes in and out as a WebSocket echo, no WebSocket work, no
//! runtime: what ringecho's ring shell could at most reach.

use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd};

use uring::{cqueue, opcode, squeue, types, IoUring};

use super::announce;
use crate::cli::PeerArgs;

const BUF: usize = 64 * 1024;
const ACCEPT: u64 = u64::MAX;
/// The low bit of user_data: 0 a receive, 1 a send; the rest the slot.
const SEND: u64 = 1;

struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Bytes of `buf` received and not yet sent back, from `sent`.
    len: usize,
    sent: usize,
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

fn recv(ring: &mut IoUring, slot: usize, c: &mut Conn) {
    let e = opcode::Recv::new(
        types::Fd(c.stream.as_raw_fd()),
        c.buf.as_mut_ptr(),
        BUF as u32,
    )
    .build()
    .user_data((slot as u64) << 1);
    // SAFETY: `c.buf` is boxed in the slot, which is freed only when the
    // connection's one op in flight has completed.
    unsafe { push(ring, e) };
}

fn send(ring: &mut IoUring, slot: usize, c: &mut Conn) {
    let rest = &c.buf[c.sent..c.len];
    let e = opcode::Send::new(
        types::Fd(c.stream.as_raw_fd()),
        rest.as_ptr(),
        rest.len() as u32,
    )
    .flags(libc::MSG_NOSIGNAL)
    .build()
    .user_data(((slot as u64) << 1) | SEND);
    // SAFETY: as in `recv`.
    unsafe { push(ring, e) };
}

/// Send what the socket takes now, then through the ring what it did not;
/// receive again once everything is out.
fn echo(ring: &mut IoUring, slot: usize, c: &mut Conn) {
    let rest = &c.buf[c.sent..c.len];
    // SAFETY: `rest` is valid for reads for the call; the fd is open.
    let n = unsafe {
        libc::send(
            c.stream.as_raw_fd(),
            rest.as_ptr().cast(),
            rest.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    c.sent += usize::try_from(n).unwrap_or(0);
    if c.sent == c.len {
        recv(ring, slot, c);
    } else {
        send(ring, slot, c);
    }
}

pub fn run(p: &PeerArgs) -> Result<(), String> {
    let listener =
        std::net::TcpListener::bind(p.listen).map_err(|e| format!("bind {}: {e}", p.listen))?;
    let mut ring = ring().map_err(|e| format!("io_uring: {e}"))?;
    announce(listener.local_addr().map_err(|e| e.to_string())?);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    // SAFETY: accept points to no buffer.
    unsafe { push(&mut ring, accept.clone()) };
    let mut done: Vec<(u64, i32, u32)> = Vec::new();
    // No signal handling: SIGTERM's default action ends the process, which
    // is all a benchmark peer needs.
    loop {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("io_uring_enter: {e}"));
            }
        }
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
                    buf: vec![0; BUF].into_boxed_slice(),
                    len: 0,
                    sent: 0,
                });
                recv(&mut ring, slot, c);
                continue;
            }
            let slot = (ud >> 1) as usize;
            let Some(Some(c)) = conns.get_mut(slot) else {
                continue;
            };
            if res <= 0 {
                // EOF or an error: the connection's one op is done, so its
                // buffer can go.
                conns[slot] = None;
                free.push(slot);
                continue;
            }
            if ud & SEND == 0 {
                (c.len, c.sent) = (res as usize, 0);
            } else {
                c.sent += res as usize;
            }
            echo(&mut ring, slot, c);
        }
    }
}
