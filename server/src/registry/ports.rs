//! Which ports each host has in use, and which were freed too recently to
//! hand out again (a restarting client may still be coming back for it).

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

/// Random picks tried before scanning the range in order.
const RANDOM_TRIES: usize = 64;

/// Port holdings per host, and the quarantine of recently freed ports.
#[derive(Debug)]
pub(crate) struct Ports {
    range: RangeInclusive<u16>,
    quarantine: Duration,
    /// host -> port -> id of the registration holding it.
    held: HashMap<String, HashMap<u16, String>>,
    /// Recently freed, oldest first: (freed at, host, port).
    freed: VecDeque<(Instant, String, u16)>,
    /// The same entries, for lookup; the value counts duplicates in `freed`.
    quarantined: HashMap<(String, u16), usize>,
}

impl Ports {
    pub(crate) fn new(range: RangeInclusive<u16>, quarantine: Duration) -> Self {
        Ports {
            range,
            quarantine,
            held: HashMap::new(),
            freed: VecDeque::new(),
            quarantined: HashMap::new(),
        }
    }

    /// The id of the registration holding `port` on `host`, if any.
    pub(crate) fn holder(&self, host: &str, port: u16) -> Option<&str> {
        self.held.get(host)?.get(&port).map(String::as_str)
    }

    pub(crate) fn hold(&mut self, host: &str, port: u16, id: &str) {
        self.held
            .entry(host.to_string())
            .or_default()
            .insert(port, id.to_string());
    }

    pub(crate) fn release(&mut self, host: &str, port: u16, now: Instant) {
        if let Some(ports) = self.held.get_mut(host) {
            ports.remove(&port);
            if ports.is_empty() {
                self.held.remove(host);
            }
        }
        if !self.quarantine.is_zero() {
            self.freed.push_back((now, host.to_string(), port));
            *self
                .quarantined
                .entry((host.to_string(), port))
                .or_default() += 1;
        }
    }

    /// A random port of the range that is neither held nor quarantined on
    /// `host`; `None` when there is none.
    pub(crate) fn assign(&mut self, host: &str, now: Instant) -> Option<u16> {
        self.expire_quarantine(now);
        let empty = HashMap::new();
        let held = self.held.get(host).unwrap_or(&empty);
        let key = |port| (host.to_string(), port);
        let free =
            |port: u16| !held.contains_key(&port) && !self.quarantined.contains_key(&key(port));
        let (first, last) = (*self.range.start(), *self.range.end());
        for _ in 0..RANDOM_TRIES {
            let port = fastrand::u16(first..=last);
            if free(port) {
                return Some(port);
            }
        }
        // Nearly full: walk the whole range from a random start.
        let span = u32::from(last - first) + 1;
        let start = fastrand::u32(0..span);
        (0..span)
            .map(|i| first + ((start + i) % span) as u16)
            .find(|&port| free(port))
    }

    pub(crate) fn range(&self) -> (u16, u16) {
        (*self.range.start(), *self.range.end())
    }

    fn expire_quarantine(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.freed.front() {
            if now.duration_since(*at) < self.quarantine {
                break;
            }
            let (_, host, port) = self.freed.pop_front().expect("front exists");
            let key = (host, port);
            if let Some(n) = self.quarantined.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.quarantined.remove(&key);
                }
            }
        }
    }

    /// Hosts with at least one held port (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn hosts(&self) -> std::collections::HashSet<&str> {
        self.held.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn assigns_every_port_of_a_small_range_then_runs_out() {
        let mut ports = Ports::new(20000..=20009, Duration::ZERO);
        let now = Instant::now();
        let mut seen = HashSet::new();
        for i in 0..10 {
            let p = ports.assign("h", now).expect("a port is free");
            assert!((20000..=20009).contains(&p));
            ports.hold("h", p, &i.to_string());
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        assert_eq!(ports.assign("h", now), None);
        assert!(
            ports.assign("other-host", now).is_some(),
            "hosts are independent"
        );
        assert_eq!(ports.hosts().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn freed_port_is_quarantined_then_reusable() {
        let mut ports = Ports::new(20000..=20000, Duration::from_secs(5));
        let p = ports.assign("h", Instant::now()).unwrap();
        ports.hold("h", p, "a");
        ports.release("h", p, Instant::now());
        assert_eq!(ports.holder("h", p), None);
        assert_eq!(ports.assign("h", Instant::now()), None, "quarantined");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(ports.assign("h", Instant::now()), Some(20000));
    }
}
