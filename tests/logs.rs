//! Logs: a line per connection at debug level with what an operator needs
//! (peer, duration, bytes, close codes), the client address a proxy
//! reported only when that proxy is trusted, and JSON lines on request.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{client_frame, raw_ws_with_headers, read_close, read_frame, Ringecho};

/// Upgrade with `extra` headers, echo one message, close with 1000.
fn one_connection(server: &Ringecho, extra: &str) {
    let mut s = raw_ws_with_headers(server.addr, extra);
    s.write_all(&client_frame(true, 0x1, b"logged")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().2, b"logged");
    s.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_close(&mut s), Some(1000));
}

const VIA_PROXY: &str = "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n";

#[test]
fn a_connection_gets_one_debug_line_and_a_trusted_proxys_client_address() {
    let server = Ringecho::start_with_env(
        &["--threads", "1", "--trust-proxy", "127.0.0.1"],
        &[("RUST_LOG", "debug")],
    );
    one_connection(&server, VIA_PROXY);
    let line = server
        .wait_log(Duration::from_secs(5), |l| l.contains("connection closed"))
        .expect("a line for the connection");
    for part in [
        "peer=127.0.0.1:",
        "203.0.113.9",
        "messages=1",
        "close_sent=1000",
        "close_received=1000",
        "bytes_in=",
        "duration_ms=",
    ] {
        assert!(line.contains(part), "no {part} in {line}");
    }
    // What the client claimed before the nearest proxy is not believed.
    assert!(!line.contains("198.51.100.1"), "{line}");
    let lines = server.log_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("connection closed"))
            .count(),
        1,
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("logged")),
        "nothing per message: {lines:?}"
    );
}

#[test]
fn an_untrusted_peers_forwarded_header_is_not_logged() {
    let server = Ringecho::start_with_env(&["--threads", "1"], &[("RUST_LOG", "debug")]);
    one_connection(&server, VIA_PROXY);
    let line = server
        .wait_log(Duration::from_secs(5), |l| l.contains("connection closed"))
        .expect("a line for the connection");
    assert!(!line.contains("203.0.113.9"), "{line}");
}

#[test]
fn at_the_default_level_connections_are_not_logged_and_json_lines_parse() {
    let server = Ringecho::start_with_env(&["--threads", "1", "--log-format", "json"], &[]);
    one_connection(&server, "");
    std::thread::sleep(Duration::from_millis(200));
    let lines = server.log_lines();
    assert!(
        !lines.iter().any(|l| l.contains("connection closed")),
        "{lines:?}"
    );
    assert!(lines.len() >= 3, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let limits = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "limits")
        .expect("a start-up line with the limits");
    assert_eq!(limits["fields"]["shards"], 1, "{limits}");
    assert!(limits["fields"]["io"].is_string(), "{limits}");
}
