//! Socket-level checks of rules the connection engine enforces: nothing
//! after our close, a memory bound that holds for any mix of frames, one
//! pong per ping, and frames echoed as they came. Each failed against the
//! build before the engine (see the commit that added this file).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Read server frames until EOF; returns them as (fin, opcode, payload).
fn frames_until_eof(s: &mut TcpStream) -> Vec<(bool, u8, Vec<u8>)> {
    let mut seen = Vec::new();
    for _ in 0..100_000 {
        match read_frame(s) {
            Some(f) => seen.push(f),
            None => break,
        }
    }
    seen
}

fn shutdown_mid_frame(size: usize) {
    let mut server = Ringecho::start(&["--threads", "1"]);
    let mut s = raw_ws(server.addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = client_frame(true, 0x2, &vec![0xA5; size]);
    let half = frame.len() / 2;
    s.write_all(&frame[..half]).unwrap();
    // Let the server take the first half in before it is told to stop.
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    // The client goes on sending the frame, then answers the close.
    let _ = s.write_all(&frame[half..]);
    let mut before_close = Vec::new();
    loop {
        let (fin, op, payload) = read_frame(&mut s).expect("a close frame");
        if op == 0x8 {
            assert_eq!(&payload[..2], &1001u16.to_be_bytes());
            break;
        }
        before_close.push((fin, op, payload.len()));
    }
    let _ = s.write_all(&client_frame(true, 0x8, &1001u16.to_be_bytes()));
    let after = frames_until_eof(&mut s);
    assert!(
        after.is_empty(),
        "{size}: {} frames ({} bytes) after our close",
        after.len(),
        after.iter().map(|f| f.2.len()).sum::<usize>()
    );
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn no_data_frame_follows_a_shutdown_close_decided_mid_frame_section_5_5_1() {
    // Streamed (1 MiB, beyond the read buffer) and echoed whole (16 KiB).
    shutdown_mid_frame(1 << 20);
    shutdown_mid_frame(16 << 10);
}

#[test]
fn no_data_frame_follows_an_idle_close_decided_mid_frame_section_5_5_1() {
    let server = Ringecho::start(&["--threads", "1", "--idle-timeout", "1"]);
    let mut s = raw_ws(server.addr);
    let frame = client_frame(true, 0x2, &vec![0x5A; 1 << 20]);
    let half = frame.len() / 2;
    s.write_all(&frame[..half]).unwrap();
    // Silent past the ping and as long again: the idle close is decided.
    let mut seen_ping = false;
    loop {
        let (_, op, payload) = read_frame(&mut s).expect("a close frame");
        match op {
            0x9 => seen_ping = true,
            0x8 => {
                assert_eq!(&payload[..2], &1001u16.to_be_bytes());
                break;
            }
            _ => {}
        }
    }
    assert!(seen_ping, "the idle close comes after a ping");
    let _ = s.write_all(&frame[half..]);
    let _ = s.write_all(&client_frame(true, 0x8, &1001u16.to_be_bytes()));
    let after = frames_until_eof(&mut s);
    assert!(after.is_empty(), "{} frames after our close", after.len());
}

/// One never-reading client sends `frame` over and over until the server
/// stops taking them, or `cap` bytes; returns the server's RSS growth in KiB.
fn rss_growth_from_a_never_reading_flood(frame: &[u8], cap: usize) -> u64 {
    let server = Ringecho::start(&["--threads", "1"]);
    // Warm the shard up so its own first allocations are not counted.
    echo_once(&mut raw_ws(server.addr), b"warm up");
    let base = server.rss_kib();
    let mut s = raw_ws(server.addr);
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let batch = frame.repeat((64 * 1024 / frame.len()).max(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut written = 0usize;
    while written < cap && Instant::now() < deadline {
        match s.write(&batch) {
            Ok(n) => written += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("the server dropped the flooding client: {e}"),
        }
    }
    // The server is still serving others.
    echo_once(&mut raw_ws(server.addr), b"still serving");
    let grown = server.rss_kib().saturating_sub(base);
    // It echoes everything once the client reads.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < 1024 {
        got += s.read(&mut sink).expect("echo after the flood");
    }
    grown
}

#[test]
fn a_never_reading_client_cannot_grow_memory_with_small_frames_or_pings() {
    // docs/deployment.md: about 330 KiB per connection whatever it sends
    // (the output budget, a read buffer and a held frame); allow slack for
    // the allocator.
    // Data frames must meet backpressure well before 256 MiB; pings may
    // be read on (their pongs coalesce, §5.5.3) but must not cost memory.
    for (what, frame, cap) in [
        ("0-byte frames", client_frame(true, 0x2, b""), 256 << 20),
        ("1-byte frames", client_frame(true, 0x2, b"x"), 256 << 20),
        (
            "125-byte frames",
            client_frame(true, 0x2, &[b'y'; 125]),
            256 << 20,
        ),
        ("pings", client_frame(true, 0x9, b"p"), 32 << 20),
    ] {
        let grown = rss_growth_from_a_never_reading_flood(&frame, cap);
        assert!(grown < 1024, "{what}: RSS grew by {grown} KiB");
    }
}

#[test]
fn ten_pings_get_ten_pongs_in_order_whole_and_byte_by_byte_section_5_5_2() {
    let server = Ringecho::start(&["--threads", "1"]);
    let pings: Vec<u8> = (0..10u8)
        .flat_map(|i| client_frame(true, 0x9, &[b'p', b'0' + i]))
        .collect();
    for bytewise in [false, true] {
        let mut s = raw_ws(server.addr);
        if bytewise {
            s.set_nodelay(true).unwrap();
            for b in &pings {
                s.write_all(std::slice::from_ref(b)).unwrap();
            }
        } else {
            s.write_all(&pings).unwrap();
        }
        for i in 0..10u8 {
            let (fin, op, payload) = read_frame(&mut s).expect("a pong");
            assert_eq!((fin, op), (true, 0xA), "bytewise {bytewise}");
            assert_eq!(payload, [b'p', b'0' + i], "bytewise {bytewise}");
        }
        echo_once(&mut s, b"and then an echo");
    }
}

#[test]
fn a_frame_that_fits_the_read_buffer_is_echoed_as_one_frame_as_it_came() {
    let server = Ringecho::start(&["--threads", "1"]);
    let mut s = raw_ws(server.addr);
    s.set_nodelay(true).unwrap();
    for (size, piece) in [(16 << 10, usize::MAX), (16 << 10, 1000), (60 << 10, 4096)] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        // Non-final text fragment, then its continuation: the echo keeps
        // both frames, their opcodes and FIN bits.
        let text = "ab".repeat(size / 2);
        let mut input = client_frame(false, 0x1, text.as_bytes());
        input.extend(client_frame(true, 0x0, &payload[..10]));
        input.extend(client_frame(true, 0x2, &payload));
        for chunk in input.chunks(piece) {
            s.write_all(chunk).unwrap();
            if piece < usize::MAX {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let f1 = read_frame(&mut s).unwrap();
        assert_eq!(
            (f1.0, f1.1, f1.2.len()),
            (false, 0x1, size),
            "{size}/{piece}"
        );
        assert_eq!(f1.2, text.as_bytes());
        let f2 = read_frame(&mut s).unwrap();
        assert_eq!((f2.0, f2.1, &f2.2[..]), (true, 0x0, &payload[..10]));
        let f3 = read_frame(&mut s).unwrap();
        assert_eq!(
            (f3.0, f3.1, f3.2.len()),
            (true, 0x2, size),
            "{size}/{piece}"
        );
        assert!(f3.2 == payload, "{size}/{piece}: payload differs");
    }
    drop(s);
    let t = server.wait_active(0, Duration::from_secs(5));
    assert_eq!(t["active"], 0, "the connection did not end: {t}");
    // Held frames stay where they were read: no payload byte is copied.
    assert!(t["copied_bytes"].as_u64().unwrap() <= 3 * 14, "{t}");
}

#[test]
fn a_ping_pipelined_behind_the_handshake_is_answered_after_the_101_section_4_2_2() {
    let server = Ringecho::start(&["--threads", "1"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut input = upgrade_request(server.addr).into_bytes();
    input.extend(client_frame(true, 0x9, b"early"));
    s.write_all(&input).unwrap();
    let head = read_head(&mut s).expect("a handshake response");
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head[..head.len().min(40)])
    );
    assert_eq!(read_frame(&mut s), Some((true, 0xA, b"early".to_vec())));
    echo_once(&mut s, b"then echoes");
}
