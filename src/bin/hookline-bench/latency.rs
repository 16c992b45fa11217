//! The latency phase: a steady offered load, each event's publish-to-delivery time, and the
//! trace of it second by second.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value};

use crate::host::HostSample;
use crate::receiver::{Recv, drained};

/// A steady offered load: `rate` events per second for `seconds`, traced to `trace` if given.
pub struct Steady<'a> {
    pub rate: u64,
    pub seconds: u64,
    pub trace: Option<&'a Path>,
}

/// Publish at a steady rate (`make` makes the `n`th request) and wait until every accepted
/// event arrived; returns the measurements (publish and delivery latency percentiles, how busy
/// the host was) and how many deliveries there were.
pub async fn phase(
    recv: &Recv,
    make: impl Fn(u64) -> reqwest::RequestBuilder,
    steady: Steady<'_>,
) -> anyhow::Result<(Map<String, Value>, u64)> {
    let Steady { rate, seconds, trace } = steady;
    let mut result = Map::new();
    recv.latencies.lock().expect("lock").clear();
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // The host, once a second from the phase's start until its last event is delivered.
    let host = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn({
        let host = host.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                host.lock().expect("lock").extend(HostSample::now());
            }
        }
    });
    let mut sends = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticker.tick().await;
        let req = make(n);
        sends.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = req.send().await.map(|r| r.status().is_success()).unwrap_or(false);
            (ok, sent.elapsed().as_micros() as u64)
        }));
    }
    let (mut ok, mut answers) = (0, Vec::with_capacity(sends.len()));
    for s in sends {
        let (accepted, took) = s.await.unwrap_or((false, 0));
        ok += u64::from(accepted);
        answers.push(took);
    }
    // How long the publishes themselves took (the store's commit is in them).
    answers.sort_unstable();
    result.insert("publish_p50_ms".into(), percentile(&answers, 0.50).into());
    result.insert("publish_p99_ms".into(), percentile(&answers, 0.99).into());
    drained(recv, ok, Duration::from_secs(120)).await?;
    sampler.abort();
    let host = std::mem::take(&mut *host.lock().expect("lock"));
    if let (Some(first), Some(last)) = (host.first(), host.last()) {
        let phase = last.since(first);
        result.insert("host_busy_pct".into(), phase.busy_pct.round().into());
        result.insert("host_steal_pct".into(), ((phase.steal_pct * 10.0).round() / 10.0).into());
    }
    let events = recv.latencies.lock().expect("lock").clone();
    if let Some(path) = trace {
        std::fs::write(path, latency_trace(&events, &host))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut lat: Vec<u64> = events.iter().map(|&(_, took)| took).collect();
    lat.sort_unstable();
    result.insert("p50_ms".into(), percentile(&lat, 0.50).into());
    result.insert("p95_ms".into(), percentile(&lat, 0.95).into());
    result.insert("p99_ms".into(), percentile(&lat, 0.99).into());
    result.insert("latency_samples".into(), lat.len().into());
    result.insert("offered_eps".into(), rate.into());
    result.insert("latency_seconds".into(), seconds.into());
    Ok((result, ok))
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The latency phase second by second (`--latency-trace`): after a line with the phase's start
/// (to match against a server's logs), per second of publishing: the events published in it,
/// how many took over 10 ms, their p50, p99 and largest latency (ms), and when the slowest was
/// published (ms into the phase); then what the host did in that second (see [`HostSample`]),
/// `-` where no sample brackets it.
pub fn latency_trace(events: &[(u64, u64)], host: &[HostSample]) -> String {
    let Some(first) = events.iter().map(|&(sent, _)| sent).min() else {
        return String::new();
    };
    let mut seconds: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    for &(sent, took) in events {
        seconds.entry((sent - first) / 1_000_000).or_default().push((took, sent - first));
    }
    // The sample nearest each whole second of the phase.
    let at = |second: u64| {
        let t = first + second * 1_000_000;
        host.iter().filter(|h| h.at_us.abs_diff(t) < 500_000).min_by_key(|h| h.at_us.abs_diff(t))
    };
    let start = first as f64 / 1e6;
    let mut out = format!(
        "# started at {start:.3} s after the Unix epoch\n\
         second events over_10ms p50_ms p99_ms max_ms max_sent_at_ms {}\n",
        HostSample::COLUMNS
    );
    for (second, mut second_events) in seconds {
        second_events.sort_unstable();
        let (max, max_at) =
            second_events.last().map(|&(took, at)| (took as f64 / 1000.0, at / 1000)).unwrap_or_default();
        let took: Vec<u64> = second_events.iter().map(|&(took, _)| took).collect();
        let slow = took.iter().filter(|&&t| t > 10_000).count();
        let (p50, p99) = (percentile(&took, 0.50), percentile(&took, 0.99));
        let host = match (at(second), at(second + 1)) {
            (Some(a), Some(b)) => b.since(a).to_string(),
            _ => "- - - - -".to_string(),
        };
        out += &format!("{second} {} {slow} {p50:.2} {p99:.2} {max:.2} {max_at} {host}\n", took.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::latency_trace;
    use crate::host::HostSample;

    #[test]
    fn the_latency_trace_summarises_each_second_of_publishing() {
        // (published at, took) in µs: two events in the phase's first second, one in its third.
        let start = 1_000_000_000;
        let events = [(start + 400_000, 12_500), (start, 2_000), (start + 2_100_000, 3_000)];
        // The host sampled at the start of the first and second seconds (not the third's end).
        let sample = |at_us, busy, steal, writes, write_ms| HostSample {
            at_us,
            busy,
            idle: 100,
            steal,
            writes,
            write_ms,
            ..Default::default()
        };
        let host =
            [sample(start + 30_000, 100, 10, 1_000, 5_000), sample(start + 990_000, 250, 20, 2_600, 8_000)];
        let trace = latency_trace(&events, &host);
        let lines: Vec<&str> = trace.lines().collect();
        assert_eq!(
            lines,
            [
                "# started at 1000.000 s after the Unix epoch",
                "second events over_10ms p50_ms p99_ms max_ms max_sent_at_ms \
                 cpu_busy_pct cpu_steal_pct cpu_iowait_pct disk_writes_per_s disk_writes_in_flight",
                // 150 busy and 10 stolen ticks of 160; 1,600 writes and 3 s of writing in 0.96 s.
                "0 2 1 12.50 12.50 12.50 400 94 6 0 1667 3.1",
                "2 1 0 3.00 3.00 3.00 2100 - - - - -",
            ]
        );
        assert_eq!(latency_trace(&[], &host), "", "no events, no trace");
    }

    #[test]
    fn host_samples_count_whole_disks_once() {
        let stat = "cpu  10 1 2 30 4 5 6 7 0 0\ncpu0 5 0 1 15 2 2 3 3 0 0\n";
        let diskstats = "\
             254       0 vda 100 0 800 50 40 3 900 120 0 200 170 0 0 0 0\n\
             254       1 vda1 90 0 700 45 40 3 900 120 0 190 165 0 0 0 0\n\
               7       0 loop0 5 0 10 1 9 0 9 9 0 1 1 0 0 0 0\n";
        let disks = ["vda".to_string(), "loop0".to_string()];
        let sample = HostSample::parse(1, stat, diskstats, &disks).expect("parsed");
        assert_eq!(
            sample,
            HostSample {
                at_us: 1,
                busy: 10 + 1 + 2 + 5 + 6,
                idle: 30,
                iowait: 4,
                steal: 7,
                writes: 40,
                write_ms: 120
            }
        );
        assert_eq!(HostSample::parse(1, "", diskstats, &disks), None, "no cpu line, no sample");
    }
}
