//! A registration made through the client, and how it ends.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use seaport::Service;

use crate::{Result, SeaportClient};

/// Options of [`SeaportClient::register`] and [`SeaportClient::bind`].
#[derive(Clone, Debug)]
pub struct RegisterOptions {
    /// Port to register; `None` has the registry assign one.
    pub port: Option<u16>,
    /// Host to register; `None` uses the address the server sees.
    pub host: Option<String>,
    /// Id to register under; `None` has the server generate one.
    pub id: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Namespace; `None` uses the client's.
    pub namespace: Option<String>,
    /// Local address `bind` listens on (default every IPv4 address).
    pub bind_ip: IpAddr,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        RegisterOptions {
            port: None,
            host: None,
            id: None,
            metadata: BTreeMap::new(),
            namespace: None,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

impl RegisterOptions {
    /// Adds one metadata pair.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets the host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// A live registration of this client's. It stays registered (and is
/// re-asserted after server restarts) until freed or the client closes;
/// dropping it does nothing unless it was turned into a
/// [`RegistrationGuard`].
#[derive(Clone)]
pub struct Registration {
    client: SeaportClient,
    service: Service,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("service", &self.service)
            .finish()
    }
}

impl Registration {
    pub(crate) fn new(client: SeaportClient, service: Service) -> Self {
        Registration { client, service }
    }

    /// The registration's id.
    pub fn id(&self) -> &str {
        &self.service.id
    }

    /// The registered host.
    pub fn host(&self) -> &str {
        &self.service.host
    }

    /// The registered port.
    pub fn port(&self) -> u16 {
        self.service.port
    }

    /// The full record as the server stored it.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Frees the registration now.
    pub async fn free(self) -> Result<()> {
        self.client.free(&self.service.id).await.map(|_| ())
    }

    /// Marks the registration draining: its instance is stopping, so no
    /// new traffic should come (see [`SeaportClient::drain`]).
    pub async fn drain(&self) -> Result<Service> {
        self.client.drain(&self.service.id).await
    }

    /// A guard that frees the registration when dropped.
    pub fn free_on_drop(self) -> RegistrationGuard {
        RegistrationGuard(Some(self))
    }
}

/// Frees its registration when dropped (in the background, on the
/// current tokio runtime).
pub struct RegistrationGuard(Option<Registration>);

impl RegistrationGuard {
    /// The guarded registration.
    pub fn registration(&self) -> &Registration {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        if let (Some(registration), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                if let Err(e) = registration.free().await {
                    tracing::warn!(error = %e, "freeing a guarded registration failed");
                }
            });
        }
    }
}
