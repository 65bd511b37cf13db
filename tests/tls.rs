//! wss:// on a real socket, on whichever shell `RINGECHO_IO` picks: a
//! rustls client speaking WebSocket through the core's frame codec, the
//! test page in Chromium over https://, hostile TLS clients, certificate
//! reload on SIGHUP, and a TLS listener beside a plain one. Certificates
//! are the fixtures in tests/data/tls (a test CA and a leaf for localhost).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::browser::{assert_echo_page_worked, echo_page_output};
use common::{
    client_frame, read_raw_close, read_raw_frame, renegotiate_with_s_client, upgrade_request,
    Ringecho,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

type Wss = StreamOwned<ClientConnection, TcpStream>;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

fn tls_args() -> Vec<String> {
    vec![
        "--tls-cert".into(),
        data("cert.pem").display().to_string(),
        "--tls-key".into(),
        data("key.pem").display().to_string(),
    ]
}

fn start(extra: &[&str]) -> Ringecho {
    let mut args = tls_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Ringecho::start(&refs)
}

fn client_config() -> Arc<ClientConfig> {
    client_config_for(&[&rustls::version::TLS13, &rustls::version::TLS12])
}

fn client_config_for(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    common::tls_client_config(
        &data("ca.pem"),
        rustls::crypto::ring::default_provider(),
        versions,
    )
}

/// A TLS connection, handshake done.
fn tls(addr: SocketAddr) -> Wss {
    tls_with(addr, client_config())
}

fn tls_with(addr: SocketAddr, config: Arc<ClientConfig>) -> Wss {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// A wss:// WebSocket: TLS, then the upgrade (RFC 6455 §4.1).
fn wss(addr: SocketAddr) -> Wss {
    let mut s = tls(addr);
    let head = common::upgrade_over(&mut s, addr);
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn read_message(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let (mut b0, mut payload) = read_raw_frame(s)?;
    let op = b0 & 0x0F;
    while b0 & 0x80 == 0 {
        let (b, more) = read_raw_frame(s)?;
        payload.extend(more);
        b0 = b;
    }
    Some((op, payload))
}

#[test]
fn a_rustls_client_gets_its_echo_its_close_and_its_limits_over_wss() {
    let server = start(&["--max-message-size", "256KiB"]);
    let mut s = wss(server.addr);
    let big: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
    for (op, payload) in [(0x1, b"hello over TLS".to_vec()), (0x2, big)] {
        s.write_all(&client_frame(true, op, &payload)).unwrap();
        assert_eq!(read_message(&mut s), Some((op, payload)));
    }
    s.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1000));
    // Then close_notify (RFC 8446 §6.1): a clean end, not a truncation.
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    assert!(s.conn.is_handshaking() || !s.conn.wants_read() || rest.is_empty());

    let mut s = wss(server.addr);
    s.write_all(&client_frame(true, 0x2, &vec![1u8; 300 * 1024]))
        .unwrap();
    assert_eq!(read_raw_close(&mut s), Some(1009));
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["upgraded"], 2);
    assert_eq!(t["tls_failed"], 0);
}

#[test]
fn tls_1_3_and_tls_1_2_clients_are_both_served() {
    let server = start(&[]);
    for (version, expect) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let s = tls_with(server.addr, client_config_for(&[version]));
        assert_eq!(s.conn.protocol_version(), Some(expect));
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
}

#[test]
fn the_test_page_over_https_connects_with_wss_by_itself() {
    let server = start(&["--threads", "1"]);
    let url = format!("https://localhost:{}/", server.addr.port());
    let (text, _) = echo_page_output(&url, &["--ignore-certificate-errors"]);
    assert_echo_page_worked(&text);
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert!(t["upgraded"].as_u64().unwrap() >= 1, "{t}");
    assert_eq!(t["protocol_errors"], 0, "{t}");
}

#[test]
fn garbage_instead_of_a_client_hello_gets_an_alert_and_is_counted() {
    let server = start(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request(server.addr).as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    let _ = s.read_to_end(&mut got);
    assert!(started.elapsed() < Duration::from_secs(3), "closed at once");
    // A TLS alert record (content type 21), nothing of HTTP.
    assert_eq!(got.first(), Some(&21), "{got:?}");
    let t = server.wait_stats(Duration::from_secs(5), |t| t["tls_failed"] == 1);
    assert_eq!(t["tls_failed"], 1);
}

/// The bytes of a ClientHello, as the first flight of a real client.
fn client_hello() -> Vec<u8> {
    let mut conn =
        ClientConnection::new(client_config(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn a_client_hello_trickled_a_byte_at_a_time_is_cut_at_the_handshake_timeout() {
    let server = start(&["--handshake-timeout", "1s"]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    let hello = client_hello();
    let mut cut = false;
    for b in hello.iter().take(40) {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !cut {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        cut = matches!(s.read(&mut buf), Ok(0) | Err(_));
    }
    assert!(cut, "the connection is cut");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let t = server.wait_stats(Duration::from_secs(5), |t| t["timed_out_handshake"] == 1);
    assert_eq!(t["timed_out_handshake"], 1);
}

#[test]
fn a_client_that_completes_tls_but_never_upgrades_is_cut_at_the_handshake_timeout() {
    let server = start(&["--handshake-timeout", "1s"]);
    let started = Instant::now();
    let mut s = tls(server.addr);
    let mut buf = [0u8; 16];
    // The server's close_notify or the cut: either way no more data.
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let t = server.wait_stats(Duration::from_secs(5), |t| t["timed_out_handshake"] == 1);
    assert_eq!(t["timed_out_handshake"], 1);
}

/// Write `plain` as TLS records without ever reading what the server
/// sends (a `StreamOwned` would read while it writes).
fn write_only(s: &mut Wss, plain: &[u8]) -> std::io::Result<()> {
    let mut rest = plain;
    while !rest.is_empty() {
        let n = s.conn.writer().write(rest)?;
        rest = &rest[n..];
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock)?;
        }
    }
    Ok(())
}

fn key_updates(s: &mut Wss, n: usize) -> std::io::Result<()> {
    for _ in 0..n {
        s.conn
            .refresh_traffic_keys()
            .map_err(std::io::Error::other)?;
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock)?;
        }
    }
    Ok(())
}

#[test]
fn key_updates_are_answered_and_a_storm_of_them_is_cut_rfc_8446_section_4_6_3() {
    let server = start(&["--threads", "1"]);
    let base = server.rss_kib();
    // A few, between messages, as a long-lived client does.
    let mut s = wss(server.addr);
    for i in 0..5 {
        key_updates(&mut s, 8).unwrap();
        let m = format!("after key updates {i}");
        s.write_all(&client_frame(true, 0x1, m.as_bytes())).unwrap();
        assert_eq!(read_message(&mut s), Some((0x1, m.into_bytes())));
    }
    // A storm: each asks for one back, none is read. rustls refuses more
    // than 32 in a row without application data (as BoringSSL does), so
    // the connection fails with an alert instead of working for nothing.
    let mut storm = wss(server.addr);
    let _ = key_updates(&mut storm, 10_000);
    let t = server.wait_stats(Duration::from_secs(5), |t| t["tls_failed"] == 1);
    assert_eq!(t["tls_failed"], 1, "{t}");
    // The first connection is unaffected.
    s.write_all(&client_frame(true, 0x1, b"still here"))
        .unwrap();
    assert_eq!(read_message(&mut s), Some((0x1, b"still here".to_vec())));
    let grown = server.rss_kib().saturating_sub(base);
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_servers_memory_over_wss() {
    let server = start(&["--threads", "1"]);
    let base = server.rss_kib();
    let mut hog = wss(server.addr);
    hog.sock
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frame = client_frame(true, 0x2, &[0x5A; 64 * 1024]);
    let mut sent = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && sent < (256 << 20) {
        match write_only(&mut hog, &frame) {
            Ok(()) => sent += frame.len(),
            Err(_) => break,
        }
    }
    assert!(sent < 128 << 20, "the server kept reading: {sent} bytes");
    // Others are served.
    let mut s = wss(server.addr);
    s.write_all(&client_frame(true, 0x1, b"served")).unwrap();
    assert_eq!(read_message(&mut s), Some((0x1, b"served".to_vec())));
    let grown = server.rss_kib().saturating_sub(base);
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB after {sent} bytes");
}

/// The certificate the server presented, as DER.
fn served_certificate(addr: SocketAddr) -> Vec<u8> {
    let s = tls(addr);
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_open_ones_go_on() {
    let dir = std::env::temp_dir().join(format!("ringecho-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(data("cert.pem"), &cert).unwrap();
    std::fs::copy(data("key.pem"), &key).unwrap();
    let server = Ringecho::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let first = std::fs::read(data("cert.pem")).unwrap();
    let first_der = CertificateDer::from_pem_slice(&first).unwrap().to_vec();
    assert_eq!(served_certificate(server.addr), first_der);
    let mut open = wss(server.addr);

    std::fs::copy(data("cert2.pem"), &cert).unwrap();
    std::fs::copy(data("key2.pem"), &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(server
        .wait_log(Duration::from_secs(5), |l| l
            .contains("certificate reloaded"))
        .is_some());
    let second = std::fs::read(data("cert2.pem")).unwrap();
    let second_der = CertificateDer::from_pem_slice(&second).unwrap().to_vec();
    assert_eq!(served_certificate(server.addr), second_der);
    open.write_all(&client_frame(true, 0x1, b"kept")).unwrap();
    assert_eq!(read_message(&mut open), Some((0x1, b"kept".to_vec())));

    // A broken pair is refused and the working certificate stays.
    std::fs::copy(data("other-key.pem"), &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(server
        .wait_log(Duration::from_secs(5), |l| l.contains("does not belong"))
        .is_some());
    assert_eq!(served_certificate(server.addr), second_der);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_listener_beside_the_plain_one_serves_wss_while_the_plain_one_serves_ws() {
    let mut args = tls_args();
    args.extend(["--tls-listen".to_string(), "127.0.0.1:0".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Ringecho::start(&refs);
    let line = server
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("TLS listener on wss://")
        })
        .expect("the TLS listener is announced");
    let tls_addr: SocketAddr = line
        .split("wss://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let mut plain = common::raw_ws(server.addr);
    common::echo_once(&mut plain, b"plain");
    let mut s = wss(tls_addr);
    s.write_all(&client_frame(true, 0x2, b"secure")).unwrap();
    assert_eq!(read_message(&mut s), Some((0x2, b"secure".to_vec())));
}

#[test]
fn a_bad_certificate_or_key_stops_start_up_with_a_message_naming_it() {
    let bin = env!("CARGO_BIN_EXE_ringecho");
    for (cert, key, says) in [
        ("missing.pem", "key.pem", "no such file"),
        (
            "cert.pem",
            "other-key.pem",
            "does not belong to the certificate",
        ),
        ("cert.pem", "encrypted-key.pem", "the key is encrypted"),
        ("key.pem", "key.pem", "no certificate in it"),
    ] {
        let out = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(data(cert))
            .arg("--tls-key")
            .arg(data(key))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{cert}/{key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn permessage_deflate_works_over_wss_too() {
    let server = start(&["--permessage-deflate"]);
    let script = r#"
import asyncio, ssl, sys, websockets
async def main(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(url, ssl=ctx, max_size=None, compression="deflate") as ws:
        print("agreed:", ws.response_headers.get("Sec-WebSocket-Extensions"))
        for n in [10, 20000, 300000]:
            m = ("compressible text " * (n // 18 + 1))[:n]
            await ws.send(m)
            assert await ws.recv() == m
        print("echoed: ok")
asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let url = format!("wss://localhost:{}/", server.addr.port());
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, &url])
        .arg(data("ca.pem"))
        .output()
        .expect("python3 with websockets (installed by the test command)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agreed: permessage-deflate; server_no_context_takeover"),
        "{stdout}"
    );
    assert!(stdout.contains("echoed: ok"), "{stdout}");
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["deflate_agreed"], 1);
}

#[test]
fn a_tls_1_2_renegotiation_is_refused_and_the_server_goes_on() {
    let server = start(&[]);
    let text = renegotiate_with_s_client(server.addr, &data("ca.pem"), || {
        std::thread::sleep(Duration::from_millis(500))
    });
    assert!(text.contains("RENEGOTIATING"), "{text}");
    assert!(text.contains("no renegotiation"), "{text}");
    let t = server.wait_stats(Duration::from_secs(5), |t| t["active"] == 0);
    assert_eq!(t["tls_failed"], 1, "{t}");
    let mut s = wss(server.addr);
    s.write_all(&client_frame(true, 0x1, b"after")).unwrap();
    assert_eq!(read_message(&mut s), Some((0x1, b"after".to_vec())));
}
