//! Seaport's etcd store: several seaportd share one registry through an
//! etcd cluster. etcd keeps the truth (sessions as leases, registrations as
//! keys under them, ports reserved by transactions); each seaportd follows
//! it with one watch into its in-memory index, which answers every read.
//! See docs/CLUSTER.md for the keys, the transactions and the failures.

mod feed;
mod group;
mod keepalive;
mod keys;
mod observer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use seaport_core::{
    Registry, RegistryError, Result, SessionRecord, Store, StoreFuture, StoreHealth, Write,
};
use tokio::sync::Notify;

use keys::Keys;
pub use observer::{Observer, Unobserved};

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs of the cluster's members.
    pub endpoints: Vec<String>,
    /// The prefix of every key Seaport writes.
    pub prefix: String,
    /// CA that signed the members' certificates (https endpoints).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for an etcd that asks for one.
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub key: Option<PathBuf>,
}

/// How long one request to etcd may take before the write is refused.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A store on etcd. Cheap to share: one client, one watch, one keep-alive
/// stream per seaportd.
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    /// Leases whose holders were heard from since the last keep-alive round.
    pinged: Mutex<Vec<i64>>,
    wake_keeper: Notify,
    /// Whether etcd answers, as the feed last saw it: writes are refused at
    /// once while it does not.
    health: tokio::sync::watch::Sender<StoreHealth>,
    /// Writes on their way to a shared transaction ([`group`]).
    batches: tokio::sync::mpsc::UnboundedSender<group::Pending>,
    observer: Arc<dyn Observer>,
}

impl EtcdStore {
    /// Connects to etcd, and starts the registry that follows it: the feed
    /// loads the index and keeps it current, the keeper keeps this
    /// server's sessions alive. The registry answers reads once loaded.
    /// `observer` is told of every request, for metrics.
    pub async fn start(
        options: &EtcdOptions,
        limits: seaport_core::Limits,
        observer: Arc<dyn Observer>,
    ) -> std::result::Result<Registry, String> {
        let tls = tls(options)?;
        let mut connect = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(2))
            // etcd closes connections that ping more often than every 5s
            // (its --grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster answers "no leader" at
            // once, rather than letting a write hang.
            .with_require_leader(true);
        if let Some(tls) = tls.clone() {
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| format!("cannot reach etcd at {}: {e}", options.endpoints.join(",")))?;
        let channel = keepalive::channel(&options.endpoints, tls)?;
        let (batches, queue) = tokio::sync::mpsc::unbounded_channel();
        let store = Arc::new(EtcdStore {
            client,
            keys: Keys::new(&options.prefix),
            pinged: Mutex::default(),
            wake_keeper: Notify::new(),
            health: tokio::sync::watch::Sender::new(StoreHealth::Syncing),
            batches,
            observer,
        });
        tokio::spawn(group::run(store.clone(), queue));
        let registry = Registry::with_store(limits, store.clone());
        tokio::spawn(feed::follow(store.clone(), registry.clone()));
        tokio::spawn(keepalive::keep(store, channel));
        Ok(registry)
    }

    /// Refuses at once while etcd is known to be unreachable.
    fn check_reachable(&self) -> Result<()> {
        if *self.health.borrow() == StoreHealth::Unreachable {
            return Err(RegistryError::Unavailable(
                "etcd is unreachable or has lost its quorum: writes are refused until it is back; reads are served from this server's last view".into(),
            ));
        }
        Ok(())
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.check_reachable()?;
        let answer = self.timed("txn", self.client.kv_client().txn(txn)).await;
        let answer = answer.map_err(unavailable)?;
        self.observer.revision(revision_of(answer.header()));
        Ok(answer)
    }

    /// Runs `request`, telling the observer how long it took.
    async fn timed<T>(
        &self,
        request: &'static str,
        call: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> std::result::Result<T, etcd_client::Error> {
        let started = std::time::Instant::now();
        let answer = call.await;
        self.observer
            .round_trip(request, started.elapsed(), answer.is_ok());
        answer
    }
}

/// A write refused because etcd did not answer.
fn unavailable(e: etcd_client::Error) -> RegistryError {
    RegistryError::Unavailable(format!(
        "etcd did not take the write ({}); it is unreachable or has no quorum. Nothing changed; retry when it is back",
        seaport::quote(&e.to_string())
    ))
}

/// The revision an answer was made at.
fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision() as u64)
}

/// The TLS settings for https endpoints, from the files given.
fn tls(options: &EtcdOptions) -> std::result::Result<Option<etcd_client::TlsOptions>, String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    if options.ca.is_none() && options.cert.is_none() {
        return Ok(None);
    }
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &options.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err("--etcd-cert and --etcd-key go together; give both".into()),
    }
    Ok(Some(tls))
}

impl Store for EtcdStore {
    fn open<'a>(&'a self, session: &'a SessionRecord) -> StoreFuture<'a, (i64, u64)> {
        Box::pin(async move {
            self.check_reachable()?;
            let ttl = session.ttl.as_secs_f64().ceil().max(1.0) as i64;
            let mut leases = self.client.lease_client();
            let lease = self
                .timed("lease_grant", leases.grant(ttl, None))
                .await
                .map_err(unavailable)?
                .id();
            let put = TxnOp::put(
                self.keys.session(&session.id),
                keys::encode_session(session),
                Some(PutOptions::new().with_lease(lease)),
            );
            let answer = self.txn(Txn::new().and_then([put])).await?;
            Ok((lease, revision_of(answer.header())))
        })
    }

    fn keep_alive(&self, lease: i64) {
        self.pinged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(lease);
        self.wake_keeper.notify_one();
    }

    fn close<'a>(&'a self, session: &'a SessionRecord) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let key = self.keys.session(&session.id);
            let closing = SessionRecord {
                closing: true,
                ..session.clone()
            };
            let mark = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::put(
                    key,
                    keys::encode_session(&closing),
                    Some(PutOptions::new().with_lease(session.lease)),
                )]);
            if !self.txn(mark).await?.succeeded() {
                return Err(RegistryError::UnknownSession);
            }
            let mut leases = self.client.lease_client();
            let revoked = self
                .timed("lease_revoke", leases.revoke(session.lease))
                .await
                .map_err(unavailable)?;
            Ok(revision_of(revoked.header()))
        })
    }

    fn commit(&self, write: Write) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.check_reachable()?;
            let (done, answer) = tokio::sync::oneshot::channel();
            self.batches
                .send((write, done))
                .map_err(|_| RegistryError::Unavailable("the etcd store has stopped".into()))?;
            answer.await.unwrap_or_else(|_| {
                Err(RegistryError::Unavailable(
                    "the etcd store has stopped".into(),
                ))
            })
        })
    }
}

impl EtcdStore {
    /// What `write` compares and what it does, for a transaction of its
    /// own or one shared with others.
    fn parts(&self, write: &Write) -> (Vec<Compare>, Vec<TxnOp>) {
        let on = |lease: i64| Some(PutOptions::new().with_lease(lease));
        match write {
            Write::Register { service, lease } => {
                let service_key = self.keys.service(&service.id);
                let port_key = self.keys.port(&service.host, service.port);
                (
                    vec![
                        Compare::create_revision(service_key.clone(), CompareOp::Equal, 0),
                        Compare::create_revision(port_key.clone(), CompareOp::Equal, 0),
                        Compare::version(
                            self.keys.session(&service.session_id),
                            CompareOp::Greater,
                            0,
                        ),
                    ],
                    vec![
                        TxnOp::put(service_key, keys::encode_service(service), on(*lease)),
                        TxnOp::put(port_key, service.id.as_bytes(), on(*lease)),
                    ],
                )
            }
            Write::Update {
                service,
                previous_revision,
                lease,
            } => {
                let key = self.keys.service(&service.id);
                (
                    vec![Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        *previous_revision as i64,
                    )],
                    vec![TxnOp::put(key, keys::encode_service(service), on(*lease))],
                )
            }
            Write::Free { service, evicted } => {
                let key = self.keys.service(&service.id);
                let mut ops = vec![
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(self.keys.port(&service.host, service.port), None),
                ];
                if let Some(record) = evicted {
                    ops.push(TxnOp::put(
                        self.keys.session(&record.id),
                        keys::encode_session(record),
                        on(record.lease),
                    ));
                }
                (
                    vec![Compare::mod_revision(
                        key,
                        CompareOp::Equal,
                        service.mod_revision as i64,
                    )],
                    ops,
                )
            }
        }
    }

    /// Makes `write` in a transaction of its own, and says which
    /// precondition failed when one did.
    async fn single(&self, write: &Write) -> Result<u64> {
        let (compares, ops) = self.parts(write);
        let mut txn = Txn::new().when(compares).and_then(ops);
        if let Write::Register { service, .. } = write {
            // Read the three keys when a compare fails, to say which.
            txn = txn.or_else([
                TxnOp::get(self.keys.service(&service.id), None),
                TxnOp::get(self.keys.port(&service.host, service.port), None),
                TxnOp::get(self.keys.session(&service.session_id), None),
            ]);
        }
        let answer = self.txn(txn).await?;
        if answer.succeeded() {
            return Ok(revision_of(answer.header()));
        }
        let service = match write {
            Write::Register { service, .. } => service,
            Write::Update { service, .. } | Write::Free { service, .. } => {
                return Err(RegistryError::Changed(service.id.clone()));
            }
        };
        let found: Vec<Option<Vec<u8>>> = answer
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .collect();
        match found.as_slice() {
            [_, _, None] => Err(RegistryError::UnknownSession),
            [Some(_), _, _] => Err(RegistryError::IdTaken(service.id.clone())),
            [_, Some(holder), _] => Err(RegistryError::PortTaken {
                host: service.host.to_string(),
                port: service.port,
                holder_role: "a registration".into(),
                holder_id: String::from_utf8_lossy(holder).into_owned(),
            }),
            _ => Err(RegistryError::Changed(service.id.clone())),
        }
    }
}
