//! Which ports each host has in use, and which were freed too recently to
//! hand out again (a restarting client may still be coming back for it).

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use seaport::Service;
use tokio::time::Instant;

use super::{RegistryError, Result};

/// Random picks tried before scanning the range in order.
const RANDOM_TRIES: usize = 64;

/// Port holdings per host, and the quarantine of recently freed ports.
#[derive(Debug)]
pub(crate) struct Ports {
    range: RangeInclusive<u16>,
    quarantine: Duration,
    /// Each host with a held or quarantined port, by the name its
    /// services share.
    hosts: HashMap<Arc<str>, Host>,
    /// Recently freed, oldest first: (freed at, host, port).
    freed: VecDeque<(Instant, Arc<str>, u16)>,
}

/// One host's ports, each held, quarantined or both (a port registered
/// explicitly while still quarantined): one map, so checking a candidate
/// or freeing a port is one lookup, on memory that is mostly not in cache.
#[derive(Debug, Default)]
struct Host {
    ports: HashMap<u16, Port>,
    /// Ports with a holder, for metrics.
    held: usize,
}

#[derive(Debug, Default)]
struct Port {
    /// The registration holding it (the registry's own `Arc`).
    holder: Option<Arc<Service>>,
    /// Its entries in `freed`; quarantined while above zero.
    quarantined: u32,
}

impl Host {
    fn is_free(&self, port: u16) -> bool {
        !self.ports.contains_key(&port)
    }

    fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Changes `port`'s state if the host has it, and forgets the port once
    /// it is neither held nor quarantined; false when the host has no such
    /// port.
    fn update(&mut self, port: u16, change: impl FnOnce(&mut Port)) -> bool {
        let Entry::Occupied(mut entry) = self.ports.entry(port) else {
            return false;
        };
        change(entry.get_mut());
        if entry.get().holder.is_none() && entry.get().quarantined == 0 {
            entry.remove();
        }
        true
    }
}

impl Ports {
    pub(crate) fn new(range: RangeInclusive<u16>, quarantine: Duration) -> Self {
        Ports {
            range,
            quarantine,
            hosts: HashMap::new(),
            freed: VecDeque::new(),
        }
    }

    /// The registration holding `port` on `host`, if any.
    #[cfg(test)]
    pub(crate) fn holder(&self, host: &str, port: u16) -> Option<&Arc<Service>> {
        self.hosts.get(host)?.ports.get(&port)?.holder.as_ref()
    }

    /// Marks the service's port on its host as held by it (or by this
    /// newer record of it).
    pub(crate) fn hold(&mut self, service: &Arc<Service>) {
        let entry = match self.hosts.get_mut(&*service.host) {
            Some(entry) => entry,
            None => self.hosts.entry(service.host.clone()).or_default(),
        };
        let port = entry.ports.entry(service.port).or_default();
        if port.holder.replace(service.clone()).is_none() {
            entry.held += 1;
        }
    }

    /// Releases `port` on `host`; it stays quarantined for a while.
    pub(crate) fn release(&mut self, host: &Arc<str>, port: u16, now: Instant) {
        let Some(entry) = self.hosts.get_mut(&**host) else {
            return;
        };
        let quarantine = !self.quarantine.is_zero();
        let mut was_held = false;
        let held = entry.update(port, |p| {
            was_held = p.holder.take().is_some();
            if quarantine {
                p.quarantined += 1;
            }
        });
        if was_held {
            entry.held -= 1;
        }
        if held && quarantine {
            self.freed.push_back((now, host.clone(), port));
        } else if entry.is_empty() {
            self.hosts.remove(&**host);
        }
    }

    /// A port on `host` for a new registration: `port` unless another
    /// registration holds it, or for 0 a random one neither held nor
    /// quarantined. Returns it with the host's name as this table holds it,
    /// for the service to share; the caller holds the port next.
    pub(crate) fn reserve(
        &mut self,
        host: &str,
        port: u16,
        now: Instant,
    ) -> Result<(Arc<str>, u16)> {
        self.expire_quarantine(now);
        // One lookup of the host serves the choice and the name: on the
        // memory store's every register, and mostly out of the cache.
        let known = self.hosts.get_key_value(host);
        let port = self.choose_on(host, known.map(|(_, h)| h), port)?;
        let name = match known {
            Some((name, _)) => name.clone(),
            None => {
                let name: Arc<str> = host.into();
                self.hosts.insert(name.clone(), Host::default());
                name
            }
        };
        Ok((name, port))
    }

    /// The port [`Ports::reserve`] would give, leaving the table as it is:
    /// through a store, the port is held when the store's feed brings the
    /// registration back.
    pub(crate) fn choose(&mut self, host: &str, port: u16, now: Instant) -> Result<u16> {
        self.expire_quarantine(now);
        self.choose_on(host, self.hosts.get(host), port)
    }

    /// `port` unless a registration holds it on `host` (whose table is
    /// `ports`), or for 0 a random port neither held nor quarantined.
    fn choose_on(&self, host: &str, ports: Option<&Host>, port: u16) -> Result<u16> {
        if port == 0 {
            return self
                .pick(ports)
                .ok_or_else(|| RegistryError::PortsExhausted {
                    host: host.to_string(),
                    first: *self.range.start(),
                    last: *self.range.end(),
                });
        }
        let holder = ports.and_then(|h| h.ports.get(&port)?.holder.as_ref());
        if let Some(holder) = holder {
            return Err(RegistryError::PortTaken {
                holder_role: holder.role(),
                holder_id: holder.id.clone(),
                host: host.to_string(),
                port,
            });
        }
        Ok(port)
    }

    /// A random port of the range that is free on `host` (`None`: a host
    /// with no ports in use); `None` when there is none.
    fn pick(&self, host: Option<&Host>) -> Option<u16> {
        let free = |port: u16| host.is_none_or(|h| h.is_free(port));
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

    fn expire_quarantine(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.freed.front() {
            if now.duration_since(*at) < self.quarantine {
                break;
            }
            let (_, host, port) = self.freed.pop_front().expect("front exists");
            let Some(entry) = self.hosts.get_mut(&*host) else {
                continue;
            };
            entry.update(port, |p| p.quarantined = p.quarantined.saturating_sub(1));
            if entry.is_empty() {
                self.hosts.remove(&*host);
            }
        }
    }

    /// Ports held, by host: a count kept with each host, so reading it
    /// costs a host, not its ports.
    pub(crate) fn held_by_host(&self) -> Vec<(String, usize)> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.held > 0)
            .map(|(name, h)| (name.to_string(), h.held))
            .collect()
    }

    /// Hosts with at least one held port (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn hosts(&self) -> hashbrown::HashSet<&str> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.ports.values().any(|p| p.holder.is_some()))
            .map(|(name, _)| &**name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_service;
    use std::collections::HashSet;

    /// The port `reserve` assigns on `host` now, if any.
    fn assign(ports: &mut Ports, host: &str) -> Option<u16> {
        ports.reserve(host, 0, Instant::now()).ok().map(|(_, p)| p)
    }

    fn service(host: &str, port: u16) -> Arc<Service> {
        test_service(&format!("{host}:{port}"), None, host, port)
    }

    #[test]
    fn assigns_every_port_of_a_small_range_then_runs_out() {
        let mut ports = Ports::new(20000..=20009, Duration::ZERO);
        let mut seen = HashSet::new();
        for _ in 0..10 {
            let p = assign(&mut ports, "h").expect("a port is free");
            assert!((20000..=20009).contains(&p));
            ports.hold(&service("h", p));
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        assert_eq!(assign(&mut ports, "h"), None);
        assert!(
            assign(&mut ports, "other-host").is_some(),
            "hosts are independent"
        );
        assert_eq!(ports.hosts().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn freed_port_is_quarantined_then_reusable() {
        let mut ports = Ports::new(20000..=20000, Duration::from_secs(5));
        let p = assign(&mut ports, "h").unwrap();
        ports.hold(&service("h", p));
        assert_eq!(ports.holder("h", p).map(|s| s.id.as_str()), Some("h:20000"));
        ports.release(&"h".into(), p, Instant::now());
        assert!(ports.holder("h", p).is_none());
        assert_eq!(assign(&mut ports, "h"), None, "quarantined");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(assign(&mut ports, "h"), Some(20000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_freed_twice_stays_quarantined_until_the_later_free_is_old() {
        let mut ports = Ports::new(20000..=20000, Duration::from_secs(5));
        let p = assign(&mut ports, "h").unwrap();
        ports.hold(&service("h", p));
        ports.release(&"h".into(), p, Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        // Registered again explicitly while quarantined, then freed again.
        ports.hold(&service("h", p));
        ports.release(&"h".into(), p, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            assign(&mut ports, "h"),
            None,
            "the second free's quarantine still runs"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(assign(&mut ports, "h"), Some(20000));
        assert!(ports.hosts.get("h").is_none_or(|h| h.is_empty()));
    }
}
