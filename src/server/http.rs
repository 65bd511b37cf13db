//! Plain HTTP on the WebSocket port: the echo test page, a health check,
//! and honest errors for everything else. One request per connection. The
//! counters are on the operator's listener (`metrics.rs`), not here where
//! anyone can read them.

use crate::protocol::handshake::{write_response, PlainRequest};
use crate::protocol::Connection;

/// Answer the plain HTTP request `conn` is waiting on, if there is one.
pub fn answer_pending(conn: &mut Connection) {
    if let Some(req) = conn.take_http_request() {
        let mut response = Vec::new();
        let req = PlainRequest {
            method: &req.method,
            path: &req.path,
        };
        respond(&req, &mut response);
        conn.respond(response);
    }
}

/// The websocket.org echo test page; it connects back to the host it was
/// loaded from.
pub const ECHO_PAGE: &str = include_str!("echo.html");

/// Answer a request that did not ask for an upgrade.
pub fn respond(req: &PlainRequest<'_>, out: &mut Vec<u8>) {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return write_response(
            out,
            405,
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            false,
        );
    }
    let path = req.path.split(['?', '#']).next().unwrap_or_default();
    match path {
        "/" | "/index.html" => write_response(
            out,
            200,
            "text/html; charset=utf-8",
            ECHO_PAGE.as_bytes(),
            head_only,
        ),
        "/healthz" => write_response(out, 200, "text/plain; charset=utf-8", b"ok\n", head_only),
        _ => write_response(
            out,
            404,
            "text/plain; charset=utf-8",
            b"not found\n",
            head_only,
        ),
    }
}
