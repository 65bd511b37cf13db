//! One connection: the opening handshake, then the echo loop.
//!
//! A single task keeps at most one read and one write in flight at once and
//! polls both, so reading and writing overlap without a second task. An op
//! in flight is never dropped early: tokio-uring would keep its buffer alive,
//! but the op would also pin the socket open. At the end the socket is shut
//! down, which completes whatever is pending, and those completions are
//! awaited before the task returns.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::buffers::{CloseOrder, Flow, OutQueue, ReadBuffer};
use super::http;
use super::shard::ShardCtx;
use crate::protocol::frame::ControlFrame;
use crate::protocol::handshake::{self, Limits, Parsed, Request};
use crate::protocol::message::{self, Session};
use crate::protocol::{close_code, Error};

/// Slices per `writev`: well under IOV_MAX (1024), enough to batch the
/// echoes of every frame in a 64 KiB read of small messages.
const MAX_IOV: usize = 256;

/// Where a connection is in its life, for the shard's sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Handshake,
    Open,
    /// Our close is out (or being written): waiting for the peer.
    Closing,
}

/// Requests from the shard's sweep or shutdown to the connection task.
pub(crate) mod signal {
    pub const PING: u8 = 1;
    pub const IDLE_CLOSE: u8 = 2;
    pub const GOING_AWAY: u8 = 4;
}

/// The part of a connection the shard sees: enough to time it out, ping it,
/// ask it to close, or kill it.
pub(crate) struct ConnCtl {
    pub fd: RawFd,
    pub phase: Cell<Phase>,
    /// Coarse time (ms) the phase was entered.
    pub since: Cell<u64>,
    /// Coarse time of the last byte received.
    pub last_read: Cell<u64>,
    /// Coarse time a server ping went out, while unanswered.
    pub ping_at: Cell<Option<u64>>,
    pub signals: Cell<u8>,
    waker: Cell<Option<Waker>>,
}

impl ConnCtl {
    pub fn new(fd: RawFd, now: u64) -> ConnCtl {
        ConnCtl {
            fd,
            phase: Cell::new(Phase::Handshake),
            since: Cell::new(now),
            last_read: Cell::new(now),
            ping_at: Cell::new(None),
            signals: Cell::new(0),
            waker: Cell::new(None),
        }
    }

    pub fn enter(&self, phase: Phase, now: u64) {
        self.phase.set(phase);
        self.since.set(now);
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
    }
}

/// Serve one accepted connection to the end.
pub(crate) async fn serve(stream: TcpStream, ctx: Rc<ShardCtx>, ctl: Rc<ConnCtl>) {
    let mut rb = ReadBuffer::new(ctx.cfg.read_sizing);
    if handshake(&stream, &mut rb, &ctx).await {
        ctx.stats.upgraded.incr();
        ctl.enter(Phase::Open, ctx.now());
        echo(&stream, rb, &ctx, &ctl).await;
    }
}

/// Read and answer the opening handshake (§4.2). True when upgraded.
async fn handshake(stream: &TcpStream, rb: &mut ReadBuffer, ctx: &ShardCtx) -> bool {
    let limits = Limits {
        max_header_bytes: ctx.cfg.max_header_bytes,
    };
    loop {
        // Room to see the limit crossed, so an oversize block gets its 431.
        let want = (limits.max_header_bytes + 1).saturating_sub(rb.unprocessed().len());
        let buf = rb.take_for_read(false, want.max(256));
        let (res, buf, spare) = read(stream, buf).await;
        let n = match res {
            Ok(n) if n > 0 => n,
            _ => return false,
        };
        rb.restore(buf, n, spare);
        ctx.stats.bytes_in.add(n as u64);
        let mut response = Vec::new();
        let upgraded = match handshake::parse_request(rb.unprocessed(), &limits) {
            Ok(Parsed::Partial) => continue,
            Ok(Parsed::Complete {
                request: Request::Plain(req),
                ..
            }) => {
                ctx.stats.http_requests.incr();
                http::respond(&req, &ctx.all_stats, &mut response);
                None
            }
            Ok(Parsed::Complete {
                request: Request::Upgrade(req),
                ..
            }) if !handshake::origin_allowed(req.origin, &ctx.cfg.allowed_origins) => {
                ctx.stats.handshake_errors.incr();
                handshake::write_error_response(&mut response, crate::protocol::HandshakeError::OriginNotAllowed);
                None
            }
            Ok(Parsed::Complete {
                request: Request::Upgrade(req),
                consumed,
            }) => {
                let protocol = handshake::select_subprotocol(&req.protocols, &ctx.cfg.subprotocols);
                handshake::write_switching_protocols(&mut response, req.key, protocol);
                Some(consumed)
            }
            Err(e) => {
                ctx.stats.handshake_errors.incr();
                handshake::write_error_response(&mut response, e);
                None
            }
        };
        ctx.stats.bytes_out.add(response.len() as u64);
        let (res, _) = stream.write_all(response).await;
        return match (res, upgraded) {
            (Ok(()), Some(consumed)) => {
                rb.consume(consumed);
                true
            }
            (Ok(()), None) => {
                linger_close(stream, rb).await;
                false
            }
            (Err(_), _) => false,
        };
    }
}

/// Close after our last bytes: half-close, then read until the peer closes
/// (or the sweep's timeout kills the socket), so unread input does not turn
/// our close into a reset that could destroy the response in flight.
async fn linger_close(stream: &TcpStream, rb: &mut ReadBuffer) {
    let _ = stream.shutdown(Shutdown::Write);
    for _ in 0..64 {
        let buf = rb.take_for_read(false, 0);
        let (res, mut buf, _) = read(stream, buf).await;
        buf.clear();
        rb.restore(buf, 0, 0);
        if !matches!(res, Ok(n) if n > 0) {
            break;
        }
    }
}

/// Read into the spare capacity of `buf`; returns it with the spare size
/// the read was offered.
async fn read(stream: &TcpStream, buf: BytesMut) -> (io::Result<usize>, BytesMut, usize) {
    let len = buf.len();
    let spare = buf.capacity() - len;
    let (res, slice) = stream.read(buf.slice(len..)).await;
    (res, slice.into_inner(), spare)
}

enum Wake {
    Read(io::Result<usize>, BytesMut, usize),
    Wrote(io::Result<usize>, Vec<Bytes>),
    Signal(u8),
}

/// How the echo loop ends once the output drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Running,
    /// The peer closed and our reply is queued: the server closes the TCP
    /// connection first once it is written (§7.1.1).
    PeerClosed,
    /// We failed the connection (§7.1.7): after our close, half-close and
    /// drain until the peer goes or the close timeout passes.
    Failed,
    /// We started the close (shutdown, idle): wait for the peer's close.
    ServerClosing,
    /// The peer's reads or writes failed, or it vanished.
    Gone,
}

async fn echo(stream: &TcpStream, mut rb: ReadBuffer, ctx: &ShardCtx, ctl: &ConnCtl) {
    let cfg = &ctx.cfg;
    let mut session = Session::new(message::Config {
        max_message_size: cfg.max_message_size,
    });
    let mut out = OutQueue::new();
    let mut ending = Ending::Running;
    // After a failure: our close is out and our side of the TCP connection
    // is shut, so the peer sees EOF after the close frame.
    let mut half_closed = false;
    // Grows to what the connection's traffic needs and is then reused: an
    // idle or chatty connection keeps a few slots, not MAX_IOV (8 KiB).
    let mut spare_batch: Vec<Bytes> = Vec::new();
    // The ops in flight live in pinned slots on this task's stack: each has
    // one concrete future type, so no allocation per read or write.
    let mut read_op = std::pin::pin!(None);
    let mut write_op = std::pin::pin!(None);

    // Frames the client pipelined behind its handshake.
    if !rb.unprocessed().is_empty() {
        ending = process(&mut rb, &mut session, &mut out, ctx);
    }

    loop {
        if write_op.is_none() && out.has_pending() {
            let mut batch = std::mem::take(&mut spare_batch);
            out.fill_batch(&mut batch, MAX_IOV);
            // Most echoes fit the socket buffer at once: send them now and
            // skip a ring op and a completion wake-up. Only what the socket
            // would not take goes through io_uring.
            let sent = if cfg.direct_send {
                send_now(ctl.fd, &batch)
            } else {
                0
            };
            if sent > 0 {
                ctx.stats.bytes_out.add(sent as u64);
                out.advance(sent);
                out.fill_batch(&mut batch, MAX_IOV);
            }
            if batch.is_empty() {
                spare_batch = batch;
            } else {
                write_op.set(Some(stream.writev(batch)));
            }
        }
        // Backpressure: stop reading while the peer is not taking our output.
        // Decided after the write above: a direct send may have just drained
        // the backlog, and then reading must resume now, or the loop would
        // find nothing in flight and end a healthy connection.
        // After a failure, drain input only once our close is out (which the
        // write above may just have completed).
        let reading = match ending {
            Ending::Running | Ending::ServerClosing => true,
            Ending::Failed => out.close_written(),
            Ending::PeerClosed | Ending::Gone => false,
        };
        if read_op.is_none() && reading && out.queued_bytes() < cfg.max_output_bytes {
            let buf = rb.take_for_read(session.expects_payload(), 0);
            read_op.set(Some(read(stream, buf)));
        }
        if ending != Ending::Running && ctl.phase.get() != Phase::Closing {
            // From here the close timeout bounds the connection's life. It
            // must start now, not once our output is written: a peer that
            // never reads would keep that write, and the connection, forever.
            ctl.enter(Phase::Closing, ctx.now());
        }
        if write_op.is_none() && !out.has_pending() {
            match ending {
                Ending::PeerClosed | Ending::Gone => break,
                Ending::Failed if !half_closed => {
                    half_closed = true;
                    let _ = stream.shutdown(Shutdown::Write);
                }
                _ => {}
            }
        }
        if read_op.is_none() && write_op.is_none() {
            break;
        }

        let wake = poll_fn(|cx| {
            let sig = ctl.signals.replace(0);
            if sig != 0 {
                return Poll::Ready(Wake::Signal(sig));
            }
            if let Some(op) = read_op.as_mut().as_pin_mut() {
                if let Poll::Ready((res, buf, spare)) = op.poll(cx) {
                    read_op.set(None);
                    return Poll::Ready(Wake::Read(res, buf, spare));
                }
            }
            if let Some(op) = write_op.as_mut().as_pin_mut() {
                if let Poll::Ready((res, batch)) = op.poll(cx) {
                    write_op.set(None);
                    return Poll::Ready(Wake::Wrote(res, batch));
                }
            }
            // Keep the stored waker when it is this task's already: cloning
            // one per poll is an atomic increment and decrement per message.
            let waker = match ctl.waker.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            ctl.waker.set(Some(waker));
            Poll::Pending
        })
        .await;

        match wake {
            Wake::Read(Ok(n), buf, spare) if n > 0 => {
                rb.restore(buf, n, spare);
                ctx.stats.bytes_in.add(n as u64);
                ctl.last_read.set(ctx.now());
                ctl.ping_at.set(None);
                if matches!(ending, Ending::Running | Ending::ServerClosing) {
                    let next = process(&mut rb, &mut session, &mut out, ctx);
                    if next != Ending::Running || ending == Ending::Running {
                        ending = next;
                    }
                    if ending == Ending::ServerClosing && session.is_closed() {
                        // The peer answered our close: the handshake is done.
                        ending = Ending::PeerClosed;
                    }
                } else {
                    // Draining after a failure: discard.
                    rb.consume(usize::MAX);
                }
            }
            Wake::Read(_, buf, spare) => {
                rb.restore(buf, 0, spare);
                // EOF or error: nothing more will come. A peer that left
                // without a close cannot be answered.
                // Output still queued goes out first (the peer may only
                // have half-closed); the close timeout bounds that wait.
                ending = Ending::Gone;
                if !out.has_pending() {
                    break;
                }
            }
            Wake::Wrote(Ok(n), mut batch) => {
                ctx.stats.bytes_out.add(n as u64);
                out.advance(n);
                batch.clear();
                spare_batch = batch;
                if n == 0 {
                    break;
                }
            }
            // The peer is gone: nothing more can be delivered.
            Wake::Wrote(Err(_), _) => break,
            Wake::Signal(sig) => {
                if sig & signal::GOING_AWAY != 0 {
                    if let Some(close) =
                        session.initiate_close(close_code::GOING_AWAY, "server shutting down")
                    {
                        out.push_close(close, CloseOrder::AheadOfData);
                        ending = Ending::ServerClosing;
                    }
                } else if sig & signal::IDLE_CLOSE != 0 {
                    ctx.stats.idle_closed.incr();
                    if let Some(close) =
                        session.initiate_close(close_code::GOING_AWAY, "idle timeout")
                    {
                        out.push_close(close, CloseOrder::AheadOfData);
                        ending = Ending::ServerClosing;
                    }
                } else if sig & signal::PING != 0 && !session.close_sent() {
                    out.push_ping(ControlFrame::ping(b"ringecho"));
                }
            }
        }
    }

    // Complete whatever is still in flight before the socket can close.
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(op) = read_op.as_pin_mut() {
        let _ = op.await;
    }
    if let Some(op) = write_op.as_pin_mut() {
        let _ = op.await;
    }
    ctx.stats.copied_bytes.add(rb.carried);
}

/// Send `batch` without blocking, as far as the socket buffer takes it;
/// returns the bytes sent (0 when it would block or failed: the io_uring
/// write that follows reports a real error).
fn send_now(fd: RawFd, batch: &[Bytes]) -> usize {
    const MAX: usize = 64;
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX];
    let n = batch.len().min(MAX);
    for (v, b) in iov.iter_mut().zip(batch) {
        v.iov_base = b.as_ptr() as *mut libc::c_void;
        v.iov_len = b.len();
    }
    // SAFETY: the first `n` iovecs point into `batch`'s slices, which stay
    // alive and unmodified for the call; sendmsg only reads them. msghdr is
    // plain data, valid zeroed (no name, no control data). `fd` is this
    // connection's open socket.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    usize::try_from(sent).unwrap_or(0)
}

/// Feed the read buffer to the protocol core; queue echoes, pongs and
/// closes. Returns how the connection should proceed.
fn process(
    rb: &mut ReadBuffer,
    session: &mut Session,
    out: &mut OutQueue,
    ctx: &ShardCtx,
) -> Ending {
    let before = out.queued_bytes();
    let result = rb.process(session, out);
    ctx.stats
        .echo_bytes
        .add(out.queued_bytes().saturating_sub(before) as u64);
    match result {
        Ok(Flow::Open) => Ending::Running,
        Ok(Flow::PeerClosed) => Ending::PeerClosed,
        Err(e) => {
            ctx.stats.protocol_errors.incr();
            fail(session, out, e)
        }
    }
}

fn fail(session: &mut Session, out: &mut OutQueue, e: Error) -> Ending {
    if let Some(close) = session.fail(e) {
        out.push_close(close, CloseOrder::AfterData);
    }
    Ending::Failed
}
