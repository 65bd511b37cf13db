//! `loadtest compare`: the same closed-loop workload against ringecho and
//! each peer in turn, server and client pinned to disjoint CPU sets, with a
//! markdown table and an SVG chart as the result.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::chart::Bar;
use crate::cli::{parse_cpu_list, CompareArgs, PeerKind};
use crate::process::{load_args, run_load, start_server, Server};
use crate::report::Report;

/// Label of the row a `--ringecho-baseline` binary gets.
const BASELINE: &str = "ringecho (baseline)";
/// `--deflate` rows: ringecho echoing compressed messages as they came, the
/// peer that inflates and compresses them again, and ringecho sent the
/// same messages uncompressed.
const RINGECHO_DEFLATE: &str = "ringecho --permessage-deflate";
const RECOMPRESS: &str = "recompress (flate2, level 6)";
const RINGECHO_PLAIN: &str = "ringecho (no deflate)";

/// One server the comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Ringecho,
    /// The `--ringecho-baseline` binary.
    Baseline,
    Peer(PeerKind),
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Ringecho => "ringecho",
            Target::Baseline => BASELINE,
            Target::Peer(p) => p.name(),
        }
    }
}

/// What the client sends a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Messages {
    /// The usual sequence-numbered pattern.
    Pattern,
    /// `--deflate`'s compressible messages, compressed; ringecho is started
    /// with `--permessage-deflate`.
    Deflate,
    /// The same messages, uncompressed (`--compressible`).
    Uncompressed,
}

/// One row of the comparison: a server and what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    target: Target,
    messages: Messages,
}

impl Entry {
    fn label(self) -> String {
        match (self.target, self.messages) {
            (Target::Ringecho, Messages::Deflate) => RINGECHO_DEFLATE.into(),
            (Target::Ringecho, Messages::Uncompressed) => RINGECHO_PLAIN.into(),
            (Target::Peer(PeerKind::DeflateRecompress), Messages::Deflate) => RECOMPRESS.into(),
            (t, Messages::Deflate) => format!("{} --permessage-deflate", t.label()),
            (t, Messages::Uncompressed) => format!("{} (no deflate)", t.label()),
            (t, Messages::Pattern) => t.label().into(),
        }
    }
}

/// `--servers` in order, the baseline (when given) right after ringecho so
/// the two ringecho rows sit side by side. With `--deflate`, ringecho is
/// run twice (with the flag and compressed messages, then without and
/// uncompressed), the recompressing peer gets compressed messages and any
/// other peer, which cannot negotiate the extension, uncompressed ones.
fn entries(args: &CompareArgs) -> Vec<Entry> {
    let mut out = Vec::new();
    for s in &args.servers {
        let target = PeerKind::parse(s).map_or(Target::Ringecho, Target::Peer);
        let messages = match target {
            _ if !args.deflate => Messages::Pattern,
            Target::Ringecho | Target::Peer(PeerKind::DeflateRecompress) => Messages::Deflate,
            _ => Messages::Uncompressed,
        };
        out.push(Entry { target, messages });
        if target != Target::Ringecho {
            continue;
        }
        if args.ringecho_baseline.is_some() {
            out.push(Entry {
                target: Target::Baseline,
                messages,
            });
        }
        if args.deflate {
            out.push(Entry {
                target,
                messages: Messages::Uncompressed,
            });
        }
    }
    if args.ringecho_baseline.is_some() && !out.iter().any(|e| e.target == Target::Baseline) {
        out.push(Entry {
            target: Target::Baseline,
            messages: if args.deflate {
                Messages::Deflate
            } else {
                Messages::Pattern
            },
        });
    }
    out
}

fn start(entry: Entry, args: &CompareArgs, cpus: &[usize]) -> Result<Server, String> {
    let target = entry.target;
    let ringecho = |path: &Path| {
        let mut c = Command::new(path);
        c.args(["--threads", "1", "--listen", "127.0.0.1:0"]);
        if entry.messages == Messages::Deflate {
            c.arg("--permessage-deflate");
        }
        c
    };
    let cmd = match (target, &args.ringecho_baseline) {
        (Target::Ringecho, _) => ringecho(&args.ringecho),
        (Target::Baseline, Some(path)) => ringecho(path),
        (Target::Baseline, None) => return Err("no --ringecho-baseline given".into()),
        (Target::Peer(p), _) => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut c = Command::new(exe);
            c.args(["peer", p.name(), "--listen", "127.0.0.1:0"]);
            c
        }
    };
    start_server(&entry.label(), cmd, cpus)
}

fn run_client(
    entry: Entry,
    args: &CompareArgs,
    server: &Server,
    cpus: &[usize],
) -> Result<Report, String> {
    let mut load = load_args(
        server,
        cpus,
        &[
            ("--connections", args.connections.to_string()),
            ("--size", args.size.to_string()),
            ("--duration", args.duration.as_secs_f64().to_string()),
            ("--warmup", args.warmup.as_secs_f64().to_string()),
            ("--in-flight", args.in_flight.to_string()),
        ],
    );
    if matches!(
        entry.target,
        Target::Peer(PeerKind::RawUring | PeerKind::RawRing)
    ) {
        load.push("--raw".into());
    }
    if args.text {
        load.push("--text".into());
    }
    match entry.messages {
        Messages::Pattern => {}
        Messages::Deflate => load.push("--deflate".into()),
        Messages::Uncompressed => load.push("--compressible".into()),
    }
    let limit = args.warmup + args.duration + Duration::from_secs(60);
    let what = format!("client against {}", entry.label());
    run_load(&what, &load, cpus, limit)
}

/// Medians over rounds of what the table shows.
#[derive(Debug, Clone)]
struct Row {
    pub server: String,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub client_cpu: Option<f64>,
    pub server_cpu: Option<f64>,
    /// Server CPU time per echo, µs.
    pub server_us_per_echo: Option<f64>,
    /// `--deflate`: wire bytes per message byte, as sent and as echoed.
    pub compression: Option<(f64, f64)>,
    pub errors: u64,
    pub rounds: Vec<f64>,
}

/// "CPU 0" or "CPUs 0-3" for a CPU list as given on the command line.
pub(crate) fn cpu_label(list: &str) -> String {
    if list.contains([',', '-']) {
        format!("CPUs {list}")
    } else {
        format!("CPU {list}")
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn row(server: &str, reports: &[Report]) -> Row {
    let pick = |f: &dyn Fn(&Report) -> f64| median(reports.iter().map(f).collect());
    let cpu = |f: &dyn Fn(&Report) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    Row {
        server: server.to_string(),
        msgs_per_sec: pick(&|r| r.msgs_per_sec),
        mb_per_sec: pick(&|r| r.mb_per_sec_each_way),
        p50_us: pick(&|r| r.latency_us.p50 as f64),
        p99_us: pick(&|r| r.latency_us.p99 as f64),
        client_cpu: cpu(&|r| r.cpu.as_ref().map(|c| c.client_pct)),
        server_cpu: cpu(&|r| r.cpu.as_ref().and_then(|c| c.server_pct)),
        // Per round, then the median: a round's CPU goes with its own rate.
        server_us_per_echo: cpu(&|r| {
            let pct = r.cpu.as_ref()?.server_pct?;
            (r.msgs_per_sec > 0.0).then(|| pct / 100.0 * 1e6 / r.msgs_per_sec)
        }),
        compression: cpu(&|r| r.compression_ratio)
            .zip(cpu(&|r| r.echo_compression_ratio))
            .or_else(|| reports.iter().any(|r| r.compressible).then_some((1.0, 1.0))),
        errors: reports.iter().map(|r| r.error_total).sum(),
        rounds: reports.iter().map(|r| r.msgs_per_sec).collect(),
    }
}

pub fn run(args: CompareArgs) -> Result<(), String> {
    if args.tls.is_some() {
        return crate::compare_tls::run(args);
    }
    let server_cpus = parse_cpu_list(&args.server_cpus)?;
    let client_cpus = parse_cpu_list(&args.client_cpus)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("c{}-s{}", args.connections, args.size));
    let entries = entries(&args);
    let n = entries.len();
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); n];
    for round in 0..args.rounds {
        // Rotate the order each round so drift on a noisy machine (thermal,
        // neighbours) does not always favour the same server.
        for k in 0..n {
            let i = (k + round) % n;
            let entry = entries[i];
            let display = entry.label();
            eprintln!(
                "compare: round {}/{}: {display} ({} connections, {} B)",
                round + 1,
                args.rounds,
                args.connections,
                args.size
            );
            let server = start(entry, &args, &server_cpus)?;
            let report = run_client(entry, &args, &server, &client_cpus)?;
            drop(server);
            eprintln!(
                "compare:   {:.0} msgs/s, p50 {} µs, p99 {} µs, errors {}",
                report.msgs_per_sec,
                report.latency_us.p50,
                report.latency_us.p99,
                report.error_total
            );
            reports[i].push(report);
        }
    }
    let rows: Vec<Row> = entries
        .iter()
        .zip(&reports)
        .map(|(e, r)| row(&e.label(), r))
        .collect();
    let find = |label: &str| rows.iter().find(|r| r.server == label);
    let rate_of = |label: &str| find(label).map(|r| r.msgs_per_sec).filter(|v| *v > 0.0);
    // The ringecho row every other is a ratio to.
    let primary = Entry {
        target: Target::Ringecho,
        messages: if args.deflate {
            Messages::Deflate
        } else {
            Messages::Pattern
        },
    };
    let base = rate_of(&primary.label());
    // ringecho's throughput over its baseline's: above 1 the change helped.
    let baseline_label = Entry {
        target: Target::Baseline,
        ..primary
    }
    .label();
    let vs_baseline = base.zip(rate_of(&baseline_label)).map(|(r, b)| Ratio {
        label: format!("{} / {baseline_label}", primary.label()),
        rate: r / b,
        cpu: None,
    });
    // The verbatim echo of compressed messages against inflating and
    // compressing them again: throughput up, server CPU per echo down.
    let vs_recompress = base.zip(rate_of(RECOMPRESS)).map(|(r, p)| Ratio {
        label: format!("{RINGECHO_DEFLATE} / {RECOMPRESS}"),
        rate: r / p,
        cpu: find(RINGECHO_DEFLATE)
            .and_then(|r| r.server_us_per_echo)
            .zip(find(RECOMPRESS).and_then(|r| r.server_us_per_echo))
            .map(|(r, p)| r / p),
    });
    let ratios: Vec<Ratio> = vs_baseline.into_iter().chain(vs_recompress).collect();
    for r in &ratios {
        eprintln!("compare: {}", r.line());
    }
    let md = markdown(&args, &name, &rows, base, &ratios);
    print!("{md}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let md_path = args.out.join(format!("{name}.md"));
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg_path = args.out.join(format!("{name}.svg"));
    let mut title = format!(
        "{} connections, {} B {}messages, closed loop ({} in flight)",
        args.connections,
        args.size,
        if args.deflate { "compressible " } else { "" },
        args.in_flight
    );
    if let Some(r) = ratios.first() {
        title.push_str(&format!("; {} {:.2}×", r.label, r.rate));
    }
    let bars: Vec<Bar<'_>> = rows
        .iter()
        .map(|r| Bar {
            label: &r.server,
            msgs_per_sec: r.msgs_per_sec,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
        })
        .collect();
    crate::chart::bars(
        Path::new(&svg_path),
        &title,
        "messages per second",
        &bars,
        base,
    )?;
    eprintln!(
        "compare: wrote {} and {}",
        md_path.display(),
        svg_path.display()
    );
    if rows.iter().any(|r| r.errors > 0) {
        return Err("some runs counted errors (see the table)".into());
    }
    Ok(())
}

/// One row's throughput (and server CPU per echo) over another's.
struct Ratio {
    /// "row / other row"
    label: String,
    rate: f64,
    cpu: Option<f64>,
}

impl Ratio {
    fn line(&self) -> String {
        let mut l = format!("{}: {:.2}× msgs/s", self.label, self.rate);
        if let Some(c) = self.cpu {
            l.push_str(&format!(", {c:.2}× server CPU per echo"));
        }
        l
    }
}

fn markdown(
    args: &CompareArgs,
    name: &str,
    rows: &[Row],
    base: Option<f64>,
    ratios: &[Ratio],
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "# {name}\n");
    let flags = match (args.deflate, args.text) {
        (true, true) => " --deflate --text",
        (true, false) => " --deflate",
        (false, true) => " --text",
        (false, false) => "",
    };
    let _ = writeln!(
        o,
        "`loadtest compare{flags} --connections {} --size {} --duration {} --warmup {} \
         --in-flight {} --rounds {} --server-cpus {} --client-cpus {}`\n",
        args.connections,
        args.size,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.in_flight,
        args.rounds,
        args.server_cpus,
        args.client_cpus
    );
    let _ = writeln!(
        o,
        "Closed loop, {} messages, each server on one thread pinned to {}, \
         the client pinned to {}. MB/s is echoed payload per second in one \
         direction (10^6 bytes; the same flows the other way). Latency is the echo \
         round trip. CPU is percent of one core over the measured window. Values are \
         medians over {}; the server order rotates each round.\n",
        if args.text { "text" } else { "binary" },
        cpu_label(&args.server_cpus),
        cpu_label(&args.client_cpus),
        crate::report::plural(args.rounds as u64, "round")
    );
    if args.deflate {
        let _ = writeln!(
            o,
            "permessage-deflate (RFC 7692): the messages are compressible \
             ({}, a set of {} made once; see `loadtest --help`). \
             `{RINGECHO_DEFLATE}` and `{RECOMPRESS}` are sent them compressed \
             (zlib level 6, no context takeover): ringecho echoes them as they came, \
             the recompressing peer inflates, checks and compresses each again, as \
             most servers do. Rows marked `(no deflate)` are sent the same messages \
             uncompressed. Every echo is verified. Server CPU µs/echo is the \
             server's CPU time over the window per message echoed; wire/message \
             is compressed payload bytes per message byte, as sent / as echoed.\n",
            if args.text {
                "JSON lines of English words"
            } else {
                "little-endian sensor records"
            },
            crate::client::payload::SET_MESSAGES
        );
    }
    if args.ringecho_baseline.is_some() {
        let _ = writeln!(
            o,
            "`{BASELINE}` is a second ringecho binary run with the same flags and \
             pinning as `ringecho`.\n"
        );
    }
    // The --deflate columns go in only with --deflate, so every other
    // table keeps the layout of the ones already published.
    let (deflate_head, deflate_align) = if args.deflate {
        (" server CPU µs/echo | wire/message |", "---:|---:|")
    } else {
        ("", "")
    };
    let _ = writeln!(
        o,
        "| server | msgs/s | vs ringecho | MB/s | p50 µs | p99 µs | client CPU % | server CPU % |\
         {deflate_head} errors | msgs/s per round |"
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|{deflate_align}---:|---|"
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for r in rows {
        let ratio = base.map_or("-".to_string(), |b| format!("{:.2}×", r.msgs_per_sec / b));
        let per_round: Vec<String> = r.rounds.iter().map(|v| format!("{v:.0}")).collect();
        let deflate_cells = if args.deflate {
            let us = r
                .server_us_per_echo
                .map_or("-".to_string(), |v| format!("{v:.2}"));
            let wire = r
                .compression
                .map_or("-".to_string(), |(s, e)| format!("{s:.3} / {e:.3}"));
            format!(" {us} | {wire} |")
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "| {} | {:.0} | {ratio} | {:.2} | {:.0} | {:.0} | {} | {} |{deflate_cells} {} | {} |",
            r.server,
            r.msgs_per_sec,
            r.mb_per_sec,
            r.p50_us,
            r.p99_us,
            pct(r.client_cpu),
            pct(r.server_cpu),
            r.errors,
            per_round.join(", ")
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(o);
    }
    for r in ratios {
        let _ = writeln!(o, "{}", r.line());
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_runs_ringecho_twice_and_peers_as_they_can() {
        let mut args = crate::cli::parse(
            [
                "compare",
                "--deflate",
                "--ringecho",
                "r",
                "--ringecho-baseline",
                "b",
            ]
            .map(String::from)
            .to_vec(),
        )
        .map(|c| match c {
            crate::cli::Command::Compare(c) => c,
            other => panic!("{other:?}"),
        })
        .unwrap();
        args.servers = ["fastwebsockets", "ringecho", "deflate-recompress"]
            .map(String::from)
            .to_vec();
        let labels: Vec<String> = entries(&args).into_iter().map(Entry::label).collect();
        assert_eq!(
            labels,
            [
                "fastwebsockets (no deflate)",
                RINGECHO_DEFLATE,
                "ringecho (baseline) --permessage-deflate",
                RINGECHO_PLAIN,
                RECOMPRESS
            ]
        );
        args.deflate = false;
        let labels: Vec<String> = entries(&args).into_iter().map(Entry::label).collect();
        assert_eq!(
            labels,
            ["fastwebsockets", "ringecho", BASELINE, "deflate-recompress"]
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
    }
}
