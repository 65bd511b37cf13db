use super::*;
use proptest::prelude::*;

/// A real Chrome request to echo.websocket.org (../shared/seed), with the
/// CRLF line endings it had on the wire.
const CHROME: &[u8] = b"GET / HTTP/1.1\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Host: echo.websocket.org\r\n\
Origin: null\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Sec-WebSocket-Key: Qcgtb1RJ6HceeTRLPFux/A==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\
Cookie: __utma=9925811.951031439.1365242028.1365980711.1366068689.5; __utmc=9925811; __utmz=9925811.1365242028.1.1.utmcsr=websocket.org|utmccn=(referral)|utmcmd=referral|utmcct=/\r\n\
\r\n";

/// The smallest request that passes §4.2.1, with the RFC §1.3 sample key.
fn minimal() -> String {
    request_with(&[])
}

/// `minimal()` with header lines replaced (same name, case-insensitive) or
/// removed (value `None`) or added.
fn request_with(changes: &[(&str, Option<&str>)]) -> String {
    let base = [
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut s = String::from("GET /chat HTTP/1.1\r\n");
    for (name, value) in base {
        match changes.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, Some(v))) => s.push_str(&format!("{name}: {v}\r\n")),
            Some((_, None)) => {}
            None => s.push_str(&format!("{name}: {value}\r\n")),
        }
    }
    for (name, value) in changes {
        if let (false, Some(v)) = (
            base.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)),
            value,
        ) {
            s.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    s.push_str("\r\n");
    s
}

fn parse(buf: &[u8]) -> Result<Parsed<'_>, HandshakeError> {
    parse_request(buf, &Limits::default())
}

fn upgrade(buf: &[u8]) -> UpgradeRequest<'_> {
    match parse(buf) {
        Ok(Parsed::Complete {
            request: Request::Upgrade(u),
            ..
        }) => u,
        other => panic!("expected an upgrade, got {other:?}"),
    }
}

fn error_response(err: HandshakeError) -> String {
    let mut out = Vec::new();
    write_error_response(&mut out, err);
    String::from_utf8(out).expect("responses are ASCII")
}

/// Assert `req` fails with `err`, and that the response for it starts with
/// the status line for `status`.
fn assert_rejected(req: &[u8], err: HandshakeError, status: u16) {
    assert_eq!(parse(req), Err(err), "{}", String::from_utf8_lossy(req));
    assert_eq!(err.status(), status);
    let resp = error_response(err);
    assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp:?}");
}

// ---- accept key (§1.3, §4.2.2) ----

#[test]
fn section_1_3_sample_key_gives_sample_accept() {
    assert_eq!(
        &accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn section_4_2_2_accept_for_chrome_capture() {
    let u = upgrade(CHROME);
    assert_eq!(&accept_key(u.key), b"84Qpane33QhxOmcz8bGkFdE1AHk=");
}

// ---- parsing (§4.2.1) ----

#[test]
fn section_4_2_1_chrome_capture_parses() {
    let u = upgrade(CHROME);
    assert_eq!(
        u,
        UpgradeRequest {
            path: "/",
            host: "echo.websocket.org",
            origin: Some("null"),
            key: "Qcgtb1RJ6HceeTRLPFux/A==",
            protocols: vec![],
            extensions: vec!["x-webkit-deflate-frame"],
            forwarded_for: None,
        }
    );
    match parse(CHROME) {
        Ok(Parsed::Complete { consumed, .. }) => assert_eq!(consumed, CHROME.len()),
        other => panic!("{other:?}"),
    }
}

/// A request through proxies: only the nearest proxy's report counts.
fn via(headers: &str) -> Option<String> {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    upgrade(req.as_bytes()).forwarded_for.map(String::from)
}

#[test]
fn the_nearest_proxys_forwarded_for_is_kept_rfc_7239() {
    assert_eq!(via(""), None);
    assert_eq!(
        via("X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n").as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(
        via("X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2 , 192.0.2.7 \r\n").as_deref(),
        Some("192.0.2.7")
    );
    // Forwarded wins, its last element's for=, quotes and IPv6 kept whole.
    assert_eq!(
        via("X-Forwarded-For: 9.9.9.9\r\nForwarded: for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https\r\n")
            .as_deref(),
        Some("[2001:db8:cafe::17]:4711")
    );
    assert_eq!(
        via("Forwarded: proto=https;By=203.0.113.43;For=192.0.2.60\r\n").as_deref(),
        Some("192.0.2.60")
    );
    // Nothing usable: nothing reported.
    assert_eq!(via("Forwarded: proto=https\r\n"), None);
    assert_eq!(via("X-Forwarded-For: 1.2.3.4,\r\n"), None);
}

#[test]
fn section_4_2_1_byte_by_byte_is_partial_until_last_byte() {
    for end in 0..CHROME.len() {
        assert_eq!(parse(&CHROME[..end]), Ok(Parsed::Partial), "prefix {end}");
    }
    assert!(matches!(parse(CHROME), Ok(Parsed::Complete { .. })));
}

#[test]
fn section_4_2_1_pipelined_bytes_are_not_consumed() {
    let req = minimal();
    let mut buf = req.clone().into_bytes();
    // A masked frame sent before the 101 arrived, then another request.
    buf.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    match parse(&buf) {
        Ok(Parsed::Complete {
            request: Request::Upgrade(u),
            consumed,
        }) => {
            assert_eq!(consumed, req.len());
            assert_eq!(u.path, "/chat");
            assert_eq!(u.origin, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn section_4_2_1_header_names_and_tokens_are_case_insensitive() {
    let req = "GET / HTTP/1.1\r\n\
        hOST: a\r\n\
        UPGRADE: WebSocket\r\n\
        connection: keep-alive, Upgrade\r\n\
        SEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        sec-websocket-version: 13\r\n\r\n";
    let u = upgrade(req.as_bytes());
    assert_eq!(u.host, "a");
    assert_eq!(u.key, "dGhlIHNhbXBsZSBub25jZQ==");
}

#[test]
fn section_4_2_1_connection_token_across_repeated_headers() {
    let req = request_with(&[("Connection", Some("keep-alive")), ("connection", None)]);
    assert_rejected(req.as_bytes(), HandshakeError::BadConnection, 400);
    let req = req.replace("\r\n\r\n", "\r\nConnection:  foo ,\tUPGRADE , bar\r\n\r\n");
    upgrade(req.as_bytes());
}

#[test]
fn section_4_2_1_values_are_trimmed() {
    let req = request_with(&[
        ("Host", Some("\t example.com  ")),
        ("Sec-WebSocket-Key", Some("  dGhlIHNhbXBsZSBub25jZQ==\t")),
        ("Sec-WebSocket-Version", Some(" 13 ")),
        ("Origin", Some(" https://example.com ")),
    ]);
    let u = upgrade(req.as_bytes());
    assert_eq!(u.host, "example.com");
    assert_eq!(u.key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(u.origin, Some("https://example.com"));
}

#[test]
fn section_4_2_1_item_1_post_with_upgrade_is_405() {
    let req = minimal().replace("GET ", "POST ");
    assert_rejected(req.as_bytes(), HandshakeError::MethodNotAllowed, 405);
    assert!(error_response(HandshakeError::MethodNotAllowed).contains("\r\nAllow: GET\r\n"));
    // Methods are case-sensitive.
    let req = minimal().replace("GET ", "get ");
    assert_rejected(req.as_bytes(), HandshakeError::MethodNotAllowed, 405);
}

#[test]
fn section_4_2_1_item_1_http_1_0_upgrade_is_400() {
    let req = minimal().replace("HTTP/1.1", "HTTP/1.0");
    assert_rejected(req.as_bytes(), HandshakeError::HttpVersion, 400);
}

#[test]
fn section_4_2_1_item_2_missing_or_repeated_host_is_400() {
    let req = request_with(&[("Host", None)]);
    assert_rejected(req.as_bytes(), HandshakeError::MissingHost, 400);
    let req = request_with(&[("Host", Some(""))]);
    assert_rejected(req.as_bytes(), HandshakeError::MissingHost, 400);
    let req = minimal().replace("\r\n\r\n", "\r\nHost: other\r\n\r\n");
    assert_rejected(req.as_bytes(), HandshakeError::MissingHost, 400);
}

#[test]
fn section_4_2_1_item_3_upgrade_without_websocket_is_400() {
    let req = request_with(&[("Upgrade", Some("h2c"))]);
    assert_rejected(req.as_bytes(), HandshakeError::BadUpgrade, 400);
    let req = request_with(&[("Upgrade", Some(""))]);
    assert_rejected(req.as_bytes(), HandshakeError::BadUpgrade, 400);
    let req = request_with(&[("Upgrade", Some("h2c, WEBSOCKET"))]);
    upgrade(req.as_bytes());
}

#[test]
fn section_4_2_1_item_4_connection_keep_alive_only_is_400() {
    let req = request_with(&[("Connection", Some("keep-alive"))]);
    assert_rejected(req.as_bytes(), HandshakeError::BadConnection, 400);
    let req = request_with(&[("Connection", None)]);
    assert_rejected(req.as_bytes(), HandshakeError::BadConnection, 400);
    // A token containing "upgrade" is not the token.
    let req = request_with(&[("Connection", Some("upgrade-insecure"))]);
    assert_rejected(req.as_bytes(), HandshakeError::BadConnection, 400);
}

#[test]
fn section_4_2_1_item_5_key_of_15_bytes_is_400() {
    // base64 of 15 bytes: 20 characters, no padding.
    let req = request_with(&[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAA"))]);
    assert_rejected(req.as_bytes(), HandshakeError::BadKey, 400);
}

#[test]
fn section_4_2_1_item_5_other_bad_keys_are_400() {
    for key in [
        // 17 bytes.
        "AAAAAAAAAAAAAAAAAAAAAAA=",
        // 16 bytes but unpadded.
        "dGhlIHNhbXBsZSBub25jZQ",
        // Non-canonical trailing bits.
        "dGhlIHNhbXBsZSBub25jZR==",
        // URL-safe alphabet.
        "dGhlIHNhbXBsZSBub25jZQ-_",
        "not base64 at all!!!!!!!",
        "",
    ] {
        let req = request_with(&[("Sec-WebSocket-Key", Some(key))]);
        assert_rejected(req.as_bytes(), HandshakeError::BadKey, 400);
    }
    let req = request_with(&[("Sec-WebSocket-Key", None)]);
    assert_rejected(req.as_bytes(), HandshakeError::BadKey, 400);
    let req = minimal().replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_rejected(req.as_bytes(), HandshakeError::BadKey, 400);
}

#[test]
fn section_4_4_version_12_is_426_naming_13() {
    let req = request_with(&[("Sec-WebSocket-Version", Some("12"))]);
    assert_rejected(req.as_bytes(), HandshakeError::UnsupportedVersion, 426);
    let resp = error_response(HandshakeError::UnsupportedVersion);
    assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{resp}");
    assert!(resp.contains("\r\nUpgrade: websocket\r\n"), "{resp}");
}

#[test]
fn section_4_4_missing_or_repeated_version_is_426() {
    let req = request_with(&[("Sec-WebSocket-Version", None)]);
    assert_rejected(req.as_bytes(), HandshakeError::UnsupportedVersion, 426);
    let req = minimal().replace("\r\n\r\n", "\r\nSec-WebSocket-Version: 8\r\n\r\n");
    assert_rejected(req.as_bytes(), HandshakeError::UnsupportedVersion, 426);
    let req = request_with(&[("Sec-WebSocket-Version", Some("013"))]);
    assert_rejected(req.as_bytes(), HandshakeError::UnsupportedVersion, 426);
}

#[test]
fn section_4_2_1_checks_run_in_the_order_listed() {
    // Broken everywhere: the first rule (method) is the one reported.
    let req = "PUT / HTTP/1.0\r\nUpgrade: nope\r\n\r\n";
    assert_rejected(req.as_bytes(), HandshakeError::MethodNotAllowed, 405);
    let req = "GET / HTTP/1.1\r\nUpgrade: nope\r\n\r\n";
    assert_rejected(req.as_bytes(), HandshakeError::MissingHost, 400);
}

#[test]
fn section_4_2_1_non_utf8_origin_is_400() {
    let mut req = minimal().into_bytes();
    req.truncate(req.len() - 2);
    req.extend_from_slice(b"Origin: http://\xff\xfe\r\n\r\n");
    assert_rejected(&req, HandshakeError::MalformedRequest, 400);
}

#[test]
fn section_4_2_1_item_7_repeated_origin_is_400() {
    let req = request_with(&[("Origin", Some("https://a"))]);
    let req = req.replace("\r\n\r\n", "\r\nOrigin: https://b\r\n\r\n");
    assert_rejected(req.as_bytes(), HandshakeError::MalformedRequest, 400);
}

#[test]
fn section_4_2_1_item_8_protocols_in_order_across_headers() {
    let req = request_with(&[("Sec-WebSocket-Protocol", Some(" chat , , superchat"))]);
    let req = req.replace("\r\n\r\n", "\r\nsec-websocket-protocol: v2.echo\t\r\n\r\n");
    assert_eq!(
        upgrade(req.as_bytes()).protocols,
        ["chat", "superchat", "v2.echo"]
    );
}

#[test]
fn section_9_1_extension_offers_keep_their_params() {
    let req = request_with(&[(
        "Sec-WebSocket-Extensions",
        Some("permessage-deflate; client_max_window_bits, foo; x=\"a,b\\\",c\" , bar"),
    )]);
    assert_eq!(
        upgrade(req.as_bytes()).extensions,
        [
            "permessage-deflate; client_max_window_bits",
            "foo; x=\"a,b\\\",c\"",
            "bar"
        ]
    );
}

#[test]
fn headers_of_9_kib_are_431_complete_and_partial() {
    let filler = format!("X-Filler: {}\r\n", "a".repeat(9 * 1024));
    let complete = minimal().replace("\r\n\r\n", &format!("\r\n{filler}\r\n"));
    assert_rejected(complete.as_bytes(), HandshakeError::HeadersTooLarge, 431);
    // Not yet complete, but already over the limit.
    let partial = &complete.as_bytes()[..complete.len() - 10];
    assert_rejected(partial, HandshakeError::HeadersTooLarge, 431);
    // A plain request is held to the same limit.
    let plain = format!("GET / HTTP/1.1\r\n{filler}\r\n");
    assert_rejected(plain.as_bytes(), HandshakeError::HeadersTooLarge, 431);
}

#[test]
fn header_limit_is_configurable_and_inclusive() {
    let req = minimal();
    let exact = Limits {
        max_header_bytes: req.len(),
    };
    assert!(matches!(
        parse_request(req.as_bytes(), &exact),
        Ok(Parsed::Complete { .. })
    ));
    let short = Limits {
        max_header_bytes: req.len() - 1,
    };
    assert_eq!(
        parse_request(req.as_bytes(), &short),
        Err(HandshakeError::HeadersTooLarge)
    );
    assert_eq!(
        parse_request(&req.as_bytes()[..req.len() - 1], &short),
        Ok(Parsed::Partial)
    );
}

#[test]
fn too_many_headers_is_431() {
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let req = minimal().replace("\r\n\r\n", &format!("\r\n{many}\r\n"));
    assert_rejected(req.as_bytes(), HandshakeError::HeadersTooLarge, 431);
}

#[test]
fn garbage_is_400() {
    assert_rejected(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        HandshakeError::MalformedRequest,
        400,
    );
    assert_rejected(
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        HandshakeError::MalformedRequest,
        400,
    );
}

#[test]
fn plain_requests_without_upgrade_are_plain() {
    for (req, method, path) in [
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/"),
        ("GET /health HTTP/1.0\r\n\r\n", "GET", "/health"),
        ("HEAD /index.html HTTP/1.1\r\n\r\n", "HEAD", "/index.html"),
        (
            "POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "POST",
            "/x",
        ),
        // WebSocket headers without Upgrade do not make it a handshake.
        (
            "GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n",
            "GET",
            "/chat",
        ),
    ] {
        assert_eq!(
            parse(req.as_bytes()),
            Ok(Parsed::Complete {
                request: Request::Plain(PlainRequest { method, path }),
                consumed: req.len(),
            }),
            "{req}"
        );
    }
}

// ---- subprotocols (§4.2.2 item 5.3) ----

#[test]
fn section_4_2_2_subprotocol_is_first_offered_that_is_supported() {
    let supported = ["superchat", "chat"];
    assert_eq!(
        select_subprotocol(&["chat", "superchat"], &supported),
        Some("chat")
    );
    assert_eq!(
        select_subprotocol(&["x", "superchat"], &supported),
        Some("superchat")
    );
    assert_eq!(select_subprotocol(&["x", "y"], &supported), None);
    assert_eq!(select_subprotocol(&[], &supported), None);
    assert_eq!(select_subprotocol(&["chat"], &[] as &[&str]), None);
    // Exact match: the client must get back the value it sent.
    assert_eq!(select_subprotocol(&["Chat"], &supported), None);
    let owned = vec![String::from("chat")];
    assert_eq!(select_subprotocol(&["chat"], &owned), Some("chat"));
}

#[test]
fn section_4_2_2_response_names_one_protocol_not_the_offered_list() {
    let req = request_with(&[("Sec-WebSocket-Protocol", Some("a, chat, b"))]);
    let u = upgrade(req.as_bytes());
    let chosen = select_subprotocol(&u.protocols, &["b", "chat"]);
    let mut out = Vec::new();
    write_switching_protocols(&mut out, u.key, chosen, None);
    let resp = String::from_utf8(out).expect("ASCII");
    assert!(
        resp.contains("\r\nSec-WebSocket-Protocol: chat\r\n"),
        "{resp}"
    );
    assert!(!resp.contains("a, chat"), "{resp}");
    assert_eq!(resp.matches("Sec-WebSocket-Protocol").count(), 1);
}

// ---- responses ----

#[test]
fn section_4_2_2_switching_protocols_bytes_exactly() {
    let mut out = Vec::new();
    write_switching_protocols(&mut out, "dGhlIHNhbXBsZSBub25jZQ==", None, None);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
          \r\n"
    );
    out.clear();
    write_switching_protocols(&mut out, "dGhlIHNhbXBsZSBub25jZQ==", Some("chat"), None);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
          Sec-WebSocket-Protocol: chat\r\n\
          \r\n"
    );
}

#[test]
fn section_9_1_switching_protocols_declines_extensions_by_omission() {
    let u = upgrade(CHROME);
    let mut out = Vec::new();
    write_switching_protocols(&mut out, u.key, None, None);
    assert!(!String::from_utf8_lossy(&out).contains("Extensions"));
}

#[test]
fn section_4_2_1_error_response_bytes_exactly() {
    assert_eq!(
        error_response(HandshakeError::BadKey),
        "HTTP/1.1 400 Bad Request\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 42\r\n\
         Connection: close\r\n\
         \r\n\
         Sec-WebSocket-Key must be 16 bytes, base64"
    );
    assert_eq!(
        error_response(HandshakeError::UnsupportedVersion),
        "HTTP/1.1 426 Upgrade Required\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 32\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade, close\r\n\
         \r\n\
         Sec-WebSocket-Version must be 13"
    );
    assert!(error_response(HandshakeError::HeadersTooLarge)
        .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

#[test]
fn error_responses_parse_back_with_matching_length() {
    for err in [
        HandshakeError::MalformedRequest,
        HandshakeError::MethodNotAllowed,
        HandshakeError::HttpVersion,
        HandshakeError::MissingHost,
        HandshakeError::BadUpgrade,
        HandshakeError::BadConnection,
        HandshakeError::BadKey,
        HandshakeError::UnsupportedVersion,
        HandshakeError::HeadersTooLarge,
    ] {
        let mut out = Vec::new();
        write_error_response(&mut out, err);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{err:?}: {other:?}"),
        };
        assert_eq!(err.status(), resp.code.unwrap_or(0));
        assert_eq!(&out[n..], err.reason().as_bytes());
    }
}

#[test]
fn plain_responses_carry_type_length_and_the_close() {
    let mut out = Vec::new();
    write_response(&mut out, 404, "text/plain", b"not found", false);
    assert_eq!(
        out,
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
    );
    out.clear();
    write_response(
        &mut out,
        200,
        "text/html; charset=utf-8",
        b"<p>hi</p>",
        true,
    );
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
    );
    out.clear();
    write_response(&mut out, 405, "text/plain", b"", false);
    assert!(String::from_utf8_lossy(&out).contains("\r\nAllow: GET, HEAD\r\n"));
}

// ---- properties ----

/// A request that passes §4.2.1, with randomised header case, optional
/// whitespace, extra headers and pipelined trailing bytes.
fn valid_request() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        "/[a-z0-9/]{0,20}",
        prop::collection::vec(any::<bool>(), 5),
        prop::collection::vec(("X-[a-zA-Z]{1,8}", "[ -~]{0,40}"), 0..8),
        "[ \t]{0,2}",
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(path, upper, extra, ows, trailing)| {
            let case = |s: &str, up: bool| {
                if up {
                    s.to_ascii_uppercase()
                } else {
                    s.to_ascii_lowercase()
                }
            };
            let mut s = format!("GET {path} HTTP/1.1\r\n");
            let fixed = [
                ("Host", "example.com"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ];
            for ((name, value), up) in fixed.iter().zip(upper) {
                s.push_str(&format!("{}:{ows}{value}{ows}\r\n", case(name, up)));
            }
            for (name, value) in extra {
                s.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            s.push_str("\r\n");
            let header_len = s.len();
            let mut bytes = s.into_bytes();
            bytes.extend(trailing);
            (bytes, header_len)
        })
}

proptest! {
    #[test]
    fn never_panics_on_any_bytes_or_split(
        data in prop::collection::vec(any::<u8>(), 0..512),
        split in any::<prop::sample::Index>(),
    ) {
        let at = split.index(data.len() + 1);
        let _ = parse(data.get(..at).unwrap_or_default());
        let _ = parse(&data);
    }

    #[test]
    fn never_panics_on_mutated_valid_requests(
        (mut data, _len) in valid_request(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        for (i, b) in flips {
            let at = i.index(data.len());
            data[at] = b;
        }
        if let Ok(Parsed::Complete { request: Request::Upgrade(u), consumed }) = parse(&data) {
            prop_assert!(consumed <= data.len());
            let mut out = Vec::new();
            write_switching_protocols(&mut out, u.key, None, None);
        }
    }

    #[test]
    fn complete_request_is_partial_for_every_shorter_prefix(
        (data, header_len) in valid_request(),
    ) {
        match parse(&data) {
            Ok(Parsed::Complete { request: Request::Upgrade(u), consumed }) => {
                prop_assert_eq!(consumed, header_len);
                prop_assert_eq!(u.key, "dGhlIHNhbXBsZSBub25jZQ==");
            }
            other => prop_assert!(false, "{:?}", other),
        }
        for end in 0..header_len {
            prop_assert_eq!(parse(&data[..end]), Ok(Parsed::Partial), "prefix {}", end);
        }
    }

    #[test]
    fn any_complete_parse_is_partial_before_its_end(
        data in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(Parsed::Complete { consumed, .. }) = parse(&data) {
            for end in 0..consumed {
                prop_assert_eq!(parse(&data[..end]), Ok(Parsed::Partial));
            }
        }
    }
}

#[test]
fn section_10_2_origin_allow_list_exact_host_and_wildcard() {
    let none: [&str; 0] = [];
    assert!(
        origin_allowed(Some("http://evil.example"), &none),
        "empty list allows all"
    );
    let list = [
        "example.com",
        "*.example.org",
        "https://app.example.net",
        "null",
    ];
    for ok in [
        "http://example.com",
        "https://EXAMPLE.com:8443",
        "https://a.example.org",
        "http://x.y.example.org:80",
        "https://app.example.net",
        "null",
    ] {
        assert!(origin_allowed(Some(ok), &list), "{ok}");
    }
    for bad in [
        "http://evil.com",
        "http://example.com.evil.com",
        "http://notexample.com",
        "https://example.org",
        "https://evilexample.org",
        "http://app.example.net",
        "https://app.example.net:444",
    ] {
        assert!(!origin_allowed(Some(bad), &list), "{bad}");
    }
    assert!(
        origin_allowed(None, &list),
        "non-browser clients send no Origin"
    );
    assert!(!origin_allowed(Some("null"), &["example.com"]));
}
