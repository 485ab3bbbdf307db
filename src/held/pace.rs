//! Pacing of a release: at most `rate_per_minute` notices per minute on average, in bursts of at
//! most a tenth of a second's worth (at least one). A release is meant to wait (unlike the breaker,
//! which never does), so the pacer tells the caller how long to wait before each notice. Pure: the
//! caller passes the time in (a `Duration` since any fixed start), so tests use a fake clock.
//!
//! GCRA (virtual scheduling): a theoretical arrival time `tat` advances by the interval
//! `T = 60 s / rate` per permit; a permit may go at `tat - τ` at the earliest, where the tolerance
//! `τ = (burst - 1) × T`. Waiting longer than told (sleep overshoot, a slow commit) is absorbed
//! by the tolerance instead of lowering the rate.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    tolerance: Duration,
    burst: u32,
    /// Theoretical arrival time of the next permit; `None` before the first.
    tat: Option<Duration>,
}

impl Pacer {
    /// `rate_per_minute` ≥ 1 (0 is treated as 1).
    pub fn new(rate_per_minute: u32) -> Pacer {
        let rate = rate_per_minute.max(1);
        let interval = Duration::from_nanos(60_000_000_000 / u64::from(rate));
        // A tenth of a second's worth of permits, at least one.
        let burst = (rate / 600).max(1);
        Pacer { interval, tolerance: interval * (burst - 1), burst, tat: None }
    }

    /// Time between permits at the steady rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Permits that may go at once after a pause.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Reserves the next permit at `now` and returns how long to wait before using it (zero: go).
    pub fn reserve(&mut self, now: Duration) -> Duration {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let earliest = tat.saturating_sub(self.tolerance);
        self.tat = Some(tat + self.interval);
        earliest.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the pacer with a fake clock: each permit is used after the wait it asks for, plus
    /// `overshoot` (a sleep that took longer). Returns the times permits were used.
    fn schedule(rate: u32, n: usize, overshoot: Duration, pauses: &[(usize, Duration)]) -> Vec<Duration> {
        let mut p = Pacer::new(rate);
        let mut now = Duration::ZERO;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if let Some((_, d)) = pauses.iter().find(|(at, _)| *at == i) {
                now += *d;
            }
            let wait = p.reserve(now);
            if !wait.is_zero() {
                now += wait + overshoot;
            }
            out.push(now);
        }
        out
    }

    /// Most permits used within any window of length `w`.
    fn max_in_window(times: &[Duration], w: Duration) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi] - times[lo] >= w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    #[test]
    fn slow_rates_are_one_at_a_time() {
        let p = Pacer::new(60);
        assert_eq!((p.interval(), p.burst()), (Duration::from_secs(1), 1));
        let t = schedule(60, 120, Duration::ZERO, &[]);
        assert_eq!(t[0], Duration::ZERO, "the first notice goes at once");
        assert_eq!(t[119], Duration::from_secs(119));
        assert_eq!(max_in_window(&t, Duration::from_secs(60)), 60);
        assert_eq!(max_in_window(&t, Duration::from_secs(1)), 1);
    }

    #[test]
    fn no_window_exceeds_the_rate_plus_the_burst() {
        for rate in [1, 7, 60, 599, 600, 1_000, 6_000, 60_000, 600_000] {
            let p = Pacer::new(rate);
            let n = (rate as usize * 3).clamp(10, 30_000);
            for overshoot in [Duration::ZERO, Duration::from_micros(70), Duration::from_millis(3)] {
                let pauses = [(n / 3, Duration::from_secs(5)), (2 * n / 3, Duration::from_millis(250))];
                let t = schedule(rate, n, overshoot, &pauses);
                for w in [Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(60)] {
                    let allowed = (w.as_nanos() / p.interval().as_nanos()) as usize + p.burst() as usize;
                    let got = max_in_window(&t, w);
                    assert!(
                        got <= allowed,
                        "rate {rate}/min, overshoot {overshoot:?}: {got} permits within {w:?}, allowed {allowed}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_rate_is_kept_not_undershot_despite_sleep_overshoot() {
        // 600,000/min: interval 100 µs, bursts of 1,000. Each sleep takes 70 µs longer than asked;
        // 60,000 permits must still take 6 s (less the initial burst), not ~10 s.
        let rate = 600_000;
        let p = Pacer::new(rate);
        assert_eq!((p.interval(), p.burst()), (Duration::from_micros(100), 1_000));
        let t = schedule(rate, 60_000, Duration::from_micros(70), &[]);
        let last = t[t.len() - 1];
        let ideal = p.interval() * (60_000 - p.burst());
        assert!(last >= ideal.saturating_sub(p.interval()), "too fast: {last:?} < {ideal:?}");
        assert!(last <= ideal + Duration::from_millis(1), "too slow: {last:?} vs {ideal:?}");
    }

    #[test]
    fn after_a_pause_at_most_a_burst_goes_at_once() {
        let rate = 6_000; // 100/s, burst 10
        let p = Pacer::new(rate);
        let t = schedule(rate, 100, Duration::ZERO, &[(50, Duration::from_secs(10))]);
        let resumed = t[50];
        let at_once = t.iter().filter(|x| **x == resumed).count();
        assert_eq!(at_once, p.burst() as usize);
    }
}
