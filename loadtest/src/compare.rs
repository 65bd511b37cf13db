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

/// `--servers` in order, the baseline (when given) right after ringecho so
/// the two ringecho rows sit side by side.
fn targets(args: &CompareArgs) -> Vec<Target> {
    let mut out: Vec<Target> = args
        .servers
        .iter()
        .map(|s| PeerKind::parse(s).map_or(Target::Ringecho, Target::Peer))
        .collect();
    if args.ringecho_baseline.is_some() {
        let at = out
            .iter()
            .position(|t| *t == Target::Ringecho)
            .map_or(out.len(), |i| i + 1);
        out.insert(at, Target::Baseline);
    }
    out
}

fn start(target: Target, args: &CompareArgs, cpus: &[usize]) -> Result<Server, String> {
    let ringecho = |path: &Path| {
        let mut c = Command::new(path);
        c.args(["--threads", "1", "--listen", "127.0.0.1:0"]);
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
    start_server(target.label(), cmd, cpus)
}

fn run_client(
    target: Target,
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
    if matches!(target, Target::Peer(PeerKind::RawUring | PeerKind::RawRing)) {
        load.push("--raw".into());
    }
    let limit = args.warmup + args.duration + Duration::from_secs(60);
    let what = format!("client against {}", target.label());
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
    pub errors: u64,
    pub rounds: Vec<f64>,
}

/// "CPU 0" or "CPUs 0-3" for a CPU list as given on the command line.
fn cpu_label(list: &str) -> String {
    if list.contains([',', '-']) {
        format!("CPUs {list}")
    } else {
        format!("CPU {list}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
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
        errors: reports.iter().map(|r| r.error_total).sum(),
        rounds: reports.iter().map(|r| r.msgs_per_sec).collect(),
    }
}

pub fn run(args: CompareArgs) -> Result<(), String> {
    let server_cpus = parse_cpu_list(&args.server_cpus)?;
    let client_cpus = parse_cpu_list(&args.client_cpus)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("c{}-s{}", args.connections, args.size));
    let targets = targets(&args);
    let n = targets.len();
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); n];
    for round in 0..args.rounds {
        // Rotate the order each round so drift on a noisy machine (thermal,
        // neighbours) does not always favour the same server.
        for k in 0..n {
            let i = (k + round) % n;
            let target = targets[i];
            let display = target.label();
            eprintln!(
                "compare: round {}/{}: {display} ({} connections, {} B)",
                round + 1,
                args.rounds,
                args.connections,
                args.size
            );
            let server = start(target, &args, &server_cpus)?;
            let report = run_client(target, &args, &server, &client_cpus)?;
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
    let rows: Vec<Row> = targets
        .iter()
        .zip(&reports)
        .map(|(t, r)| row(t.label(), r))
        .collect();
    let rate_of = |label: &str| {
        rows.iter()
            .find(|r| r.server == label)
            .map(|r| r.msgs_per_sec)
            .filter(|v| *v > 0.0)
    };
    let base = rate_of("ringecho");
    // ringecho's throughput over its baseline's: above 1 the change helped.
    let vs_baseline = base.zip(rate_of(BASELINE)).map(|(r, b)| r / b);
    if let Some(x) = vs_baseline {
        eprintln!("compare: ringecho is {x:.2}× its baseline");
    }
    let md = markdown(&args, &name, &rows, base, vs_baseline);
    print!("{md}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let md_path = args.out.join(format!("{name}.md"));
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg_path = args.out.join(format!("{name}.svg"));
    let mut title = format!(
        "{} connections, {} B messages, closed loop ({} in flight)",
        args.connections, args.size, args.in_flight
    );
    if let Some(x) = vs_baseline {
        title.push_str(&format!("; ringecho {x:.2}× its baseline"));
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
    crate::chart::bars(Path::new(&svg_path), &title, &bars, base)?;
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

fn markdown(
    args: &CompareArgs,
    name: &str,
    rows: &[Row],
    base: Option<f64>,
    vs_baseline: Option<f64>,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "# {name}\n");
    let _ = writeln!(
        o,
        "`loadtest compare --connections {} --size {} --duration {} --warmup {} --in-flight {} \
         --rounds {} --server-cpus {} --client-cpus {}`\n",
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
        "Closed loop, binary messages, each server on one thread pinned to {}, \
         the client pinned to {}. MB/s is echoed payload per second in one \
         direction (10^6 bytes; the same flows the other way). Latency is the echo \
         round trip. CPU is percent of one core over the measured window. Values are \
         medians over {}; the server order rotates each round.\n",
        cpu_label(&args.server_cpus),
        cpu_label(&args.client_cpus),
        crate::report::plural(args.rounds as u64, "round")
    );
    if args.ringecho_baseline.is_some() {
        let _ = writeln!(
            o,
            "`{BASELINE}` is a second ringecho binary run with the same flags and \
             pinning as `ringecho`.\n"
        );
    }
    let _ = writeln!(
        o,
        "| server | msgs/s | vs ringecho | MB/s | p50 µs | p99 µs | client CPU % | server CPU % | errors | msgs/s per round |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for r in rows {
        let ratio = base.map_or("-".to_string(), |b| format!("{:.2}×", r.msgs_per_sec / b));
        let per_round: Vec<String> = r.rounds.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            o,
            "| {} | {:.0} | {ratio} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {} |",
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
    if let Some(x) = vs_baseline {
        let _ = writeln!(o, "\nringecho / {BASELINE}: {x:.2}× msgs/s");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
    }
}
