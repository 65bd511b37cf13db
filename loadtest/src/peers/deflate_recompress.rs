//! The recompressing echo: permessage-deflate (RFC 7692) the way
//! uWebSockets and most servers echo a compressed message — inflate it,
//! check it, compress it again — the baseline for ringecho's verbatim echo
//! of compressed messages. One thread on a current_thread runtime, like the
//! fastwebsockets peer; frames are ringecho-proto's codec, and every
//! protocol decision is made in [`Echo`], apart from the socket.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress};
use ringecho_proto::error::close_code;
use ringecho_proto::frame::{
    encode_server_header, parse_client_header, ControlFrame, OpCode, MAX_SERVER_HEADER,
};
use ringecho_proto::mask::apply_mask;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{corrupt, serve_on_one_thread, Act, Sabotage};
use crate::cli::PeerArgs;
use crate::deflate::{self, FrameError, InflateError, Message, Reassembler, RSV1};

/// Largest message, compressed as received or inflated; past it the
/// connection is closed with 1009.
const MAX_MESSAGE: usize = 16 << 20;
const MAX_REQUEST: usize = 16 * 1024;
/// Room made for each read.
const READ_CHUNK: usize = 64 * 1024;

/// The level the peer compresses at: zlib's default, which uWebSockets'
/// and most servers' permessage-deflate use.
pub const LEVEL: u32 = 6;

/// One compressor and one inflater for all of the thread's connections,
/// reset for every message, as uWebSockets shares them per event loop: a
/// message is inflated and compressed again without yielding, so no two
/// connections use them at once, and memory does not grow with the
/// connection count.
pub struct Codec {
    compress: Compress,
    inflate: Decompress,
    plain: Vec<u8>,
    packed: Vec<u8>,
}

impl Codec {
    pub fn new() -> Codec {
        Codec {
            compress: deflate::compressor(Compression::new(LEVEL)),
            inflate: deflate::inflater(),
            plain: Vec::new(),
            packed: Vec::new(),
        }
    }
}

thread_local! {
    static CODEC: RefCell<Codec> = RefCell::new(Codec::new());
}

pub fn run(p: &PeerArgs) -> Result<(), String> {
    serve_on_one_thread(p, serve)
}

/// Read the upgrade request and answer 101, accepting permessage-deflate
/// when an offer allows ([`deflate::peer_answer`]). Returns whether it was
/// agreed and the bytes that followed the request.
async fn handshake(s: &mut TcpStream) -> Option<(bool, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..end]).ok()?;
    let values = |name: &str| -> Vec<&str> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect()
    };
    let Some(key) = values("sec-websocket-key").first().map(|k| k.trim()) else {
        let _ = s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        return None;
    };
    let accept = ringecho_proto::handshake::accept_key(key);
    let accept = std::str::from_utf8(&accept).ok()?;
    let answer = deflate::peer_answer(&values("sec-websocket-extensions"));
    let extensions = answer.as_ref().map_or(String::new(), |a| {
        format!("Sec-WebSocket-Extensions: {a}\r\n")
    });
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    );
    s.write_all(resp.as_bytes()).await.ok()?;
    Some((answer.is_some(), buf[end..].to_vec()))
}

async fn serve(mut s: TcpStream, sabotage: Sabotage) {
    let _ = s.set_nodelay(true);
    let Some((agreed, mut input)) = handshake(&mut s).await else {
        return;
    };
    let mut echo = Echo::new(agreed, sabotage, MAX_MESSAGE);
    let mut out = Vec::new();
    loop {
        let flow = CODEC.with(|c| echo.on_bytes(&mut input, &mut out, &mut c.borrow_mut()));
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if flow == Flow::Closed {
            return;
        }
        input.reserve(READ_CHUNK);
        match s.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Whether the connection goes on after the bytes handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Open,
    /// A close frame was queued: send what is queued, then hang up.
    Closed,
}

/// One connection's frames in, its echoes out.
pub struct Echo {
    deflate: bool,
    reassembly: Reassembler,
    sabotage: Sabotage,
    max_message: usize,
}

impl Echo {
    /// `deflate`: permessage-deflate was agreed.
    pub fn new(deflate: bool, sabotage: Sabotage, max_message: usize) -> Echo {
        Echo {
            deflate,
            reassembly: Reassembler::new(max_message),
            sabotage,
            max_message,
        }
    }

    /// Handle every complete frame at the front of `input`, removing them
    /// from it, and queue what to send in `out`.
    pub fn on_bytes(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>, codec: &mut Codec) -> Flow {
        let mut at = 0;
        let flow = loop {
            match self.frame(&mut input[at..], out, codec) {
                Ok(Step::Took(n)) => at += n,
                Ok(Step::Incomplete) => break Flow::Open,
                Ok(Step::Closed) => break Flow::Closed,
                Err(code) => {
                    out.extend_from_slice(ControlFrame::close(Some(code), "").as_bytes());
                    break Flow::Closed;
                }
            }
        };
        input.drain(..at);
        flow
    }

    /// Handle the frame at the front of `buf`, or say why the connection
    /// must close with `Err(code)`.
    fn frame(&mut self, buf: &mut [u8], out: &mut Vec<u8>, codec: &mut Codec) -> Result<Step, u16> {
        let allowed = if self.deflate { RSV1 } else { 0 };
        let h = match parse_client_header(buf, allowed) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Step::Incomplete),
            Err(_) => return Err(close_code::PROTOCOL_ERROR),
        };
        let rsv = buf[0] & 0x70;
        if !deflate::rsv_allowed(rsv, h.opcode as u8, self.deflate) {
            return Err(close_code::PROTOCOL_ERROR);
        }
        if h.payload_len > self.max_message as u64 {
            return Err(close_code::MESSAGE_TOO_BIG);
        }
        let total = h.header_len + h.payload_len as usize;
        let Some(payload) = buf.get_mut(h.header_len..total) else {
            return Ok(Step::Incomplete);
        };
        apply_mask(payload, h.key, 0);
        match h.opcode {
            OpCode::Ping => out.extend_from_slice(ControlFrame::pong(payload).as_bytes()),
            OpCode::Pong => {}
            OpCode::Close => {
                // Answer with the peer's code, as the other peers do; a
                // one-byte body cannot hold one (RFC 6455 §5.5.1).
                let code = match *payload {
                    [] => None,
                    [_] => Some(close_code::PROTOCOL_ERROR),
                    [a, b, ..] => Some(u16::from_be_bytes([a, b])),
                };
                out.extend_from_slice(ControlFrame::close(code, "").as_bytes());
                return Ok(Step::Closed);
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let Echo {
                    reassembly,
                    sabotage,
                    max_message,
                    ..
                } = self;
                match reassembly.push(h.fin, rsv, h.opcode as u8, payload) {
                    Ok(None) => {}
                    Ok(Some(m)) => echo_message(m, sabotage, *max_message, out, codec)?,
                    Err(FrameError::TooLarge) => return Err(close_code::MESSAGE_TOO_BIG),
                    Err(_) => return Err(close_code::PROTOCOL_ERROR),
                }
            }
        }
        Ok(Step::Took(total))
    }
}

/// What one call of [`Echo::frame`] did.
enum Step {
    /// Handled a frame of this many bytes.
    Took(usize),
    /// The frame at the front has not all arrived.
    Incomplete,
    /// A close was answered: nothing after it is read.
    Closed,
}

/// Echo one whole message: compressed ones inflated, checked and compressed
/// again, with RSV1 (RFC 7692 §6.1); others as they came.
fn echo_message(
    m: Message<'_>,
    sabotage: &mut Sabotage,
    max_message: usize,
    out: &mut Vec<u8>,
    codec: &mut Codec,
) -> Result<(), u16> {
    let act = sabotage.next();
    let text = m.opcode == OpCode::Text as u8;
    let opcode = if text { OpCode::Text } else { OpCode::Binary };
    let plain: &[u8] = if m.compressed {
        deflate::inflate_message(&mut codec.inflate, m.payload, max_message, &mut codec.plain)
            .map_err(|e| match e {
                InflateError::TooLarge => close_code::MESSAGE_TOO_BIG,
                InflateError::Corrupt | InflateError::Truncated => close_code::INVALID_PAYLOAD,
            })?;
        &codec.plain
    } else {
        m.payload
    };
    // RFC 6455 §8.1 on the message as the application sees it, after
    // inflation (RFC 7692 §6).
    if text && std::str::from_utf8(plain).is_err() {
        return Err(close_code::INVALID_PAYLOAD);
    }
    if act == Act::Drop {
        return Ok(());
    }
    let mut spoiled;
    let plain = if act == Act::Corrupt {
        spoiled = plain.to_vec();
        corrupt(&mut spoiled);
        &spoiled[..]
    } else {
        plain
    };
    if !m.compressed {
        push_frame(out, opcode, false, plain);
        return Ok(());
    }
    deflate::compress_message(&mut codec.compress, plain, &mut codec.packed)
        .map_err(|_| close_code::INTERNAL_ERROR)?;
    push_frame(out, opcode, true, &codec.packed);
    Ok(())
}

/// Append one unmasked server frame (§5.2), RSV1 set when `compressed`.
fn push_frame(out: &mut Vec<u8>, opcode: OpCode, compressed: bool, payload: &[u8]) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let n = encode_server_header(true, opcode, payload.len() as u64, &mut header);
    if compressed {
        header[0] |= RSV1;
    }
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{PeerArgs, PeerKind};
    use ringecho_proto::frame::{encode_client_frame, parse_server_header};

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn echo(deflate: bool) -> Echo {
        let p = PeerArgs {
            kind: PeerKind::DeflateRecompress,
            listen: "127.0.0.1:0".parse().unwrap(),
            corrupt: false,
            drop: false,
        };
        Echo::new(deflate, Sabotage::new(&p), 4096)
    }

    /// A masked client frame with the given RSV bits.
    fn frame(fin: bool, rsv: u8, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        encode_client_frame(fin, opcode, KEY, payload, &mut f);
        f[0] |= rsv;
        f
    }

    fn packed(plain: &[u8], level: u32) -> Vec<u8> {
        let mut out = Vec::new();
        deflate::compress_message(
            &mut deflate::compressor(Compression::new(level)),
            plain,
            &mut out,
        )
        .unwrap();
        out
    }

    /// Feed `input` in one piece; the flow and the server frames sent, as
    /// (first byte, payload).
    fn run(e: &mut Echo, input: &[u8]) -> (Flow, Vec<(u8, Vec<u8>)>) {
        let mut buf = input.to_vec();
        let mut out = Vec::new();
        let flow = e.on_bytes(&mut buf, &mut out, &mut Codec::new());
        let mut frames = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let h = parse_server_header(&out[at..]).unwrap().unwrap();
            let end = at + h.header_len + h.payload_len as usize;
            frames.push((out[at], out[at + h.header_len..end].to_vec()));
            at = end;
        }
        (flow, frames)
    }

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        deflate::inflate_message(&mut deflate::inflater(), payload, 1 << 20, &mut out).unwrap();
        out
    }

    fn close_code_of(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
        let (b0, p) = frames.last()?;
        (*b0 == 0x88 && p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
    }

    #[test]
    fn a_compressed_message_comes_back_compressed_again_at_level_6() {
        let text = b"hello hello hello, the same words again and again".repeat(4);
        // Sent at level 1, so the echo's bytes can only match if the peer
        // really compressed it again.
        let sent = packed(&text, 1);
        let (flow, frames) = run(&mut echo(true), &frame(true, RSV1, OpCode::Text, &sent));
        assert_eq!(flow, Flow::Open);
        let [(b0, payload)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert_eq!(*b0, 0x80 | RSV1 | 0x1);
        assert_eq!(payload, &packed(&text, LEVEL));
        assert_ne!(payload, &sent);
        assert_eq!(inflate(payload), text);
    }

    #[test]
    fn fragments_are_joined_and_uncompressed_messages_echoed_as_they_are() {
        let sent = packed(b"fragmented and compressed", 6);
        let (a, b) = sent.split_at(5);
        let mut input = frame(false, RSV1, OpCode::Binary, a);
        input.extend(frame(true, 0, OpCode::Continuation, b));
        input.extend(frame(true, 0, OpCode::Binary, b"plain"));
        // A ping between fragments is answered at once.
        input.extend(frame(false, 0, OpCode::Text, b"ab"));
        input.extend(frame(true, 0, OpCode::Ping, b"p"));
        input.extend(frame(true, 0, OpCode::Continuation, b"cd"));
        let (flow, frames) = run(&mut echo(true), &input);
        assert_eq!(flow, Flow::Open);
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(frames[0].0, 0x80 | RSV1 | 0x2);
        assert_eq!(inflate(&frames[0].1), b"fragmented and compressed");
        assert_eq!(frames[1], (0x82, b"plain".to_vec()));
        assert_eq!(frames[2], (0x8A, b"p".to_vec()));
        assert_eq!(frames[3], (0x81, b"abcd".to_vec()));
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let mut e = echo(true);
        let whole = frame(true, 0, OpCode::Binary, b"split across reads");
        let mut buf = whole[..7].to_vec();
        let mut out = Vec::new();
        let mut codec = Codec::new();
        assert_eq!(e.on_bytes(&mut buf, &mut out, &mut codec), Flow::Open);
        assert!(out.is_empty());
        assert_eq!(buf.len(), 7, "nothing consumed");
        buf.extend_from_slice(&whole[7..]);
        assert_eq!(e.on_bytes(&mut buf, &mut out, &mut codec), Flow::Open);
        assert!(buf.is_empty());
        assert!(out.ends_with(b"split across reads"));
    }

    #[test]
    fn rsv1_where_rfc_7692_forbids_it_closes_with_1002() {
        let sent = packed(b"x", 6);
        // Not negotiated.
        let (flow, frames) = run(&mut echo(false), &frame(true, RSV1, OpCode::Binary, &sent));
        assert_eq!((flow, close_code_of(&frames)), (Flow::Closed, Some(1002)));
        // On a continuation.
        let mut input = frame(false, RSV1, OpCode::Binary, &sent);
        input.extend(frame(true, RSV1, OpCode::Continuation, b""));
        let (_, frames) = run(&mut echo(true), &input);
        assert_eq!(close_code_of(&frames), Some(1002));
        // On a control frame.
        let (_, frames) = run(&mut echo(true), &frame(true, RSV1, OpCode::Ping, b""));
        assert_eq!(close_code_of(&frames), Some(1002));
        // RSV2 is never defined.
        let (_, frames) = run(&mut echo(true), &frame(true, 0x20, OpCode::Binary, b""));
        assert_eq!(close_code_of(&frames), Some(1002));
    }

    #[test]
    fn bad_data_bad_text_and_bombs_are_refused() {
        let (_, frames) = run(
            &mut echo(true),
            &frame(true, RSV1, OpCode::Binary, &[0xff, 0xff, 0xff]),
        );
        assert_eq!(close_code_of(&frames), Some(1007), "not DEFLATE");
        let (_, frames) = run(
            &mut echo(true),
            &frame(true, RSV1, OpCode::Text, &packed(&[b'a', 0xff, b'b'], 6)),
        );
        assert_eq!(
            close_code_of(&frames),
            Some(1007),
            "not UTF-8 once inflated"
        );
        let (_, frames) = run(&mut echo(true), &frame(true, 0, OpCode::Text, &[0xc3]));
        assert_eq!(close_code_of(&frames), Some(1007), "not UTF-8");
        // 5000 bytes inflated from a few: over the 4096-byte limit.
        let (_, frames) = run(
            &mut echo(true),
            &frame(true, RSV1, OpCode::Binary, &packed(&[0; 5000], 6)),
        );
        assert_eq!(close_code_of(&frames), Some(1009));
        let (_, frames) = run(&mut echo(true), &frame(true, 0, OpCode::Binary, &[0; 5000]));
        assert_eq!(close_code_of(&frames), Some(1009));
    }

    #[test]
    fn a_close_is_answered_with_its_code_and_nothing_after_it_is_read() {
        let mut input = frame(true, 0, OpCode::Close, &1001u16.to_be_bytes());
        input.extend(frame(true, 0, OpCode::Binary, b"late"));
        let (flow, frames) = run(&mut echo(true), &input);
        assert_eq!(flow, Flow::Closed);
        assert_eq!(frames.len(), 1);
        assert_eq!(close_code_of(&frames), Some(1001));
        let (_, frames) = run(&mut echo(true), &frame(true, 0, OpCode::Close, b""));
        assert_eq!(frames, vec![(0x88, vec![])]);
    }

    #[test]
    fn sabotage_corrupts_the_message_before_compressing_it() {
        let p = PeerArgs {
            kind: PeerKind::DeflateRecompress,
            listen: "127.0.0.1:0".parse().unwrap(),
            corrupt: true,
            drop: false,
        };
        let mut e = Echo::new(true, Sabotage::new(&p), 4096);
        let sent = frame(true, RSV1, OpCode::Text, &packed(b"abc", 6));
        let (_, frames) = run(&mut e, &sent.repeat(100));
        assert_eq!(frames.len(), 100);
        assert_eq!(inflate(&frames[98].1), b"abc");
        assert_eq!(inflate(&frames[99].1), b"abb");
    }
}
