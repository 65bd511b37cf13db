//! Clients that lie, stall, flood and vanish, against the real server over
//! real sockets. Each test is bounded in time and fails if the defence it
//! names is taken out of the server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_handshake_trickled_a_byte_at_a_time_is_cut_at_the_deadline_from_accept() {
    // Each byte arrives well inside any per-read timeout, so only a deadline
    // counted from accept (not from the last byte) stops this client.
    let server = Ringecho::start(&["--threads", "1", "--handshake-timeout", "1s"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().copied();
    let mut buf = [0u8; 64];
    let cut = loop {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "still connected after 6 s of trickling"
        );
        let byte = header.next().unwrap_or(b'a');
        if s.write_all(&[byte]).is_err() {
            break start.elapsed();
        }
        match s.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(n) => panic!(
                "unexpected response: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break start.elapsed(),
            Err(_) => {} // the 100 ms pause between bytes
        }
    };
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(4),
        "cut after {cut:?}, want about 1 s"
    );
    let total = server.wait_stats(Duration::from_secs(2), |t| t["timed_out"] == 1);
    assert_eq!(total["timed_out"], 1, "{total}");
}

#[test]
fn garbage_instead_of_http_gets_400_and_the_connection_closes() {
    let server = Ringecho::start(&["--threads", "1"]);
    // A TLS ClientHello: what a wss:// client sends to a ws:// port.
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0xc0, 0xff, 0x00, 0x0d,
    ];
    for garbage in [
        &hello[..],
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\x7f/ HTTP/1.1\r\n",
    ] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(garbage).unwrap();
        let head = read_head(&mut s).expect("a response, not a hang");
        assert!(
            head.starts_with(b"HTTP/1.1 400 "),
            "{garbage:?}: {}",
            String::from_utf8_lossy(&head)
        );
        assert!(
            closes_within(&mut s, Duration::from_secs(5)),
            "{garbage:?}: connection left open after the 400"
        );
    }
}

#[test]
fn a_length_of_2_pow_63_minus_1_is_refused_with_1009_at_the_header_section_5_2() {
    let server = Ringecho::start(&["--threads", "1"]);
    let base_rss = server.rss_kib();
    for opcode in [0x82u8, 0x81] {
        let mut s = raw_ws(server.addr);
        let mut frame = vec![opcode, 0x80 | 127];
        frame.extend(i64::MAX.to_be_bytes());
        frame.extend([1, 2, 3, 4]);
        frame.extend([b'a'; 100]);
        s.write_all(&frame).unwrap();
        assert_eq!(read_close(&mut s), Some(1009));
        assert!(closes_within(&mut s, Duration::from_secs(8)));
    }
    let grown = server.rss_kib().saturating_sub(base_rss);
    assert!(grown < 4 * 1024, "RSS grew by {grown} KiB");
}

#[test]
fn a_ping_flood_gets_coalesced_pongs_and_memory_stays_bounded_section_5_5_3() {
    let server = Ringecho::start(&["--threads", "1"]);
    let base_rss = server.rss_kib();
    let mut s = raw_ws(server.addr);
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // 100,000 pings of 125 bytes (13 MB) sent without reading a byte: more
    // pongs than the socket buffers can hold, so a server that queued one
    // pong per ping would have to keep megabytes of them in memory.
    const PINGS: u32 = 100_000;
    let ping = |i: u32| {
        let mut payload = [b'p'; 125];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        client_frame(true, 0x9, &payload)
    };
    let mut batch = Vec::new();
    for i in 0..PINGS {
        batch.extend(ping(i));
        if batch.len() > 256 * 1024 {
            s.write_all(&batch)
                .expect("the server stopped reading pings");
            batch.clear();
        }
    }
    batch.extend(client_frame(true, 0x1, b"after the flood"));
    s.write_all(&batch).unwrap();
    let flooded_rss = server.rss_kib();

    let mut pongs = 0u32;
    let mut last = None;
    loop {
        let (_, op, payload) = read_frame(&mut s).expect("connection ended");
        match op {
            0xA => {
                pongs += 1;
                last = Some(payload);
            }
            0x1 => {
                assert_eq!(payload, b"after the flood");
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(
        pongs < PINGS / 2,
        "{pongs} pongs for {PINGS} pings: not coalesced"
    );
    let last = last.expect("at least one pong");
    assert_eq!(
        &last[..4],
        &(PINGS - 1).to_be_bytes(),
        "the most recent ping is the one answered"
    );
    let grown = flooded_rss.saturating_sub(base_rss);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB during the flood");
    echo_once(&mut s, b"still echoing");
}

#[test]
fn connections_beyond_the_per_shard_limit_are_closed_at_once() {
    let server = Ringecho::start(&["--threads", "1", "--max-connections", "4"]);
    let mut open: Vec<TcpStream> = (0..4).map(|_| raw_ws(server.addr)).collect();
    // The fifth is accepted and closed without an answer: not left in the
    // listen queue where the client would wait for its handshake timeout.
    let mut extra = TcpStream::connect(server.addr).unwrap();
    let _ = extra.write_all(upgrade_request(server.addr).as_bytes());
    let t = Instant::now();
    assert!(closes_within(&mut extra, Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for s in &mut open {
        echo_once(s, b"the admitted ones are served");
    }
    drop(open.pop());
    // The stats request itself takes the fourth slot.
    let total = server.wait_active(3, Duration::from_secs(5));
    assert_eq!(total["active"], 3, "{total}");
    assert!(total["rejected"].as_u64().unwrap() >= 1, "{total}");
    // The stats connection frees its slot a moment after its response.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(upgrade_request(server.addr).as_bytes())
            .unwrap();
        match read_head(&mut s) {
            Some(head) if head.starts_with(b"HTTP/1.1 101 ") => break s,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("the freed slot was never reused"),
        }
    };
    echo_once(&mut again, b"a freed slot is reused");
}

#[test]
fn out_of_descriptors_on_accept_backs_off_without_spinning_and_keeps_serving() {
    let server = Ringecho::start_with_fd_limit(&["--threads", "1"], 40);
    let mut served = Vec::new();
    let mut waiting = None;
    // Open connections until one gets no answer: the server is out of
    // descriptors and that client sits in the listen queue.
    for _ in 0..60 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s.write_all(upgrade_request(server.addr).as_bytes())
            .unwrap();
        match read_head(&mut s) {
            Some(head) => {
                assert!(head.starts_with(b"HTTP/1.1 101 "));
                served.push(s);
            }
            None => {
                waiting = Some(s);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("the descriptor limit was never reached");
    assert!(served.len() >= 20, "only {} served", served.len());

    // Out of descriptors, accept fails at once every time: retrying without
    // a pause would burn a whole core here.
    let cpu = server.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_time() - cpu;
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU in 2 s while out of descriptors"
    );
    for s in served.iter_mut().take(5) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        echo_once(s, b"open connections keep working");
    }

    // Free a few descriptors: the queued client is accepted and upgraded.
    served.truncate(served.len() - 5);
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = read_head(&mut waiting).expect("the queued client was never served");
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    echo_once(&mut waiting, b"accepted after the back-off");
    drop(served);
    let total = server.wait_active(1, Duration::from_secs(5));
    assert_eq!(total["active"], 1, "{total}");
    assert!(total["accept_backoffs"].as_u64().unwrap() >= 1, "{total}");
}

#[test]
fn peers_that_reset_mid_handshake_mid_frame_or_mid_write_release_everything() {
    let server = Ringecho::start(&["--threads", "1"]);
    // Let lazily created descriptors and buffers appear first.
    echo_once(&mut raw_ws(server.addr), b"warm-up");
    server.wait_active(0, Duration::from_secs(5));
    // Give the stats request's own socket time to close.
    std::thread::sleep(Duration::from_millis(300));
    let base_fds = server.open_fds();
    let base_rss = server.rss_kib();

    for _ in 0..20 {
        // Mid-handshake.
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgr").unwrap();
        reset(s);

        // Mid-frame: the header of a 1 MiB frame and a little of its payload.
        let mut s = raw_ws(server.addr);
        let frame = client_frame(true, 0x2, &vec![7u8; 1 << 20]);
        s.write_all(&frame[..20_000]).unwrap();
        reset(s);

        // Mid-write: the server's echo is stuck behind a peer that stopped
        // reading, with a write on the ring, when the peer resets.
        let mut s = raw_ws(server.addr);
        s.set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let frame = client_frame(true, 0x2, &[9u8; 64 * 1024]);
        for _ in 0..64 {
            if s.write_all(&frame).is_err() {
                break;
            }
        }
        reset(s);
    }

    let total = server.wait_active(0, Duration::from_secs(10));
    assert_eq!(total["active"], 0, "connections still held: {total}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.open_fds() > base_fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.open_fds(), base_fds, "descriptors leaked");
    let grown = server.rss_kib().saturating_sub(base_rss);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    echo_once(&mut raw_ws(server.addr), b"the shard keeps serving");
}

#[test]
fn a_tiny_ring_under_many_connections_loses_no_completion() {
    // 8 submission entries (and 16 completion entries) against 200
    // connections that each pipeline 50 messages: submissions overflow the
    // queue within one tick and completions overflow the completion ring, so
    // the driver must flush a full queue and the kernel must keep overflowed
    // completions (IORING_FEAT_NODROP, checked at start-up).
    let server = Ringecho::start(&["--threads", "1", "--ring-entries", "8", "--no-direct-send"]);
    let addr = server.addr;
    const CONNS: usize = 200;
    const MSGS: usize = 50;
    let barrier = Arc::new(Barrier::new(CONNS));
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = raw_ws(addr);
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let msg = |m: usize| -> Vec<u8> {
                    (0..(c * 7 + m * 13) % 2000 + 1)
                        .map(|i| (i + c + m) as u8)
                        .collect()
                };
                let burst: Vec<u8> = (0..MSGS)
                    .flat_map(|m| client_frame(true, 0x2, &msg(m)))
                    .collect();
                barrier.wait();
                s.write_all(&burst).unwrap();
                for m in 0..MSGS {
                    let got = read_message(&mut s);
                    assert_eq!(got, Some((0x2, msg(m))), "connection {c}, message {m}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client saw a lost or wrong echo");
    }
    let total = server.stats()["total"].clone();
    assert_eq!(total["protocol_errors"], 0, "{total}");
    assert!(total["upgraded"].as_u64().unwrap() >= CONNS as u64);
}

#[test]
fn an_idle_peer_that_never_reads_is_still_cut_after_the_close_timeout() {
    // Its unread echo keeps a write on the ring forever, so the idle close
    // can never be written: only the close timeout can end it.
    let server = Ringecho::start(&[
        "--threads",
        "1",
        "--idle-timeout",
        "300ms",
        "--close-timeout",
        "300ms",
    ]);
    let mut s = raw_ws(server.addr);
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let frame = client_frame(true, 0x2, &[1u8; 64 * 1024]);
    while s.write_all(&frame).is_ok() {}
    let total = server.wait_active(0, Duration::from_secs(5));
    assert_eq!(total["active"], 0, "the stuck peer is still held: {total}");
    assert!(total["idle_closed"].as_u64().unwrap() >= 1, "{total}");
    assert!(total["timed_out"].as_u64().unwrap() >= 1, "{total}");
}

#[test]
fn a_peer_that_fails_the_protocol_and_never_reads_is_cut_after_the_close_timeout() {
    // The close after the violation queues behind megabytes of echo the
    // peer never reads (§7.1.7): the connection must still end.
    let server = Ringecho::start(&[
        "--threads",
        "1",
        "--max-output",
        "64MiB",
        "--close-timeout",
        "500ms",
    ]);
    let mut s = raw_ws(server.addr);
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = client_frame(true, 0x2, &[2u8; 64 * 1024]);
    for _ in 0..128 {
        s.write_all(&frame).unwrap();
    }
    s.write_all(&[0x81, 0x02, b'n', b'o']).unwrap(); // unmasked: 1002
    let total = server.wait_active(0, Duration::from_secs(6));
    assert_eq!(total["active"], 0, "the failed peer is still held: {total}");
    assert_eq!(total["protocol_errors"], 1, "{total}");
}
