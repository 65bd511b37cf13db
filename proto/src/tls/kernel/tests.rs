//! The hand-over to the kernel's record layer and what the engine still
//! decides after it, against an in-memory rustls client. The kernel itself
//! is not here: after the hand-over both sides speak plaintext, and the
//! keys are checked against the client's own.

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionTrafficSecrets, RootCertStore};

use super::*;
use crate::connection::{Config, Connection, Event};
use crate::frame::{encode_client_frame, OpCode};

const CA: &[u8] = include_bytes!("../../../../tests/data/tls/ca.pem");
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn every_suite() -> KernelSupport {
    let mut s = KernelSupport::NONE.with_rekey();
    for v in [Version::Tls12, Version::Tls13] {
        for c in Cipher::ALL {
            s = s.with(v, c);
        }
    }
    s
}

fn client(version: &'static rustls::SupportedProtocolVersion) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(CA) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.enable_secret_extraction = true;
    ClientConnection::new(Arc::new(c), ServerName::try_from("localhost").unwrap()).unwrap()
}

/// A wss:// connection taken up to the hand-over, in reads of `piece`
/// bytes at most.
struct Handed {
    conn: Connection,
    client: ClientConnection,
    now: Instant,
    attach: Option<TlsCommand>,
    /// Client ciphertext the engine never read (none when handed over at
    /// a record boundary).
    unread: Vec<u8>,
}

fn hand_over(
    version: &'static rustls::SupportedProtocolVersion,
    support: KernelSupport,
    piece: usize,
) -> Handed {
    let now = Instant::now();
    let mut server_cfg = (*crate::tls::tests::server_config()).clone();
    server_cfg.enable_secret_extraction = true;
    let cfg = Config {
        kernel_tls: support,
        ..Config::default()
    };
    let mut conn = Connection::with_tls(Arc::new(cfg), Arc::new(server_cfg), now).unwrap();
    let mut client = client(version);
    let mut to_server = Vec::new();
    let mut attach = None;
    let mut batch = Vec::new();
    for _ in 0..1000 {
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        // The shell's loop: a command between reads, then one read. Never
        // a hand-over while a read is in flight, even when it is due.
        assert!(conn.poll_tls_command(true).is_none());
        if let Some(cmd) = conn.poll_tls_command(false) {
            attach = Some(cmd);
            break;
        }
        let mut moved = false;
        if !to_server.is_empty() && conn.wants_read() {
            let mut buf = conn.read_buffer();
            let n = to_server.len().min(buf.capacity()).min(piece);
            buf.extend_from_slice(&to_server[..n]);
            to_server.drain(..n);
            conn.handle_read(buf, n, now);
            moved = true;
        }
        conn.poll_transmit(&mut batch, 64);
        let n = to_client(&mut client, &batch);
        if n > 0 {
            conn.handle_written(n, now);
            moved = true;
        }
        if !moved && !client.wants_write() {
            break;
        }
    }
    Handed {
        conn,
        client,
        now,
        attach,
        unread: to_server,
    }
}

/// The client reads all of `batch`; returns its length.
fn to_client(client: &mut ClientConnection, batch: &[bytes::Bytes]) -> usize {
    for b in batch {
        let mut s = &b[..];
        while !s.is_empty() {
            client.read_tls(&mut s).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    batch.iter().map(|b| b.len()).sum()
}

fn same_key(ours: &KernelKey, seq: u64, theirs: &ConnectionTrafficSecrets) -> bool {
    let (key, iv) = match theirs {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key.as_ref(), iv.as_ref()),
        _ => return false,
    };
    ours.seq == seq && ours.key() == key && ours.iv() == iv
}

/// Plaintext out of the engine, as the kernel would take it.
fn drain(conn: &mut Connection, now: Instant) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut batch = Vec::new();
    for _ in 0..1000 {
        conn.poll_transmit(&mut batch, 64);
        if batch.is_empty() {
            break;
        }
        let n: usize = batch.iter().map(|b| b.len()).sum();
        batch.iter().for_each(|b| wire.extend_from_slice(b));
        conn.handle_written(n, now);
    }
    wire
}

fn feed(conn: &mut Connection, mut plain: &[u8], now: Instant) {
    while !plain.is_empty() && conn.wants_read() {
        let mut buf = conn.read_buffer();
        let n = plain.len().min(buf.capacity() - buf.len());
        buf.extend_from_slice(&plain[..n]);
        plain = &plain[n..];
        conn.handle_read(buf, n, now);
    }
    assert!(plain.is_empty(), "the engine took all the input");
}

/// The next command, which must be a record: (content type, payload).
fn next_record(conn: &mut Connection) -> (u8, Box<[u8]>) {
    match conn.poll_tls_command(false) {
        Some(TlsCommand::Record {
            content_type,
            payload,
        }) => (content_type, payload),
        other => panic!("not a record: {other:?}"),
    }
}

/// The next commands must be a KeyUpdate of ours that does not ask back
/// (or the two sides would ask each other forever), then our next send
/// key, whose records count from 0 (RFC 8446 §4.6.3, §5.3).
fn our_key_update(conn: &mut Connection) {
    assert_eq!(
        next_record(conn),
        (HANDSHAKE, Box::from([KEY_UPDATE, 0, 0, 1, 0]))
    );
    let Some(TlsCommand::SetKey(Direction::Send, key)) = conn.poll_tls_command(false) else {
        panic!("no next send key");
    };
    assert_eq!(key.seq, 0);
}

/// A connection in the kernel's hands, upgraded.
fn open_in_kernel() -> (Connection, Instant) {
    let mut h = hand_over(&rustls::version::TLS13, every_suite(), usize::MAX);
    assert!(matches!(h.attach, Some(TlsCommand::Attach { .. })));
    feed(&mut h.conn, REQUEST, h.now);
    let out = drain(&mut h.conn, h.now);
    assert!(out.starts_with(b"HTTP/1.1 101 "), "{out:?}");
    assert_eq!(h.conn.poll_event(), Some(Event::Upgraded));
    (h.conn, h.now)
}

#[test]
fn the_hand_over_gives_the_kernel_the_keys_and_sequence_numbers_the_client_uses() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let h = hand_over(version, every_suite(), usize::MAX);
        assert!(h.unread.is_empty());
        let Some(TlsCommand::Attach { send, receive }) = h.attach else {
            panic!("no hand-over: {:?}", h.attach);
        };
        assert!(h.conn.kernel_tls());
        assert!(!h.conn.tls_hand_off_pending());
        assert_eq!(h.conn.tls_buffered_bytes(), 0);
        #[allow(deprecated)]
        let secrets = h.client.dangerous_extract_secrets().unwrap();
        // What we send, the client receives, and the other way round.
        assert!(same_key(&send, secrets.rx.0, &secrets.rx.1), "{send:?}");
        assert!(
            same_key(&receive, secrets.tx.0, &secrets.tx.1),
            "{receive:?}"
        );
        let wire = if version == &rustls::version::TLS13 {
            0x0304
        } else {
            0x0303
        };
        assert_eq!(send.version.wire(), wire);
    }
}

#[test]
fn a_suite_the_kernel_does_not_take_stays_in_user_space_for_good() {
    let only_chacha = KernelSupport::NONE.with(Version::Tls13, Cipher::Chacha20Poly1305);
    // The client prefers AES-GCM, which this kernel lacks.
    let mut h = hand_over(&rustls::version::TLS13, only_chacha, usize::MAX);
    assert!(h.attach.is_none());
    assert!(!h.conn.kernel_tls());
    assert!(!h.conn.tls_hand_off_pending(), "decided once, not retried");
    assert!(h.conn.poll_tls_command(false).is_none());
    assert_eq!(h.conn.tls_handshaking(), Some(false));
}

#[test]
fn no_hand_over_is_offered_without_kernel_support() {
    let h = hand_over(&rustls::version::TLS13, KernelSupport::NONE, usize::MAX);
    assert!(h.attach.is_none());
    assert!(!h.conn.tls_hand_off_pending());
}

#[test]
fn the_hand_over_waits_for_a_record_boundary() {
    // Reads of 7 bytes leave part of a record behind most of the time:
    // the hand-over comes only when none is.
    let h = hand_over(&rustls::version::TLS13, every_suite(), 7);
    assert!(matches!(h.attach, Some(TlsCommand::Attach { .. })));
    assert!(h.unread.is_empty());
    #[allow(deprecated)]
    let secrets = h.client.dangerous_extract_secrets().unwrap();
    let Some(TlsCommand::Attach { receive, .. }) = h.attach else {
        unreachable!()
    };
    assert!(same_key(&receive, secrets.tx.0, &secrets.tx.1));
}

#[test]
fn after_the_hand_over_the_engine_echoes_plaintext_and_ends_with_close_notify() {
    let (mut conn, now) = open_in_kernel();
    let mut frame = Vec::new();
    encode_client_frame(
        true,
        OpCode::Text,
        [1, 2, 3, 4],
        b"in the kernel",
        &mut frame,
    );
    feed(&mut conn, &frame, now);
    let out = drain(&mut conn, now);
    assert_eq!(out, [&[0x81, 13][..], b"in the kernel"].concat());
    let mut close = Vec::new();
    encode_client_frame(
        true,
        OpCode::Close,
        [9, 9, 9, 9],
        &1000u16.to_be_bytes(),
        &mut close,
    );
    feed(&mut conn, &close, now);
    let out = drain(&mut conn, now);
    assert_eq!(out, [0x88, 2, 0x03, 0xe8]);
    // RFC 8446 §6.1: close_notify goes through the kernel as an alert
    // record, after the close frame, and only then is the engine done.
    assert!(!conn.is_done());
    assert_eq!(
        next_record(&mut conn),
        (ALERT, Box::from([WARNING, CLOSE_NOTIFY]))
    );
    assert!(conn.is_done());
    assert!(conn.poll_tls_command(false).is_none());
}

#[test]
fn the_peers_close_notify_ends_its_input() {
    let (mut conn, now) = open_in_kernel();
    conn.handle_tls_record(ALERT, &[WARNING, CLOSE_NOTIFY], now);
    assert!(conn.is_done());
    assert!(conn.poll_tls_command(false).is_none(), "nothing to answer");
}

#[test]
fn a_fatal_alert_from_the_peer_ends_the_connection_unanswered() {
    let (mut conn, now) = open_in_kernel();
    conn.handle_tls_record(ALERT, &[FATAL, 20], now);
    assert_eq!(conn.poll_event(), Some(Event::TlsFailed));
    assert!(conn.is_done());
    assert!(conn.poll_tls_command(false).is_none());
}

#[test]
fn a_key_update_gives_the_kernel_the_next_keys_rfc_8446_section_4_6_3() {
    let (mut conn, now) = open_in_kernel();
    // update_not_requested: only the receiving key changes.
    conn.handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], now);
    let Some(TlsCommand::SetKey(Direction::Receive, first)) = conn.poll_tls_command(false) else {
        panic!("no new receive key");
    };
    assert_eq!(first.seq, 0);
    assert!(conn.poll_tls_command(false).is_none());
    // update_requested: ours too, after a KeyUpdate of our own that
    // does not ask back (or the two would ask each other forever).
    conn.handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], now);
    let Some(TlsCommand::SetKey(Direction::Receive, second)) = conn.poll_tls_command(false) else {
        panic!("no new receive key");
    };
    assert_ne!(second.key(), first.key(), "each update moves the key on");
    our_key_update(&mut conn);
    // The echo goes on.
    let mut frame = Vec::new();
    encode_client_frame(true, OpCode::Binary, [1, 2, 3, 4], b"after", &mut frame);
    feed(&mut conn, &frame, now);
    assert_eq!(drain(&mut conn, now), [&[0x82, 5][..], b"after"].concat());
}

#[test]
fn a_key_update_storm_is_cut_like_rustls_cuts_it() {
    let (mut conn, now) = open_in_kernel();
    for _ in 0..MAX_IN_A_ROW {
        conn.handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], now);
        assert!(matches!(
            conn.poll_tls_command(false),
            Some(TlsCommand::SetKey(..))
        ));
    }
    // Application data between them would have reset the count; none came.
    conn.handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], now);
    assert_eq!(conn.poll_event(), Some(Event::TlsFailed));
    assert_eq!(
        next_record(&mut conn),
        (ALERT, Box::from([FATAL, UNEXPECTED_MESSAGE]))
    );
    assert!(conn.is_done());
}

#[test]
fn key_updates_between_messages_are_not_a_storm() {
    let (mut conn, now) = open_in_kernel();
    let mut frame = Vec::new();
    encode_client_frame(true, OpCode::Binary, [1, 2, 3, 4], b"x", &mut frame);
    for _ in 0..3 * MAX_IN_A_ROW {
        conn.handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], now);
        assert!(matches!(
            conn.poll_tls_command(false),
            Some(TlsCommand::SetKey(..))
        ));
        feed(&mut conn, &frame, now);
        assert_eq!(drain(&mut conn, now), [0x82, 1, b'x']);
    }
    assert!(!conn.is_done());
}

#[test]
fn a_tls_1_2_renegotiation_is_refused_with_a_warning_and_the_session_goes_on() {
    let mut h = hand_over(&rustls::version::TLS12, every_suite(), usize::MAX);
    assert!(matches!(h.attach, Some(TlsCommand::Attach { .. })));
    let now = h.now;
    feed(&mut h.conn, REQUEST, now);
    assert!(drain(&mut h.conn, now).starts_with(b"HTTP/1.1 101 "));
    h.conn
        .handle_tls_record(HANDSHAKE, &[CLIENT_HELLO, 0, 0, 2, 3, 3], now);
    assert_eq!(
        next_record(&mut h.conn),
        (ALERT, Box::from([WARNING, NO_RENEGOTIATION]))
    );
    assert!(!h.conn.is_done());
    assert_eq!(h.conn.poll_event(), Some(Event::Upgraded));
    // A second one is fatal.
    h.conn
        .handle_tls_record(HANDSHAKE, &[CLIENT_HELLO, 0, 0, 2, 3, 3], now);
    assert_eq!(h.conn.poll_event(), Some(Event::TlsFailed));
    assert!(matches!(
        h.conn.poll_tls_command(false),
        Some(TlsCommand::Record {
            content_type: ALERT,
            ..
        })
    ));
    assert!(h.conn.is_done());
}

#[test]
fn a_key_update_is_not_tls_1_2s() {
    let mut h = hand_over(&rustls::version::TLS12, every_suite(), usize::MAX);
    assert!(matches!(h.attach, Some(TlsCommand::Attach { .. })));
    let now = h.now;
    feed(&mut h.conn, REQUEST, now);
    drain(&mut h.conn, now);
    h.conn
        .handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], now);
    assert_eq!(h.conn.poll_event(), Some(Event::Upgraded));
    assert_eq!(h.conn.poll_event(), Some(Event::TlsFailed));
}

#[test]
fn malformed_records_get_a_fatal_alert_never_a_panic() {
    for (ty, payload) in [
        (HANDSHAKE, &[][..]),
        (HANDSHAKE, &[KEY_UPDATE, 0, 0][..]),
        (HANDSHAKE, &[KEY_UPDATE, 0, 0, 9, 0][..]),
        (HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 7][..]),
        (HANDSHAKE, &[KEY_UPDATE, 0, 0, 2, 0, 0][..]),
        (HANDSHAKE, &[4, 0, 0, 0][..]),
        (ALERT, &[1][..]),
        (20, &[1][..]),
        (99, &[][..]),
    ] {
        let (mut conn, now) = open_in_kernel();
        conn.handle_tls_record(ty, payload, now);
        assert_eq!(
            conn.poll_event(),
            Some(Event::TlsFailed),
            "{ty} {payload:?}"
        );
        assert!(
            matches!(
                conn.poll_tls_command(false),
                Some(TlsCommand::Record {
                    content_type: ALERT,
                    ..
                })
            ),
            "{ty} {payload:?}"
        );
        assert!(conn.is_done(), "{ty} {payload:?}");
    }
}

#[test]
fn a_refused_key_cuts_the_connection() {
    let (mut conn, now) = open_in_kernel();
    conn.handle_tls_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], now);
    assert!(conn.poll_tls_command(false).is_some());
    conn.tls_command_failed();
    assert!(conn.is_done());
    assert!(conn.poll_tls_command(false).is_none());
}

#[test]
fn application_data_read_with_its_type_is_input_like_any() {
    let (mut conn, now) = open_in_kernel();
    let mut frame = Vec::new();
    encode_client_frame(true, OpCode::Text, [1, 2, 3, 4], b"typed", &mut frame);
    conn.handle_tls_record(APPLICATION_DATA, &frame, now);
    assert_eq!(drain(&mut conn, now), [&[0x81, 5][..], b"typed"].concat());
}

#[test]
fn the_support_set_lists_what_it_was_given() {
    let s = KernelSupport::NONE
        .with(Version::Tls13, Cipher::Aes128Gcm)
        .with(Version::Tls13, Cipher::Chacha20Poly1305)
        .with(Version::Tls12, Cipher::Aes256Gcm);
    assert!(s.allows(Version::Tls13, Cipher::Aes128Gcm));
    assert!(!s.allows(Version::Tls12, Cipher::Aes128Gcm));
    assert!(!s.allows(Version::Tls13, Cipher::Aes256Gcm));
    assert_eq!(
        s.describe(),
        "TLS 1.3: AES-128-GCM, ChaCha20-Poly1305; TLS 1.2: AES-256-GCM; \
         no TLS 1.3 key updates (before Linux 6.14)"
    );
    assert!(s.with_rekey().rekeys() && !s.rekeys());
    assert_eq!(
        s.with_rekey().describe(),
        "TLS 1.3: AES-128-GCM, ChaCha20-Poly1305; TLS 1.2: AES-256-GCM"
    );
    assert!(KernelSupport::NONE.is_empty() && KernelSupport::NONE.describe().is_empty());
    assert!(
        KernelSupport::NONE.with_rekey().is_empty(),
        "no cipher, no kernel TLS"
    );
}

/// A connection handed over under `support`, upgraded, its cipher's limit
/// set to `limit` records.
fn open_with_limit(
    version: &'static rustls::SupportedProtocolVersion,
    support: KernelSupport,
    limit: u64,
) -> (Connection, Instant) {
    let mut h = hand_over(version, support, usize::MAX);
    assert!(matches!(h.attach, Some(TlsCommand::Attach { .. })));
    feed(&mut h.conn, REQUEST, h.now);
    assert!(drain(&mut h.conn, h.now).starts_with(b"HTTP/1.1 101 "));
    h.conn.kernel_tls_state().unwrap().set_limit(limit);
    (h.conn, h.now)
}

fn echo_many(conn: &mut Connection, now: Instant, n: usize) {
    let mut frame = Vec::new();
    encode_client_frame(true, OpCode::Binary, [1, 2, 3, 4], b"count me", &mut frame);
    for _ in 0..n {
        feed(conn, &frame, now);
        drain(conn, now);
    }
}

#[test]
fn near_the_ciphers_record_limit_tls_1_3_moves_to_its_next_send_key() {
    let (mut conn, now) = open_with_limit(&rustls::version::TLS13, every_suite(), 1600);
    // Each echo is one write, so one record: 1500 stay under the limit
    // less its sixteenth.
    echo_many(&mut conn, now, 1400);
    assert!(conn.poll_tls_command(false).is_none());
    echo_many(&mut conn, now, 100);
    our_key_update(&mut conn);
    assert!(conn.poll_tls_command(false).is_none(), "once per limit");
    // The count starts again under the new key.
    echo_many(&mut conn, now, 1000);
    assert!(conn.poll_tls_command(false).is_none());
    assert!(!conn.is_done());
}

#[test]
fn where_the_key_cannot_change_the_session_closes_before_the_limit() {
    let no_rekey = KernelSupport::NONE
        .with(Version::Tls13, Cipher::Aes256Gcm)
        .with(Version::Tls13, Cipher::Aes128Gcm)
        .with(Version::Tls12, Cipher::Aes256Gcm)
        .with(Version::Tls12, Cipher::Aes128Gcm);
    for (version, support) in [
        (&rustls::version::TLS13, no_rekey),
        (&rustls::version::TLS12, no_rekey.with_rekey()),
    ] {
        let (mut conn, now) = open_with_limit(version, support, 1600);
        let mut frame = Vec::new();
        encode_client_frame(true, OpCode::Binary, [1, 2, 3, 4], b"count me", &mut frame);
        let mut closed = None;
        for i in 0..1600 {
            feed(&mut conn, &frame, now);
            let out = drain(&mut conn, now);
            if let Some(at) = out.windows(2).position(|w| w[0] == 0x88) {
                closed = Some((i, out[at + 2..at + 4].to_vec()));
                break;
            }
        }
        // Close 1001 (going away, RFC 6455 §7.4.1) before the limit.
        let (at, code) = closed.expect("a close before the limit");
        assert!((1400..1500).contains(&at), "{at}");
        assert_eq!(code, 1001u16.to_be_bytes());
        assert!(conn.poll_tls_command(false).is_none(), "no KeyUpdate");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever records a peer sends once the kernel has the session,
    /// the engine answers with commands or ends the connection; it never
    /// panics, and once it has failed it only winds down.
    #[test]
    fn any_records_are_answered_or_end_the_connection(
        records in proptest::collection::vec(
            (
                proptest::prop_oneof![
                    proptest::prelude::Just(ALERT),
                    proptest::prelude::Just(HANDSHAKE),
                    proptest::prelude::Just(APPLICATION_DATA),
                    proptest::prelude::any::<u8>(),
                ],
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            ),
            1..24,
        )
    ) {
        let (mut conn, now) = open_in_kernel();
        for (content_type, payload) in records {
            conn.handle_tls_record(content_type, &payload, now);
            let mut commands = 0;
            while conn.poll_tls_command(false).is_some() {
                commands += 1;
                proptest::prop_assert!(commands < 8);
            }
            drain(&mut conn, now);
            if conn.is_done() {
                break;
            }
        }
    }
}

#[test]
fn between_the_last_flight_and_the_hand_over_nothing_is_read() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let now = Instant::now();
        let mut server_cfg = (*crate::tls::tests::server_config()).clone();
        server_cfg.enable_secret_extraction = true;
        let cfg = Config {
            kernel_tls: every_suite(),
            ..Config::default()
        };
        let mut conn = Connection::with_tls(Arc::new(cfg), Arc::new(server_cfg), now).unwrap();
        let mut client = client(version);
        let mut batch = Vec::new();
        let mut checked = false;
        for _ in 0..100 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            if !to_server.is_empty() {
                assert!(conn.wants_read());
                let mut buf = conn.read_buffer();
                buf.extend_from_slice(&to_server);
                conn.handle_read(buf, to_server.len(), now);
            }
            conn.poll_transmit(&mut batch, 64);
            if batch.is_empty() {
                break;
            }
            if conn.tls_handshaking() == Some(false) {
                // The handshake is done and its last records are not yet
                // written: a read now could take ciphertext the kernel
                // will never see, so none is wanted, and no hand-over yet.
                assert!(!conn.wants_read(), "{version:?}");
                assert!(conn.poll_tls_command(false).is_none());
                checked = true;
            }
            let n = to_client(&mut client, &batch);
            conn.handle_written(n, now);
        }
        assert!(checked, "{version:?}");
        assert!(matches!(
            conn.poll_tls_command(false),
            Some(TlsCommand::Attach { .. })
        ));
        assert!(conn.wants_read());
    }
}

#[test]
fn a_record_the_kernel_could_not_open_gets_bad_record_mac() {
    let (mut conn, now) = open_in_kernel();
    conn.handle_tls_record_error(now);
    assert_eq!(conn.poll_event(), Some(Event::TlsFailed));
    assert_eq!(
        next_record(&mut conn),
        (ALERT, Box::from([FATAL, BAD_RECORD_MAC]))
    );
    assert!(conn.is_done());
}
