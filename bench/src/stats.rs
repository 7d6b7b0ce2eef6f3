//! Latency samples and the figures printed from them.

use std::time::{Duration, Instant};

/// What one scenario measured.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    /// Operation latencies, in microseconds.
    latencies: Vec<u32>,
    /// Wall time over which the operations ran: a closed loop's own
    /// duration, up to its end.
    pub(crate) elapsed: Duration,
    /// Operations that completed after `elapsed` was up: timed for their
    /// latency, but not counted in the rate.
    late: usize,
    /// CPU time the server used meanwhile, when it is our child.
    pub(crate) server_cpu: Option<Duration>,
    /// CPU time the bench itself used meanwhile.
    pub(crate) bench_cpu: Option<Duration>,
}

impl Sample {
    /// An operation started at `started`, in a run that ends at `end`.
    pub(crate) fn record(&mut self, started: Instant, end: Instant) {
        let now = Instant::now();
        self.push(now - started);
        if now > end {
            self.late += 1;
        }
    }

    pub(crate) fn push(&mut self, latency: Duration) {
        self.latencies
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub(crate) fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.late += other.late;
    }

    /// Adds a later slice of the same scenario: its operations, wall time
    /// and CPU times.
    pub(crate) fn append(&mut self, other: Sample) {
        let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.elapsed += other.elapsed;
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.bench_cpu = add(self.bench_cpu, other.bench_cpu);
        self.merge(other);
    }

    /// Operations completed per second over the elapsed wall time.
    pub(crate) fn rate(&self) -> f64 {
        (self.latencies.len() - self.late) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU time `spent` (the server's or the bench's) per operation, in
    /// microseconds.
    pub(crate) fn per_op_us(&self, spent: Option<Duration>) -> Option<f64> {
        let ops = self.latencies.len().max(1) as f64;
        spent.map(|t| t.as_secs_f64() * 1e6 / ops)
    }

    /// The `q` quantile in microseconds (0 when empty).
    pub(crate) fn quantile(&mut self, q: f64) -> u32 {
        if self.latencies.is_empty() {
            return 0;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rate() {
        let mut s = Sample {
            latencies: (1..=100).collect(),
            elapsed: Duration::from_secs(2),
            server_cpu: Some(Duration::from_millis(5)),
            bench_cpu: None,
            late: 0,
        };
        assert_eq!(s.per_op_us(s.server_cpu), Some(50.0));
        assert_eq!(s.quantile(0.5), 51);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.rate(), 50.0);
        assert_eq!(Sample::default().quantile(0.5), 0);
    }

    #[test]
    fn slices_add_up() {
        let slice = || Sample {
            latencies: vec![10, 20],
            elapsed: Duration::from_secs(1),
            server_cpu: Some(Duration::from_millis(4)),
            bench_cpu: Some(Duration::from_millis(2)),
            late: 0,
        };
        let mut total = Sample::default();
        total.append(slice());
        total.append(slice());
        assert_eq!(total.rate(), 2.0);
        assert_eq!(total.per_op_us(total.server_cpu), Some(2000.0));
        assert_eq!(total.per_op_us(total.bench_cpu), Some(1000.0));
    }

    #[test]
    fn operations_completed_after_the_end_count_for_latency_not_rate() {
        let started = Instant::now();
        let mut s = Sample {
            elapsed: Duration::from_secs(1),
            ..Sample::default()
        };
        s.record(started, started + Duration::from_secs(60));
        s.record(started, started - Duration::from_millis(1));
        assert_eq!(s.rate(), 1.0, "only the first ended in time");
        assert_eq!(s.latencies.len(), 2, "both were timed");
        let mut total = Sample::default();
        total.append(s);
        assert_eq!(total.rate(), 1.0, "lateness survives merging");
    }
}
