//! Peer echo servers that ringecho is compared against, each on one thread:
//! `loadtest peer fastwebsockets|tungstenite|raw-uring|raw-ring|deflate-recompress
//! --listen ADDR:PORT`.
//! Each prints `listening on ADDR:PORT` once bound (port 0 picks one) and
//! stops on SIGTERM/SIGINT.

mod deflate_recompress;
mod fastws;
mod raw_ring;
mod raw_uring;
mod tungstenite;

use crate::cli::{PeerArgs, PeerKind};

pub fn run(p: PeerArgs) -> Result<(), String> {
    if matches!(p.kind, PeerKind::RawUring | PeerKind::RawRing) && (p.corrupt || p.drop) {
        return Err("--corrupt and --drop need a WebSocket peer \
             (fastwebsockets, tungstenite or deflate-recompress)"
            .into());
    }
    match p.kind {
        PeerKind::FastWebSockets => fastws::run(&p),
        PeerKind::Tungstenite => tungstenite::run(&p),
        PeerKind::RawUring => raw_uring::run(&p),
        PeerKind::RawRing => raw_ring::run(&p),
        PeerKind::DeflateRecompress => deflate_recompress::run(&p),
    }
}

/// Test-only misbehaviour: every 100th message of a connection is corrupted
/// or dropped, so the load generator's verification has something to find.
#[derive(Debug, Clone, Copy)]
pub struct Sabotage {
    corrupt: bool,
    drop: bool,
    count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Echo,
    Corrupt,
    Drop,
}

const EVERY: u64 = 100;

impl Sabotage {
    pub fn new(p: &PeerArgs) -> Sabotage {
        Sabotage {
            corrupt: p.corrupt,
            drop: p.drop,
            count: 0,
        }
    }

    pub fn next(&mut self) -> Act {
        self.count += 1;
        if !self.count.is_multiple_of(EVERY) {
            return Act::Echo;
        }
        // With both flags, alternate so both kinds show up.
        match (self.corrupt, self.drop) {
            (true, true) if (self.count / EVERY).is_multiple_of(2) => Act::Drop,
            (true, _) => Act::Corrupt,
            (false, true) => Act::Drop,
            (false, false) => Act::Echo,
        }
    }
}

/// Flip the low bit of the last byte: stays ASCII (so text stays valid
/// UTF-8) and lies past the sequence number for messages over 16 bytes.
pub fn corrupt(payload: &mut [u8]) {
    if let Some(b) = payload.last_mut() {
        *b ^= 0x01;
    }
}

/// Stop on SIGTERM or SIGINT; a peer is also fine to kill outright.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action still ends the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Accept on `p.listen` on one thread until SIGTERM or SIGINT, each
/// connection served by its own task: the shape every WebSocket peer shares.
fn serve_on_one_thread<F, Fut>(p: &PeerArgs, serve: F) -> Result<(), String>
where
    F: Fn(tokio::net::TcpStream, Sabotage) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = current_thread_runtime()?;
    let sabotage = Sabotage::new(p);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(p.listen)
            .await
            .map_err(|e| format!("bind {}: {e}", p.listen))?;
        announce(listener.local_addr().map_err(|e| e.to_string())?);
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    // Accept errors (EMFILE and the like) are transient for a
                    // benchmark peer; the client counts what they cost.
                    if let Ok((s, _)) = acc {
                        tokio::spawn(serve(s, sabotage));
                    }
                }
                _ = &mut stop => return Ok(()),
            }
        }
    })
}

fn announce(addr: std::net::SocketAddr) {
    use std::io::Write as _;
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}
