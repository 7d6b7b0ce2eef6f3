//! Latency samples and the figures printed from them.

use std::time::{Duration, Instant};

/// What one scenario measured.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    /// Operation latencies, in microseconds.
    latencies: Vec<u32>,
    /// Wall time over which the operations ran.
    pub(crate) elapsed: Duration,
    /// CPU time the server used meanwhile, when it is our child.
    pub(crate) server_cpu: Option<Duration>,
}

impl Sample {
    pub(crate) fn record(&mut self, started: Instant) {
        self.push(started.elapsed());
    }

    pub(crate) fn push(&mut self, latency: Duration) {
        self.latencies
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub(crate) fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
    }

    /// Adds a later slice of the same scenario: its operations, wall time
    /// and server CPU.
    pub(crate) fn append(&mut self, other: Sample) {
        self.elapsed += other.elapsed;
        self.server_cpu = match (self.server_cpu, other.server_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.merge(other);
    }

    /// Operations per second over the elapsed wall time.
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The server's CPU time per operation, in microseconds.
    pub(crate) fn cpu_per_op_us(&self) -> Option<f64> {
        let ops = self.latencies.len().max(1) as f64;
        self.server_cpu.map(|t| t.as_secs_f64() * 1e6 / ops)
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
        };
        assert_eq!(s.cpu_per_op_us(), Some(50.0));
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
        };
        let mut total = Sample::default();
        total.append(slice());
        total.append(slice());
        assert_eq!(total.rate(), 2.0);
        assert_eq!(total.cpu_per_op_us(), Some(2000.0));
    }
}
