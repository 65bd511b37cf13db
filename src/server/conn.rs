//! One connection on tokio-uring: a loop that moves bytes between the
//! socket and the connection engine (`ringecho_proto::Connection`), which
//! decides everything else.
//!
//! A single task keeps at most one read and one write in flight at once and
//! polls both, so reading and writing overlap without a second task. An op
//! in flight is never dropped early: tokio-uring would keep its buffer alive,
//! but the op would also pin the socket open. At the end the socket is shut
//! down, which completes whatever is pending, and those completions are
//! awaited before the task returns.

use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::context::{signal, ConnCtl, ShardCtx};
use super::http;
use super::socket::send_now;
use super::stats::Seen;

/// Slices per `writev`: well under IOV_MAX (1024), enough to batch the
/// echoes of every frame in a 64 KiB read of small messages.
const MAX_IOV: usize = 256;

/// A batch vector that grew past this for a burst is given back.
const KEEP_IOV: usize = 16;

enum Wake {
    Read(io::Result<usize>, BytesMut),
    Wrote(io::Result<usize>, Vec<Bytes>),
    Signal(u8),
}

/// Serve one accepted connection to the end.
pub(crate) async fn serve(stream: TcpStream, ctx: &ShardCtx, ctl: &ConnCtl) {
    let mut conn = super::open_connection(&ctx.cfg, &ctx.engine, ctx.now());
    // Grows to what the connection's traffic needs and is then reused.
    let mut spare_batch: Vec<Bytes> = Vec::new();
    let mut seen = Seen::default();
    let peer = super::log::peer_if_logged(&stream);
    // The ops in flight live in pinned slots on this task's stack: each has
    // one concrete future type, so no allocation per read or write.
    let mut read_op = std::pin::pin!(None);
    let mut write_op = std::pin::pin!(None);

    loop {
        super::ktls::run_commands(ctl.fd, &mut conn, &ctx.stats, read_op.is_some());
        if write_op.is_none() {
            let mut batch = std::mem::take(&mut spare_batch);
            conn.poll_transmit(&mut batch, MAX_IOV);
            // Most echoes fit the socket buffer at once: send them now and
            // skip a ring op and a completion wake-up. Only what the socket
            // would not take goes through io_uring.
            if !batch.is_empty() && ctx.cfg.direct_send {
                // An error is left for the writev that follows to report.
                let sent = send_now(ctl.fd, &batch).unwrap_or(0);
                ctx.stats.direct_sends.incr();
                if sent > 0 {
                    ctx.stats.bytes_out.add(sent as u64);
                    conn.handle_written(sent, ctx.now());
                    conn.poll_transmit(&mut batch, MAX_IOV);
                }
            }
            if batch.is_empty() {
                spare_batch = batch;
            } else {
                write_op.set(Some(stream.writev(batch)));
            }
        }
        if conn.poll_shutdown_write() {
            let _ = stream.shutdown(Shutdown::Write);
        }
        if conn.is_done() {
            break;
        }
        // A direct send may have written the last of a TLS handshake: the
        // session passes to the kernel before a read is armed.
        super::ktls::run_commands(ctl.fd, &mut conn, &ctx.stats, read_op.is_some());
        if read_op.is_none() && conn.wants_read() {
            read_op.set(Some(read(&stream, conn.read_buffer())));
        }
        ctl.deadline.set(conn.poll_timeout());

        let wake = poll_fn(|cx| {
            let sig = ctl.signals.replace(0);
            if sig != 0 {
                return Poll::Ready(Wake::Signal(sig));
            }
            if let Some(op) = read_op.as_mut().as_pin_mut() {
                if let Poll::Ready((res, buf)) = op.poll(cx) {
                    read_op.set(None);
                    return Poll::Ready(Wake::Read(res, buf));
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

        let now = ctx.now();
        match wake {
            Wake::Read(Ok(n), buf) => {
                ctx.stats.bytes_in.add(n as u64);
                conn.handle_read(buf, n, now);
            }
            Wake::Read(Err(e), buf) => {
                // An error ends the stream like EOF, but for a record
                // kernel TLS hands over only with its type.
                conn.cancel_read(buf);
                let errno = e.raw_os_error().unwrap_or(0);
                super::ktls::read_failed(ctl.fd, errno, &mut conn, now);
            }
            Wake::Wrote(Ok(n), mut batch) => {
                ctx.stats.bytes_out.add(n as u64);
                conn.handle_written(n, now);
                batch.clear();
                if batch.capacity() > KEEP_IOV {
                    batch.shrink_to(KEEP_IOV);
                }
                spare_batch = batch;
            }
            Wake::Wrote(Err(_), _) => conn.handle_write_error(),
            Wake::Signal(sig) => {
                if sig & signal::KILL != 0 {
                    break;
                }
                if sig & signal::GOING_AWAY != 0 {
                    conn.shutdown(now);
                }
                if sig & signal::TIMER != 0 {
                    conn.handle_timeout(now);
                }
            }
        }
        http::answer_pending(&mut conn);
        ctx.stats.sync(&mut conn, &mut seen);
    }

    super::log::connection_ended(peer.as_deref(), &conn, &ctx.cfg.trust_proxy);
    ctx.stats.forget(&seen);
    // Complete whatever is still in flight before the socket can close.
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(op) = read_op.as_pin_mut() {
        let _ = op.await;
    }
    if let Some(op) = write_op.as_pin_mut() {
        let _ = op.await;
    }
    ctx.stats.copied_bytes.add(conn.carried_bytes());
}

/// Read into the spare capacity of `buf`.
async fn read(stream: &TcpStream, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
    let len = buf.len();
    let (res, slice) = stream.read(buf.slice(len..)).await;
    (res, slice.into_inner())
}
