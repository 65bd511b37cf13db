//! Runs too big for one process's descriptor limit: the same command re-run
//! as child processes, each with a share of the connections, their JSON
//! reports (histograms included) merged here.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::LoadArgs;
use crate::report::{CpuUse, Report};
use crate::tls::Trust;

use crate::stats::Stats;

pub fn run(args: &LoadArgs, per_process: usize, source_ips: u32) -> Result<Report, String> {
    let procs = args.connections.div_ceil(per_process);
    let threads = args.threads.div_ceil(procs).max(1);
    eprintln!(
        "loadtest: {} connections exceed the {per_process} this process's descriptor limit allows; \
         splitting over {procs} child processes of {threads} thread(s) each \
         (their measured windows start independently, up to the connect-time skew apart)",
        args.connections
    );
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut children = Vec::new();
    let mut offset = 0;
    for p in 0..procs {
        let n = (args.connections - offset).min(args.connections.div_ceil(procs));
        let share = n as f64 / args.connections as f64;
        let mut cmd = Command::new(&exe);
        cmd.arg(&args.url)
            .args(["--connections", &n.to_string()])
            .args(["--size", &args.size.to_string()])
            .args(["--duration", &args.duration.as_secs_f64().to_string()])
            .args(["--warmup", &args.warmup.as_secs_f64().to_string()])
            .args(["--in-flight", &args.in_flight.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--source-ips", &source_ips.to_string()])
            .args(["--drain", &args.drain.as_secs_f64().to_string()])
            .args([
                "--connect-timeout",
                &args.connect_timeout.as_secs_f64().to_string(),
            ])
            .args(["--conn-offset", &(args.conn_offset + offset).to_string()])
            .args(["--json", "--child"])
            .arg(if args.binary { "--binary" } else { "--text" });
        if let Some(r) = args.rate {
            cmd.args(["--rate", &(r * share).to_string()]);
        }
        if let Some(r) = args.connect_rate {
            cmd.args(["--connect-rate", &(r / procs as f64).to_string()]);
        }
        if let Some(pin) = &args.pin {
            let list: Vec<String> = pin.iter().map(|c| c.to_string()).collect();
            cmd.args(["--pin", &list.join(",")]);
        }
        if !args.server_pids.is_empty() {
            let pids: Vec<String> = args.server_pids.iter().map(|p| p.to_string()).collect();
            cmd.args(["--server-pid", &pids.join(",")]);
        }
        if let Some(tls) = &args.tls {
            match &tls.trust {
                Trust::Ca(path) => {
                    cmd.arg("--ca").arg(path);
                }
                Trust::Insecure => {
                    cmd.arg("--insecure");
                }
            }
            cmd.args(["--tls-server-name", &tls.server_name])
                .args(["--tls-kx", tls.kx.flag()]);
        }
        if args.handshakes {
            cmd.arg("--handshakes");
        }
        if args.raw {
            cmd.arg("--raw");
        }
        if args.echo_on_open {
            cmd.arg("--echo-on-open");
        }
        if args.deflate {
            cmd.arg("--deflate");
        }
        if args.compressible {
            cmd.arg("--compressible");
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start child {p}: {e}"))?;
        children.push(child);
        offset += n;
    }

    let limit =
        args.connect_timeout + args.warmup + args.duration + args.drain + Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    let mut total = Stats::new();
    let mut cpu = CpuUse::default();
    let mut server_pcts = Vec::new();
    let mut failure = None;
    for (p, mut child) in children.into_iter().enumerate() {
        // Read stdout to the end first: a child blocked on a full pipe would
        // never exit.
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            let _ = so.read_to_string(&mut out);
        }
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        match serde_json::from_str::<Report>(out.trim())
            .map_err(|e| e.to_string())
            .and_then(|r| {
                let s = r.to_stats()?;
                Ok((r, s))
            }) {
            Ok((r, s)) => {
                total.merge(&s);
                if let Some(c) = r.cpu {
                    cpu.client_pct += c.client_pct;
                    server_pcts.extend(c.server_pct);
                }
            }
            Err(e) => failure = Some(format!("child {p} gave no usable report: {e}")),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !server_pcts.is_empty() {
        cpu.server_pct = Some(server_pcts.iter().sum::<f64>() / server_pcts.len() as f64);
    }
    let mut parent = args.clone();
    parent.child = false;
    Ok(Report::build(
        &parent,
        &total,
        threads * procs,
        procs,
        Some(cpu),
    ))
}
