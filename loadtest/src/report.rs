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
use crate::tls::Negotiated;

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
    #[serde(default)]
    pub cycle: String,
}

/// Connections that agreed on one set of TLS parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsCount {
    #[serde(flatten)]
    pub negotiated: Negotiated,
    pub connections: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// "closed" (send on echo), "open" (fixed schedule, `rate_target`) or
    /// "handshakes" (`--handshakes`: connect, upgrade, one echo, close).
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
    /// wss://: the TLS version most connections negotiated, "TLS1.3" or
    /// "TLS1.2", and with it their cipher suite, key exchange group and
    /// ALPN protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cipher_suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_kx_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_alpn: Option<String>,
    /// Every parameter set negotiated, most common first (one, normally).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_negotiated: Vec<TlsCount>,
    /// The first TLS failure, explained (each is counted as `tls_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_error: Option<String>,
    /// Server TCP closes not preceded by a TLS close_notify (RFC 8446
    /// §6.1), seen at the end of `--handshakes` cycles; not an error.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eof_without_close_notify: u64,
    /// `--handshakes`: cycles completed in the measured window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes_per_sec: Option<f64>,
    /// Failed cycles, all kinds (the same as `error_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_failures: Option<u64>,
    /// A cycle's duration, µs: connect to the server's TCP close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_us: Option<Percentiles>,
    /// Server CPU time per completed cycle, µs (`--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_handshake: Option<f64>,
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
        let error_total: u64 = errors.values().sum();
        let mut tls_negotiated: Vec<TlsCount> = stats
            .tls
            .iter()
            .map(|(n, c)| TlsCount {
                negotiated: n.clone(),
                connections: *c,
            })
            .collect();
        tls_negotiated.sort_by_key(|t| std::cmp::Reverse(t.connections));
        let top = tls_negotiated.first().map(|t| &t.negotiated);
        let handshakes_per_sec = stats.cycles as f64 / secs;
        let cycles = args.handshakes;
        Report {
            target: args.url.clone(),
            mode: if args.handshakes {
                "handshakes"
            } else if args.rate.is_some() {
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
                ErrorKind::TlsFailed,
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
            error_total,
            errors,
            server_cpu_us_per_handshake: cpu
                .as_ref()
                .and_then(|c| c.server_pct)
                .filter(|_| cycles && handshakes_per_sec > 0.0)
                .map(|pct| (pct / 100.0 * 1e6 / handshakes_per_sec * 100.0).round() / 100.0),
            cpu,
            server: None,
            histograms: args.child.then(|| EncodedHistograms {
                latency: encode(&stats.latency),
                connect: encode(&stats.connect),
                cycle: encode(&stats.cycle),
            }),
            tls: top.map(|t| t.version.clone()),
            tls_cipher_suite: top.map(|t| t.cipher_suite.clone()),
            tls_kx_group: top.map(|t| t.kx_group.clone()),
            tls_alpn: top.and_then(|t| t.alpn.clone()),
            tls_negotiated,
            tls_error: stats.tls_error.clone(),
            eof_without_close_notify: stats.eof_without_close_notify,
            handshakes: cycles.then_some(stats.cycles),
            handshakes_per_sec: cycles.then_some((handshakes_per_sec * 10.0).round() / 10.0),
            handshake_failures: cycles.then_some(error_total),
            cycle_us: cycles.then(|| Percentiles::of(&stats.cycle)),
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
        s.cycle = decode(&h.cycle)?;
        s.cycles = self.handshakes.unwrap_or(0);
        for t in &self.tls_negotiated {
            *s.tls.entry(t.negotiated.clone()).or_insert(0) += t.connections;
        }
        s.tls_error.clone_from(&self.tls_error);
        s.eof_without_close_notify = self.eof_without_close_notify;
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

    /// The TLS line of the text report, when there is TLS.
    fn tls_line(&self) -> Option<String> {
        let version = self.tls.as_ref()?;
        let mut l = format!(
            "  TLS: {version} {} {}",
            self.tls_cipher_suite.as_deref().unwrap_or("?"),
            self.tls_kx_group.as_deref().unwrap_or("?")
        );
        match &self.tls_alpn {
            Some(p) => l.push_str(&format!(", ALPN {p}")),
            None => l.push_str(", no ALPN"),
        }
        l.push_str("; full handshakes, no resumption");
        if self.tls_negotiated.len() > 1 {
            let others: Vec<String> = self.tls_negotiated[1..]
                .iter()
                .map(|t| {
                    format!(
                        "{} {} {} ({})",
                        t.negotiated.version,
                        t.negotiated.cipher_suite,
                        t.negotiated.kx_group,
                        t.connections
                    )
                })
                .collect();
            l.push_str(&format!("; others: {}", others.join(", ")));
        }
        Some(l)
    }

    pub fn text(&self) -> String {
        if self.handshakes.is_some() {
            return self.handshakes_text();
        }
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
        if let Some(line) = self.tls_line() {
            let _ = writeln!(o, "{line}");
        }
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
        self.tail(&mut o);
        o
    }

    /// CPU, server memory, TLS failures and errors: the end of either
    /// report.
    fn tail(&self, o: &mut String) {
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
        if self.eof_without_close_notify > 0 {
            let _ = writeln!(
                o,
                "  TLS: {} server closes came without a close_notify (RFC 8446 §6.1)",
                self.eof_without_close_notify
            );
        }
        if let Some(e) = &self.tls_error {
            let _ = writeln!(o, "  first TLS failure: {e}");
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
    }

    /// The `--handshakes` report.
    fn handshakes_text(&self) -> String {
        let mut o = String::new();
        let cycle = self.cycle_us.clone().unwrap_or_default();
        let c = &self.connect_us;
        let l = &self.latency_us;
        let kind = if self.deflate {
            " compressible, permessage-deflate"
        } else if self.compressible {
            " compressible, uncompressed"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "{}: handshake cycles on {}, each: connect, {}upgrade, one {} B{kind} {} echo, close; {}",
            self.target,
            plural(self.connections as u64, "slot"),
            if self.target.starts_with("wss://") {
                "full TLS handshake, "
            } else {
                ""
            },
            self.size,
            self.opcode,
            plural(self.threads as u64, "thread"),
        );
        let _ = writeln!(
            o,
            "  {:.1} handshakes/s over {:.1} s ({} cycles completed), {} failed",
            self.handshakes_per_sec.unwrap_or(0.0),
            self.duration_s,
            self.handshakes.unwrap_or(0),
            self.handshake_failures.unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "  cycle µs (connect to TCP close): p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.1})",
            cycle.p50, cycle.p90, cycle.p99, cycle.p999, cycle.max, cycle.mean
        );
        let _ = writeln!(
            o,
            "  open µs (connect to 101): p50 {} p90 {} p99 {} max {}; echo µs: p50 {} p99 {}",
            c.p50, c.p90, c.p99, c.max, l.p50, l.p99
        );
        if let Some(line) = self.tls_line() {
            let _ = writeln!(o, "{line}");
        }
        if let Some(us) = self.server_cpu_us_per_handshake {
            let _ = writeln!(o, "  server CPU per handshake: {us:.1} µs");
        }
        self.tail(&mut o);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_args(v: &[&str]) -> LoadArgs {
        match crate::cli::parse(v.iter().map(|s| s.to_string()).collect()) {
            Ok(crate::cli::Command::Load(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn tls13(kx: &str) -> Negotiated {
        Negotiated {
            version: "TLS1.3".into(),
            cipher_suite: "TLS13_AES_256_GCM_SHA384".into(),
            kx_group: kx.into(),
            alpn: Some("http/1.1".into()),
        }
    }

    #[test]
    fn a_handshake_report_says_what_was_negotiated_and_survives_a_split_run() {
        let mut a = load_args(&[
            "wss://127.0.0.1:1/",
            "--insecure",
            "--handshakes",
            "--duration",
            "2",
        ]);
        a.child = true;
        let mut s = Stats::new();
        s.cycles = 10;
        s.opened = 12;
        for us in [1000, 2000, 3000] {
            Stats::record_us(&mut s.cycle, us);
        }
        s.tls.insert(tls13("X25519"), 11);
        s.tls.insert(tls13("secp256r1"), 1);
        s.error(ErrorKind::TlsFailed, 2);
        s.tls_error = Some("TLS handshake failed: x".into());
        let cpu = CpuUse {
            client_pct: 10.0,
            server_pct: Some(50.0),
        };
        let r = Report::build(&a, &s, 1, 1, Some(cpu));
        assert_eq!(r.mode, "handshakes");
        assert_eq!(r.handshakes, Some(10));
        assert_eq!(r.handshakes_per_sec, Some(5.0));
        assert_eq!(r.handshake_failures, Some(2));
        // Half a core over 5 handshakes a second.
        assert_eq!(r.server_cpu_us_per_handshake, Some(100_000.0));
        assert_eq!(r.cycle_us.as_ref().map(|c| c.p50), Some(2000));
        assert_eq!(r.tls.as_deref(), Some("TLS1.3"));
        assert_eq!(r.tls_kx_group.as_deref(), Some("X25519"));
        assert_eq!(r.tls_alpn.as_deref(), Some("http/1.1"));
        assert_eq!(r.connections_failed, 2);
        let text = r.text();
        for s in [
            "5.0 handshakes/s over 2.0 s (10 cycles completed), 2 failed",
            "cycle µs (connect to TCP close): p50 2000",
            "TLS: TLS1.3 TLS13_AES_256_GCM_SHA384 X25519, ALPN http/1.1",
            "others: TLS1.3 TLS13_AES_256_GCM_SHA384 secp256r1 (1)",
            "server CPU per handshake: 100000.0 µs",
            "first TLS failure: TLS handshake failed: x",
            "ERRORS: tls_failed 2",
        ] {
            assert!(text.contains(s), "{s:?} not in\n{text}");
        }
        // A parent merges children's JSON back into the same counts.
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        let merged = back.to_stats().unwrap();
        assert_eq!(merged.cycles, 10);
        assert_eq!(merged.cycle.len(), 3);
        assert_eq!(merged.tls, s.tls);
        assert_eq!(merged.tls_error, s.tls_error);
        let again = Report::build(
            &load_args(&[
                "wss://127.0.0.1:1/",
                "--insecure",
                "--handshakes",
                "--duration",
                "2",
            ]),
            &merged,
            1,
            2,
            None,
        );
        assert_eq!(again.handshakes_per_sec, Some(5.0));
        assert_eq!(again.tls_negotiated.len(), 2);
    }

    #[test]
    fn plain_ws_reports_carry_no_tls_or_handshake_fields() {
        let a = load_args(&["ws://127.0.0.1:1/"]);
        let r = Report::build(&a, &Stats::new(), 1, 1, None);
        let json = serde_json::to_value(&r).unwrap();
        for k in [
            "tls",
            "tls_negotiated",
            "handshakes",
            "cycle_us",
            "tls_error",
        ] {
            assert!(json.get(k).is_none(), "{k} in {json}");
        }
        assert_eq!(r.mode, "closed");
        assert!(!r.text().contains("TLS"));
    }
}
