//! `loadtest compare --tls`: ringecho serving wss:// itself against the
//! usual deployment, nginx terminating TLS in front of a plain ringecho;
//! both on the same pinned server CPUs, the server CPU summed over every
//! process that serves, so the table says what TLS costs done either way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::chart::Bar;
use crate::cli::{parse_cpu_list, CompareArgs, CompareTls};
use crate::compare::{cpu_label, median};
use crate::nginx::{self, Nginx};
use crate::process::{load_args_to, run_load, start_server, Server};
use crate::report::{plural, Report};

/// The two rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// ringecho with `--tls-cert`/`--tls-key`.
    Ringecho,
    /// nginx terminating TLS, proxying to ringecho over plain ws://.
    Nginx,
}

const RINGECHO_WSS: &str = "ringecho wss";
const NGINX_FRONT: &str = "nginx TLS → ringecho ws";

impl Front {
    const ALL: [Front; 2] = [Front::Ringecho, Front::Nginx];

    fn label(self) -> &'static str {
        match self {
            Front::Ringecho => RINGECHO_WSS,
            Front::Nginx => NGINX_FRONT,
        }
    }
}

/// One row's servers, stopped when dropped; nginx before its backend.
struct Running {
    nginx: Option<Nginx>,
    backend: Server,
}

impl Running {
    fn url(&self) -> String {
        let addr = self.nginx.as_ref().map_or(self.backend.addr, |n| n.addr);
        format!("wss://{addr}/")
    }

    /// Every process doing the server's work.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.backend.pid()];
        if let Some(n) = &self.nginx {
            pids.extend([n.master, n.worker]);
        }
        pids
    }
}

fn start(
    front: Front,
    args: &CompareArgs,
    tls: &CompareTls,
    cpus: &[usize],
) -> Result<Running, String> {
    let mut cmd = Command::new(&args.ringecho);
    cmd.args(["--threads", "1", "--listen", "127.0.0.1:0"]);
    match front {
        Front::Ringecho => {
            cmd.arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
            Ok(Running {
                nginx: None,
                backend: start_server(RINGECHO_WSS, cmd, cpus)?,
            })
        }
        Front::Nginx => {
            let backend = start_server("ringecho (behind nginx)", cmd, cpus)?;
            let nginx = nginx::start(
                &tls.nginx,
                &tls.cert,
                &tls.key,
                backend.addr,
                cpus,
                args.connections,
            )?;
            Ok(Running {
                nginx: Some(nginx),
                backend,
            })
        }
    }
}

fn run_client(
    front: Front,
    args: &CompareArgs,
    tls: &CompareTls,
    servers: &Running,
    cpus: &[usize],
) -> Result<Report, String> {
    let mut workload = vec![
        ("--connections", args.connections.to_string()),
        ("--size", args.size.to_string()),
        ("--duration", args.duration.as_secs_f64().to_string()),
        ("--warmup", args.warmup.as_secs_f64().to_string()),
        ("--tls-kx", tls.kx.flag().to_string()),
    ];
    if !args.handshakes {
        workload.push(("--in-flight", args.in_flight.to_string()));
    }
    let mut load = load_args_to(&servers.url(), &servers.pids(), cpus, &workload);
    load.push("--insecure".into());
    if args.handshakes {
        load.push("--handshakes".into());
    }
    if args.text {
        load.push("--text".into());
    }
    let limit = args.warmup + args.duration + Duration::from_secs(60);
    run_load(
        &format!("client against {}", front.label()),
        &load,
        cpus,
        limit,
    )
}

/// Medians over rounds of what the table shows; `rate` is messages or,
/// with `--handshakes`, handshakes per second, and the latencies are the
/// echo's or the whole cycle's.
#[derive(Debug, Clone)]
struct Row {
    server: &'static str,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
    /// Server CPU time per echo or per handshake, µs.
    server_us_per_op: Option<f64>,
    /// "TLS1.3 TLS13_AES_256_GCM_SHA384 X25519".
    tls: String,
    errors: u64,
    rounds: Vec<f64>,
}

fn rate_of(r: &Report, handshakes: bool) -> f64 {
    if handshakes {
        r.handshakes_per_sec.unwrap_or(0.0)
    } else {
        r.msgs_per_sec
    }
}

fn row(server: &'static str, reports: &[Report], handshakes: bool) -> Row {
    let pick = |f: &dyn Fn(&Report) -> f64| median(reports.iter().map(f).collect());
    let some = |f: &dyn Fn(&Report) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let latency = |r: &Report| {
        if handshakes {
            r.cycle_us.clone().unwrap_or_default()
        } else {
            r.latency_us.clone()
        }
    };
    Row {
        server,
        rate: pick(&|r| rate_of(r, handshakes)),
        p50_us: pick(&|r| latency(r).p50 as f64),
        p99_us: pick(&|r| latency(r).p99 as f64),
        client_cpu: some(&|r| r.cpu.as_ref().map(|c| c.client_pct)),
        server_cpu: some(&|r| r.cpu.as_ref().and_then(|c| c.server_pct)),
        // Per round, then the median: a round's CPU goes with its own rate.
        server_us_per_op: some(&|r| {
            let pct = r.cpu.as_ref()?.server_pct?;
            let rate = rate_of(r, handshakes);
            (rate > 0.0).then(|| pct / 100.0 * 1e6 / rate)
        }),
        tls: reports
            .iter()
            .find_map(|r| {
                Some(format!(
                    "{} {} {}",
                    r.tls.as_ref()?,
                    r.tls_cipher_suite.as_deref().unwrap_or("?"),
                    r.tls_kx_group.as_deref().unwrap_or("?")
                ))
            })
            .unwrap_or_else(|| "-".into()),
        errors: reports.iter().map(|r| r.error_total).sum(),
        rounds: reports.iter().map(|r| rate_of(r, handshakes)).collect(),
    }
}

/// ringecho wss against nginx: throughput, and server CPU per operation.
fn ratio_line(rows: &[Row], handshakes: bool) -> Option<String> {
    let find = |label: &str| rows.iter().find(|r| r.server == label);
    let (r, n) = (find(RINGECHO_WSS)?, find(NGINX_FRONT)?);
    if n.rate <= 0.0 {
        return None;
    }
    let (unit, per) = if handshakes {
        ("handshakes/s", "handshake")
    } else {
        ("msgs/s", "echo")
    };
    let mut l = format!(
        "{RINGECHO_WSS} / {NGINX_FRONT}: {:.2}× {unit}",
        r.rate / n.rate
    );
    if let (Some(a), Some(b)) = (r.server_us_per_op, n.server_us_per_op) {
        if b > 0.0 {
            l.push_str(&format!(", {:.2}× server CPU per {per}", a / b));
        }
    }
    Some(l)
}

pub fn run(args: CompareArgs) -> Result<(), String> {
    let Some(tls) = args.tls.clone() else {
        return Err("compare --tls without its options".into());
    };
    let server_cpus = parse_cpu_list(&args.server_cpus)?;
    let client_cpus = parse_cpu_list(&args.client_cpus)?;
    let name = args.name.clone().unwrap_or_else(|| {
        if args.handshakes {
            format!("tls-handshakes-c{}", args.connections)
        } else {
            format!("tls-c{}-s{}", args.connections, args.size)
        }
    });
    let n = Front::ALL.len();
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); n];
    for round in 0..args.rounds {
        // Rotated each round, as `compare` does, so drift does not always
        // favour the same row.
        for k in 0..n {
            let i = (k + round) % n;
            let front = Front::ALL[i];
            eprintln!(
                "compare: round {}/{}: {} ({} connections, {}{})",
                round + 1,
                args.rounds,
                front.label(),
                args.connections,
                if args.handshakes { "handshakes, " } else { "" },
                format_args!("{} B", args.size)
            );
            let servers = start(front, &args, &tls, &server_cpus)?;
            let report = run_client(front, &args, &tls, &servers, &client_cpus)?;
            drop(servers);
            eprintln!(
                "compare:   {:.0} {}/s, server CPU {}%, errors {}{}",
                rate_of(&report, args.handshakes),
                if args.handshakes {
                    "handshakes"
                } else {
                    "msgs"
                },
                report
                    .cpu
                    .as_ref()
                    .and_then(|c| c.server_pct)
                    .map_or("-".into(), |v| format!("{v:.0}")),
                report.error_total,
                report
                    .tls_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" ({e})"))
            );
            reports[i].push(report);
        }
    }
    let rows: Vec<Row> = Front::ALL
        .iter()
        .zip(&reports)
        .map(|(f, r)| row(f.label(), r, args.handshakes))
        .collect();
    let ratio = ratio_line(&rows, args.handshakes);
    if let Some(l) = &ratio {
        eprintln!("compare: {l}");
    }
    let md = markdown(&args, &tls, &name, &rows, ratio.as_deref());
    print!("{md}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let md_path = args.out.join(format!("{name}.md"));
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg_path = args.out.join(format!("{name}.svg"));
    let mut title = if args.handshakes {
        format!(
            "wss:// handshake cycles, {} slots, {}",
            args.connections,
            tls.kx.flag()
        )
    } else {
        format!(
            "wss://, {} connections, {} B messages, closed loop",
            args.connections, args.size
        )
    };
    if let Some(l) = &ratio {
        title.push_str(&format!("; {}", l.split(": ").nth(1).unwrap_or("")));
    }
    let bars: Vec<Bar<'_>> = rows
        .iter()
        .map(|r| Bar {
            label: r.server,
            msgs_per_sec: r.rate,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
        })
        .collect();
    let base = rows
        .iter()
        .find(|r| r.server == NGINX_FRONT)
        .map(|r| r.rate)
        .filter(|v| *v > 0.0);
    let unit = if args.handshakes {
        "handshakes per second"
    } else {
        "messages per second"
    };
    crate::chart::bars(Path::new(&svg_path), &title, unit, &bars, base)?;
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
    tls: &CompareTls,
    name: &str,
    rows: &[Row],
    ratio: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "# {name}\n");
    let in_flight = if args.handshakes {
        String::new()
    } else {
        format!(" --in-flight {}", args.in_flight)
    };
    let _ = writeln!(
        o,
        "`loadtest compare --tls{}{} --tls-kx {} --connections {} --size {} --duration {} \
         --warmup {}{in_flight} --rounds {} --server-cpus {} --client-cpus {}`\n",
        if args.handshakes { " --handshakes" } else { "" },
        if args.text { " --text" } else { "" },
        tls.kx.flag(),
        args.connections,
        args.size,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.rounds,
        args.server_cpus,
        args.client_cpus
    );
    let workload = if args.handshakes {
        format!(
            "Handshake cycles on {}: each opens a new TCP connection, makes a full \
             TLS handshake (no resumption), upgrades, echoes one {} B message, closes \
             (close frames both ways, then the server's TCP close) and starts again. \
             Latency is the whole cycle.",
            plural(args.connections as u64, "slot"),
            args.size
        )
    } else {
        format!(
            "Closed loop over {}, {} in flight each, {} B {} messages. Latency is the \
             echo round trip.",
            plural(args.connections as u64, "wss:// connection"),
            args.in_flight,
            args.size,
            if args.text { "text" } else { "binary" }
        )
    };
    let _ = writeln!(
        o,
        "{workload} `{RINGECHO_WSS}` is ringecho --threads 1 serving TLS itself \
         (--tls-cert/--tls-key); `{NGINX_FRONT}` is nginx (one worker process, TLS 1.3, \
         the WebSocket location block of docs/deployment.md) proxying to ringecho \
         --threads 1 over plain ws://. Both use the same certificate; every server \
         process (nginx's master and worker, each ringecho) is pinned to {}, the \
         client to {}. The client trusts any certificate but checks the handshake \
         signatures (--insecure) and offers {} key exchange. Server CPU is summed \
         over the row's processes, in percent of one core over the measured window; \
         server CPU µs per {} is that time divided by the {} completed. Values are \
         medians over {}; the order rotates each round.\n",
        cpu_label(&args.server_cpus),
        cpu_label(&args.client_cpus),
        match tls.kx {
            crate::tls::Kx::Default => "X25519-first (rustls's default)",
            crate::tls::Kx::P256 => "secp256r1-only",
        },
        if args.handshakes { "handshake" } else { "echo" },
        if args.handshakes { "cycles" } else { "echoes" },
        plural(args.rounds as u64, "round")
    );
    let (rate, lat, per, errs) = if args.handshakes {
        (
            "handshakes/s",
            "cycle ",
            "server CPU µs/handshake",
            "failures",
        )
    } else {
        ("msgs/s", "", "server CPU µs/echo", "errors")
    };
    let _ = writeln!(
        o,
        "| server | {rate} | vs nginx | {lat}p50 µs | {lat}p99 µs | client CPU % | server CPU % \
         | {per} | TLS | {errs} | {rate} per round |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
    let base = rows
        .iter()
        .find(|r| r.server == NGINX_FRONT)
        .map(|r| r.rate)
        .filter(|v| *v > 0.0);
    let num =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in rows {
        let vs = base.map_or("-".to_string(), |b| format!("{:.2}×", r.rate / b));
        let per_round: Vec<String> = r.rounds.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            o,
            "| {} | {:.0} | {vs} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.server,
            r.rate,
            r.p50_us,
            r.p99_us,
            num(r.client_cpu, 0),
            num(r.server_cpu, 0),
            num(r.server_us_per_op, 2),
            r.tls,
            r.errors,
            per_round.join(", ")
        );
    }
    if let Some(l) = ratio {
        let _ = writeln!(o, "\n{l}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CpuUse;

    fn report(rate: f64, server_pct: f64, handshakes: bool) -> Report {
        let json = serde_json::json!({
            "target": "wss://127.0.0.1:1/", "mode": "closed", "raw": false,
            "opcode": "binary", "connections": 4, "connections_open": 4, "size": 20,
            "in_flight": 1, "rate_target": null, "threads": 1, "processes": 1,
            "warmup_s": 0.0, "duration_s": 1.0, "messages": rate as u64,
            "msgs_per_sec": if handshakes { rate * 2.0 } else { rate },
            "mb_per_sec_each_way": 0.0, "mb_per_sec_both_ways": 0.0,
            "latency_us": {"count": 1, "min": 1, "mean": 1.0, "p50": 10, "p90": 20,
                           "p99": 30, "p999": 40, "max": 50},
            "connect_us": {"count": 1, "min": 1, "mean": 1.0, "p50": 1, "p90": 1,
                           "p99": 1, "p999": 1, "max": 1},
            "errors": {}, "error_total": 0, "cpu": null,
            "tls": "TLS1.3", "tls_cipher_suite": "TLS13_AES_128_GCM_SHA256",
            "tls_kx_group": "X25519",
        });
        let mut r: Report = serde_json::from_value(json).unwrap();
        r.cpu = Some(CpuUse {
            client_pct: 50.0,
            server_pct: Some(server_pct),
        });
        if handshakes {
            r.handshakes_per_sec = Some(rate);
            r.cycle_us = Some(crate::report::Percentiles {
                p50: 1000,
                p99: 3000,
                ..Default::default()
            });
        }
        r
    }

    #[test]
    fn rows_are_medians_and_cpu_is_per_operation() {
        // 100% of a core at 10,000 echoes/s is 100 µs per echo.
        let r = row(
            RINGECHO_WSS,
            &[
                report(10_000.0, 100.0, false),
                report(30_000.0, 90.0, false),
            ],
            false,
        );
        assert_eq!(r.rate, 20_000.0);
        assert_eq!(r.p50_us, 10.0);
        assert_eq!(r.server_us_per_op, Some((100.0 + 30.0) / 2.0));
        assert_eq!(r.tls, "TLS1.3 TLS13_AES_128_GCM_SHA256 X25519");
        // With --handshakes the rate and latency are the cycle's, not the
        // echo's (which the fake report puts at twice the rate).
        let h = row(NGINX_FRONT, &[report(500.0, 50.0, true)], true);
        assert_eq!(h.rate, 500.0);
        assert_eq!((h.p50_us, h.p99_us), (1000.0, 3000.0));
        assert_eq!(h.server_us_per_op, Some(1000.0));
    }

    #[test]
    fn ratio_of_ringecho_to_nginx() {
        let rows = [
            row(RINGECHO_WSS, &[report(2000.0, 100.0, true)], true),
            row(NGINX_FRONT, &[report(1000.0, 100.0, true)], true),
        ];
        let l = ratio_line(&rows, true).unwrap();
        assert_eq!(
            l,
            "ringecho wss / nginx TLS → ringecho ws: 2.00× handshakes/s, \
             0.50× server CPU per handshake"
        );
        assert!(ratio_line(&rows[..1], true).is_none());
    }
}
