//! Where each record lives in etcd, and how it is written there.
//!
//! ```text
//! <prefix>/sessions/<session id>   a session's record, under its lease
//! <prefix>/services/<id>           a registration, under its session's lease
//! <prefix>/ports/<host>/<port>     the registration holding that port, same lease
//! ```
//!
//! A registration and its port are one transaction's two keys under one
//! lease, so they are made, and go, together.

use std::sync::Arc;
use std::time::Duration;

use seaport::{Metadata, Service};
use seaport_core::{Eviction, SessionRecord};
use serde::{Deserialize, Serialize};

/// The key names under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a key of the prefix holds.
pub(crate) enum Kind<'a> {
    Session(&'a str),
    Service(&'a str),
    /// A port reservation, or anything else: not read by the index.
    Other,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Everything Seaport keeps, for the load and the watch.
    pub(crate) fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub(crate) fn session(&self, id: &str) -> String {
        format!("{}/sessions/{id}", self.prefix)
    }

    pub(crate) fn service(&self, id: &str) -> String {
        format!("{}/services/{id}", self.prefix)
    }

    pub(crate) fn port(&self, host: &str, port: u16) -> String {
        format!("{}/ports/{host}/{port}", self.prefix)
    }

    pub(crate) fn kind<'a>(&self, key: &'a [u8]) -> Kind<'a> {
        let Ok(key) = std::str::from_utf8(key) else {
            return Kind::Other;
        };
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|k| k.strip_prefix('/'))
        else {
            return Kind::Other;
        };
        if let Some(id) = rest.strip_prefix("sessions/") {
            Kind::Session(id)
        } else if let Some(id) = rest.strip_prefix("services/") {
            Kind::Service(id)
        } else {
            Kind::Other
        }
    }
}

/// A session record's value.
#[derive(Serialize, Deserialize)]
struct SessionValue {
    ttl_ms: u64,
    host: String,
    owner: String,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    closing: bool,
    #[serde(default)]
    evicted: Vec<(String, String)>,
}

pub(crate) fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let value = SessionValue {
        ttl_ms: record.ttl.as_millis() as u64,
        host: record.observed_host.clone(),
        owner: record.owner.clone(),
        pinned: record.pinned,
        closing: record.closing,
        evicted: record
            .evicted
            .iter()
            .map(|e| (e.id.clone(), e.by.clone()))
            .collect(),
    };
    serde_json::to_vec(&value).expect("a record always encodes")
}

/// The session `id` as its key's value and lease record it; `None` for a
/// value Seaport did not write.
pub(crate) fn decode_session(id: &str, lease: i64, value: &[u8]) -> Option<SessionRecord> {
    let value: SessionValue = serde_json::from_slice(value).ok()?;
    Some(SessionRecord {
        id: id.to_string(),
        lease,
        ttl: Duration::from_millis(value.ttl_ms),
        observed_host: value.host,
        owner: value.owner,
        pinned: value.pinned,
        closing: value.closing,
        evicted: value
            .evicted
            .into_iter()
            .map(|(id, by)| Eviction { id, by })
            .collect(),
    })
}

/// A registration's value: the service but its id (the key) and its
/// revisions (etcd's own).
#[derive(Serialize, Deserialize)]
struct ServiceValue {
    name: String,
    version: Option<String>,
    host: String,
    port: u16,
    metadata: Vec<(String, String)>,
    namespace: String,
    owner: String,
    session: String,
    /// Absent in values written before draining existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
}

pub(crate) fn encode_service(service: &Service) -> Vec<u8> {
    let value = ServiceValue {
        name: service.name.clone(),
        version: service.version.as_ref().map(ToString::to_string),
        host: service.host.to_string(),
        port: service.port,
        metadata: service
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        namespace: service.namespace.to_string(),
        owner: service.owner.to_string(),
        session: service.session_id.to_string(),
        draining: service.draining,
    };
    serde_json::to_vec(&value).expect("a service always encodes")
}

/// The registration `id` as its key records it at the given revisions;
/// `None` for a value Seaport did not write.
pub(crate) fn decode_service(
    id: &str,
    value: &[u8],
    create_revision: i64,
    mod_revision: i64,
) -> Option<Service> {
    let value: ServiceValue = serde_json::from_slice(value).ok()?;
    let version = match value.version {
        Some(v) => Some(v.parse().ok()?),
        None => None,
    };
    Some(Service {
        id: id.to_string(),
        name: value.name,
        version,
        host: Arc::from(value.host),
        port: value.port,
        metadata: value.metadata.into_iter().collect::<Metadata>(),
        namespace: Arc::from(value.namespace),
        owner: Arc::from(value.owner),
        session_id: Arc::from(value.session),
        create_revision: create_revision as u64,
        mod_revision: mod_revision as u64,
        draining: value.draining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let record = SessionRecord {
            id: "s1".into(),
            lease: 7,
            ttl: Duration::from_millis(2500),
            observed_host: "10.0.0.5".into(),
            owner: "alice".into(),
            pinned: false,
            closing: true,
            evicted: vec![Eviction {
                id: "web-1".into(),
                by: "ops".into(),
            }],
        };
        assert_eq!(
            decode_session("s1", 7, &encode_session(&record)),
            Some(record)
        );
        let service = Service {
            id: "web-1".into(),
            name: "web".into(),
            version: Some("1.2.3-rc.1".parse().unwrap()),
            host: "h".into(),
            port: 10001,
            metadata: [("k".to_string(), "v".to_string())].into_iter().collect(),
            namespace: "prod".into(),
            owner: "alice".into(),
            session_id: "s1".into(),
            create_revision: 3,
            mod_revision: 9,
            draining: true,
        };
        assert_eq!(
            decode_service("web-1", &encode_service(&service), 3, 9),
            Some(service)
        );
        assert!(decode_service("x", b"not json", 1, 1).is_none());
        let keys = Keys::new("/seaport/");
        assert!(matches!(
            keys.kind(keys.service("a").as_bytes()),
            Kind::Service("a")
        ));
        assert!(matches!(
            keys.kind(keys.session("b").as_bytes()),
            Kind::Session("b")
        ));
        assert!(matches!(
            keys.kind(keys.port("h", 1).as_bytes()),
            Kind::Other
        ));
    }
}
