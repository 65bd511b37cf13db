//! Entry points for `fuzz/` (cargo-fuzz) and the corpus replay test. Each is
//! an independent `pub fn(&[u8])` that must not panic for any input; the
//! assertions inside are invariants, so a panic here is a bug found.
//!
//! They live in the library rather than in `fuzz/` so that plain `cargo test`
//! replays the committed corpus on stable, without cargo-fuzz or nightly.

use super::deflate::{negotiate, Policy};
use super::frame::{
    encode_client_frame, parse_client_header, server_header_len, FrameHeader, OpCode,
    MAX_CLIENT_HEADER, MAX_CONTROL_PAYLOAD,
};
use super::handshake::{
    accept_key, parse_request, select_subprotocol, write_error_response, write_response,
    write_switching_protocols, Limits, Parsed, Request,
};
use super::message::Config;
use super::testkit::StreamHarness;
use super::Error;

mod shell;

/// The opening handshake (RFC 6455 §4.2): parse `data` whole and at a few
/// split points, check that the parser agrees with itself across splits, and
/// build whichever response the result calls for.
pub fn handshake(data: &[u8]) {
    let limits = Limits::default();
    let whole = parse_request(data, &limits);

    // Prefixes at k/7 of the input, plus the first byte: enough to hit
    // mid-line, mid-header and mid-terminator splits without quadratic cost.
    let len = data.len();
    let cuts = (1..7).map(|k| len * k / 7).chain([1.min(len)]);
    for cut in cuts {
        let Some(prefix) = data.get(..cut) else {
            continue;
        };
        let part = parse_request(prefix, &limits);
        if let Ok(Parsed::Complete { consumed, .. }) = &whole {
            if cut < *consumed {
                // Before the header block ends nothing can be decided.
                assert_eq!(part, Ok(Parsed::Partial), "cut {cut} of {consumed}");
            } else {
                // Bytes after the header block never change the verdict.
                assert_eq!(part, whole, "cut {cut} past {consumed}");
            }
        }
        respond(part);
    }
    respond(whole);
}

fn respond(result: Result<Parsed<'_>, super::HandshakeError>) {
    let mut out = Vec::new();
    match result {
        Ok(Parsed::Partial) => {}
        Ok(Parsed::Complete {
            request: Request::Upgrade(u),
            consumed,
        }) => {
            assert!(consumed > 0);
            let accept = accept_key(u.key);
            assert!(accept
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')));
            assert_eq!(accept.last(), Some(&b'='));
            let chosen = u.protocols.last().copied();
            let picked = select_subprotocol(&u.protocols, &[chosen.unwrap_or_default()]);
            // The first offered match, which may be an earlier duplicate.
            assert_eq!(picked.is_some(), chosen.is_some());
            // RFC 7692 §7: whatever the offers, an agreement is one the
            // offers allowed, rendered as a valid extension header.
            let agreed = negotiate(&u.extensions, Policy::NoContextTakeover);
            if let Some(a) = &agreed {
                assert!(a.server_no_context_takeover && a.client_no_context_takeover);
                assert!(u.extensions.iter().any(|o| o
                    .to_ascii_lowercase()
                    .starts_with(crate::deflate::EXTENSION)));
                for bits in [a.server_max_window_bits, a.client_max_window_bits] {
                    assert!(bits.is_none_or(|b| (8..=15).contains(&b)));
                }
                assert!(a.client_max_window_bits <= a.server_max_window_bits.or(Some(15)));
            }
            write_switching_protocols(&mut out, u.key, picked, agreed.as_ref());
            let (status, body) = parse_response(&out);
            assert_eq!(status, 101);
            assert!(body.is_empty());
        }
        Ok(Parsed::Complete {
            request: Request::Plain(p),
            ..
        }) => {
            write_response(&mut out, 404, "text/plain", p.path.as_bytes(), false);
            let (status, body) = parse_response(&out);
            assert_eq!(status, 404);
            assert_eq!(body, p.path.as_bytes());
        }
        Err(err) => {
            write_error_response(&mut out, err);
            let (status, body) = parse_response(&out);
            assert_eq!(err.status(), status);
            assert_eq!(body, err.reason().as_bytes());
        }
    }
}

/// Our own responses must be well-formed HTTP that a client would read the
/// same way we meant them.
fn parse_response(out: &[u8]) -> (u16, &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("unparseable response {other:?}: {out:?}"),
    };
    let body = out.get(n..).unwrap_or_default();
    let declared = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(declared) = declared {
        assert_eq!(declared, body.len());
    }
    (resp.code.unwrap_or(0), body)
}

/// The connection engine (RFC 6455 §4, §5, §7) driven as the tokio-uring
/// shell drives it, one read and one write in flight, with the input as the
/// script of what the peer, the socket and the clock do (layout in
/// `fuzz_entry/shell.rs`). Checks: no panic; the unsent output's cost stays
/// within the budget plus one step past it; a read buffer always has room;
/// once done nothing is read, no timer is wanted and it stays done; nothing
/// is written after the half-close; a handled deadline never stays in the
/// past; every connection ends on its timers alone (unless open with no
/// idle timer); the peer receives one HTTP response and, after a 101 only,
/// well-formed server frames with at most one close and nothing after it;
/// and for a canned upgrade, the echoed data is a prefix of the client's.
pub fn connection(data: &[u8]) {
    shell::run(data);
}

/// Client frame headers (RFC 6455 §5.2): parse `data` whole and at every
/// prefix a header can end in, and check that the incremental parser never
/// decides differently on fewer bytes than on more.
pub fn frame(data: &[u8]) {
    let whole = parse_client_header(data, 0);
    for cut in 0..=data.len().min(MAX_CLIENT_HEADER) {
        let part = parse_client_header(&data[..cut], 0);
        match (&whole, &part) {
            // A header the prefix already holds parses exactly as it does whole.
            (Ok(Some(h)), _) if cut >= h.header_len => assert_eq!(part, whole, "cut {cut}"),
            (Ok(Some(_)), _) => assert_eq!(part, Ok(None), "cut {cut}"),
            // More bytes can only complete a header, never refuse one.
            (Ok(None), _) => assert_eq!(part, Ok(None), "cut {cut}"),
            // An error is decided by the byte that shows it and then sticks.
            (Err(_), Ok(None)) => {}
            (Err(_), _) => assert_eq!(part, whole, "cut {cut}"),
        }
    }
    if let Ok(Some(h)) = whole {
        check_header(data, h);
        // Allowing RSV bits may only turn a refusal into a header, never
        // change a header that parsed without them.
        assert_eq!(parse_client_header(data, 0x70), whole);
    }
}

fn check_header(data: &[u8], h: FrameHeader) {
    assert!(h.header_len <= MAX_CLIENT_HEADER && h.header_len <= data.len());
    assert!(matches!(h.header_len, 6 | 8 | 14));
    if h.opcode.is_control() {
        // §5.5: control frames are never fragmented and carry at most 125 bytes.
        assert!(h.fin && h.payload_len <= MAX_CONTROL_PAYLOAD as u64);
    }
    assert_eq!(h.payload_len >> 63, 0, "§5.2: top length bit is zero");
    // The in-place echo writes the server header over the client's: it
    // must fit even when the client spent more length bytes than needed.
    assert!(server_header_len(h.payload_len) + 4 <= h.header_len);
    // Where the client used the minimal encoding, re-encoding is identity.
    if server_header_len(h.payload_len) + 4 == h.header_len && h.payload_len <= 1 << 16 {
        let mut again = Vec::new();
        let payload = vec![0u8; h.payload_len as usize];
        encode_client_frame(h.fin, h.opcode, h.key, &payload, &mut again);
        assert_eq!(&again[..h.header_len], &data[..h.header_len]);
    }
}

/// What a client makes of the server's bytes: whole messages, pongs and the
/// close, plus the echoed part of a message the input stream cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Open(OpCode, Vec<u8>),
    /// A compressed message (RFC 7692 §6): its opcode and its payload as
    /// sent, which must inflate (and, for text, be UTF-8 once inflated).
    Compressed(OpCode, Vec<u8>),
}

/// The message layer (RFC 6455 §5.4, §5.5, §7): `data[0]` picks how the rest
/// is cut into reads, the rest is the client's byte stream. The server's
/// output must decode as well-formed server frames, a failure must end in a
/// close that carries the error's code, and the outcome must not depend on
/// how the stream was cut.
pub fn session(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    // Low bits choose the largest read: tiny reads stress headers split
    // byte by byte, large ones whole frames with payload in a later read.
    let max = [1u32, 3, 16, 300][usize::from(seed & 3)];
    // Bits 2-3: permessage-deflate agreed, with or without the client's
    // context (RFC 7692), or not.
    let deflate = match (seed >> 2) & 3 {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    };
    let harness = || {
        let mut h = StreamHarness::new(fuzz_config());
        if let Some(keep) = deflate {
            let policy = if keep {
                Policy::ContextTakeover
            } else {
                Policy::NoContextTakeover
            };
            if let Some(agreed) = negotiate(&["permessage-deflate"], policy) {
                h.session.enable_deflate(&agreed);
            }
        }
        h
    };
    let mut rng = u32::from(seed) << 8 | 0x9E;
    let mut split = harness();
    let mut rest = stream;
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let n = (1 + rng % max) as usize;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        let _ = split.feed(piece);
        rest = tail;
    }
    let mut whole = harness();
    let _ = whole.feed(stream);

    let split_seen = decode_server_with(&split.out, split.error, deflate);
    let whole_seen = decode_server_with(&whole.out, whole.error, deflate);
    match (split.error, whole.error) {
        (None, None) => assert_eq!(split_seen, whole_seen),
        (Some(a), Some(b)) => assert_eq!(error_code(a), error_code(b), "{a:?} vs {b:?}"),
        (a, b) => panic!("split run failed with {a:?}, whole run with {b:?}"),
    }
}

fn fuzz_config() -> Config {
    // Frames over 300 bytes are streamed, the rest echoed whole: the fuzzer
    // reaches both paths.
    Config {
        max_message_size: 1 << 16,
        echo_whole_up_to: 300,
    }
}

/// The close code a failure is reported with (§7.4.1).
fn error_code(err: Error) -> u16 {
    err.close_code()
}

/// Decode the server's output as a strict client would: never masked, no
/// RSV bits, minimal lengths, control frames whole and short, continuations
/// only inside a message (§5.1, §5.2, §5.4, §5.5).
#[cfg(test)]
pub(crate) fn decode_server(bytes: &[u8], error: Option<Error>) -> Vec<Seen> {
    decode_server_with(bytes, error, None)
}

/// [`decode_server`], with permessage-deflate agreed when `deflate` is
/// `Some(keep_context)`: RSV1 only on a data message's first frame (RFC 7692
/// §6), and compressed messages inflated as one stream when the client
/// keeps context, each on its own when not.
pub(crate) fn decode_server_with(
    mut bytes: &[u8],
    error: Option<Error>,
    deflate: Option<bool>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut open: Option<(OpCode, Vec<u8>)> = None;
    let mut compressed = false;
    let mut inflater = crate::deflate::Inflater::take();
    let mut last_close = None;
    while !bytes.is_empty() {
        let h = match super::frame::parse_server_header(bytes) {
            Ok(Some(h)) => h,
            other => panic!("truncated or unreadable server header: {other:?}"),
        };
        assert!(!h.masked, "§5.1: server frames are never masked");
        let op = OpCode::from_u8(h.opcode).expect("known opcode");
        if deflate.is_some() && h.rsv == 0x40 {
            assert!(
                matches!(op, OpCode::Text | OpCode::Binary),
                "RFC 7692 §6: RSV1 on a message's first frame only"
            );
            compressed = true;
        } else {
            assert_eq!(h.rsv, 0, "no RSV bits without an extension");
            if matches!(op, OpCode::Text | OpCode::Binary) {
                compressed = false;
            }
        }
        let (len, at, fin) = (h.payload_len, h.header_len, h.fin);
        assert_eq!(at, server_header_len(len), "§5.2: minimal length encoding");
        let end = at + usize::try_from(len).expect("length fits");
        let payload = bytes.get(at..end).expect("truncated server payload");
        assert!(last_close.is_none(), "nothing is sent after a close");
        if op.is_control() {
            assert!(fin && payload.len() <= MAX_CONTROL_PAYLOAD, "§5.5");
        }
        match op {
            OpCode::Pong => seen.push(Seen::Pong(payload.to_vec())),
            OpCode::Ping => panic!("the echo server never pings here"),
            OpCode::Close => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                assert!(
                    payload.len() != 1,
                    "§5.5.1: a close body starts with a code"
                );
                assert!(std::str::from_utf8(payload.get(2..).unwrap_or_default()).is_ok());
                last_close = Some(code);
                seen.push(Seen::Close(code));
            }
            OpCode::Text | OpCode::Binary => {
                assert!(open.is_none(), "§5.4: new message inside an open one");
                open = Some((op, payload.to_vec()));
            }
            OpCode::Continuation => open
                .as_mut()
                .expect("§5.4: continuation outside a message")
                .1
                .extend_from_slice(payload),
        }
        if fin && !op.is_control() {
            let (op, data) = open.take().expect("message in progress");
            seen.push(if compressed {
                let mut utf8 = crate::utf8::Utf8Validator::new();
                let text = (op == OpCode::Text).then_some(&mut utf8);
                inflater
                    .feed(&data, text, u64::MAX)
                    .expect("the echo inflates");
                let text = (op == OpCode::Text).then_some(&mut utf8);
                inflater
                    .finish_message(text, u64::MAX)
                    .expect("the echo inflates");
                utf8.finish()
                    .expect("§8.1: echoed text is UTF-8 once inflated");
                if deflate == Some(false) {
                    inflater.reset();
                }
                Seen::Compressed(op, data)
            } else if op == OpCode::Text {
                assert!(
                    std::str::from_utf8(&data).is_ok(),
                    "§8.1: echoed text is UTF-8"
                );
                Seen::Text(data)
            } else {
                Seen::Binary(data)
            });
        }
        bytes = &bytes[end..];
    }
    if let Some(err) = error {
        assert_eq!(
            last_close,
            Some(Some(error_code(err))),
            "a failure ends in a close carrying {err:?}'s code"
        );
    }
    if let Some((op, data)) = open {
        seen.push(Seen::Open(op, data));
    }
    seen
}

/// wss:// (the engine's TLS layer, `crate::tls`): `data[0]` picks the read
/// sizes and whether a genuine ClientHello comes first (so the fuzzer gets
/// past it), the rest is the client's ciphertext. Nothing may panic,
/// unsent output stays bounded, and the connection ends by its deadlines.
pub fn tls(data: &[u8]) {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::connection::{Config as EngineConfig, Connection};

    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let cfg = Arc::new(EngineConfig {
        max_output_bytes: 4096,
        ..EngineConfig::default()
    });
    let now = Instant::now();
    let Ok(mut conn) = Connection::with_tls(cfg.clone(), fuzz_tls::server_config(), now) else {
        panic!("the fixture configuration is usable");
    };
    let mut input = Vec::new();
    if seed & 1 == 1 {
        input.extend(fuzz_tls::client_hello());
    }
    input.extend_from_slice(rest);
    let piece = [1usize, 7, 100, 5000][usize::from(seed >> 1 & 3)];
    let mut batch = Vec::new();
    let mut fed = &input[..];
    for _ in 0..input.len() + 2 {
        if fed.is_empty() || conn.is_done() || !conn.wants_read() {
            break;
        }
        let mut buf = conn.read_buffer();
        let n = fed.len().min(piece).min(buf.capacity().max(1));
        buf.extend_from_slice(&fed[..n]);
        fed = &fed[n..];
        conn.handle_read(buf, n, now);
        conn.poll_transmit(&mut batch, 64);
        let sent: usize = batch.iter().map(|b| b.len()).sum();
        if sent > 0 {
            conn.handle_written(sent, now);
        }
        assert!(
            conn.output_cost() <= cfg.max_output_bytes + crate::tls::MAX_CIPHERTEXT + 64 * 1024,
            "unsent output grew to {}",
            conn.output_cost()
        );
        while conn.poll_event().is_some() {}
    }
    wind_down(&mut conn, now + Duration::from_secs(3600), &mut batch);
}

/// However a connection stands, its deadlines end it: let them pass, with
/// every command carried out and every byte taken.
fn wind_down(
    conn: &mut crate::Connection,
    later: std::time::Instant,
    batch: &mut Vec<bytes::Bytes>,
) {
    for _ in 0..4 {
        conn.handle_timeout(later);
        while conn.poll_tls_command(false).is_some() {}
        conn.poll_transmit(batch, 64);
        let sent: usize = batch.iter().map(|b| b.len()).sum();
        if sent > 0 {
            conn.handle_written(sent, later);
        }
        if conn.is_done() {
            break;
        }
    }
    let _ = conn.poll_timeout();
}

/// wss:// once the kernel holds the record layer (`crate::tls::kernel`):
/// a real handshake with a rustls client hands the session over, then
/// `data` is a script of what the kernel would deliver. Each step is a
/// byte saying what comes (plaintext read, or a record of a type) and a
/// byte of length, then that many bytes. Nothing may panic, every record
/// gets a bounded answer, unsent output stays bounded, and the deadlines
/// end the connection.
pub fn tls_kernel(data: &[u8]) {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::connection::Config as EngineConfig;
    use crate::tls::kernel::{Cipher, KernelSupport, TlsCommand, Version};

    let mut support = KernelSupport::NONE;
    for v in [Version::Tls12, Version::Tls13] {
        for c in Cipher::ALL {
            support = support.with(v, c);
        }
    }
    let Some((&seed, mut script)) = data.split_first() else {
        return;
    };
    if seed & 1 == 1 {
        support = support.with_rekey();
    }
    let cfg = Arc::new(EngineConfig {
        max_output_bytes: 4096,
        kernel_tls: support,
        ..EngineConfig::default()
    });
    let now = Instant::now();
    let tls13 = seed & 2 == 0;
    let Some(mut conn) = fuzz_tls::handed_over(cfg.clone(), now, tls13) else {
        panic!("the fixture handshake hands the session over");
    };
    let mut batch = Vec::new();
    for _ in 0..script.len() + 1 {
        let [kind, len, rest @ ..] = script else {
            break;
        };
        let (body, after) = rest.split_at(usize::from(*len).min(rest.len()));
        script = after;
        if conn.is_done() {
            break;
        }
        if kind & 0x80 == 0 {
            // Plaintext, as the kernel decrypted it, while it is wanted.
            if conn.wants_read() {
                let mut buf = conn.read_buffer();
                let n = body.len().min(buf.capacity() - buf.len());
                buf.extend_from_slice(&body[..n]);
                conn.handle_read(buf, n, now);
            }
        } else {
            let content_type = [21, 22, 23, kind & 0x7f][usize::from(kind >> 5 & 3)];
            conn.handle_tls_record(content_type, body, now);
        }
        let mut commands = 0;
        while let Some(command) = conn.poll_tls_command(false) {
            assert!(
                !matches!(command, TlsCommand::Attach { .. }),
                "a second hand-over"
            );
            commands += 1;
            assert!(commands <= 8, "an unbounded answer to one step");
        }
        conn.poll_transmit(&mut batch, 64);
        let sent: usize = batch.iter().map(|b| b.len()).sum();
        if sent > 0 && kind & 0x40 == 0 {
            conn.handle_written(sent, now);
        }
        assert!(
            conn.output_cost() <= cfg.max_output_bytes + 64 * 1024,
            "unsent output grew to {}",
            conn.output_cost()
        );
        while conn.poll_event().is_some() {}
    }
    wind_down(&mut conn, now + Duration::from_secs(3600), &mut batch);
}

/// The test certificate (tests/data/tls) and a client's first flight.
mod fuzz_tls {
    use std::sync::{Arc, OnceLock};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

    const CERT: &[u8] = include_bytes!("../../tests/data/tls/cert.pem");
    const KEY: &[u8] = include_bytes!("../../tests/data/tls/key.pem");
    const CA: &[u8] = include_bytes!("../../tests/data/tls/ca.pem");

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn server_config() -> Arc<ServerConfig> {
        static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
        CONFIG
            .get_or_init(|| {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(CERT)
                    .filter_map(Result::ok)
                    .collect();
                let key = PrivateKeyDer::from_pem_slice(KEY).expect("fixture key");
                let mut c = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .expect("fixture pair");
                c.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(c)
            })
            .clone()
    }

    /// A connection under `cfg` whose TLS handshake with a rustls client
    /// is done and whose session the kernel now holds (its Attach taken).
    pub fn handed_over(
        cfg: Arc<crate::connection::Config>,
        now: std::time::Instant,
        tls13: bool,
    ) -> Option<crate::Connection> {
        let mut server = (*server_config()).clone();
        server.enable_secret_extraction = true;
        let mut conn = crate::Connection::with_tls(cfg, Arc::new(server), now).ok()?;
        let version = if tls13 {
            &rustls::version::TLS13
        } else {
            &rustls::version::TLS12
        };
        let mut client = ClientConnection::new(
            Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[version])
                    .ok()?
                    .with_root_certificates(roots())
                    .with_no_client_auth(),
            ),
            ServerName::try_from("localhost").ok()?,
        )
        .ok()?;
        let mut batch = Vec::new();
        for _ in 0..64 {
            if let Some(crate::tls::kernel::TlsCommand::Attach { .. }) =
                conn.poll_tls_command(false)
            {
                return Some(conn);
            }
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).ok()?;
            }
            if !wire.is_empty() && conn.wants_read() {
                let mut buf = conn.read_buffer();
                buf.extend_from_slice(&wire);
                conn.handle_read(buf, wire.len(), now);
            }
            conn.poll_transmit(&mut batch, 64);
            let n: usize = batch.iter().map(|b| b.len()).sum();
            for b in &batch {
                let mut s = &b[..];
                while !s.is_empty() {
                    client.read_tls(&mut s).ok()?;
                    client.process_new_packets().ok()?;
                }
            }
            if n > 0 {
                conn.handle_written(n, now);
            }
        }
        None
    }

    fn roots() -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(CA).filter_map(Result::ok) {
            let _ = roots.add(c);
        }
        roots
    }

    pub fn client_hello() -> Vec<u8> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots())
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        let _ = conn.write_tls(&mut hello);
        hello
    }
}
