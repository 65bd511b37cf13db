//! The operator's listener (`--metrics-listen`): Prometheus metrics at
//! `/metrics`, the JSON counters at `/stats` and the health check, on an
//! address apart from the public WebSocket port. One thread with blocking
//! sockets, off the data path: a scrape reads the shards' plain counters
//! (each written by its own shard) and sums nothing until asked.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::stats::{AllStats, Snapshot};
use crate::protocol::handshake::write_response;

type Labels = Vec<(&'static str, String)>;
/// A metric's name, help and how to read it from a shard's counters.
type Reading = (&'static str, &'static str, fn(&Snapshot) -> u64);

/// Bind the metrics listener.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serve `listener` on a thread of its own for the life of the process.
pub fn serve(listener: TcpListener, stats: Arc<AllStats>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    // A client that stalls costs the scraper a 2 s wait,
                    // never the shards anything.
                    Ok(stream) => {
                        let _ = answer(stream, &stats);
                    }
                    // Out of descriptors, say: try again shortly rather
                    // than spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map(drop)
}

/// Read one request (at most 8 KiB of head, 2 s) and answer it, then close.
fn answer(mut stream: TcpStream, stats: &AllStats) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    let path = path.split('?').next().unwrap_or_default();
    let mut out = Vec::new();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => write_response(
            &mut out,
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(stats).as_bytes(),
            head_only,
        ),
        ("GET" | "HEAD", "/stats") => write_response(
            &mut out,
            200,
            "application/json",
            stats.to_json().as_bytes(),
            head_only,
        ),
        ("GET" | "HEAD", "/healthz") => write_response(
            &mut out,
            200,
            "text/plain; charset=utf-8",
            b"ok\n",
            head_only,
        ),
        ("GET" | "HEAD", _) => write_response(
            &mut out,
            404,
            "text/plain; charset=utf-8",
            b"not found\n",
            head_only,
        ),
        _ => write_response(
            &mut out,
            405,
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            false,
        ),
    }
    stream.write_all(&out)
}

/// Every shard's counters in the OpenMetrics text format, labelled by shard.
pub fn render(stats: &AllStats) -> String {
    let mut registry = Registry::with_prefix("ringecho");
    let counters: [Reading; 17] = [
        ("connections_accepted", "Connections accepted", |s| {
            s.accepted
        }),
        (
            "connections_upgraded",
            "WebSocket upgrades completed",
            |s| s.upgraded,
        ),
        (
            "connections_refused",
            "Connections closed at once because the shard was at --max-connections",
            |s| s.rejected,
        ),
        (
            "accept_backoffs",
            "Accept pauses for lack of descriptors or memory",
            |s| s.accept_backoffs,
        ),
        (
            "http_requests",
            "Plain HTTP requests answered on the WebSocket port",
            |s| s.http_requests,
        ),
        (
            "protocol_errors",
            "Connections failed for a protocol violation (1002, 1007, 1009)",
            |s| s.protocol_errors,
        ),
        ("messages_echoed", "Client messages echoed whole", |s| {
            s.messages_echoed
        }),
        ("received_bytes", "Bytes read from client sockets", |s| {
            s.bytes_in
        }),
        ("sent_bytes", "Bytes written to client sockets", |s| {
            s.bytes_out
        }),
        (
            "echo_bytes",
            "Echo frame bytes queued, headers included",
            |s| s.echo_bytes,
        ),
        (
            "copied_bytes",
            "Bytes copied in user space (partial headers, small pieces out of shared buffers)",
            |s| s.copied_bytes,
        ),
        (
            "backpressure_stalls",
            "Times a connection stopped taking input because its peer was not reading",
            |s| s.backpressure_stalls,
        ),
        (
            "ring_enters",
            "io_uring_enter calls of the ring shell's loops",
            |s| s.ring_enters,
        ),
        (
            "deflate_agreed",
            "Upgrades that agreed to permessage-deflate",
            |s| s.deflate_agreed,
        ),
        (
            "tls_failed",
            "wss:// connections that failed TLS (bad ClientHello, failed handshake, bad record)",
            |s| s.tls_failed,
        ),
        (
            "tls_kernel",
            "wss:// sessions handed to the kernel's TLS after their handshake",
            |s| s.tls_kernel,
        ),
        (
            "tls_kernel_refused",
            "Kernel-TLS connections cut because the kernel refused a key or record",
            |s| s.tls_kernel_refused,
        ),
    ];
    let shards: Vec<(Labels, Snapshot, &super::stats::ShardStats)> = stats
        .0
        .iter()
        .enumerate()
        .map(|(i, s)| (vec![("shard", i.to_string())], s.snapshot(), &**s))
        .collect();
    for (name, help, get) in counters {
        let family = Family::<Labels, Counter>::default();
        for (labels, snap, _) in &shards {
            family.get_or_create(labels).inc_by(get(snap));
        }
        registry.register(name, help, family);
    }
    let gauges: [Reading; 4] = [
        ("connections_open", "Connections open now", |s| s.active),
        (
            "recv_pool_bytes",
            "Receive-buffer pool allocated (ring shell)",
            |s| s.recv_pool_bytes,
        ),
        (
            "recv_pool_in_use_buffers",
            "Receive buffers out of the pool now (ring shell)",
            |s| s.recv_pool_in_use,
        ),
        (
            "deflate_inflaters",
            "Connections holding a permessage-deflate inflater now (fixed size each)",
            |s| s.deflate_inflaters,
        ),
    ];
    for (name, help, get) in gauges {
        let family = Family::<Labels, Gauge>::default();
        for (labels, snap, _) in &shards {
            family
                .get_or_create(labels)
                .set(i64::try_from(get(snap)).unwrap_or(i64::MAX));
        }
        registry.register(name, help, family);
    }
    let timed_out = Family::<Labels, Counter>::default();
    for (labels, snap, _) in &shards {
        for (deadline, n) in [
            ("handshake", snap.timed_out_handshake),
            ("idle", snap.idle_closed),
            ("close", snap.timed_out_close),
        ] {
            let mut l = labels.clone();
            l.push(("deadline", deadline.to_string()));
            timed_out.get_or_create(&l).inc_by(n);
        }
    }
    registry.register(
        "connections_timed_out",
        "Connections ended by a deadline: handshake, idle (closed with 1001) or close (cut)",
        timed_out,
    );
    let by_code = [
        (
            "handshakes_refused",
            "Opening handshakes refused, by HTTP status",
            "status",
            0,
        ),
        (
            "close_frames_sent",
            "Close frames sent, by code (1005: without one)",
            "code",
            1,
        ),
        (
            "close_frames_received",
            "Close frames received, by code (1005: without one)",
            "code",
            2,
        ),
    ];
    for (name, help, label, which) in by_code {
        let family = Family::<Labels, Counter>::default();
        for (labels, _, shard) in &shards {
            let table: Vec<(Option<u16>, u64)> = match which {
                0 => shard.codes.handshake_refused.values().collect(),
                1 => shard.codes.close_sent.values().collect(),
                _ => shard.codes.close_received.values().collect(),
            };
            for (code, n) in table {
                let mut l = labels.clone();
                l.push((
                    label,
                    code.map_or_else(|| "other".to_string(), |c| c.to_string()),
                ));
                family.get_or_create(&l).inc_by(n);
            }
        }
        registry.register(name, help, family);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::stats::ShardStats;

    #[test]
    fn every_counter_is_exposed_per_shard_with_its_labels() {
        let stats = AllStats(vec![
            Arc::new(ShardStats::default()),
            Arc::new(ShardStats::default()),
        ]);
        stats.0[0].accepted.add(7);
        stats.0[1].messages_echoed.add(42);
        stats.0[1].active.add(3);
        stats.0[0].codes.close_received.incr(1000);
        stats.0[0].codes.close_sent.incr(4000);
        stats.0[1].codes.handshake_refused.incr(426);
        stats.0[0].timed_out_handshake.add(2);
        let text = render(&stats);
        for line in [
            "ringecho_connections_accepted_total{shard=\"0\"} 7",
            "ringecho_messages_echoed_total{shard=\"1\"} 42",
            "ringecho_connections_open{shard=\"1\"} 3",
            "ringecho_close_frames_received_total{shard=\"0\",code=\"1000\"} 1",
            "ringecho_close_frames_sent_total{shard=\"0\",code=\"other\"} 1",
            "ringecho_handshakes_refused_total{shard=\"1\",status=\"426\"} 1",
            "ringecho_connections_timed_out_total{shard=\"0\",deadline=\"handshake\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
