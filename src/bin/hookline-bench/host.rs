//! What the host and the measured processes did: `/proc` counters of CPU, disk and memory, and
//! Hookline's own metrics.

use crate::load::now_us;

/// The host's counters at one moment (Linux `/proc`), so that a slow second can be told apart:
/// the server's own work, or the machine (a hypervisor taking CPU time away, a disk queue).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostSample {
    /// When, in µs after the Unix epoch.
    pub at_us: u64,
    /// CPU time in ticks: running (user, nice, system, irq, softirq), idle, waiting for I/O,
    /// and stolen (a hypervisor ran someone else while this machine had work).
    pub busy: u64,
    pub idle: u64,
    pub iowait: u64,
    pub steal: u64,
    /// Whole disks' writes completed, and milliseconds spent on writes (summed over requests,
    /// so per second of wall time it is the average number of writes in flight, times 1,000).
    pub writes: u64,
    pub write_ms: u64,
}

/// What the host did between two samples.
pub struct HostDelta {
    pub busy_pct: f64,
    pub steal_pct: f64,
    pub iowait_pct: f64,
    pub writes_per_s: f64,
    pub writes_in_flight: f64,
}

impl std::fmt::Display for HostDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} {:.0} {:.0} {:.0} {:.1}",
            self.busy_pct, self.steal_pct, self.iowait_pct, self.writes_per_s, self.writes_in_flight
        )
    }
}

impl HostSample {
    pub const COLUMNS: &str =
        "cpu_busy_pct cpu_steal_pct cpu_iowait_pct disk_writes_per_s disk_writes_in_flight";

    /// Now, or `None` where `/proc` does not say.
    pub fn now() -> Option<HostSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let disks: Vec<String> = std::fs::read_dir("/sys/block")
            .map(|dir| dir.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        let diskstats = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
        HostSample::parse(now_us(), &stat, &diskstats, &disks)
    }

    /// From `/proc/stat`'s `cpu` line and the lines of `/proc/diskstats` naming one of `disks`
    /// (whole disks, so that a partition's writes are not counted twice; loop and RAM disks are
    /// left out).
    pub fn parse(at_us: u64, stat: &str, diskstats: &str, disks: &[String]) -> Option<HostSample> {
        let cpu: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
        let mut sample = HostSample {
            at_us,
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3),
            iowait: field(4),
            steal: field(7),
            ..Default::default()
        };
        for line in diskstats.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(name) = f.get(2) else { continue };
            if name.starts_with("loop") || name.starts_with("ram") || !disks.iter().any(|d| d == name) {
                continue;
            }
            let number = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            sample.writes += number(7);
            sample.write_ms += number(10);
        }
        Some(sample)
    }

    pub fn since(&self, before: &HostSample) -> HostDelta {
        let ticks = |s: &HostSample| s.busy + s.idle + s.iowait + s.steal;
        let total = ticks(self).saturating_sub(ticks(before)).max(1) as f64;
        let pct = |f: fn(&HostSample) -> u64| 100.0 * f(self).saturating_sub(f(before)) as f64 / total;
        let seconds = (self.at_us.saturating_sub(before.at_us) as f64 / 1e6).max(1e-3);
        HostDelta {
            busy_pct: pct(|s| s.busy),
            steal_pct: pct(|s| s.steal),
            iowait_pct: pct(|s| s.iowait),
            writes_per_s: self.writes.saturating_sub(before.writes) as f64 / seconds,
            writes_in_flight: self.write_ms.saturating_sub(before.write_ms) as f64 / 1000.0 / seconds,
        }
    }
}

pub fn proc_stats(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm_kb / 1024.0, ticks / 100.0)
}

/// CPU seconds used so far by this process and, with `server`, every PostgreSQL process on the
/// host (the store's work happens there).
pub fn store_cpu_seconds(server: bool) -> f64 {
    let postgres = || -> Option<f64> {
        let mut sum = 0.0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres") {
                sum += proc_stats(pid).1;
            }
        }
        Some(sum)
    };
    cpu_seconds() + if server { postgres().unwrap_or(0.0) } else { 0.0 }
}

pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else { return 0.0 };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.split_whitespace().next().is_some_and(|n| n == name || n.starts_with(&format!("{name}{{")))
        })
        .filter_map(|l| l.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// CPU seconds this process has used so far (all threads, user + system).
pub fn cpu_seconds() -> f64 {
    proc_stats(std::process::id()).1
}
