//! The ceiling: a raw TCP echo on tokio-uring, one thread, same ring set-up
//! as ringecho's shards. Same bytes in and out, no WebSocket work.

use std::net::SocketAddr;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use super::announce;
use crate::cli::PeerArgs;

const BUF: usize = 64 * 1024;

fn runtime() -> std::io::Result<tokio_uring::Runtime> {
    let attempt = |b: &io_uring::Builder| {
        tokio_uring::Runtime::new(tokio_uring::builder().entries(1024).uring_builder(b))
    };
    let mut tuned = io_uring::IoUring::builder();
    tuned.setup_coop_taskrun().setup_single_issuer();
    match attempt(&tuned) {
        // Kernels before 6.0 refuse these flags; the plain ring works.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => attempt(&io_uring::IoUring::builder()),
        other => other,
    }
}

pub fn run(p: &PeerArgs) -> Result<(), String> {
    let rt = runtime().map_err(|e| format!("io_uring: {e}"))?;
    let addr: SocketAddr = p.listen;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        announce(listener.local_addr().map_err(|e| e.to_string())?);
        // No signal handling: SIGTERM's default action ends the process,
        // which is all a benchmark peer needs.
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio_uring::spawn(echo(s));
            }
        }
    })
}

async fn echo(s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; BUF];
    loop {
        let (res, b) = s.read(buf).await;
        let n = match res {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (res, slice) = s.write_all(b.slice(..n)).await;
        if res.is_err() {
            return;
        }
        buf = slice.into_inner();
    }
}
