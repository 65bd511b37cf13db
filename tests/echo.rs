//! The server over real sockets, checked by an independent client
//! (tokio-tungstenite) and by raw bytes where a client library would refuse
//! to break the rules. Every test is bounded in time.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    let config = WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    };
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .expect("handshake");
    ws
}

/// Next data or control message, skipping nothing.
async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("timed out waiting for the server")
        .expect("stream ended")
        .expect("protocol error")
}

/// Send `msgs` while receiving, as a real client does (the server's output
/// is bounded, so a client that only reads after sending megabytes would
/// stall both sides); returns as many messages as were sent.
async fn send_while_receiving(url: &str, msgs: Vec<Message>) -> Vec<Message> {
    let (mut tx, mut rx) = connect(url).await.split();
    let count = msgs.len();
    let sender = tokio::spawn(async move {
        for m in msgs {
            tx.send(m).await.unwrap();
        }
        tx
    });
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        got.push(
            tokio::time::timeout(Duration::from_secs(60), rx.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    let mut tx = sender.await.unwrap();
    tx.close().await.unwrap();
    got
}

fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(secs), f)
            .await
            .expect("test timed out")
    })
}

#[test]
fn echoes_text_and_binary_at_every_length_class_section_5_2() {
    let server = Ringecho::start(&["--threads", "1"]);
    bounded(120, async {
        let mut expected = Vec::new();
        for len in [0usize, 125, 126, 65535, 65536, 16 << 20] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            expected.push(Message::Text(text));
            expected.push(Message::Binary(
                (0..len).map(|i| (i * 31 % 256) as u8).collect(),
            ));
        }
        let received = send_while_receiving(&server.url(), expected.clone()).await;
        for (got, want) in received.into_iter().zip(expected) {
            assert!(
                got == want,
                "echo differs for a {} message of {} bytes",
                if want.is_text() { "text" } else { "binary" },
                want.len()
            );
        }
    });
}

#[test]
fn fragmented_text_with_a_code_point_split_across_fragments_is_echoed_section_5_4() {
    let server = Ringecho::start(&["--threads", "1"]);
    bounded(30, async {
        let mut ws = connect(&server.url()).await;
        let text = "κόσμε — 𝄞 ok";
        let bytes = text.as_bytes();
        // Cut inside κ (2 bytes) and inside 𝄞 (4 bytes).
        let cuts = [1, 17, bytes.len()];
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let op = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = Frame::message(bytes[start..end].to_vec(), op, i + 1 == cuts.len());
            ws.send(Message::Frame(frame)).await.unwrap();
            start = end;
        }
        assert_eq!(next(&mut ws).await, Message::Text(text.to_string()));
        // A ping between fragments is answered at once (§5.4, §5.5.2).
        ws.send(Message::Frame(Frame::message(
            b"ab".to_vec(),
            OpCode::Data(Data::Binary),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Ping(b"between".to_vec())).await.unwrap();
        ws.send(Message::Frame(Frame::message(
            b"cd".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        assert_eq!(next(&mut ws).await, Message::Pong(b"between".to_vec()));
        assert_eq!(next(&mut ws).await, Message::Binary(b"abcd".to_vec()));
    });
}

#[test]
fn ping_gets_a_pong_with_the_same_payload_section_5_5_2() {
    let server = Ringecho::start(&["--threads", "1"]);
    bounded(30, async {
        let mut ws = connect(&server.url()).await;
        for payload in [vec![], b"x".to_vec(), vec![7u8; 125]] {
            ws.send(Message::Ping(payload.clone())).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::Pong(payload));
        }
    });
}

#[test]
fn close_handshake_echoes_the_code_and_the_server_closes_first_section_7_1() {
    let server = Ringecho::start(&["--threads", "1"]);
    bounded(30, async {
        for code in [1000u16, 1001, 3000, 4999] {
            let mut ws = connect(&server.url()).await;
            ws.send(Message::Text("last".into())).await.unwrap();
            ws.close(Some(CloseFrame {
                code: code.into(),
                reason: "done".into(),
            }))
            .await
            .unwrap();
            // The echo of what came before the close still arrives, then the close.
            assert_eq!(next(&mut ws).await, Message::Text("last".into()));
            match next(&mut ws).await {
                Message::Close(Some(f)) => assert_eq!(u16::from(f.code), code),
                other => panic!("expected close, got {other:?}"),
            }
            assert!(ws.next().await.is_none(), "server closed the connection");
        }
    });
}

#[test]
fn each_protocol_violation_gets_its_close_code_then_the_socket_closes() {
    let server = Ringecho::start(&["--threads", "1", "--max-message-size", "1KiB"]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame §5.1", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "reserved opcode §5.2",
            client_frame(true, 0x2, b"x")
                .iter()
                .enumerate()
                .map(|(i, &b)| if i == 0 { 0x83 } else { b })
                .collect(),
            1002,
        ),
        (
            "RSV1 without extension §5.2",
            client_frame(true, 0x1, b"x")
                .iter()
                .enumerate()
                .map(|(i, &b)| if i == 0 { b | 0x40 } else { b })
                .collect(),
            1002,
        ),
        (
            "continuation without start §5.4",
            client_frame(true, 0x0, b"x"),
            1002,
        ),
        (
            "new message inside a fragmented one §5.4",
            [
                client_frame(false, 0x1, b"a"),
                client_frame(true, 0x1, b"b"),
            ]
            .concat(),
            1002,
        ),
        ("fragmented ping §5.5", client_frame(false, 0x9, b"p"), 1002),
        (
            "ping over 125 bytes §5.5",
            {
                let mut f = vec![0x89, 0x80 | 126, 0, 126];
                f.extend([0; 4]);
                f.extend([0; 126]);
                f
            },
            1002,
        ),
        (
            "close code 1005 §7.4.1",
            client_frame(true, 0x8, &1005u16.to_be_bytes()),
            1002,
        ),
        ("one-byte close §5.5.1", client_frame(true, 0x8, &[3]), 1002),
        (
            "invalid UTF-8 text §8.1",
            client_frame(true, 0x1, b"ok\xC0\xAF"),
            1007,
        ),
        (
            "invalid UTF-8 close reason §5.5.1",
            client_frame(true, 0x8, b"\x03\xE8\xFF"),
            1007,
        ),
        (
            "message over the limit §7.4.1",
            client_frame(true, 0x2, &[0; 1025]),
            1009,
        ),
        (
            "fragments summing over the limit §7.4.1",
            [
                client_frame(false, 0x2, &[0; 600]),
                client_frame(true, 0x0, &[0; 600]),
            ]
            .concat(),
            1009,
        ),
        (
            "length with the top bit set §5.2",
            {
                let mut f = vec![0x82, 0xFF];
                f.extend((1u64 << 63).to_be_bytes());
                f.extend([0; 4]);
                f
            },
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut s = raw_ws(server.addr);
        s.write_all(&bytes).unwrap();
        assert_eq!(read_close(&mut s), Some(code), "{name}");
        assert!(
            closes_within(&mut s, Duration::from_secs(8)),
            "{name}: socket not closed"
        );
    }
    let stats = server.stats();
    assert!(
        stats["total"]["protocol_errors"].as_u64().unwrap() >= 14,
        "{stats}"
    );
}

#[test]
fn invalid_utf8_fails_fast_before_the_message_ends_section_8_1() {
    let server = Ringecho::start(&["--threads", "1"]);
    let mut s = raw_ws(server.addr);
    // Announce a 1 MiB text frame but send only a bad beginning.
    let mut payload = vec![b'a'; 1 << 20];
    payload[3] = 0xFF;
    let frame = client_frame(true, 0x1, &payload);
    s.write_all(&frame[..14 + 100]).unwrap();
    assert_eq!(read_close(&mut s), Some(1007));
}

#[test]
fn a_thousand_connections_each_echo_a_hundred_messages() {
    let server = Ringecho::start(&["--threads", "2"]);
    let url = server.url();
    bounded(240, async move {
        let mut tasks = Vec::new();
        for c in 0..1000u32 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut ws = connect(&url).await;
                for m in 0..100u32 {
                    let msg = format!("conn {c} message {m} {}", "x".repeat((c % 50) as usize));
                    ws.send(Message::Text(msg.clone())).await.unwrap();
                    assert_eq!(next(&mut ws).await, Message::Text(msg));
                }
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let total = &server.stats()["total"];
    assert_eq!(total["upgraded"].as_u64(), Some(1000));
    assert_eq!(total["protocol_errors"].as_u64(), Some(0));
}

#[test]
fn connections_land_on_both_shards() {
    let server = Ringecho::start(&["--threads", "2"]);
    let conns: Vec<_> = (0..64).map(|_| raw_ws(server.addr)).collect();
    let stats = server.stats();
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for (i, s) in shards.iter().enumerate() {
        assert!(
            s["upgraded"].as_u64().unwrap() > 0,
            "shard {i} got no connection: {stats}"
        );
    }
    drop(conns);
}

#[test]
fn a_1_mib_message_is_echoed_without_copying_its_payload() {
    let server = Ringecho::start(&["--threads", "1"]);
    bounded(60, async {
        let mut ws = connect(&server.url()).await;
        let bin: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        ws.send(Message::Binary(bin.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::Binary(bin));
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    // The copy counter is folded in as the connection ends: wait for that,
    // and fail rather than check a counter that was never written.
    let t = server.wait_active(0, Duration::from_secs(5));
    assert_eq!(t["active"], 0, "the connection did not end: {t}");
    assert!(t["echo_bytes"].as_u64().unwrap() >= 1 << 20, "{t}");
    // At most a frame header may be carried across reads.
    assert!(t["copied_bytes"].as_u64().unwrap() <= 14, "{t}");
}

#[test]
fn a_client_that_never_reads_stays_under_a_memory_bound_while_others_are_served() {
    let server = Ringecho::start(&["--threads", "1"]);
    let base_rss = server.rss_kib();
    // The hostile client: pushes 64 KiB messages and never reads.
    let mut hog = raw_ws(server.addr);
    hog.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frame = client_frame(true, 0x2, &[0x5A; 64 * 1024]);
    let mut sent = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && sent < (512 << 20) {
        match hog.write(&frame) {
            Ok(n) => sent += n,
            Err(_) => break, // blocked: the server stopped reading
        }
    }
    assert!(
        sent < 256 << 20,
        "the server kept reading {sent} bytes from a client that never reads"
    );
    // Another client is still served promptly.
    bounded(30, async {
        let mut ws = connect(&server.url()).await;
        for i in 0..100 {
            ws.send(Message::Text(format!("still here {i}")))
                .await
                .unwrap();
            assert_eq!(
                next(&mut ws).await,
                Message::Text(format!("still here {i}"))
            );
        }
    });
    let grown = server.rss_kib().saturating_sub(base_rss);
    assert!(
        grown < 16 * 1024,
        "server RSS grew by {grown} KiB after the client pushed {sent} bytes"
    );
}

#[test]
fn http_routes_serve_the_page_health_and_honest_errors() {
    let server = Ringecho::start(&["--threads", "1"]);
    let (status, head, body) = http_get(server.addr, "/");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("new WebSocket(wsUri)") && page.contains("WebSocket rocks"));
    let (status, head, body) = http_get(server.addr, "/healthz");
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    assert!(head.contains("Content-Type: text/plain"));
    assert_eq!(http_get(server.addr, "/nope").0, 404);
    let (status, head, _) = http_request(server.addr, "DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("Allow:"), "{head}");
}

#[test]
fn bad_handshakes_get_their_http_status_section_4_2_1() {
    let server = Ringecho::start(&["--threads", "1"]);
    let addr = server.addr;
    let upgrade = |extra: &str, version: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
        )
    };
    let (status, head, _) = http_request(addr, &upgrade("", "8"));
    assert_eq!(status, 426);
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    assert_eq!(http_request(addr, "garbage\r\n\r\n").0, 400);
    let big = format!("X-Filler: {}\r\n", "a".repeat(9000));
    assert_eq!(http_request(addr, &upgrade(&big, "13")).0, 431);
    let (status, head, _) = http_request(
        addr,
        &upgrade(
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
            "13",
        ),
    );
    assert_eq!(status, 101);
    assert!(
        !head.contains("Sec-WebSocket-Protocol"),
        "no subprotocol is selected by default: {head}"
    );
    assert!(
        !head.contains("Sec-WebSocket-Extensions"),
        "unimplemented extensions are declined: {head}"
    );
}

#[test]
fn the_first_offered_configured_subprotocol_is_selected_section_4_2_2() {
    let server = Ringecho::start(&[
        "--threads",
        "1",
        "--subprotocol",
        "echo",
        "--subprotocol",
        "chat",
    ]);
    let req = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: superchat, chat, echo\r\n\r\n";
    let (status, head, _) = http_request(server.addr, req);
    assert_eq!(status, 101);
    assert!(
        head.contains("Sec-WebSocket-Protocol: chat\r")
            || head.ends_with("Sec-WebSocket-Protocol: chat"),
        "{head}"
    );
}

#[test]
fn a_slowloris_handshake_is_cut_at_the_handshake_timeout() {
    let server = Ringecho::start(&["--threads", "1", "--handshake-timeout", "500ms"]);
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    assert!(closes_within(&mut s, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "cut too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn an_idle_peer_is_pinged_then_closed_when_silent() {
    let server = Ringecho::start(&[
        "--threads",
        "1",
        "--idle-timeout",
        "300ms",
        "--close-timeout",
        "300ms",
    ]);
    let mut s = raw_ws(server.addr);
    let (_, op, payload) = read_frame(&mut s).unwrap();
    assert_eq!(op, 0x9, "a ping after the idle timeout");
    assert!(!payload.is_empty());
    // Stay silent: the server closes with 1001, then cuts the socket.
    assert_eq!(read_close(&mut s), Some(1001));
    assert!(closes_within(&mut s, Duration::from_secs(5)));
    // A peer that answers stays open.
    let mut s = raw_ws(server.addr);
    for _ in 0..3 {
        let (_, op, payload) = read_frame(&mut s).unwrap();
        assert_eq!(op, 0x9);
        s.write_all(&client_frame(true, 0xA, &payload)).unwrap();
    }
}

#[test]
fn echo_through_ring_writes_only_matches_direct_send() {
    // The default sends small echoes with one non-blocking sendmsg; this
    // keeps the all-io_uring write path (and its partial-write handling)
    // covered too.
    for args in [
        &["--threads", "1", "--no-direct-send"][..],
        &["--threads", "1"][..],
    ] {
        let server = Ringecho::start(args);
        bounded(60, async {
            let msgs: Vec<Message> = [0usize, 20, 126, 70_000, 3 << 20]
                .iter()
                .map(|&n| Message::Binary((0..n).map(|i| (i % 241) as u8).collect()))
                .collect();
            let received = send_while_receiving(&server.url(), msgs.clone()).await;
            for (got, want) in received.into_iter().zip(msgs) {
                assert!(
                    got == want,
                    "{args:?}: echo of {} bytes differs",
                    want.len()
                );
            }
        });
    }
}

#[test]
fn origins_outside_the_allow_list_get_403_section_10_2() {
    let server = Ringecho::start(&["--threads", "1", "--allowed-origin", "*.example.com"]);
    let req = |origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
        )
    };
    assert_eq!(
        http_request(server.addr, &req(Some("https://evil.test"))).0,
        403
    );
    assert_eq!(
        http_request(server.addr, &req(Some("https://example.com.evil.test"))).0,
        403
    );
    assert_eq!(
        http_request(server.addr, &req(Some("https://app.example.com"))).0,
        101
    );
    assert_eq!(
        http_request(server.addr, &req(None)).0,
        101,
        "non-browser clients send no Origin"
    );
    // Without the flag every origin is allowed (the documented default).
    let open = Ringecho::start(&["--threads", "1"]);
    assert_eq!(
        http_request(open.addr, &req(Some("https://evil.test"))).0,
        101
    );
}

#[test]
fn reading_resumes_after_backpressure_drains_through_a_direct_send() {
    // With a tiny output bound, reading pauses after almost every read; each
    // time the backlog drains the connection must read again, not end.
    for args in [
        &["--threads", "1", "--max-output", "1KiB"][..],
        &["--threads", "1", "--max-output", "1KiB", "--no-direct-send"][..],
    ] {
        let server = Ringecho::start(args);
        let mut s = raw_ws(server.addr);
        let mut burst = Vec::new();
        for i in 0..300u32 {
            burst.extend(client_frame(true, 0x2, &[i as u8; 1000]));
        }
        s.write_all(&burst).unwrap();
        for i in 0..300u32 {
            let (op, payload) = read_message(&mut s)
                .unwrap_or_else(|| panic!("{args:?}: connection ended after {i} echoes"));
            assert_eq!((op, payload), (0x2, vec![i as u8; 1000]), "{args:?}");
        }
    }
}
