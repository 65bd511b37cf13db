//! Child processes the harnesses run: servers under test (pinned, stopped
//! when dropped) and `loadtest` load runs whose JSON report is read back.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::report::Report;

/// A server under test; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// ringecho's metrics listener, when started by `start_ringecho`.
    pub metrics: Option<SocketAddr>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid of a child we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn from a thread pinned to `cpus`: the child inherits the mask, and
/// every thread it starts inherits it in turn.
pub fn spawn_pinned(mut cmd: Command, cpus: &[usize]) -> Result<Child, String> {
    let cpus = cpus.to_vec();
    std::thread::spawn(move || {
        crate::affinity::pin_current_thread(&cpus).map_err(|e| format!("pin to {cpus:?}: {e}"))?;
        cmd.spawn().map_err(|e| format!("spawn: {e}"))
    })
    .join()
    .map_err(|_| "spawning thread panicked".to_string())?
}

/// The address from a `... listening on [ws://|wss://]ADDR[/...]` line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let rest = ["ws://", "wss://", "http://", "https://"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
        .unwrap_or(rest);
    let end = rest.find(['/', ' ']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Start a server pinned to `cpus` and wait for the line that says where it
/// listens.
pub fn start_server(name: &str, cmd: Command, cpus: &[usize]) -> Result<Server, String> {
    start(name, cmd, cpus, false)
}

/// Start ringecho (`cmd`, which must not set its own `--metrics-listen`)
/// with a metrics listener on an ephemeral loopback port, pinned to `cpus`;
/// wait until it reports both addresses.
pub fn start_ringecho(mut cmd: Command, cpus: &[usize]) -> Result<Server, String> {
    cmd.args(["--metrics-listen", "127.0.0.1:0"]);
    start("ringecho", cmd, cpus, true)
}

/// The address a "metrics on http://ADDR/..." log line names.
fn metrics_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("metrics on http://")? + "metrics on http://".len()..];
    rest[..rest.find('/').unwrap_or(rest.len())].parse().ok()
}

fn start(name: &str, mut cmd: Command, cpus: &[usize], metrics: bool) -> Result<Server, String> {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = spawn_pinned(cmd, cpus)?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    // Keep reading after the lines we want so a chatty server never blocks
    // on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = listening_addr(&line) {
                let _ = tx.send((false, a));
            } else if let Some(a) = metrics_addr(&line) {
                let _ = tx.send((true, a));
            }
        }
    });
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics: None,
    };
    let mut listening = false;
    while !listening || (metrics && server.metrics.is_none()) {
        let (is_metrics, a) = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("{name} did not report its addresses within 10 s"))?;
        if is_metrics {
            server.metrics = Some(a);
        } else {
            server.addr = a;
            listening = true;
        }
    }
    Ok(server)
}

/// `loadtest` arguments for a run against `server` with one client thread
/// per CPU of `cpus`, each pinned, sampling the server's CPU; `workload`
/// holds the flags that say what to send.
pub fn load_args(server: &Server, cpus: &[usize], workload: &[(&str, String)]) -> Vec<String> {
    load_args_to(
        &format!("ws://{}/", server.addr),
        &[server.pid()],
        cpus,
        workload,
    )
}

/// [`load_args`] for any URL, sampling the CPU of every process in
/// `server_pids` (a server made of several, summed).
pub fn load_args_to(
    url: &str,
    server_pids: &[u32],
    cpus: &[usize],
    workload: &[(&str, String)],
) -> Vec<String> {
    let pin: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    let pids: Vec<String> = server_pids.iter().map(|p| p.to_string()).collect();
    let mut args = vec![
        url.to_string(),
        "--threads".into(),
        cpus.len().to_string(),
        "--pin".into(),
        pin.join(","),
        "--server-pid".into(),
        pids.join(","),
    ];
    for (flag, value) in workload {
        args.push((*flag).into());
        args.push(value.clone());
    }
    args
}

/// Run `loadtest ARGS --json` pinned to `cpus`; its report, or why there is
/// none. Killed if it runs past `limit`.
pub fn run_load(
    what: &str,
    args: &[String],
    cpus: &[usize],
    limit: Duration,
) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = spawn_pinned(cmd, cpus)?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish in time"));
            }
        }
    }
    let out = reader.join().unwrap_or_default();
    serde_json::from_str(out.trim()).map_err(|e| format!("{what}: bad report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_addresses() {
        assert_eq!(
            listening_addr("ringecho listening on ws://127.0.0.1:4000/ with 1 shard(s)"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            listening_addr("listening on 127.0.0.1:5"),
            Some("127.0.0.1:5".parse().unwrap())
        );
        assert_eq!(
            listening_addr("ringecho listening on wss://127.0.0.1:4001/ with 1 shard(s)"),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert_eq!(listening_addr("hello"), None);
    }
}
