//! CPU time by part, read from `/proc` (Linux): what a run cost in CPU, which on a shared,
//! noisy machine varies far less than its rate does.

use std::path::Path;
use std::time::{Duration, Instant};

/// CPU time so far of this process's threads by kind, and of another process (the broker).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// Threads named `pipeline` (resetguard's consume–decide–produce loop) and `rg-commit` (its
    /// commits, run beside it: `pipeline.commit_ahead`).
    pub pipeline: Duration,
    /// librdkafka's threads (`rdk:…`).
    pub librdkafka: Duration,
    /// Every other thread of this process.
    pub other: Duration,
    /// The other process, ended threads included (in clock ticks, 10 ms).
    pub broker: Duration,
    /// Wall time between the two readings ([`CpuUse::since`]).
    pub wall: Duration,
    /// Events handled between the two readings ([`CpuUse::of_events`]).
    pub events: u64,
    at: Option<Instant>,
}

impl CpuUse {
    /// Now, for this process and the process `broker`. This process's threads that ended are
    /// not counted: take both readings while the threads being measured run.
    pub fn now(broker: u32) -> CpuUse {
        let mut u = CpuUse { at: Some(Instant::now()), ..CpuUse::default() };
        for (name, t) in threads(Path::new("/proc/self/task")) {
            match name.as_str() {
                "pipeline" | "rg-commit" => u.pipeline += t,
                n if n.starts_with("rdk:") => u.librdkafka += t,
                _ => u.other += t,
            }
        }
        u.broker = process(broker);
        u
    }

    /// What was spent from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuUse) -> CpuUse {
        CpuUse {
            pipeline: self.pipeline.saturating_sub(earlier.pipeline),
            librdkafka: self.librdkafka.saturating_sub(earlier.librdkafka),
            other: self.other.saturating_sub(earlier.other),
            broker: self.broker.saturating_sub(earlier.broker),
            wall: match (self.at, earlier.at) {
                (Some(a), Some(b)) => a.saturating_duration_since(b),
                _ => Duration::ZERO,
            },
            at: None,
            events: 0,
        }
    }

    /// The same, for `events` handled between the readings.
    pub fn of_events(self, events: u64) -> CpuUse {
        CpuUse { events, ..self }
    }

    /// The broker's CPU less what it spends when idle (`idle_cores` × the wall time).
    pub fn broker_busy(&self, idle_cores: f64) -> Duration {
        self.broker.saturating_sub(self.wall.mul_f64(idle_cores.max(0.0)))
    }

    /// Cores the process `broker` uses while nothing is asked of it, over `span`.
    pub fn idle_cores(broker: u32, span: Duration) -> f64 {
        let before = CpuUse::now(broker);
        std::thread::sleep(span);
        let spent = CpuUse::now(broker).since(&before);
        spent.broker.as_secs_f64() / spent.wall.as_secs_f64().max(1e-9)
    }

    /// Cores in use between the readings: `pipeline P, librdkafka L, other O, broker B cores`.
    pub fn cores(&self) -> String {
        let c = |d: Duration| d.as_secs_f64() / self.wall.as_secs_f64().max(1e-9);
        format!(
            "pipeline {:.3}, librdkafka {:.3}, other {:.3}, broker {:.3} cores",
            c(self.pipeline),
            c(self.librdkafka),
            c(self.other),
            c(self.broker)
        )
    }

    /// Microseconds per event: `pipeline P, librdkafka L, other O, broker B, all A`.
    pub fn per_event(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / self.events.max(1) as f64;
        let all = self.pipeline + self.librdkafka + self.other + self.broker;
        format!(
            "pipeline {:.2}, librdkafka {:.2}, other {:.2}, broker {:.2}, all {:.2}",
            us(self.pipeline),
            us(self.librdkafka),
            us(self.other),
            us(self.broker),
            us(all)
        )
    }
}

/// User and system time of process `pid` (`/proc/<pid>/stat`, its ended threads included);
/// zero where it cannot be read.
fn process(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    // The fields after the name (which may hold spaces) start at the state; utime and stime
    // are the 12th and 13th of them.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// (name, CPU time) of every thread under a `/proc/<pid>/task` directory (`schedstat`: ns on
/// the CPU); nothing where `/proc` cannot be read.
fn threads(dir: &Path) -> impl Iterator<Item = (String, Duration)> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| {
        let p = e.path();
        let ns: u64 = std::fs::read_to_string(p.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()?;
        let name = std::fs::read_to_string(p.join("comm")).ok()?.trim_end().to_string();
        Some((name, Duration::from_nanos(ns)))
    })
}
