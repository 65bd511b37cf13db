//! The opening handshake (RFC 6455 §4.2), sans-IO: parse a client's request
//! out of whatever bytes have arrived so far, and write the server's answer
//! into a caller-owned buffer.
//!
//! Everything a client sends is untrusted: no function here indexes, slices
//! or unwraps in a way that the request bytes could make panic.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::error::HandshakeError;

/// Default cap on the request header block (request line + headers + the
/// blank line). Browsers send well under 2 KiB; cookies are the usual bulk.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;

/// httparse wants a caller-provided header array; a fixed one keeps parsing
/// allocation-free and bounds the work a client can make us do per attempt.
const MAX_HEADERS: usize = 64;

/// The GUID every server appends to the client's key (RFC 6455 §1.3, §4.2.2).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of base64(SHA-1(..)): 20 bytes encode to 28 characters with padding.
const ACCEPT_LEN: usize = 28;

/// Bounds on what a client may send before the handshake completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request header block accepted; anything larger, complete or
    /// not, is answered with 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Outcome of feeding the bytes received so far to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// The header block has not ended yet: read more and call again with the
    /// whole buffer. Not an error.
    Partial,
    /// A full, valid request. `consumed` is the length of its header block;
    /// bytes after it (a pipelined request, or frames the client sent early)
    /// belong to whatever comes next.
    Complete {
        request: Request<'a>,
        consumed: usize,
    },
}

/// A complete request, either a WebSocket upgrade or ordinary HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Carried an `Upgrade` header and passed every check of RFC 6455 §4.2.1.
    Upgrade(UpgradeRequest<'a>),
    /// No `Upgrade` header at all: plain HTTP, left to the server to answer
    /// (a page, a health check, 404, 405).
    Plain(PlainRequest<'a>),
}

/// An ordinary HTTP request. Any method and HTTP/1.0 are accepted here; what
/// to do with them is the server's decision, not the handshake's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// A client's opening handshake that passed RFC 6455 §4.2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// The request-target, as sent (§4.2.1 item 1).
    pub path: &'a str,
    /// The single Host value, trimmed (§4.2.1 item 2).
    pub host: &'a str,
    /// The Origin value if sent, trimmed (§4.2.1 item 7, §10.2). Browsers
    /// send the literal `null` for opaque origins; that is kept as is.
    pub origin: Option<&'a str>,
    /// Sec-WebSocket-Key, trimmed; known to be base64 of exactly 16 bytes
    /// (§4.2.1 item 5).
    pub key: &'a str,
    /// Sec-WebSocket-Protocol tokens in the client's order, across repeated
    /// headers, trimmed, empty list elements dropped (§4.2.1 item 8).
    pub protocols: Vec<&'a str>,
    /// Sec-WebSocket-Extensions offers, one entry per comma-separated offer
    /// with its parameters, in order, trimmed (§4.2.1 item 9, §9.1).
    pub extensions: Vec<&'a str>,
    /// The client address the nearest proxy reported: the `for=` of the
    /// last `Forwarded` element (RFC 7239 §4, quotes removed), else the
    /// last `X-Forwarded-For` entry. Only the nearest hop: whatever a
    /// client put before it is its own claim. Whether the proxy is to be
    /// believed is the server's decision (`--trust-proxy`).
    pub forwarded_for: Option<&'a str>,
}

/// Parse the opening handshake from the bytes received so far
/// (RFC 6455 §4.2.1).
///
/// Call again with the grown buffer after [`Parsed::Partial`]. A request with
/// no `Upgrade` header is returned as [`Request::Plain`] without WebSocket
/// checks; one with an `Upgrade` header must satisfy all of §4.2.1, checked
/// in the order the section lists them so a client sees the first rule it
/// broke.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // Without this a client could trickle an endless header block and
            // make every retry re-scan an ever larger buffer.
            if buf.len() > limits.max_header_bytes {
                return Err(HandshakeError::HeadersTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge),
        Err(_) => return Err(HandshakeError::MalformedRequest),
    };
    if consumed > limits.max_header_bytes {
        return Err(HandshakeError::HeadersTooLarge);
    }

    // httparse fills all three on Complete; the checks keep that an
    // assumption we do not have to trust.
    let method = req.method.ok_or(HandshakeError::MalformedRequest)?;
    let path = req.path.ok_or(HandshakeError::MalformedRequest)?;
    let version = req.version.ok_or(HandshakeError::MalformedRequest)?;
    let headers: &[httparse::Header<'a>] = req.headers;

    let request = if has_header(headers, "upgrade") {
        Request::Upgrade(validate_upgrade(method, path, version, headers)?)
    } else {
        Request::Plain(PlainRequest { method, path })
    };
    Ok(Parsed::Complete { request, consumed })
}

fn validate_upgrade<'a>(
    method: &'a str,
    path: &'a str,
    version: u8,
    headers: &[httparse::Header<'a>],
) -> Result<UpgradeRequest<'a>, HandshakeError> {
    // §4.2.1 item 1. Methods are case-sensitive (RFC 7230 §3.1.1).
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    // httparse only understands HTTP/1.x, so "at least 1.1" is exactly 1.1.
    if version != 1 {
        return Err(HandshakeError::HttpVersion);
    }

    // §4.2.1 item 2. An empty Host carries no authority, so it counts as
    // missing.
    let host = single_value(headers, "host").ok_or(HandshakeError::MissingHost)?;
    let host = std::str::from_utf8(host).map_err(|_| HandshakeError::MalformedRequest)?;
    if host.is_empty() {
        return Err(HandshakeError::MissingHost);
    }

    // §4.2.1 item 3.
    if !any_token(headers, "upgrade", b"websocket") {
        return Err(HandshakeError::BadUpgrade);
    }
    // §4.2.1 item 4. Browsers send e.g. `keep-alive, Upgrade`, sometimes
    // split over several Connection headers.
    if !any_token(headers, "connection", b"upgrade") {
        return Err(HandshakeError::BadConnection);
    }

    // §4.2.1 item 5.
    let key = single_value(headers, "sec-websocket-key").ok_or(HandshakeError::BadKey)?;
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    // Valid base64 is ASCII, so this cannot fail after the check above; it
    // is still handled rather than assumed.
    let key = std::str::from_utf8(key).map_err(|_| HandshakeError::BadKey)?;

    // §4.2.1 item 6; §4.4 says to answer anything else with our version.
    match single_value(headers, "sec-websocket-version") {
        Some(b"13") => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }

    // §4.2.1 item 7. Two Origins would make any origin check ambiguous.
    let origin = match count_and_first(headers, "origin") {
        (0, _) => None,
        (1, Some(v)) => Some(std::str::from_utf8(v).map_err(|_| HandshakeError::MalformedRequest)?),
        _ => return Err(HandshakeError::MalformedRequest),
    };

    // §4.2.1 items 8 and 9.
    let mut protocols = Vec::new();
    let mut extensions = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
            let v =
                std::str::from_utf8(trim(h.value)).map_err(|_| HandshakeError::MalformedRequest)?;
            protocols.extend(split_list(v));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
            let v =
                std::str::from_utf8(trim(h.value)).map_err(|_| HandshakeError::MalformedRequest)?;
            extensions.extend(split_list(v));
        }
    }

    Ok(UpgradeRequest {
        path,
        host,
        origin,
        key,
        protocols,
        extensions,
        forwarded_for: nearest_forwarded_for(headers),
    })
}

/// See [`UpgradeRequest::forwarded_for`]. Headers that are not UTF-8, or
/// an empty last element, report nothing.
fn nearest_forwarded_for<'a>(headers: &[httparse::Header<'a>]) -> Option<&'a str> {
    let last = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(trim(h.value)).ok())
    };
    if let Some(v) = last("forwarded") {
        // RFC 7239 §4: elements separated by commas (the nearest proxy's
        // last), pairs within one by semicolons.
        let element = v.rsplit(',').next()?;
        return element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            if !k.trim().eq_ignore_ascii_case("for") {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (!v.is_empty()).then_some(v)
        });
    }
    let v = last("x-forwarded-for")?.rsplit(',').next()?.trim();
    (!v.is_empty()).then_some(v)
}

fn has_header(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// How many headers are called `name`, and the first one's trimmed value.
fn count_and_first<'a>(headers: &[httparse::Header<'a>], name: &str) -> (usize, Option<&'a [u8]>) {
    let mut matching = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let first = matching.next().map(|h| trim(h.value));
    let count = usize::from(first.is_some()) + matching.count();
    (count, first)
}

/// The trimmed value of `name` if it occurs exactly once.
fn single_value<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    match count_and_first(headers, name) {
        (1, v) => v,
        _ => None,
    }
}

/// Whether any header called `name` lists `token` (ASCII case-insensitive).
/// Works on bytes so a stray non-UTF-8 element elsewhere in the list does not
/// hide a valid token.
fn any_token(headers: &[httparse::Header<'_>], name: &str, token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// A key is valid when it is canonical padded base64 of exactly 16 bytes
/// (§4.2.1 item 5), which always spells 24 characters.
fn is_valid_key(key: &[u8]) -> bool {
    // One spare byte so a 17-byte decoding is reported as such rather than
    // depending on how the decoder sizes its output check.
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// Strip optional whitespace (RFC 7230 §3.2.3: SP and HTAB).
fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

fn trim_str(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Split an RFC 7230 §7 list, dropping empty elements. Commas inside a
/// quoted-string (possible in extension parameters, §9.1) do not split.
fn split_list(v: &str) -> impl Iterator<Item = &str> {
    split_unquoted(v, ',').filter(|s| !s.is_empty())
}

/// Split at `delim` where it stands outside a quoted-string (RFC 7230
/// §3.2.6, with its backslash escapes), each part trimmed of spaces and
/// tabs.
pub(crate) fn split_unquoted(v: &str, delim: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut escaped = false;
    v.split(move |c: char| {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == delim && !in_quotes {
            return true;
        }
        false
    })
    .map(trim_str)
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID))
/// (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &str) -> [u8; ACCEPT_LEN] {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; ACCEPT_LEN];
    // 20 bytes always encode to exactly 28 characters, so this cannot fail.
    let written = STANDARD.encode_slice(digest, &mut out);
    debug_assert!(matches!(written, Ok(ACCEPT_LEN)));
    out
}

/// Pick the subprotocol to confirm (RFC 6455 §4.2.2 item 5.3, §1.9).
///
/// Returns the first protocol **the client offered** that is also in
/// `supported`, so the client's order expresses its preference. Names are
/// compared exactly: they are tokens, and the client must get back the very
/// value it sent. `None` means the 101 carries no Sec-WebSocket-Protocol.
pub fn select_subprotocol<'a>(
    offered: &[&'a str],
    supported: &[impl AsRef<str>],
) -> Option<&'a str> {
    offered
        .iter()
        .copied()
        .find(|o| supported.iter().any(|s| s.as_ref() == *o))
}

/// Append the 101 response that completes the handshake (RFC 6455 §4.2.2
/// item 5).
///
/// `protocol` must be a single value the client offered (see
/// [`select_subprotocol`]), never the offered list. `extension` is the
/// permessage-deflate agreement, if one was reached
/// ([`crate::deflate::negotiate`]); without it no Sec-WebSocket-Extensions
/// is sent, which declines every offer (§9.1).
pub fn write_switching_protocols(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    extension: Option<&crate::deflate::Agreement>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = extension {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        e.write(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append the HTTP answer to a failed handshake (RFC 6455 §4.2.1, §4.4), after
/// which the server closes the connection.
///
/// A 426 names the version we speak (§4.4) and, as RFC 7231 §6.5.15 requires,
/// the protocol to upgrade to. A 405 lists the allowed method (RFC 7231
/// §6.5.5).
pub fn write_error_response(out: &mut Vec<u8>, err: HandshakeError) {
    let status = err.status();
    let extra: &[&str] = match status {
        // RFC 7230 §6.7: whoever sends Upgrade also sends the "upgrade"
        // connection option.
        426 => &[
            "Sec-WebSocket-Version: 13",
            "Upgrade: websocket",
            "Connection: Upgrade, close",
        ],
        405 => &["Allow: GET", "Connection: close"],
        _ => &["Connection: close"],
    };
    write_head(
        out,
        status,
        "text/plain; charset=utf-8",
        err.reason().len(),
        extra,
    );
    out.extend_from_slice(err.reason().as_bytes());
}

/// Append an ordinary HTTP/1.1 response (pages, health checks, 404, 405 for
/// plain requests). With `head_only` the headers still describe `body` but
/// the body is left out, as a HEAD response must (RFC 7231 §4.3.2).
///
/// A 405 gets `Allow: GET, HEAD`, the methods plain requests are served
/// for, because RFC 7231 §6.5.5 makes the header mandatory. The engine
/// serves one plain request per connection and closes after the response,
/// so the response says so (`Connection: close`, RFC 9112 §9.6).
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) {
    let extra: &[&str] = if status == 405 {
        &["Allow: GET, HEAD", "Connection: close"]
    } else {
        &["Connection: close"]
    };
    write_head(out, status, content_type, body.len(), extra);
    if !head_only {
        out.extend_from_slice(body);
    }
}

fn write_head(out: &mut Vec<u8>, status: u16, content_type: &str, len: usize, extra: &[&str]) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail, so the io::Result carries nothing.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n",
        reason_phrase(status)
    );
    for h in extra {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The phrase is advisory (RFC 7230 §3.1.2 lets it be empty), so statuses we
/// never send get none rather than a guess.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Whether a handshake's `Origin` is acceptable (§10.2). An empty list
/// allows every origin. Requests without `Origin` come from non-browser
/// clients, which cross-site hijacking cannot use, and are allowed. Each
/// entry is a full origin (`https://app.example.com`), a host
/// (`example.com`, any scheme and port), or a wildcard host
/// (`*.example.com`, subdomains only); comparison ignores ASCII case.
pub fn origin_allowed(origin: Option<&str>, allowed: &[impl AsRef<str>]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.is_empty() {
        return true;
    }
    // scheme "://" host [":" port]; "null" and other opaque origins have no host.
    let host = origin.split_once("://").map(|(_, rest)| {
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => rest,
        }
    });
    allowed.iter().any(|entry| {
        let entry = entry.as_ref();
        if entry.contains("://") || entry.eq_ignore_ascii_case("null") {
            return entry.eq_ignore_ascii_case(origin.trim_end_matches('/'));
        }
        let Some(host) = host else {
            return false;
        };
        match entry.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|t| t.eq_ignore_ascii_case(suffix))
                    && host.as_bytes().get(host.len() - suffix.len() - 1) == Some(&b'.')
            }
            None => host.eq_ignore_ascii_case(entry),
        }
    })
}

#[cfg(test)]
mod tests;
