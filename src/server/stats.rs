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
        pub struct ShardStats { $($(#[$doc])* pub $name: Counter,)* }

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
    /// Connections cut by a handshake, close or drain timeout.
    timed_out,
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
        use crate::protocol::Event;
        match event {
            Event::Upgraded => self.upgraded.incr(),
            Event::HttpRequest => self.http_requests.incr(),
            Event::HandshakeRejected(_) => self.handshake_errors.incr(),
            Event::ProtocolError(_) => self.protocol_errors.incr(),
            Event::IdleClosed => self.idle_closed.incr(),
            Event::TimedOut => self.timed_out.incr(),
        }
    }
}
