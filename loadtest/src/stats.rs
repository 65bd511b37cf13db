//! Per-thread counters and histograms, merged into one at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::tls::Negotiated;

/// Kinds of failure a run counts; any non-zero count fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ConnectFailed,
    ConnectTimeout,
    HandshakeFailed,
    /// Echo bytes differ from what was sent, or the length is wrong.
    Corrupt,
    /// Messages never echoed: skipped over by a later sequence number, or
    /// still outstanding when the drain time ran out.
    Lost,
    /// A sequence number already echoed, or one never sent.
    OutOfOrder,
    /// Echo came back as text for binary or the other way round.
    WrongOpcode,
    /// Close frame, EOF or reset from the server during the run.
    UnexpectedClose,
    /// Framing the client cannot accept: masked server frame, RSV bits,
    /// unknown opcode, continuation without a start, oversized frame.
    Protocol,
    /// The server stopped reading: too much unsent data piled up, so
    /// scheduled messages were not sent.
    Backlog,
    /// `--deflate`: the 101 did not accept permessage-deflate as offered
    /// (declined it, or answered with something the client cannot use).
    DeflateRefused,
    /// wss://: the TLS handshake failed (certificate refused, alert, not
    /// TLS at all) or the connection closed during it.
    TlsFailed,
    /// `--handshakes`: the server did not finish the close handshake
    /// (RFC 6455 §7.1.2): no close frame, one with another code than the
    /// client's 1000, or no TCP close after it in time.
    CloseFailed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::HandshakeFailed,
        ErrorKind::Corrupt,
        ErrorKind::Lost,
        ErrorKind::OutOfOrder,
        ErrorKind::WrongOpcode,
        ErrorKind::UnexpectedClose,
        ErrorKind::Protocol,
        ErrorKind::Backlog,
        ErrorKind::DeflateRefused,
        ErrorKind::TlsFailed,
        ErrorKind::CloseFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::HandshakeFailed => "handshake_failed",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Lost => "lost",
            ErrorKind::OutOfOrder => "out_of_order",
            ErrorKind::WrongOpcode => "wrong_opcode",
            ErrorKind::UnexpectedClose => "unexpected_close",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Backlog => "backlog",
            ErrorKind::DeflateRefused => "deflate_refused",
            ErrorKind::TlsFailed => "tls_failed",
            ErrorKind::CloseFailed => "close_failed",
        }
    }
}

/// Largest latency or connect time recorded, in microseconds (60 s);
/// slower ones are clamped to it.
pub const HIST_MAX_US: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // 3 significant digits over 1 µs..60 s: ~0.1% error, a few hundred KiB.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

#[derive(Debug)]
pub struct Stats {
    /// Echo latency of messages received in the measured window, µs.
    pub latency: Histogram<u64>,
    /// TCP connect plus opening handshake, µs.
    pub connect: Histogram<u64>,
    /// Echoes verified inside the measured window.
    pub messages: u64,
    /// Payload bytes of those echoes (one direction).
    pub payload_bytes: u64,
    /// `--deflate`: compressed payload bytes those messages took on the
    /// wire as sent, and as their echoes came back.
    pub wire_sent: u64,
    pub wire_echoed: u64,
    pub opened: u64,
    /// From the first connect to the last connection that opened, µs.
    pub open_us: u64,
    /// Echoes received before the last connection opened (only
    /// `--echo-on-open` sends that early).
    pub echoes_while_opening: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    /// `--handshakes`: cycles completed inside the measured window, and
    /// their durations, µs (connect to the server's TCP close).
    pub cycles: u64,
    pub cycle: Histogram<u64>,
    /// wss://: what the handshakes agreed on, with how many connections
    /// agreed on each.
    pub tls: BTreeMap<Negotiated, u64>,
    /// wss://: the first TLS failure, explained.
    pub tls_error: Option<String>,
    /// wss://: connections whose server closed TCP without a close_notify
    /// first (RFC 8446 §6.1 requires one).
    pub eof_without_close_notify: u64,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            latency: new_histogram(),
            connect: new_histogram(),
            messages: 0,
            payload_bytes: 0,
            wire_sent: 0,
            wire_echoed: 0,
            opened: 0,
            open_us: 0,
            echoes_while_opening: 0,
            errors: [0; ErrorKind::ALL.len()],
            cycles: 0,
            cycle: new_histogram(),
            tls: BTreeMap::new(),
            tls_error: None,
            eof_without_close_notify: 0,
        }
    }

    pub fn error(&mut self, kind: ErrorKind, n: u64) {
        self.errors[kind as usize] += n;
    }

    pub fn record_us(h: &mut Histogram<u64>, us: u64) {
        // Within bounds by the clamp, so recording cannot fail.
        let _ = h.record(us.clamp(1, HIST_MAX_US));
    }

    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.connect.add(&other.connect);
        self.messages += other.messages;
        self.payload_bytes += other.payload_bytes;
        self.wire_sent += other.wire_sent;
        self.wire_echoed += other.wire_echoed;
        self.opened += other.opened;
        // Threads and processes open side by side: the last one done ends it.
        self.open_us = self.open_us.max(other.open_us);
        self.echoes_while_opening += other.echoes_while_opening;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        let _ = self.cycle.add(&other.cycle);
        self.cycles += other.cycles;
        for (k, n) in &other.tls {
            *self.tls.entry(k.clone()).or_insert(0) += n;
        }
        if self.tls_error.is_none() {
            self.tls_error.clone_from(&other.tls_error);
        }
        self.eof_without_close_notify += other.eof_without_close_notify;
    }
}
