//! Watching the server process from outside while load runs: its RSS and
//! descriptors from /proc, and, for ringecho, the `/stats` counters of its
//! metrics listener, so a
//! report can say what each connection costs and how the shards share them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// RSS summed over a server's processes; `None` if any is gone.
pub fn rss_kib_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// ringecho's `/stats` document (the server closes after one response).
pub fn ringecho_stats(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let at = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    serde_json::from_slice(all.get(at..)?).ok()
}

/// Open connections per shard (the stats request, on the metrics
/// listener, is not one of them).
pub fn ringecho_active(addr: SocketAddr) -> Option<Vec<u64>> {
    let stats = ringecho_stats(addr)?;
    Some(
        stats["shards"]
            .as_array()?
            .iter()
            .map(|s| s["active"].as_u64().unwrap_or(0))
            .collect(),
    )
}

/// What the server process looked like under the load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSide {
    /// Before the first connection.
    pub rss_kib_before: u64,
    /// At the sample with the most connections open (or the highest RSS,
    /// without `/stats`).
    pub rss_kib_loaded: u64,
    /// Connections open at that sample (from `/stats`, else the client's
    /// count of connections it opened).
    pub connections: u64,
    pub rss_per_connection_kib: f64,
    /// Open connections per shard at that sample (ringecho only).
    pub shards_active: Vec<u64>,
}

struct Peak {
    rss: u64,
    active: Option<Vec<u64>>,
}

pub struct Watch {
    before: u64,
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<Peak>>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    /// Start sampling `pids` (their RSS summed) twice a second; `stats` is
    /// ringecho's metrics listener, for `/stats`.
    pub fn start(pids: Vec<u32>, stats: Option<SocketAddr>) -> Watch {
        let before = rss_kib_sum(&pids).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(Peak {
            rss: before,
            active: None,
        }));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let rss = rss_kib_sum(&pids).unwrap_or(0);
                let active = stats.and_then(ringecho_active);
                if let Ok(mut best) = p.lock() {
                    let sum = |a: &Option<Vec<u64>>| a.as_ref().map(|v| v.iter().sum::<u64>());
                    let better = match (sum(&active), sum(&best.active)) {
                        (Some(now), Some(was)) => now > was || (now == was && rss > best.rss),
                        (Some(_), None) => true,
                        (None, _) => rss > best.rss,
                    };
                    if better {
                        *best = Peak { rss, active };
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Watch {
            before,
            stop,
            peak,
            thread,
        }
    }

    /// Stop sampling; `opened` is the client's own count of connections.
    pub fn finish(self, opened: u64) -> ServerSide {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let Ok(peak) = self.peak.lock() else {
            return ServerSide::default();
        };
        let shards = peak.active.clone().unwrap_or_default();
        let connections = if shards.is_empty() {
            opened
        } else {
            shards.iter().sum()
        };
        let grown = peak.rss.saturating_sub(self.before) as f64;
        ServerSide {
            rss_kib_before: self.before,
            rss_kib_loaded: peak.rss,
            connections,
            rss_per_connection_kib: if connections > 0 {
                (grown / connections as f64 * 100.0).round() / 100.0
            } else {
                0.0
            },
            shards_active: shards,
        }
    }
}
