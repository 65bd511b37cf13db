//! Entry points for `fuzz/` (cargo-fuzz) and the corpus replay test. Each is
//! an independent `pub fn(&[u8])` that must not panic for any input; the
//! assertions inside are invariants, so a panic here is a bug found.
//!
//! They live in the library rather than in `fuzz/` so that plain `cargo test`
//! replays the committed corpus on stable, without cargo-fuzz or nightly.

use super::error::Disposition;
use super::handshake::{
    accept_key, parse_request, select_subprotocol, write_error_response, write_response,
    write_switching_protocols, Limits, Parsed, Request,
};

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

fn respond(result: Result<Parsed<'_>, super::Error>) {
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
            write_switching_protocols(&mut out, u.key, picked);
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
            assert_eq!(err.disposition(), Disposition::Http(status));
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
