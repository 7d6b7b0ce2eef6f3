//! The bounds the registry enforces, so that one client cannot exhaust the
//! server.

use std::ops::RangeInclusive;
use std::time::Duration;

use seaport::quote;

use super::RegistryError;

/// Limits and tunables of the registry core.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Ports handed out when a registration asks for none.
    pub port_range: RangeInclusive<u16>,
    /// How long a freed port is not handed out again.
    pub port_quarantine: Duration,
    /// Shortest session ttl granted.
    pub min_ttl: Duration,
    /// Longest session ttl granted.
    pub max_ttl: Duration,
    /// Ttl granted when the client asks for none.
    pub default_ttl: Duration,
    /// Registrations one session may hold.
    pub max_registrations_per_session: usize,
    /// Metadata entries per registration.
    pub max_metadata_entries: usize,
    /// Bytes in one metadata key.
    pub max_metadata_key: usize,
    /// Bytes in one metadata value.
    pub max_metadata_value: usize,
    /// Bytes of all keys and values of one registration.
    pub max_metadata_total: usize,
    /// Changes kept for watches that resume by revision.
    pub history: usize,
    /// Changes a watcher may fall behind before it is reset.
    pub watch_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            port_range: 10000..=65535,
            port_quarantine: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            default_ttl: Duration::from_secs(30),
            max_registrations_per_session: 1024,
            max_metadata_entries: 64,
            max_metadata_key: 128,
            max_metadata_value: 4096,
            max_metadata_total: 16384,
            history: 10_000,
            watch_buffer: 4096,
        }
    }
}

impl Limits {
    /// The ttl to grant for a request (`None` or zero: the default).
    pub fn clamp_ttl(&self, asked: Option<Duration>) -> Duration {
        match asked {
            Some(ttl) if !ttl.is_zero() => ttl.clamp(self.min_ttl, self.max_ttl),
            _ => self.default_ttl,
        }
    }

    /// Checks metadata pairs against the bounds, naming the one exceeded:
    /// the count first, before anything walks them.
    pub fn check_metadata<I, K, V>(&self, pairs: I) -> Result<(), RegistryError>
    where
        I: IntoIterator<Item = (K, V)>,
        I::IntoIter: ExactSizeIterator,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let invalid = |msg: String| Err(RegistryError::Invalid(msg));
        let pairs = pairs.into_iter();
        if pairs.len() > self.max_metadata_entries {
            return invalid(format!(
                "metadata has {} entries; the limit is {} (--max-metadata-entries)",
                pairs.len(),
                self.max_metadata_entries
            ));
        }
        let mut total = 0;
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            if k.is_empty() {
                return invalid("metadata has an empty key; every key needs a name".into());
            }
            if k.len() > self.max_metadata_key {
                return invalid(format!(
                    "metadata key {} is {} bytes; the limit is {}",
                    quote(k),
                    k.len(),
                    self.max_metadata_key
                ));
            }
            if v.len() > self.max_metadata_value {
                return invalid(format!(
                    "metadata value of {} is {} bytes; the limit is {} (--max-metadata-value)",
                    quote(k),
                    v.len(),
                    self.max_metadata_value
                ));
            }
            total += k.len() + v.len();
        }
        if total > self.max_metadata_total {
            return invalid(format!(
                "metadata is {total} bytes in all; the limit is {} (--max-metadata-total)",
                self.max_metadata_total
            ));
        }
        Ok(())
    }
}
