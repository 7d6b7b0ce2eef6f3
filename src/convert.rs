//! Conversions between the generated `pb` messages and the domain types, in
//! one place.

use crate::{EventKind, FreeReason, Service, pb};

/// A message from the wire that does not make a valid domain value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The service's version is not an exact semver.
    #[error("service {id}: version {version:?} is not a valid semver: {source}")]
    Version {
        /// Id of the service.
        id: String,
        /// The version as sent.
        version: String,
        /// Why it does not parse.
        source: semver::Error,
    },
    /// The service's port does not fit in 16 bits.
    #[error("service {id}: port {port} is out of range")]
    Port {
        /// Id of the service.
        id: String,
        /// The port as sent.
        port: u32,
    },
}

impl From<EventKind> for pb::watch_event::Kind {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Existing => Self::Existing,
            EventKind::Synced => Self::Synced,
            EventKind::Registered => Self::Registered,
            EventKind::Updated => Self::Updated,
            EventKind::Freed => Self::Freed,
            EventKind::Reset => Self::Reset,
        }
    }
}

impl From<pb::watch_event::Kind> for EventKind {
    /// An unknown kind (from a newer server) is read as `Reset`, the safe
    /// answer: the consumer rebuilds its view.
    fn from(kind: pb::watch_event::Kind) -> Self {
        use pb::watch_event::Kind;
        match kind {
            Kind::Existing => Self::Existing,
            Kind::Synced => Self::Synced,
            Kind::Registered => Self::Registered,
            Kind::Updated => Self::Updated,
            Kind::Freed => Self::Freed,
            Kind::Reset | Kind::Unspecified => Self::Reset,
        }
    }
}

impl From<FreeReason> for pb::FreeReason {
    fn from(reason: FreeReason) -> Self {
        match reason {
            FreeReason::Owner => Self::Owner,
            FreeReason::Closed => Self::Closed,
            FreeReason::Expired => Self::Expired,
            FreeReason::Admin => Self::Admin,
        }
    }
}

impl pb::FreeReason {
    /// The reason a FREED event gives, if it gives one.
    pub fn known(self) -> Option<FreeReason> {
        match self {
            Self::Owner => Some(FreeReason::Owner),
            Self::Closed => Some(FreeReason::Closed),
            Self::Expired => Some(FreeReason::Expired),
            Self::Admin => Some(FreeReason::Admin),
            Self::Unspecified => None,
        }
    }
}

/// A service as an answer carries it: everything but its session, a secret
/// of the session's holder.
impl From<&Service> for pb::Service {
    fn from(s: &Service) -> Self {
        pb::Service {
            id: s.id.clone(),
            name: s.name.clone(),
            version: s
                .version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            host: s.host.to_string(),
            port: u32::from(s.port),
            metadata: s
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            namespace: s.namespace.to_string(),
            owner: s.owner.to_string(),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
            draining: s.draining,
        }
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        let version = if s.version.is_empty() {
            None
        } else {
            Some(
                semver::Version::parse(&s.version).map_err(|source| ConvertError::Version {
                    id: s.id.clone(),
                    version: s.version.clone(),
                    source,
                })?,
            )
        };
        let port = u16::try_from(s.port).map_err(|_| ConvertError::Port {
            id: s.id.clone(),
            port: s.port,
        })?;
        Ok(Service {
            id: s.id,
            name: s.name,
            version,
            host: s.host.into(),
            port,
            metadata: s.metadata.into_iter().collect(),
            namespace: s.namespace.into(),
            owner: s.owner.into(),
            session_id: "".into(),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
            draining: s.draining,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_round_trips_through_pb() {
        let s = Service {
            id: "a1".into(),
            name: "web".into(),
            version: Some("1.2.3-beta.1".parse().unwrap()),
            host: "10.0.0.1".into(),
            port: 8080,
            metadata: [("zone".to_string(), "a".to_string())].into(),
            namespace: "default".into(),
            owner: "alice".into(),
            session_id: "".into(),
            create_revision: 3,
            mod_revision: 5,
            draining: true,
        };
        let wire = pb::Service::from(&s);
        assert_eq!(wire.version, "1.2.3-beta.1");
        assert_eq!(Service::try_from(wire).unwrap(), s);
    }

    #[test]
    fn bad_port_from_the_wire_is_an_error() {
        let wire = pb::Service {
            id: "x".into(),
            port: 70000,
            ..Default::default()
        };
        let err = Service::try_from(wire).unwrap_err();
        assert_eq!(err.to_string(), "service x: port 70000 is out of range");
    }
}
