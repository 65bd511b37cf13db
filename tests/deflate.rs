//! permessage-deflate (RFC 7692) on a real socket, on whichever shell
//! `RINGECHO_IO` picks: a real client that compresses (Python's
//! `websockets`, which offers the extension by default) for the common
//! paths, and hand-made frames for what no well-behaved client sends.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{read_head, read_raw_close, read_raw_frame, upgrade_request, Ringecho};
use flate2::{Compress, Compression, FlushCompress};

/// Run a `websockets` client script against `url`; returns its stdout
/// lines. Debian's python3-websockets (the test command installs it).
fn python(url: &str, script: &str) -> Vec<String> {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, url])
        .output()
        .expect("python3 runs (python3-websockets is installed by the test command)");
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends text and binary messages of several sizes, whole and fragmented,
/// checks every echo, and prints the extension the server agreed to.
const ECHO_SCRIPT: &str = r#"
import asyncio, random, sys, websockets

async def main(url):
    rnd = random.Random(7)
    words = ["ring", "echo", "frame", "mask", "deflate", "héllo", "wörld", "json", "{\"k\": 1}"]
    async with websockets.connect(url, max_size=None, compression="deflate") as ws:
        print("agreed:", ws.response_headers.get("Sec-WebSocket-Extensions"))
        print("extensions:", [type(e).__name__ for e in ws.extensions])
        for n in [0, 1, 100, 16 * 1024, 200_000, 1_000_000]:
            text = " ".join(rnd.choice(words) for _ in range(n // 5 + 1))[:n]
            await ws.send(text)
            assert await ws.recv() == text, f"text of {n}"
            data = bytes(rnd.choice(b"abcdefgh\x00\x01") for _ in range(n))
            await ws.send(data)
            assert await ws.recv() == data, f"binary of {n}"
        # A fragmented message: websockets sends an iterable as fragments.
        parts = ["fragments ", "of ", "one € ", "message"] * 50
        await ws.send(parts)
        assert await ws.recv() == "".join(parts)
        # Similar small messages, which context takeover would shrink.
        for i in range(200):
            m = '{"user": "ringecho", "seq": %d, "text": "hello again"}' % i
            await ws.send(m)
            assert await ws.recv() == m
        print("echoed: ok")
    print("close:", ws.close_code)

asyncio.run(main(sys.argv[1]))
"#;

fn agreed_line(lines: &[String]) -> &str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("agreed: "))
        .expect("the client printed the agreement")
}

#[test]
fn a_compressing_client_gets_every_message_back_with_no_context_takeover() {
    let server = Ringecho::start(&["--permessage-deflate"]);
    let lines = python(&server.url(), ECHO_SCRIPT);
    assert_eq!(
        agreed_line(&lines),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert!(lines.contains(&"extensions: ['PerMessageDeflate']".to_owned()));
    assert!(lines.contains(&"echoed: ok".to_owned()), "{lines:?}");
    assert!(lines.contains(&"close: 1000".to_owned()), "{lines:?}");
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["deflate_agreed"], 1);
    assert_eq!(
        t["deflate_inflaters"], 0,
        "no inflater outlives its message"
    );
    assert_eq!(t["protocol_errors"], 0);
}

#[test]
fn with_context_takeover_the_client_keeps_its_window_and_the_echo_still_inflates() {
    let server = Ringecho::start(&["--permessage-deflate", "--deflate-context-takeover"]);
    let lines = python(&server.url(), ECHO_SCRIPT);
    assert_eq!(agreed_line(&lines), "permessage-deflate");
    assert!(lines.contains(&"echoed: ok".to_owned()), "{lines:?}");
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["deflate_inflaters"], 0, "released with the connection");
    assert_eq!(t["protocol_errors"], 0);
}

#[test]
fn without_the_flag_the_offer_is_declined_and_messages_go_uncompressed() {
    let server = Ringecho::start(&[]);
    let lines = python(&server.url(), ECHO_SCRIPT);
    assert_eq!(agreed_line(&lines), "None");
    assert!(lines.contains(&"extensions: []".to_owned()));
    assert!(lines.contains(&"echoed: ok".to_owned()), "{lines:?}");
}

/// A raw connection that offered `offer`; returns it and the agreed value.
fn raw(server: &Ringecho, offer: &str) -> (TcpStream, Option<String>) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = upgrade_request(server.addr).replace(
        "\r\n\r\n",
        &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"),
    );
    s.write_all(request.as_bytes()).unwrap();
    let head = String::from_utf8(read_head(&mut s).unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let agreed = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .map(str::to_owned);
    (s, agreed)
}

/// Raw DEFLATE as a client sends it (RFC 7692 §7.2.1).
fn compress(data: &[u8]) -> Vec<u8> {
    let mut z = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    z.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(z.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame; `first` is its first byte (FIN, RSV, opcode).
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = common::client_frame(first & 0x80 != 0, first & 0x0F, payload);
    v[0] = first;
    v
}

#[test]
fn a_compressed_message_comes_back_byte_for_byte_with_rsv1_on_its_first_frame_section_6() {
    let server = Ringecho::start(&["--permessage-deflate"]);
    let (mut s, agreed) = raw(&server, "permessage-deflate");
    assert!(agreed.is_some());
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(2000);
    let z = compress(text.as_bytes());
    let (a, b) = z.split_at(z.len() / 2);
    // Fragmented: RSV1 on the first frame only.
    s.write_all(&[frame(0x41, a), frame(0x80, b)].concat())
        .unwrap();
    let mut echoed = Vec::new();
    let mut first = true;
    loop {
        let (b0, payload) = read_raw_frame(&mut s).unwrap();
        assert_eq!(
            b0 & 0x40 != 0,
            first,
            "RSV1 on the first frame only: {b0:#x}"
        );
        assert_eq!(b0 & 0x0F, if first { 0x1 } else { 0x0 });
        first = false;
        echoed.extend(payload);
        if b0 & 0x80 != 0 {
            break;
        }
    }
    assert_eq!(echoed, z, "the payload exactly as it was sent");
}

#[test]
fn a_zip_bomb_is_refused_with_1009_before_it_all_arrives() {
    let server = Ringecho::start(&["--permessage-deflate", "--max-message-size", "1MiB"]);
    let (mut s, _) = raw(&server, "permessage-deflate");
    // 1 GiB of zeros in about 1 MiB, sent as fragments of 64 KiB, and the
    // sender stops at the first sign of a close.
    let mut z = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; 1 << 20];
    let mut chunk = Vec::with_capacity(64 << 10);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut first = true;
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    'send: for _ in 0..1024 {
        let mut input = &zeros[..];
        while !input.is_empty() {
            chunk.clear();
            let before = z.total_in();
            z.compress_vec(input, &mut chunk, FlushCompress::None)
                .unwrap();
            input = &input[(z.total_in() - before) as usize..];
            if chunk.is_empty() {
                continue;
            }
            let f = frame(if first { 0x42 } else { 0x00 }, &chunk);
            first = false;
            let mut rest = &f[..];
            while !rest.is_empty() {
                match s.write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(_) => break 'send,
                }
                let mut buf = [0u8; 4096];
                if let Ok(n) = s.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    break 'send;
                }
            }
            sent += f.len();
            assert!(started.elapsed() < Duration::from_secs(20), "still sending");
        }
    }
    s.set_nonblocking(false).unwrap();
    assert!(
        sent < 64 << 10 << 4,
        "sent {sent} compressed bytes before a close"
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    got.extend(rest);
    // The echo pieces sent before the limit was passed, then 1009.
    let close_at = got
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xF1);
    assert!(
        close_at.is_some(),
        "a close with 1009 in {} bytes",
        got.len()
    );
}

#[test]
fn corrupt_data_and_invalid_utf8_inside_compressed_text_close_with_1007() {
    let server = Ringecho::start(&["--permessage-deflate"]);
    let (mut s, _) = raw(&server, "permessage-deflate");
    s.write_all(&frame(0xC2, &[0xFF, 0xFF, 0xFF])).unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1007));

    let (mut s, _) = raw(&server, "permessage-deflate");
    let mut bad = b"valid so far, then ".to_vec();
    bad.push(0xC0);
    s.write_all(&frame(0xC1, &compress(&bad))).unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1007));
}

#[test]
fn rsv1_on_a_continuation_or_a_ping_closes_with_1002_section_6() {
    let server = Ringecho::start(&["--permessage-deflate"]);
    let (mut s, _) = raw(&server, "permessage-deflate");
    s.write_all(&[frame(0x01, b"a"), frame(0xC0, b"b")].concat())
        .unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1002));
    let (mut s, _) = raw(&server, "permessage-deflate");
    s.write_all(&frame(0xC9, b"")).unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1002));
    // Declined: RSV1 is reserved again (RFC 6455 §5.2).
    let server = Ringecho::start(&[]);
    let (mut s, agreed) = raw(&server, "permessage-deflate");
    assert_eq!(agreed, None);
    s.write_all(&frame(0xC1, &compress(b"x"))).unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1002));
}

#[test]
fn an_offer_limiting_our_window_limits_the_clients_or_is_declined_section_7_1_2() {
    let server = Ringecho::start(&["--permessage-deflate"]);
    let (_, agreed) = raw(
        &server,
        "permessage-deflate; server_max_window_bits=10, permessage-deflate; \
         server_max_window_bits=10; client_max_window_bits",
    );
    assert_eq!(
        agreed.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=10"
        )
    );
    let (_, agreed) = raw(&server, "permessage-deflate; server_max_window_bits=10");
    assert_eq!(agreed, None);
}

#[test]
fn an_idle_connection_holds_no_inflater_and_a_context_keeping_one_is_counted() {
    let server = Ringecho::start(&["--permessage-deflate", "--deflate-context-takeover"]);
    let (mut kept, agreed) = raw(&server, "permessage-deflate");
    assert_eq!(agreed.as_deref(), Some("permessage-deflate"));
    let (mut dropped, agreed) = raw(&server, "permessage-deflate; client_no_context_takeover");
    assert_eq!(
        agreed.as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    let z = compress(b"hello hello hello");
    for s in [&mut kept, &mut dropped] {
        s.write_all(&frame(0xC1, &z)).unwrap();
        assert_eq!(read_raw_frame(s), Some((0xC1, z.clone())));
    }
    let t = server.wait_stats(Duration::from_secs(5), |t| t["deflate_inflaters"] == 1);
    assert_eq!(
        t["deflate_inflaters"], 1,
        "only the context-keeping connection"
    );
    drop(kept);
    let t = server.wait_stats(Duration::from_secs(5), |t| t["deflate_inflaters"] == 0);
    assert_eq!(t["deflate_inflaters"], 0);
    assert_eq!(t["deflate_agreed"], 2);
}

/// The independent conformance suite's sections 12 and 13 in miniature:
/// for each set of offer parameters (its 13.x cases: context takeover or
/// not, the server's window at 9 or 15 bits, the client's limited or not),
/// compressible text and binary at every size from 16 B to 128 KiB, some
/// fragmented. The client's inflater uses exactly the window it was
/// promised (zlib with `server_max_window_bits`), so an echo that needed a
/// larger one would fail here.
const OFFERS_SCRIPT: &str = r#"
import asyncio, random, sys, websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory as F

OFFERS = [
    dict(client_max_window_bits=None),
    dict(client_max_window_bits=True),
    dict(client_no_context_takeover=True, client_max_window_bits=True),
    dict(server_no_context_takeover=True, client_max_window_bits=True),
    dict(server_max_window_bits=9, client_max_window_bits=True),
    dict(server_max_window_bits=15, client_max_window_bits=True),
    dict(server_no_context_takeover=True, server_max_window_bits=9, client_max_window_bits=True),
    dict(server_no_context_takeover=True, server_max_window_bits=15, client_max_window_bits=True),
    dict(server_max_window_bits=12, client_max_window_bits=10),
    # No client_max_window_bits: a limit on our window cannot be met.
    dict(server_max_window_bits=10, client_max_window_bits=None),
]

async def one(url, params, rnd):
    words = ["ring", "echo", "frame", "mask", "deflate", "héllo", "wörld", "json", "κόσμε"]
    async with websockets.connect(url, max_size=None, compression=None, extensions=[F(**params)]) as ws:
        agreed = ws.response_headers.get("Sec-WebSocket-Extensions")
        for size in [16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072]:
            for i in range(4):
                text = " ".join(rnd.choice(words) for _ in range(size // 4))[:size]
                if i == 3:
                    chunks = [text[j:j + 1000] for j in range(0, len(text), 1000)]
                    await ws.send(chunks)
                else:
                    await ws.send(text)
                assert await ws.recv() == text, (params, size, i)
                data = bytes(rnd.choice(b"\x00\x01\x02abc") for _ in range(size))
                await ws.send(data)
                assert await ws.recv() == data, (params, size, i)
        print(sorted(params.items()), "->", agreed, "->", ws.extensions and ws.extensions[0].name)
    assert ws.close_code == 1000, ws.close_code

async def main(url):
    rnd = random.Random(12)
    for params in OFFERS:
        await one(url, params, rnd)
    print("all offers: ok")

asyncio.run(main(sys.argv[1]))
"#;

#[test]
fn every_offer_of_the_suites_section_13_gets_verified_echoes_with_and_without_context() {
    for args in [
        &["--permessage-deflate"][..],
        &["--permessage-deflate", "--deflate-context-takeover"],
    ] {
        let server = Ringecho::start(args);
        let lines = python(&server.url(), OFFERS_SCRIPT);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("all offers: ok"),
            "{lines:?}"
        );
        let declined: Vec<_> = lines.iter().filter(|l| l.contains("-> None")).collect();
        assert_eq!(declined.len(), 1, "only the unmeetable offer: {lines:?}");
        assert!(
            declined[0]
                .contains("('client_max_window_bits', None), ('server_max_window_bits', 10)]"),
            "{lines:?}"
        );
        let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
        assert_eq!(t["protocol_errors"], 0, "{args:?}");
        assert_eq!(t["deflate_agreed"], 9, "{args:?}");
        for l in &lines {
            eprintln!("{args:?}: {l}");
        }
    }
}
