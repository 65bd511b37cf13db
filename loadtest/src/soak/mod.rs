//! `loadtest soak`: ringecho under mixed load for a long run. Well-behaved
//! clients (an open-loop `loadtest` run whose every echo is verified) first
//! alone, as the baseline, then beside slowloris, never-reading, flooding
//! and resetting clients. Afterwards the server must be back where it
//! started: no connection held, descriptors at the baseline, RSS flat.

mod hostile;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::chart::Panel;
use crate::cli::{parse_cpu_list, SoakArgs};
use crate::process::{load_args, run_load, start_ringecho, Server};
use crate::report::Report;
use crate::server_watch::{open_fds, ringecho_active, ringecho_stats, rss_kib};
use hostile::{Hostiles, KindSummary, Plan};

/// One look at the server process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the server started.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// Open connections (the stats request itself not counted).
    pub active: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub baseline: Report,
    pub mixed: Report,
    pub hostile: Vec<KindSummary>,
    /// Seconds since the server started at which each phase began.
    pub mixed_from_s: f64,
    pub mixed_to_s: f64,
    pub fds_baseline: u64,
    pub fds_end: u64,
    pub rss_baseline_kib: u64,
    /// Highest RSS in the first and in the last quarter of the mixed phase.
    pub rss_early_mixed_kib: u64,
    pub rss_late_mixed_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub p99_ratio: f64,
    pub server_stats: serde_json::Value,
    pub samples: Vec<Sample>,
    pub checks: Vec<Check>,
}

fn active(addr: SocketAddr) -> Option<u64> {
    ringecho_active(addr).map(|v| v.iter().sum())
}

fn sample(pid: u32, addr: SocketAddr, t0: Instant) -> Sample {
    Sample {
        t: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        rss_kib: rss_kib(pid).unwrap_or(0),
        fds: open_fds(pid).unwrap_or(0),
        active: active(addr),
    }
}

/// Samples the server once a second on its own thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Sampler {
    fn start(pid: u32, addr: SocketAddr, t0: Instant, limit: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) && Instant::now() < limit {
                let one = sample(pid, addr, t0);
                if let Ok(mut v) = v.lock() {
                    v.push(one);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Sampler {
            stop,
            thread,
            samples,
        }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// The well-behaved clients' load for one phase of `secs`.
fn well_behaved(a: &SoakArgs, server: &Server, secs: Duration, cpus: &[usize]) -> Vec<String> {
    load_args(
        server,
        cpus,
        &[
            ("--connections", a.connections.to_string()),
            ("--size", a.size.to_string()),
            ("--rate", a.rate.to_string()),
            ("--duration", secs.as_secs_f64().to_string()),
            ("--warmup", "2".into()),
        ],
    )
}

pub fn run(a: SoakArgs) -> Result<bool, String> {
    let server_cpus = parse_cpu_list(&a.server_cpus)?;
    let client_cpus = parse_cpu_list(&a.client_cpus)?;
    let mut cmd = Command::new(&a.ringecho);
    cmd.args(["--listen", "127.0.0.1:0", "--threads"])
        .arg(server_cpus.len().to_string())
        .args(&a.server_args);
    let server = start_ringecho(cmd, &server_cpus)?;
    let stats_at = server
        .metrics
        .ok_or("ringecho reported no metrics listener")?;
    let t0 = Instant::now();
    let slack = Duration::from_secs(120);
    let limit = t0 + a.baseline + a.duration + a.ramp + a.recovery + slack;
    let sampler = Sampler::start(server.pid(), stats_at, t0, limit);

    eprintln!(
        "soak: baseline: {} well-behaved connections at {} msgs/s for {:?}",
        a.connections, a.rate, a.baseline
    );
    let baseline = run_load(
        "baseline load",
        &well_behaved(&a, &server, a.baseline, &client_cpus),
        &client_cpus,
        a.baseline + slack,
    )?;
    let before = sample(server.pid(), stats_at, t0);
    eprintln!(
        "soak: baseline p99 {} µs, {} errors; server RSS {} KiB, {} descriptors",
        baseline.latency_us.p99, baseline.error_total, before.rss_kib, before.fds
    );

    let mixed_from = t0.elapsed().as_secs_f64();
    let plan = Plan {
        addr: server.addr,
        cpus: client_cpus.clone(),
        slowloris: a.slowloris,
        never_read: a.never_read,
        flooders: a.flooders,
        flood_rate: a.flood_rate,
        reset_rate: a.reset_rate,
        deadline: Instant::now() + a.ramp + a.duration + slack,
    };
    eprintln!(
        "soak: mixed: adding {} slowloris, {} never-reading, {} flooding clients and {} resets/s for {:?}",
        a.slowloris, a.never_read, a.flooders, a.reset_rate, a.duration
    );
    let hostiles = Hostiles::start(&plan)?;
    std::thread::sleep(a.ramp);
    let mixed = run_load(
        "mixed load",
        &well_behaved(&a, &server, a.duration, &client_cpus),
        &client_cpus,
        a.duration + slack,
    );
    let hostile = hostiles.stop();
    let mixed = mixed?;
    let mixed_to = t0.elapsed().as_secs_f64();
    eprintln!(
        "soak: mixed p99 {} µs, {} errors; waiting up to {:?} for the server to let go",
        mixed.latency_us.p99, mixed.error_total, a.recovery
    );

    // Every hostile connection is gone from the client side; the server
    // must notice each (resets at once, the rest at their timeouts).
    let deadline = Instant::now() + a.recovery;
    let mut end = sample(server.pid(), stats_at, t0);
    while (end.active != Some(0) || end.fds > before.fds) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        end = sample(server.pid(), stats_at, t0);
    }
    let server_stats = ringecho_stats(stats_at).unwrap_or_default();
    let mut samples = sampler.finish();
    samples.push(end);
    drop(server);

    let report = summarise(
        &a,
        baseline,
        mixed,
        hostile,
        (mixed_from, mixed_to),
        before,
        end,
        server_stats,
        samples,
    );
    let md = markdown(&a, &report);
    print!("{md}");
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let write = |ext: &str, body: &str| {
        let p = a.out.join(format!("{}.{ext}", a.name));
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("md", &md)?;
    write(
        "json",
        &serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
    )?;
    let svg = a.out.join(format!("{}.svg", a.name));
    let series = |f: fn(&Sample) -> f64| report.samples.iter().map(|s| (s.t, f(s))).collect();
    let panels = [
        Panel {
            title: "server RSS",
            unit: "MiB",
            points: series(|s| s.rss_kib as f64 / 1024.0),
        },
        Panel {
            title: "server open descriptors",
            unit: "descriptors",
            points: series(|s| s.fds as f64),
        },
    ];
    let mixed = (report.mixed_from_s, report.mixed_to_s);
    crate::chart::timeline(&svg, &panels, mixed, "hostile clients in the shaded span")?;
    eprintln!("soak: wrote {}/{}.{{md,json,svg}}", a.out.display(), a.name);
    Ok(report.checks.iter().all(|c| c.passed))
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    a: &SoakArgs,
    baseline: Report,
    mixed: Report,
    hostile: Vec<KindSummary>,
    (mixed_from, mixed_to): (f64, f64),
    before: Sample,
    end: Sample,
    server_stats: serde_json::Value,
    samples: Vec<Sample>,
) -> SoakReport {
    let span = mixed_to - mixed_from;
    let rss_in = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|s| s.t >= mixed_from + from * span && s.t <= mixed_from + to * span)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
    };
    let early = rss_in(0.0, 0.25);
    let late = rss_in(0.75, 1.0);
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let p99_ratio = if baseline.latency_us.p99 > 0 {
        mixed.latency_us.p99 as f64 / baseline.latency_us.p99 as f64
    } else {
        f64::INFINITY
    };
    // Flat: the last quarter of the run needs no more memory than the first
    // (10% and 2 MiB of allocator slack allowed).
    let flat = late as f64 <= early as f64 * 1.10 + 2048.0;
    let checks = vec![
        Check {
            what: format!(
                "well-behaved clients: no lost, corrupted or failed echo ({} + {} verified)",
                baseline.messages, mixed.messages
            ),
            passed: baseline.error_total == 0
                && mixed.error_total == 0
                && baseline.messages > 0
                && mixed.messages > 0,
        },
        Check {
            what: format!(
                "RSS flat: last quarter {late} KiB ≤ first quarter {early} KiB + 10% + 2 MiB"
            ),
            passed: flat && early > 0,
        },
        Check {
            what: format!(
                "descriptors back to the baseline: {} after, {} before",
                end.fds, before.fds
            ),
            passed: end.fds <= before.fds,
        },
        Check {
            what: format!(
                "every hostile connection released: {} open after",
                end.active.map_or("?".into(), |n| n.to_string())
            ),
            passed: end.active == Some(0),
        },
        Check {
            what: format!(
                "p99 under hostile load within {:.1}× of the baseline: {} µs / {} µs = {p99_ratio:.2}×",
                a.max_p99_ratio, mixed.latency_us.p99, baseline.latency_us.p99
            ),
            passed: p99_ratio <= a.max_p99_ratio,
        },
    ];
    SoakReport {
        baseline,
        mixed,
        hostile,
        mixed_from_s: mixed_from,
        mixed_to_s: mixed_to,
        fds_baseline: before.fds,
        fds_end: end.fds,
        rss_baseline_kib: before.rss_kib,
        rss_early_mixed_kib: early,
        rss_late_mixed_kib: late,
        rss_peak_kib: peak,
        rss_end_kib: end.rss_kib,
        p99_ratio,
        server_stats,
        samples,
        checks,
    }
}

fn markdown(a: &SoakArgs, r: &SoakReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}\n", a.name);
    let _ = writeln!(
        o,
        "`loadtest soak --baseline {} --duration {} --connections {} --size {} --rate {} \
         --slowloris {} --never-read {} --flooders {} --flood-rate {} --reset-rate {} \
         --server-cpus {} --client-cpus {}{}`\n",
        a.baseline.as_secs_f64(),
        a.duration.as_secs_f64(),
        a.connections,
        a.size,
        a.rate,
        a.slowloris,
        a.never_read,
        a.flooders,
        a.flood_rate,
        a.reset_rate,
        a.server_cpus,
        a.client_cpus,
        a.server_args
            .iter()
            .map(|s| format!(" --server-arg {s}"))
            .collect::<String>()
    );
    let _ = writeln!(o, "| check | result |\n|---|---|");
    for c in &r.checks {
        let _ = writeln!(
            o,
            "| {} | {} |",
            c.what,
            if c.passed { "pass" } else { "**FAIL**" }
        );
    }
    let _ = writeln!(
        o,
        "\n**Well-behaved clients** ({} connections, {} B binary messages, open loop at \
         {} msgs/s, latency from the scheduled send time):\n",
        a.connections, a.size, a.rate
    );
    let _ = writeln!(
        o,
        "| phase | seconds | echoes verified | msgs/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors | server CPU % |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, rep) in [("alone", &r.baseline), ("with hostile clients", &r.mixed)] {
        let l = &rep.latency_us;
        let cpu = rep
            .cpu
            .as_ref()
            .and_then(|c| c.server_pct)
            .map_or("-".into(), |v| format!("{v:.0}"));
        let _ = writeln!(
            o,
            "| {name} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {cpu} |",
            rep.duration_s,
            rep.messages,
            rep.msgs_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            rep.error_total
        );
    }
    let _ = writeln!(
        o,
        "\n**Hostile clients** during the mixed phase:\n\n| kind | clients at once | connections opened | ended by the server | failed to connect |\n|---|---:|---:|---:|---:|"
    );
    for h in &r.hostile {
        let clients = if h.kind == "reset" {
            format!("{}/s", a.reset_rate)
        } else {
            h.clients.to_string()
        };
        let _ = writeln!(
            o,
            "| {} | {clients} | {} | {} | {} |",
            h.kind, h.opened, h.cut_by_server, h.failed
        );
    }
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let _ = writeln!(
        o,
        "\n**Server process**: RSS {} MiB after the baseline, {} MiB (first quarter of the mixed \
         phase), {} MiB (last quarter), {} MiB peak, {} MiB at the end; open descriptors {} \
         before the mixed phase, {} at the end.\n",
        mib(r.rss_baseline_kib),
        mib(r.rss_early_mixed_kib),
        mib(r.rss_late_mixed_kib),
        mib(r.rss_peak_kib),
        mib(r.rss_end_kib),
        r.fds_baseline,
        r.fds_end
    );
    if let Some(t) = r.server_stats.get("total") {
        let get = |k: &str| t.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let _ = writeln!(
            o,
            "Server counters at the end: {} accepted, {} upgraded, {} timed out, {} idle-closed, \
             {} protocol errors, {} handshake errors, {} refused at the connection limit.",
            get("accepted"),
            get("upgraded"),
            get("timed_out"),
            get("idle_closed"),
            get("protocol_errors"),
            get("handshake_errors"),
            get("rejected")
        );
    }
    o
}
