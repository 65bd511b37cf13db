//! fastwebsockets echo on a current_thread runtime. The opening handshake
//! is done here by hand (fastwebsockets' `upgrade` feature would pull in a
//! hyper server for one response); the frames are fastwebsockets' own.

use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{corrupt, serve_on_one_thread, Act, Sabotage};
use crate::cli::PeerArgs;

const MAX_REQUEST: usize = 16 * 1024;

pub fn run(p: &PeerArgs) -> Result<(), String> {
    serve_on_one_thread(p, echo)
}

/// Read the upgrade request and answer 101. Bytes after the request would be
/// lost here; clients send nothing before the 101, and ours does not.
async fn handshake(s: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf).ok()?;
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let Some(key) = key else {
        let _ = s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        return None;
    };
    let accept = ringecho_proto::handshake::accept_key(key.trim());
    let accept = std::str::from_utf8(&accept).ok()?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(resp.as_bytes()).await.ok()
}

async fn echo(mut s: TcpStream, mut sabotage: Sabotage) {
    let _ = s.set_nodelay(true);
    if handshake(&mut s).await.is_none() {
        return;
    }
    let mut ws = WebSocket::after_handshake(s, Role::Server);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    while let Ok(mut frame) = ws.read_frame().await {
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {}
            _ => continue,
        }
        match sabotage.next() {
            Act::Echo => {}
            Act::Drop => continue,
            Act::Corrupt => corrupt(frame.payload.to_mut()),
        }
        if ws.write_frame(frame).await.is_err() {
            break;
        }
    }
}
