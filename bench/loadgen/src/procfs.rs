//! What the kernel says about the measured server and this process:
//! CPU time, RSS, involuntary context switches, per-core busy time.

use std::fs;

/// Clock ticks per second of /proc's tick counts (`USER_HZ`): 100 on every
/// Linux architecture's ABI, whatever the kernel's internal `HZ`.
const USER_HZ: f64 = 100.0;

/// CPU time of a process over all its threads, in seconds: the sum of
/// /proc/PID/task/*/schedstat run times (nanoseconds), or utime + stime from
/// /proc/PID/stat (10 ms ticks) where schedstat is missing.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        let ns: u64 = tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        if ns > 0 {
            return Some(ns as f64 * 1e-9);
        }
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Involuntary context switches over all threads (preemptions: noise).
pub(crate) fn involuntary_switches(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum(),
    )
}

/// Resident set size in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The soft limit on open descriptors of this process, from /proc/self/limits.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Per-core tick counts from /proc/stat: (busy, steal), busy being user,
/// nice, system, irq, softirq and steal.
#[derive(Clone)]
pub(crate) struct CoreTicks(Vec<(u64, u64)>);

impl CoreTicks {
    pub(crate) fn now() -> Self {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        Self(
            stat.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .map(|l| {
                    let f: Vec<u64> = l
                        .split_whitespace()
                        .skip(1)
                        .map(|x| x.parse().unwrap_or(0))
                        .collect();
                    let g = |i: usize| f.get(i).copied().unwrap_or(0);
                    (g(0) + g(1) + g(2) + g(5) + g(6) + g(7), g(7))
                })
                .collect(),
        )
    }

    /// Per-core busy and steal percentages between `self` and `later`.
    pub(crate) fn percent_until(&self, later: &Self, secs: f64) -> (Vec<f64>, Vec<f64>) {
        let pct = |a: u64, b: u64| {
            ((b.saturating_sub(a)) as f64 / USER_HZ / secs * 1000.0).round() / 10.0
        };
        self.0
            .iter()
            .zip(&later.0)
            .map(|(a, b)| (pct(a.0, b.0), pct(a.1, b.1)))
            .unzip()
    }
}
