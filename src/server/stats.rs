//! Per-shard counters. Each shard writes only its own (one writer, so the
//! cache line stays with that core); readers sum them when asked.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter written by one shard thread and read by anyone.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        // Single writer: a load and a store avoid a locked read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn incr(&self) {
        self.add(1);
    }
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters, padded so shards never share a cache line.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats {
            $($(#[$doc])* pub $name: Counter,)*
            /// Counters keyed by status or close code.
            pub codes: CodeStats,
        }

        /// A point-in-time sum (or one shard's values).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot { $($(#[$doc])* pub $name: u64,)* }

        impl ShardStats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.get(),)* }
            }
        }

        impl Snapshot {
            /// `{"name":value,...}`: the counters as a JSON object.
            pub fn to_json(&self) -> String {
                let mut out = String::from("{");
                $(
                    if out.len() > 1 { out.push(','); }
                    out.push_str(&format!("\"{}\":{}", stringify!($name), self.$name));
                )*
                out.push('}');
                out
            }
        }

        impl std::ops::Add for Snapshot {
            type Output = Snapshot;
            fn add(self, o: Snapshot) -> Snapshot {
                Snapshot { $($name: self.$name + o.$name,)* }
            }
        }
    };
}

stats! {
    /// Connections accepted.
    accepted,
    /// Connections open now.
    active,
    /// Connections refused because the shard was at its limit.
    rejected,
    /// accept() failures from descriptor exhaustion (EMFILE/ENFILE), backed off.
    accept_backoffs,
    /// Successful WebSocket upgrades.
    upgraded,
    /// Plain HTTP requests answered (page, health, 404).
    http_requests,
    /// Handshakes refused with a 4xx.
    handshake_errors,
    /// Connections failed for a protocol violation (1002/1007/1009).
    protocol_errors,
    /// Connections closed by the idle timeout.
    idle_closed,
    /// Connections cut by a handshake or close timeout.
    timed_out,
    /// Of those, cut by the handshake timeout.
    timed_out_handshake,
    /// Of those, cut by the close timeout (a closing handshake or a plain
    /// answer not finished in time).
    timed_out_close,
    /// Client messages echoed whole.
    messages_echoed,
    /// Times a connection stopped taking input because its peer was not
    /// reading the echo (unsent output over --max-output).
    backpressure_stalls,
    /// Bytes read from sockets.
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// Echo bytes queued (headers included), all sent in place.
    echo_bytes,
    /// Bytes copied in user space: partial frame headers (and partial
    /// control frames) carried into a new read buffer, and, with the ring
    /// shell's shared receive buffers, small pieces copied out of a buffer
    /// so that it can be reused (echo a peer is not reading, or a few bytes
    /// of a frame still arriving). Echo that goes out at once is never
    /// copied.
    copied_bytes,
    /// io_uring_enter calls made by the ring shell's loop (each submits and
    /// waits): with `direct_sends`, the system calls on the data path.
    ring_enters,
    /// Echoes sent with a non-blocking sendmsg before any ring write.
    direct_sends,
    /// Bytes of receive buffers the ring shell's shard has allocated (its
    /// provided-buffer ring; grows with the data in flight, up to
    /// --recv-pool).
    recv_pool_bytes,
    /// Of those buffers, how many are out of the ring now: held by
    /// connections or waiting for their echo to be written.
    recv_pool_in_use,
    /// Upgrades that agreed to permessage-deflate (--permessage-deflate).
    deflate_agreed,
    /// wss:// connections that failed TLS (garbage instead of a
    /// ClientHello, a failed handshake, a bad record).
    tls_failed,
    /// wss:// sessions handed to the kernel's TLS after their handshake.
    tls_kernel,
    /// Kernel-TLS connections cut because the kernel refused a key or a
    /// record (a KeyUpdate on a kernel that cannot change keys).
    tls_kernel_refused,
    /// Connections holding a permessage-deflate inflater now (mid-message,
    /// or for good when the client keeps context), each a fixed
    /// `Inflater::MEMORY` bytes; idle connections without context hold none.
    deflate_inflaters,
}

/// Counters by status or close code: the codes ringecho can see, each its
/// own counter, and the rest summed under "other".
#[derive(Debug)]
pub struct ByCode<const N: usize> {
    codes: [u16; N],
    counts: [Counter; N],
    other: Counter,
}

impl<const N: usize> ByCode<N> {
    fn new(codes: [u16; N]) -> Self {
        ByCode {
            codes,
            counts: std::array::from_fn(|_| Counter::default()),
            other: Counter::default(),
        }
    }

    pub fn incr(&self, code: u16) {
        match self.codes.iter().position(|&c| c == code) {
            Some(i) => self.counts[i].incr(),
            None => self.other.incr(),
        }
    }

    /// (code, count) for each known code, then (None, count) for the rest.
    pub fn values(&self) -> impl Iterator<Item = (Option<u16>, u64)> + '_ {
        self.codes
            .iter()
            .zip(&self.counts)
            .map(|(&c, n)| (Some(c), n.get()))
            .chain(std::iter::once((None, self.other.get())))
    }
}

/// HTTP statuses a refused handshake gets (`HandshakeError::status`).
const REFUSAL_STATUSES: [u16; 8] = [400, 403, 404, 405, 413, 426, 429, 431];
/// Close codes of RFC 6455 §7.4.1 a peer may send or ringecho sends, 1005
/// standing for a close frame without one.
const CLOSE_CODES: [u16; 11] = [
    1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1011, 1012,
];

/// A shard's counters keyed by code.
#[derive(Debug)]
pub struct CodeStats {
    /// Handshakes refused, by HTTP status.
    pub handshake_refused: ByCode<8>,
    /// Close frames sent, by code.
    pub close_sent: ByCode<11>,
    /// Close frames received, by code.
    pub close_received: ByCode<11>,
}

impl Default for CodeStats {
    fn default() -> Self {
        CodeStats {
            handshake_refused: ByCode::new(REFUSAL_STATUSES),
            close_sent: ByCode::new(CLOSE_CODES),
            close_received: ByCode::new(CLOSE_CODES),
        }
    }
}

/// What a connection's engine had reported when its shard last counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    echo_bytes: u64,
    // The low 32 bits of the totals: this is kept per connection, and the
    // deltas between two syncs are far below 2^32.
    messages: u32,
    stalls: u32,
    /// The connection held an inflater (counted in `deflate_inflaters`).
    inflater: bool,
}

/// Every shard's counters, shared by all shards so any of them can report.
#[derive(Debug, Default)]
pub struct AllStats(pub Vec<std::sync::Arc<ShardStats>>);

impl AllStats {
    pub fn total(&self) -> Snapshot {
        self.0
            .iter()
            .map(|s| s.snapshot())
            .fold(Snapshot::default(), |a, b| a + b)
    }

    /// `{"total":{...},"shards":[{...},...]}`
    pub fn to_json(&self) -> String {
        let shards: Vec<String> = self.0.iter().map(|s| s.snapshot().to_json()).collect();
        format!(
            "{{\"total\":{},\"shards\":[{}]}}\n",
            self.total().to_json(),
            shards.join(",")
        )
    }
}

impl ShardStats {
    /// Count something a connection's engine reported.
    pub fn count(&self, event: crate::protocol::Event) {
        let codes = &self.codes;
        use crate::protocol::{Deadline, Event};
        match event {
            Event::Upgraded => self.upgraded.incr(),
            Event::HttpRequest => self.http_requests.incr(),
            Event::HandshakeRejected(status) => {
                self.handshake_errors.incr();
                codes.handshake_refused.incr(status);
            }
            Event::ProtocolError(_) => self.protocol_errors.incr(),
            Event::IdleClosed => self.idle_closed.incr(),
            Event::TimedOut(deadline) => {
                self.timed_out.incr();
                match deadline {
                    Deadline::Handshake => self.timed_out_handshake.incr(),
                    Deadline::Close => self.timed_out_close.incr(),
                }
            }
            Event::CloseSent(code) => codes.close_sent.incr(code),
            Event::CloseReceived(code) => codes.close_received.incr(code),
            Event::TlsFailed => self.tls_failed.incr(),
        }
    }

    /// Count what `conn` reported since `seen`: its events, and the echo
    /// it queued. Called after every time a shell drives the engine, so
    /// the counters are live, not settled at the connection's end.
    pub fn sync(&self, conn: &mut crate::protocol::Connection, seen: &mut Seen) {
        while let Some(event) = conn.poll_event() {
            if event == crate::protocol::Event::Upgraded && conn.deflate_agreed() {
                self.deflate_agreed.incr();
            }
            self.count(event);
        }
        let now = Seen {
            echo_bytes: conn.echoed_bytes(),
            messages: conn.messages_echoed() as u32,
            stalls: conn.backpressure_stalls() as u32,
            inflater: conn.holds_inflater(),
        };
        match (seen.inflater, now.inflater) {
            (false, true) => self.deflate_inflaters.incr(),
            (true, false) => self.deflate_inflaters.sub(1),
            _ => {}
        }
        self.echo_bytes.add(now.echo_bytes - seen.echo_bytes);
        self.messages_echoed
            .add(u64::from(now.messages.wrapping_sub(seen.messages)));
        self.backpressure_stalls
            .add(u64::from(now.stalls.wrapping_sub(seen.stalls)));
        *seen = now;
    }

    /// The connection `seen` was synced from is gone, with whatever it held.
    pub fn forget(&self, seen: &Seen) {
        if seen.inflater {
            self.deflate_inflaters.sub(1);
        }
    }
}
