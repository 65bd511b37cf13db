//! The load generator: plans the run over threads (and, past the descriptor
//! limit, over child processes), watches progress and CPU, builds the report.

pub mod conn;
mod cycles;
pub mod payload;
pub mod socket;
mod split;
mod worker;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::cli::LoadArgs;
use crate::client::payload::MessageSet;
use crate::cpu_time::CpuSample;
use crate::report::{CpuUse, Report};
use crate::stats::Stats;

/// Descriptors kept back from the limit for stdio, epoll, timers and the
/// like, per process.
const FD_RESERVE: u64 = 64;

pub fn run(args: LoadArgs) -> Result<Report, String> {
    let limit = socket::raise_fd_limit().map_err(|e| format!("descriptor limit: {e}"))?;
    let per_process = limit
        .saturating_sub(FD_RESERVE + 2 * args.threads as u64)
        .max(1) as usize;
    let source_ips = match args.source_ips {
        Some(n) => Some(n),
        None if args.addr.ip().is_loopback() && args.addr.is_ipv4() => {
            let n = socket::default_source_ips(args.connections + args.conn_offset);
            // One address needs no explicit bind; the kernel's choice is as good.
            (n > 1).then_some(n)
        }
        None => None,
    };
    // The top-level process watches the server; children of a split run
    // leave it to their parent.
    let watch = (!args.server_pids.is_empty() && !args.child)
        .then(|| crate::server_watch::Watch::start(args.server_pids.clone(), args.server_stats));
    let mut report = if args.connections > per_process && !args.child {
        split::run(&args, per_process, source_ips.unwrap_or(1))
    } else {
        run_in_process(&args, source_ips)
    }?;
    // A handshake-rate run opens connections all along, at most one per
    // slot at a time.
    let open = if args.handshakes {
        args.connections as u64
    } else {
        report.connections_open
    };
    report.server = watch.map(|w| w.finish(open));
    Ok(report)
}

fn run_in_process(args: &LoadArgs, source_ips: Option<u32>) -> Result<Report, String> {
    let threads = args.threads.min(args.connections).max(1);
    // Made and compressed once, before any thread starts: the messages are
    // the same for all, and the client's cores are for the load.
    let set = if args.deflate || args.compressible {
        Some(Arc::new(MessageSet::build(
            args.size,
            args.binary,
            args.deflate,
        )?))
    } else {
        None
    };
    // One configuration for every connection: its certificate store and
    // provider are read and built once.
    let tls = match &args.tls {
        Some(opts) => Some(Arc::new(crate::tls::TlsClient::new(opts)?)),
        None => None,
    };
    let args = Arc::new(args.clone());
    let barrier = Arc::new(Barrier::new(threads + 1));
    let progress = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns: Vec<usize> = (0..args.connections)
            .filter(|i| i % threads == t)
            .map(|i| i + args.conn_offset)
            .collect();
        let share = conns.len() as f64 / args.connections as f64;
        let plan = worker::Plan {
            args: Arc::clone(&args),
            source_ips,
            pin: args.pin.as_ref().map(|list| list[t % list.len()]),
            rate: args.rate.map(|r| r * share),
            connect_rate: args.connect_rate.map(|r| r / threads as f64),
            barrier: Arc::clone(&barrier),
            progress: Arc::clone(&progress),
            set: set.clone(),
            tls: tls.clone(),
            conns,
        };
        let body = if args.handshakes {
            cycles::run
        } else {
            worker::run
        };
        let h = std::thread::Builder::new()
            .name(format!("client-{t}"))
            .spawn(move || body(plan))
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        handles.push(h);
    }

    let show = std::io::stderr().is_terminal() && std::io::stdout().is_terminal() && !args.child;
    let bar = if show {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message(format!("connecting {} connections", args.connections));
    bar.enable_steady_tick(Duration::from_millis(200));
    barrier.wait();
    let t0 = Instant::now();
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let me = std::process::id();
    let mut samples: Option<(Option<CpuSample>, Option<CpuSample>)> = None;
    let server_pids = args.server_pids.clone();
    let mut cpu = None;
    let mut last = (t0, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if samples.is_none() && now >= window.0 {
            samples = Some((CpuSample::take(me), CpuSample::take_all(&server_pids)));
        }
        if cpu.is_none() && now >= window.1 {
            if let Some((client, server)) = &samples {
                cpu = client
                    .as_ref()
                    .and_then(|c| c.percent_since())
                    .map(|client_pct| CpuUse {
                        client_pct: client_pct.round(),
                        // A tenth of a percent: CPU per handshake is
                        // computed from it, and a few percent is common.
                        server_pct: server
                            .as_ref()
                            .and_then(|s| s.percent_since())
                            .map(|v| (v * 10.0).round() / 10.0),
                    });
            }
        }
        if show && now.duration_since(last.0) >= Duration::from_millis(500) {
            let n = progress.load(Ordering::Relaxed);
            let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            let phase = if now < window.0 {
                "warm-up"
            } else if now < window.1 {
                "measuring"
            } else {
                "draining"
            };
            let left = window.1.saturating_duration_since(now).as_secs();
            bar.set_message(format!(
                "{phase}: {rate:.0} msgs/s, {n} echoes, {left} s left"
            ));
            last = (now, n);
        }
    }
    bar.finish_and_clear();
    let mut total = Stats::new();
    for h in handles {
        match h.join() {
            Ok(s) => total.merge(&s),
            Err(_) => return Err("a client thread panicked".into()),
        }
    }
    Ok(Report::build(&args, &total, threads, 1, cpu))
}
