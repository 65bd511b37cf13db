//! The engine over TLS, with an in-memory rustls client on the other side:
//! no sockets, a fake clock, every byte accounted for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use crate::connection::{Config, Connection, Deadline, Event};
use crate::frame::{encode_client_frame, parse_server_header, OpCode};

const CERT: &[u8] = include_bytes!("../../../tests/data/tls/cert.pem");
const KEY: &[u8] = include_bytes!("../../../tests/data/tls/key.pem");
const CA: &[u8] = include_bytes!("../../../tests/data/tls/ca.pem");

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn server_config() -> Arc<ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn client() -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(CA) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    ClientConnection::new(Arc::new(c), ServerName::try_from("localhost").unwrap()).unwrap()
}

/// A wss:// connection and a client that reads everything it is sent.
struct Pair {
    conn: Connection,
    client: ClientConnection,
    now: Instant,
    /// Plaintext the client has received.
    got: Vec<u8>,
    /// Ciphertext the server sent, all of it.
    wire: Vec<u8>,
    /// Ciphertext from the client the server has not read yet.
    to_server: Vec<u8>,
    batch: Vec<bytes::Bytes>,
}

impl Pair {
    fn new(cfg: Config) -> Pair {
        let now = Instant::now();
        Pair {
            conn: Connection::with_tls(Arc::new(cfg), server_config(), now).unwrap(),
            client: client(),
            now,
            got: Vec::new(),
            wire: Vec::new(),
            to_server: Vec::new(),
            batch: Vec::new(),
        }
    }

    /// Move bytes both ways until neither side has anything to say.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            // Client to server, in reads of the engine's size, while it
            // wants them; the rest waits as in a socket buffer.
            while self.client.wants_write() {
                self.client.write_tls(&mut self.to_server).unwrap();
            }
            while !self.to_server.is_empty() && self.conn.wants_read() {
                let mut buf = self.conn.read_buffer();
                let n = self.to_server.len().min(buf.capacity());
                buf.extend_from_slice(&self.to_server[..n]);
                self.to_server.drain(..n);
                self.conn.handle_read(buf, n, self.now);
                moved = true;
            }
            // Server to client, through one batch vector reused as the
            // shells reuse theirs: what is in it from before is not output.
            let mut batch = std::mem::take(&mut self.batch);
            self.conn.poll_transmit(&mut batch, 64);
            let n: usize = batch.iter().map(|b| b.len()).sum();
            if n > 0 {
                for b in &batch {
                    self.wire.extend_from_slice(b);
                    let mut s = &b[..];
                    while !s.is_empty() {
                        self.client.read_tls(&mut s).unwrap();
                        self.client.process_new_packets().unwrap();
                        self.take_plaintext();
                    }
                }
                self.conn.handle_written(n, self.now);
                moved = true;
            }
            self.batch = batch;
            self.take_plaintext();
            if !moved {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    fn take_plaintext(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut self.client.reader(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => self.got.extend_from_slice(&buf[..k]),
            }
        }
    }

    /// Send `plain`, as much at a time as the client's buffer takes.
    fn send(&mut self, mut plain: &[u8]) {
        while !plain.is_empty() {
            let n = std::io::Write::write(&mut self.client.writer(), plain).unwrap();
            plain = &plain[n..];
            self.pump();
        }
        self.pump();
    }

    fn open(cfg: Config) -> Pair {
        let mut p = Pair::new(cfg);
        p.pump();
        assert!(!p.client.is_handshaking(), "TLS handshake done");
        assert_eq!(p.conn.tls_handshaking(), Some(false));
        p.send(REQUEST);
        assert!(p.got.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert_eq!(p.conn.poll_event(), Some(Event::Upgraded));
        let end = p.got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        p.got.drain(..end);
        p
    }
}

fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(true, op, [1, 2, 3, 4], payload, &mut v);
    v
}

fn frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    while let Ok(Some(h)) = parse_server_header(wire) {
        let end = h.header_len + h.payload_len as usize;
        seen.push((wire[0], wire[h.header_len..end].to_vec()));
        wire = &wire[end..];
    }
    seen
}

#[test]
fn a_wss_connection_echoes_and_closes_with_close_notify_rfc_8446_section_6_1() {
    let mut p = Pair::open(Config::default());
    let big: Vec<u8> = (0..200_000).map(|i| (i * 7) as u8).collect();
    p.send(&frame(OpCode::Text, b"hello over TLS"));
    p.send(&frame(OpCode::Binary, &big));
    p.send(&frame(OpCode::Close, &1000u16.to_be_bytes()));
    let seen = frames(&p.got);
    assert_eq!(seen[0], (0x81, b"hello over TLS".to_vec()));
    let echoed: Vec<u8> = seen[1..seen.len() - 1]
        .iter()
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(echoed, big);
    assert_eq!(seen.last(), Some(&(0x88, 1000u16.to_be_bytes().to_vec())));
    // The close_notify came last and the engine is done.
    assert!(p.conn.is_done());
    let mut buf = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut p.client.reader(), &mut buf).unwrap(),
        0,
        "a clean TLS end, not a truncation"
    );
}

#[test]
fn garbage_instead_of_a_client_hello_gets_an_alert_and_the_connection_ends() {
    let mut conn =
        Connection::with_tls(Arc::new(Config::default()), server_config(), Instant::now()).unwrap();
    let mut buf = conn.read_buffer();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let n = buf.len();
    conn.handle_read(buf, n, Instant::now());
    assert_eq!(conn.poll_event(), Some(Event::TlsFailed));
    let mut batch = Vec::new();
    conn.poll_transmit(&mut batch, 64);
    // A TLS alert record: content type 21.
    assert_eq!(batch.first().map(|b| b[0]), Some(21));
    let n = batch.iter().map(|b| b.len()).sum();
    conn.handle_written(n, Instant::now());
    assert!(conn.is_done());
}

#[test]
fn the_handshake_deadline_covers_the_tls_handshake() {
    let cfg = Config::default();
    let deadline = cfg.handshake_timeout;
    let mut p = Pair::new(cfg);
    // Only the first bytes of a ClientHello arrive.
    let mut hello = Vec::new();
    p.client.write_tls(&mut hello).unwrap();
    let mut buf = p.conn.read_buffer();
    buf.extend_from_slice(&hello[..10]);
    p.conn.handle_read(buf, 10, p.now);
    assert_eq!(p.conn.poll_timeout(), Some(p.now + deadline));
    p.conn.handle_timeout(p.now + deadline);
    assert_eq!(
        p.conn.poll_event(),
        Some(Event::TimedOut(Deadline::Handshake))
    );
    assert!(p.conn.is_done());
}

#[test]
fn a_page_request_over_tls_is_the_shells_to_answer_and_goes_out_encrypted() {
    let mut p = Pair::new(Config::default());
    p.pump();
    p.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(p.conn.poll_event(), Some(Event::HttpRequest));
    let req = p.conn.take_http_request().unwrap();
    assert_eq!(req.path, "/healthz");
    p.conn
        .respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec());
    p.pump();
    assert!(
        p.got.ends_with(b"ok\n"),
        "{:?}",
        String::from_utf8_lossy(&p.got)
    );
    assert!(
        !p.wire.windows(3).any(|w| w == b"ok\n"),
        "nothing readable on the wire"
    );
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_ciphertext_waiting_for_it() {
    let cfg = Config {
        max_output_bytes: 64 * 1024,
        ..Config::default()
    };
    let max = cfg.max_output_bytes;
    let mut p = Pair::open(cfg);
    let payload = vec![7u8; 16 * 1024];
    let mut sent = 0;
    // The client writes frames, never takes the server's output.
    for _ in 0..200 {
        if !p.conn.wants_read() {
            break;
        }
        let mut out = Vec::new();
        std::io::Write::write_all(&mut p.client.writer(), &frame(OpCode::Binary, &payload))
            .unwrap();
        while p.client.wants_write() {
            p.client.write_tls(&mut out).unwrap();
        }
        let mut rest = &out[..];
        while !rest.is_empty() && p.conn.wants_read() {
            let mut buf = p.conn.read_buffer();
            let n = rest.len().min(buf.capacity());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            p.conn.handle_read(buf, n, p.now);
        }
        let mut batch = Vec::new();
        p.conn.poll_transmit(&mut batch, 64);
        sent += 1;
    }
    assert!(!p.conn.wants_read(), "reading stopped after {sent} frames");
    assert!(
        p.conn.output_cost() <= max + crate::tls::MAX_CIPHERTEXT + 32 * 1024,
        "{} bytes waiting",
        p.conn.output_cost()
    );
}

#[test]
fn the_idle_timeout_pings_over_tls_too() {
    let cfg = Config {
        idle_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let mut p = Pair::open(cfg);
    p.conn.handle_timeout(p.now + Duration::from_secs(5));
    p.pump();
    assert_eq!(frames(&p.got), vec![(0x89, b"ringecho".to_vec())]);
}

#[test]
fn a_read_that_would_block_keeps_the_plaintext_already_buffered() {
    // As the epoll shell does: every readable edge ends with a read that
    // would block, whose empty buffer goes back through cancel_read.
    let mut p = Pair::open(Config::default());
    let frame = frame(OpCode::Binary, &[7u8; 3000]);
    // Half a frame arrives (a whole frame is echoed only once complete).
    std::io::Write::write_all(&mut p.client.writer(), &frame[..1500]).unwrap();
    p.pump();
    let empty = p.conn.read_buffer();
    p.conn.cancel_read(empty);
    std::io::Write::write_all(&mut p.client.writer(), &frame[1500..]).unwrap();
    p.pump();
    assert_eq!(frames(&p.got), vec![(0x82, vec![7u8; 3000])]);
}

#[test]
fn an_idle_wss_connection_holds_no_tls_buffer() {
    let mut p = Pair::open(Config::default());
    p.send(&frame(OpCode::Binary, &[5u8; 40_000]));
    assert_eq!(frames(&p.got).len(), 1);
    assert_eq!(p.conn.tls_buffered_bytes(), 0);
    // Half a record waits for its rest, and only until then.
    let mut out = Vec::new();
    std::io::Write::write_all(&mut p.client.writer(), &frame(OpCode::Text, b"split")).unwrap();
    p.client.write_tls(&mut out).unwrap();
    let mut buf = p.conn.read_buffer();
    buf.extend_from_slice(&out[..out.len() / 2]);
    let n = buf.len();
    p.conn.handle_read(buf, n, p.now);
    assert!(p.conn.tls_buffered_bytes() > 0);
    let mut buf = p.conn.read_buffer();
    buf.extend_from_slice(&out[out.len() / 2..]);
    let n = buf.len();
    p.conn.handle_read(buf, n, p.now);
    p.pump();
    assert_eq!(p.conn.tls_buffered_bytes(), 0);
}
