//! CPU time of a process from /proc/PID/stat, to tell whether the client or
//! the server is the one running out of CPU.

use std::time::Instant;

/// utime + stime of `pid`, in seconds; `None` once the process is gone.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields we want are counted from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) sit at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// A starting point for measuring the CPU use of a set of processes (one,
/// or a server made of several, such as nginx's master and worker beside
/// the backend it proxies to) over an interval.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pids: Vec<u32>,
    cpu: f64,
    at: Instant,
}

/// utime + stime summed over `pids`; `None` if any of them is gone.
fn sum_cpu_secs(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| process_cpu_secs(p)).sum()
}

impl CpuSample {
    pub fn take(pid: u32) -> Option<CpuSample> {
        CpuSample::take_all(&[pid])
    }

    pub fn take_all(pids: &[u32]) -> Option<CpuSample> {
        if pids.is_empty() {
            return None;
        }
        Some(CpuSample {
            pids: pids.to_vec(),
            cpu: sum_cpu_secs(pids)?,
            at: Instant::now(),
        })
    }

    /// Percent of one CPU used since the sample (100 = one core busy).
    pub fn percent_since(&self) -> Option<f64> {
        let now = sum_cpu_secs(&self.pids)?;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * (now - self.cpu) / wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_processes_is_their_sum() {
        let me = std::process::id();
        let one = process_cpu_secs(me).unwrap();
        let two = sum_cpu_secs(&[me, me]).unwrap();
        // Both reads race the clock tick; twice one read within a tick.
        assert!((two - 2.0 * one).abs() < 0.05, "{one} {two}");
        assert!(CpuSample::take_all(&[]).is_none());
        assert!(sum_cpu_secs(&[me, u32::MAX]).is_none());
    }
}
