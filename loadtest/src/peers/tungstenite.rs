//! tokio-tungstenite echo on a current_thread runtime.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{corrupt, serve_on_one_thread, Act, Sabotage};
use crate::cli::PeerArgs;

pub fn run(p: &PeerArgs) -> Result<(), String> {
    serve_on_one_thread(p, echo)
}

async fn echo(s: TcpStream, mut sabotage: Sabotage) {
    let _ = s.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    // Pings are answered by tungstenite itself; a close is answered and
    // then the stream ends.
    while let Some(Ok(msg)) = ws.next().await {
        let msg = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            _ => continue,
        };
        let msg = match sabotage.next() {
            Act::Echo => msg,
            Act::Drop => continue,
            Act::Corrupt => match msg {
                Message::Text(t) => {
                    let mut b = t.into_bytes();
                    corrupt(&mut b);
                    Message::Text(String::from_utf8_lossy(&b).into_owned())
                }
                Message::Binary(mut b) => {
                    corrupt(&mut b);
                    Message::Binary(b)
                }
                other => other,
            },
        };
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}
