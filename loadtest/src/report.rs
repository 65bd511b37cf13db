//! The run's results: built from merged counters, printed as text or JSON,
//! and read back from child processes' JSON to merge split runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::LoadArgs;
use crate::stats::{ErrorKind, Stats};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// CPU used by the load generator over the measured window, percent of
    /// one core (summed over its processes in a split run).
    pub client_pct: f64,
    /// Same for `--server-pid`, when given.
    pub server_pct: Option<f64>,
}

/// Histograms in HdrHistogram V2 encoding, base64; only children of a split
/// run emit them, for the parent to merge exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodedHistograms {
    pub latency: String,
    pub connect: String,
}

/// `--deflate`: payload bytes on the wire, compressed, for the messages
/// verified in the measured window; kept so split runs merge exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireBytes {
    pub sent: u64,
    pub echoed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    /// "closed" (send on echo) or "open" (fixed schedule, `rate_target`).
    pub mode: String,
    pub raw: bool,
    pub opcode: String,
    /// Messages sent compressed with permessage-deflate (`--deflate`).
    #[serde(default)]
    pub deflate: bool,
    /// `--deflate`'s compressible messages, sent uncompressed.
    #[serde(default)]
    pub compressible: bool,
    pub connections: usize,
    pub connections_open: u64,
    /// Connections that never opened: connect failures, timeouts and
    /// refused handshakes together (each also counted under `errors`).
    #[serde(default)]
    pub connections_failed: u64,
    /// Each connection echoed from the moment it opened (`--echo-on-open`).
    #[serde(default)]
    pub echo_on_open: bool,
    /// From the first connect until the last connection opened, seconds.
    #[serde(default)]
    pub open_secs: f64,
    /// Echoes received before the last connection opened.
    #[serde(default)]
    pub echoes_while_opening: u64,
    pub size: usize,
    pub in_flight: usize,
    pub rate_target: Option<f64>,
    pub threads: usize,
    pub processes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Echoes verified within the measured window.
    pub messages: u64,
    pub msgs_per_sec: f64,
    /// Payload bytes (10^6) per second echoed, counted once: the same amount
    /// travels client→server and server→client.
    pub mb_per_sec_each_way: f64,
    /// Both directions together (2 × `mb_per_sec_each_way`).
    pub mb_per_sec_both_ways: f64,
    /// `--deflate`: compressed payload bytes sent per message byte (wire
    /// bytes / message bytes), over the messages verified in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// The same for the echoes as they came back: equal to
    /// `compression_ratio` when the server echoes compressed messages
    /// verbatim, whatever its compressor makes of them otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_compression_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<WireBytes>,
    /// Echo round trip, µs: from send (closed loop) or from the scheduled
    /// send time (open loop) to the last byte of the echo.
    pub latency_us: Percentiles,
    /// TCP connect plus opening handshake, µs.
    pub connect_us: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    pub cpu: Option<CpuUse>,
    /// The server process under the load (`--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::server_watch::ServerSide>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histograms: Option<EncodedHistograms>,
}

/// `n` and the noun, in the plural unless `n` is 1.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    // Serializing into a Vec only fails on histogram states that cannot
    // occur for ours; an empty string then merges as "no data".
    if V2Serializer::new().serialize(h, &mut buf).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(buf)
}

fn decode(s: &str) -> Result<Histogram<u64>, String> {
    if s.is_empty() {
        return Ok(crate::stats::new_histogram());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("histogram base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram: {e:?}"))
}

impl Report {
    pub fn build(
        args: &LoadArgs,
        stats: &Stats,
        threads: usize,
        processes: usize,
        cpu: Option<CpuUse>,
    ) -> Report {
        let secs = args.duration.as_secs_f64();
        let rate = stats.messages as f64 / secs;
        let mb = stats.payload_bytes as f64 / secs / 1e6;
        let ratio = |wire: u64| {
            (args.deflate && stats.payload_bytes > 0)
                .then(|| (wire as f64 / stats.payload_bytes as f64 * 1e4).round() / 1e4)
        };
        let errors: BTreeMap<String, u64> = ErrorKind::ALL
            .iter()
            .filter(|k| stats.errors[**k as usize] > 0)
            .map(|k| (k.name().to_string(), stats.errors[*k as usize]))
            .collect();
        Report {
            target: args.url.clone(),
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            raw: args.raw,
            opcode: if args.binary { "binary" } else { "text" }.into(),
            deflate: args.deflate,
            compressible: args.compressible,
            connections: args.connections,
            connections_open: stats.opened,
            connections_failed: [
                ErrorKind::ConnectFailed,
                ErrorKind::ConnectTimeout,
                ErrorKind::HandshakeFailed,
                ErrorKind::DeflateRefused,
            ]
            .iter()
            .map(|k| stats.errors[*k as usize])
            .sum(),
            echo_on_open: args.echo_on_open,
            open_secs: stats.open_us as f64 / 1e6,
            echoes_while_opening: stats.echoes_while_opening,
            size: args.size,
            in_flight: args.in_flight,
            rate_target: args.rate,
            threads,
            processes,
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: secs,
            messages: stats.messages,
            msgs_per_sec: rate.round(),
            mb_per_sec_each_way: (mb * 1000.0).round() / 1000.0,
            mb_per_sec_both_ways: (2.0 * mb * 1000.0).round() / 1000.0,
            compression_ratio: ratio(stats.wire_sent),
            echo_compression_ratio: ratio(stats.wire_echoed),
            wire_bytes: args.deflate.then_some(WireBytes {
                sent: stats.wire_sent,
                echoed: stats.wire_echoed,
            }),
            latency_us: Percentiles::of(&stats.latency),
            connect_us: Percentiles::of(&stats.connect),
            error_total: errors.values().sum(),
            errors,
            cpu,
            server: None,
            histograms: args.child.then(|| EncodedHistograms {
                latency: encode(&stats.latency),
                connect: encode(&stats.connect),
            }),
        }
    }

    /// Counters and histograms back from a child's report, for merging.
    pub fn to_stats(&self) -> Result<Stats, String> {
        let mut s = Stats::new();
        let h = self
            .histograms
            .as_ref()
            .ok_or("child report has no histograms")?;
        s.latency = decode(&h.latency)?;
        s.connect = decode(&h.connect)?;
        s.messages = self.messages;
        s.payload_bytes = self.messages * self.size as u64;
        if let Some(w) = &self.wire_bytes {
            s.wire_sent = w.sent;
            s.wire_echoed = w.echoed;
        }
        s.opened = self.connections_open;
        s.open_us = (self.open_secs * 1e6).round() as u64;
        s.echoes_while_opening = self.echoes_while_opening;
        for (name, n) in &self.errors {
            match ErrorKind::ALL.iter().find(|k| k.name() == name) {
                Some(k) => s.errors[*k as usize] += n,
                None => return Err(format!("child report: unknown error kind {name}")),
            }
        }
        Ok(s)
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let l = &self.latency_us;
        let c = &self.connect_us;
        let mode = match self.rate_target {
            Some(r) => format!("open loop at {r} msgs/s"),
            None => format!("closed loop, {} in flight per connection", self.in_flight),
        };
        let kind = if self.deflate {
            " compressible, permessage-deflate"
        } else if self.compressible {
            " compressible, uncompressed"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "{} {}: {} ({} open), {} B{kind} {} messages, {mode}, {}{}",
            self.target,
            if self.raw { "(raw TCP)" } else { "" },
            plural(self.connections as u64, "connection"),
            self.connections_open,
            self.size,
            self.opcode,
            plural(self.threads as u64, "thread"),
            if self.processes > 1 {
                format!(" in {} processes", self.processes)
            } else {
                String::new()
            },
        );
        let _ = writeln!(
            o,
            "  {:.0} msgs/s over {:.1} s ({} echoes verified); payload {:.3} MB/s each way, {:.3} MB/s both ways",
            self.msgs_per_sec, self.duration_s, self.messages, self.mb_per_sec_each_way, self.mb_per_sec_both_ways
        );
        if let (Some(sent), Some(echoed)) = (self.compression_ratio, self.echo_compression_ratio) {
            let _ = writeln!(
                o,
                "  compression ratio (wire bytes / message bytes): {sent:.3} sent, {echoed:.3} echoed"
            );
        }
        let _ = writeln!(
            o,
            "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        let _ = writeln!(
            o,
            "  connect µs: p50 {} p90 {} p99 {} max {}",
            c.p50, c.p90, c.p99, c.max
        );
        let _ = write!(
            o,
            "  opened {} of {} in {:.3} s, {} failed to open",
            self.connections_open, self.connections, self.open_secs, self.connections_failed
        );
        if self.echo_on_open {
            let _ = write!(
                o,
                "; echoing from each open, {} echoes before the last opened",
                self.echoes_while_opening
            );
        }
        let _ = writeln!(o);
        if let Some(cpu) = &self.cpu {
            let _ = write!(o, "  CPU over the window: client {:.0}%", cpu.client_pct);
            if let Some(s) = cpu.server_pct {
                let _ = write!(o, ", server {s:.0}%");
            }
            let _ = writeln!(o, " (100% = one core)");
        }
        if let Some(s) = &self.server {
            let _ = write!(
                o,
                "  server RSS: {:.1} MiB before, {:.1} MiB with {} connections open ({:.2} KiB each)",
                s.rss_kib_before as f64 / 1024.0,
                s.rss_kib_loaded as f64 / 1024.0,
                s.connections,
                s.rss_per_connection_kib
            );
            if !s.shards_active.is_empty() {
                let _ = write!(o, "; per shard {:?}", s.shards_active);
            }
            let _ = writeln!(o);
        }
        if self.errors.is_empty() {
            let _ = writeln!(o, "  errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(o, "  ERRORS: {}", list.join(", "));
        }
        o
    }
}
