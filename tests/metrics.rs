//! The operator's listener: what `/metrics` says after known traffic, by
//! label, on whichever shell `RINGECHO_IO` picks.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{client_frame, http_get, raw_ws, read_close, read_frame, Ringecho};

/// The sum over shards of the samples of `name` whose labels contain
/// `label` (e.g. `code="1000"`; empty for all).
fn sample(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn metrics_count_messages_closes_refusals_and_deadlines_by_label() {
    let server = Ringecho::start(&["--threads", "2", "--handshake-timeout", "300ms"]);
    // Three messages (one in two fragments) and a normal close.
    let mut c = raw_ws(server.addr);
    c.write_all(&client_frame(true, 0x1, b"one")).unwrap();
    c.write_all(&client_frame(false, 0x2, b"tw")).unwrap();
    c.write_all(&client_frame(true, 0x0, b"o")).unwrap();
    c.write_all(&client_frame(true, 0x2, b"three")).unwrap();
    for _ in 0..3 {
        read_frame(&mut c).expect("an echo");
    }
    c.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close(&mut c), Some(1000));
    // A protocol error: an unmasked frame gets 1002.
    let mut bad = raw_ws(server.addr);
    let mut frame = client_frame(true, 0x1, b"x");
    frame[1] &= 0x7f;
    bad.write_all(&frame).unwrap();
    assert_eq!(read_close(&mut bad), Some(1002));
    // A refused handshake: an unsupported version gets 426.
    let (status, _, _) = common::http_request(
        server.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert_eq!(status, 426);
    // A handshake that never comes is cut at its deadline.
    let _silent = TcpStream::connect(server.addr).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (status, _, body) = http_get(server.metrics, "/metrics");
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        let done = sample(
            &text,
            "ringecho_connections_timed_out_total",
            "deadline=\"handshake\"",
        ) >= 1
            && sample(
                &text,
                "ringecho_close_frames_received_total",
                "code=\"1000\"",
            ) >= 1;
        if done || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let expect = [
        ("ringecho_messages_echoed_total", "", 3),
        ("ringecho_connections_upgraded_total", "", 2),
        ("ringecho_close_frames_received_total", "code=\"1000\"", 1),
        ("ringecho_close_frames_sent_total", "code=\"1000\"", 1),
        ("ringecho_close_frames_sent_total", "code=\"1002\"", 1),
        ("ringecho_protocol_errors_total", "", 1),
        ("ringecho_handshakes_refused_total", "status=\"426\"", 1),
        (
            "ringecho_connections_timed_out_total",
            "deadline=\"handshake\"",
            1,
        ),
    ];
    for (name, label, n) in expect {
        assert_eq!(
            sample(&text, name, label),
            n,
            "{name}{{{label}}} in\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn the_counters_are_on_the_operators_listener_only() {
    let server = Ringecho::start(&["--threads", "1"]);
    assert_eq!(http_get(server.addr, "/stats").0, 404);
    assert_eq!(http_get(server.addr, "/metrics").0, 404);
    assert_eq!(http_get(server.addr, "/healthz").0, 200);
    assert_eq!(http_get(server.metrics, "/healthz").0, 200);
    assert_eq!(http_get(server.metrics, "/stats").0, 200);
    let (status, head, _) = http_get(server.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("openmetrics-text"),
        "{head}"
    );
}
