//! The registry core against a plain model of it (a few `BTreeMap`s), on
//! random sequences of session opens, resumes, closes and expiries,
//! registrations (assigned and explicit ports, explicit ids, re-asserts),
//! metadata updates and frees, by sessions of three certificate identities
//! (none, `alice`, `bob`), on three hosts with a four-port range so that
//! ports collide and run out, and with a few malformed arguments.
//!
//! After every step: every answer and error agrees with the model; no two
//! live registrations share a host and port; a query of everything equals
//! the model; the revision counts the model's changes; and every watcher,
//! its events applied to a map, equals a fresh query of its selector. Four
//! watchers start with the registry (since 0); a step may replace one by a
//! watch resuming from the revision of a few steps back, which replays the
//! history or, past it, is reset.
//!
//! Time is tokio's paused clock. Operations happen on whole seconds and
//! session deadlines fall on half seconds (ttls of 1.5, 2.5 and 3.5 s), so
//! the reaper frees an expired session at its deadline exactly, never at
//! the same instant as an operation; the port quarantine (2.25 s) ends
//! between whole seconds too. The model is then exact, with no slack.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 128).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use seaport::{EventKind, Service};
use seaport_core::{
    Actor, Limits, MetadataChange, NewService, Policy, Registry, RegistryError, Selector, Watch,
};
use tokio::time::Instant;
use tokio_stream::Stream;

const FIRST_PORT: u16 = 20000;

/// The answer of a registry call on the memory store, which never waits.
trait Now: Future + Sized {
    fn now(self) -> Self::Output {
        seaport_core::at_once(self)
    }
}

impl<F: Future> Now for F {}
const LAST_PORT: u16 = 20003;
/// How long a freed port is not assigned again, in milliseconds.
const QUARANTINE_MS: u64 = 2250;
const DEFAULT_TTL_MS: u64 = 3500;
const MAX_PER_SESSION: usize = 5;

/// Ttls a session may ask for; `None` takes the default.
const TTLS: [Option<u64>; 3] = [Some(1500), Some(2500), None];
/// The address the server sees a session's client at; empty: none.
const OBSERVED: [&str; 3] = ["h1", "h2", ""];
/// Hosts a registration may name; the last is malformed.
const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h 4"];
/// Explicit ports: outside the assigned range too, and one past 65535.
const PORTS: [u32; 7] = [19999, 20000, 20001, 20002, 20003, 20004, 70000];
/// Roles; the last is malformed.
const ROLES: [&str; 5] = ["web@1.0.0", "web@1.5.0", "web@2.0.0", "db", "Bad@1"];
/// Namespaces; empty is the default, the last is malformed.
const NAMESPACES: [&str; 3] = ["", "other", "Bad NS"];
/// Explicit ids; `None` has one generated, the last is malformed.
const IDS: [Option<&str>; 5] = [None, Some("a"), Some("b"), Some("c"), Some("bad id!")];
/// Client certificate identities; empty: none (no mTLS).
const IDENTITIES: [&str; 3] = ["", "alice", "bob"];
/// The identity the policy makes admin.
const ADMIN: &str = "bob";
/// Lets every identity register every name, and makes [`ADMIN`] admin.
const POLICY: &str = "admins = [\"bob\"]\n[[allow]]\nidentities = [\"*\", \"\"]\nnames = [\"*\"]\n";
/// Metadata keys (the empty one is refused) and values.
const KEYS: [&str; 3] = ["k", "m", ""];
const VALUES: [&str; 2] = ["1", "2"];

/// Which session an operation names.
#[derive(Clone, Debug)]
enum Who {
    /// One of those open now, in the order they were opened.
    Open(Index),
    /// Any ever opened, or one that never was.
    Any(Index),
    /// The one holding the operation's target (else as `Open`).
    Owner(Index),
}

/// Which registration an update or free names.
#[derive(Clone, Debug)]
enum Target {
    /// One of those live now, in the order they were registered.
    Live(Index),
    /// Any ever registered, or one of a few ids never registered.
    Any(Index),
}

/// Whose certificate an operation comes with.
#[derive(Clone, Debug)]
enum As {
    /// The identity that opened the session it names.
    Holder,
    /// This one of `IDENTITIES`.
    Identity(usize),
}

fn acting() -> impl Strategy<Value = As> {
    prop_oneof![
        8 => Just(As::Holder),
        1 => (0..IDENTITIES.len()).prop_map(As::Identity),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        9 => any::<Index>().prop_map(Who::Open),
        1 => any::<Index>().prop_map(Who::Any),
    ]
}

fn owner() -> impl Strategy<Value = Who> {
    prop_oneof![
        6 => any::<Index>().prop_map(Who::Owner),
        3 => any::<Index>().prop_map(Who::Open),
        1 => any::<Index>().prop_map(Who::Any),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<Index>().prop_map(Target::Live),
        1 => any::<Index>().prop_map(Target::Any),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Open {
        ttl: usize,
        observed: usize,
        identity: usize,
    },
    Resume {
        session: Who,
        actor: As,
    },
    Close {
        session: Who,
    },
    /// Lets this many seconds pass.
    Expire {
        seconds: u64,
    },
    Register {
        session: Who,
        actor: As,
        role: usize,
        namespace: usize,
        /// `None`: the session's observed address.
        host: Option<usize>,
        /// `None`: have one assigned.
        port: Option<usize>,
        id: usize,
        metadata: Vec<(usize, usize)>,
    },
    /// Registers a registration again as it is (what a client does after
    /// its server restarted), by its own session or another.
    Reassert {
        session: Who,
        actor: As,
        target: Target,
        /// Name its port, rather than 0.
        port: bool,
    },
    Update {
        session: Who,
        actor: As,
        target: Target,
        set: Vec<(usize, usize)>,
        merge: bool,
        remove: Vec<usize>,
    },
    Free {
        session: Who,
        actor: As,
        target: Target,
    },
    /// Replaces a watcher by one resuming from a revision some steps back.
    Rewatch {
        watcher: usize,
        back: usize,
    },
}

/// A metadata key: now and then the empty one, which is refused.
fn key() -> impl Strategy<Value = usize> {
    prop_oneof![30 => 0..2usize, 1 => Just(2usize)]
}

fn pairs() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((key(), 0..VALUES.len()), 0..3)
}

fn op() -> impl Strategy<Value = Op> {
    let register = |port: BoxedStrategy<Option<usize>>| {
        (
            (who(), acting()),
            prop_oneof![25 => 0..4usize, 1 => Just(4usize)],
            prop_oneof![25 => 0..2usize, 1 => Just(2usize)],
            prop_oneof![10 => Just(None), 15 => (0..3usize).prop_map(Some), 1 => Just(Some(3usize))],
            port,
            prop_oneof![15 => Just(0usize), 10 => 1..4usize, 1 => Just(4usize)],
            pairs(),
        )
            .prop_map(
                |((session, actor), role, namespace, host, port, id, metadata)| Op::Register {
                    session,
                    actor,
                    role,
                    namespace,
                    host,
                    port,
                    id,
                    metadata,
                },
            )
    };
    let observed = prop_oneof![6 => Just(0usize), 6 => Just(1usize), 1 => Just(2usize)];
    let explicit = prop_oneof![25 => 0..6usize, 1 => Just(6usize)];
    let identity = prop_oneof![2 => Just(0usize), 1 => 1..IDENTITIES.len()];
    prop_oneof![
        2 => (0..TTLS.len(), observed, identity)
            .prop_map(|(ttl, observed, identity)| Op::Open { ttl, observed, identity }),
        3 => (who(), acting()).prop_map(|(session, actor)| Op::Resume { session, actor }),
        1 => who().prop_map(|session| Op::Close { session }),
        1 => (1..=3u64).prop_map(|seconds| Op::Expire { seconds }),
        5 => register(Just(None).boxed()),
        3 => register(explicit.prop_map(Some).boxed()),
        1 => (owner(), acting(), target(), any::<bool>())
            .prop_map(|(session, actor, target, port)| Op::Reassert { session, actor, target, port }),
        3 => (owner(), acting(), target(), pairs(), any::<bool>(), prop::collection::vec(key(), 0..2))
            .prop_map(|(session, actor, target, set, merge, remove)| Op::Update {
                session, actor, target, set, merge, remove,
            }),
        2 => (owner(), acting(), target())
            .prop_map(|(session, actor, target)| Op::Free { session, actor, target }),
        1 => (0..4usize, 0..12usize).prop_map(|(watcher, back)| Op::Rewatch { watcher, back }),
    ]
}

/// What the model expects of a refused operation. `PortTaken` names the
/// holder's id.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    Role,
    Invalid,
    UnknownSession,
    UnknownService,
    PortTaken(String),
    IdTaken,
    IdConflict,
    NotOwner,
    NotSessionOwner,
    Evicted,
    PortsExhausted,
    TooMany,
    /// One the model never expects (policy, certificates, deadlines).
    Unexpected,
}

fn refusal(e: &RegistryError) -> Refusal {
    match e {
        RegistryError::Role(_) => Refusal::Role,
        RegistryError::Invalid(_) => Refusal::Invalid,
        RegistryError::UnknownSession => Refusal::UnknownSession,
        RegistryError::UnknownService(_) => Refusal::UnknownService,
        RegistryError::PortTaken { holder_id, .. } => Refusal::PortTaken(holder_id.clone()),
        RegistryError::IdTaken(_) => Refusal::IdTaken,
        RegistryError::IdConflict { .. } => Refusal::IdConflict,
        RegistryError::NotOwner { .. } => Refusal::NotOwner,
        RegistryError::NotSessionOwner { .. } => Refusal::NotSessionOwner,
        RegistryError::PortsExhausted { .. } => Refusal::PortsExhausted,
        RegistryError::TooManyRegistrations(_) => Refusal::TooMany,
        RegistryError::Evicted(_) => Refusal::Evicted,
        RegistryError::NotAllowed { .. }
        | RegistryError::NoCertificate { .. }
        | RegistryError::NothingMatched { .. }
        | RegistryError::TooManyWatchers(_)
        | RegistryError::Unavailable(_)
        | RegistryError::Changed(_) => Refusal::Unexpected,
    }
}

#[derive(Clone, Debug)]
struct ModelSession {
    ttl: u64,
    deadline: u64,
    observed: &'static str,
    /// The identity that opened it.
    owner: &'static str,
    /// Ids an admin freed in it: it may not register them again.
    evicted: Vec<String>,
}

/// A registration as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelService {
    name: String,
    version: Option<String>,
    namespace: String,
    host: String,
    port: u16,
    metadata: BTreeMap<String, String>,
    session: String,
    owner: String,
}

impl ModelService {
    fn of(s: &Service) -> ModelService {
        ModelService {
            name: s.name.clone(),
            version: s.version.as_ref().map(ToString::to_string),
            namespace: s.namespace.to_string(),
            host: s.host.to_string(),
            port: s.port,
            metadata: s
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            session: s.session_id.to_string(),
            owner: s.owner.to_string(),
        }
    }
}

/// The registry as plain maps, with time in milliseconds from the start.
#[derive(Default)]
struct Model {
    now: u64,
    sessions: BTreeMap<String, ModelSession>,
    services: BTreeMap<String, ModelService>,
    /// Ports freed: (when, host, port).
    freed: Vec<(u64, String, u16)>,
    /// Changes made: the registry's revision is its first plus these.
    changes: u64,
}

/// A registration's arguments, resolved from an operation.
#[derive(Clone, Debug)]
struct Registration {
    session: String,
    /// The identity of the caller's certificate.
    identity: String,
    role: String,
    namespace: String,
    host: Option<String>,
    port: u32,
    id: Option<String>,
    metadata: Vec<(String, String)>,
}

/// What a registration should do.
#[derive(Debug)]
enum Registers {
    /// Add a new one; `None`: on a port the registry picks.
    New(Option<u16>),
    /// Answer the existing one with this id, changing nothing.
    Existing(String),
}

impl Model {
    fn holder(&self, host: &str, port: u16) -> Option<&String> {
        self.services
            .iter()
            .find(|(_, s)| s.host == host && s.port == port)
            .map(|(id, _)| id)
    }

    fn quarantined(&self, host: &str, port: u16) -> bool {
        self.freed
            .iter()
            .any(|(at, h, p)| h == host && *p == port && self.now - at < QUARANTINE_MS)
    }

    /// Ports the registry may assign on `host` now.
    fn assignable(&self, host: &str) -> Vec<u16> {
        (FIRST_PORT..=LAST_PORT)
            .filter(|&p| self.holder(host, p).is_none() && !self.quarantined(host, p))
            .collect()
    }

    fn remove(&mut self, id: &str, at: u64) -> ModelService {
        let service = self.services.remove(id).expect("a live service");
        self.freed.push((at, service.host.clone(), service.port));
        self.changes += 1;
        service
    }

    /// Ends a session, freeing its registrations at `at`; returns how many.
    fn end_session(&mut self, id: &str, at: u64) -> usize {
        self.sessions.remove(id);
        let held: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.session == id)
            .map(|(id, _)| id.clone())
            .collect();
        for service in &held {
            self.remove(service, at);
        }
        held.len()
    }

    /// What `r` should do.
    fn register(&self, r: &Registration) -> Result<(Registers, ModelService), Refusal> {
        let (session, explicit_host, id) = (r.session.as_str(), r.host.as_deref(), r.id.as_deref());
        let metadata: BTreeMap<String, String> = r.metadata.iter().cloned().collect();
        // In the registry's order: the request's sizes and spellings (the
        // metadata, host and id before the role is parsed), then the
        // session, then the id, then the session's count, then the port.
        if metadata.contains_key("") {
            return Err(Refusal::Invalid);
        }
        if explicit_host.is_some_and(|h| h.contains(' ')) || id == Some("bad id!") {
            return Err(Refusal::Invalid);
        }
        let Ok(role) = r.role.parse::<seaport::Role>() else {
            return Err(Refusal::Role);
        };
        let namespace = match r.namespace.as_str() {
            "" => "default",
            "Bad NS" => return Err(Refusal::Role),
            n => n,
        };
        let Ok(port) = u16::try_from(r.port) else {
            return Err(Refusal::Invalid);
        };
        let open = self.session_of(session, &r.identity)?;
        if id.is_some_and(|id| open.evicted.iter().any(|e| e == id)) {
            return Err(Refusal::Evicted);
        }
        let host = explicit_host.unwrap_or(open.observed);
        if host.is_empty() {
            return Err(Refusal::Invalid);
        }
        let wanted = ModelService {
            name: role.name.clone(),
            version: role.version.as_ref().map(ToString::to_string),
            namespace: namespace.to_string(),
            host: host.to_string(),
            port,
            metadata,
            session: session.to_string(),
            owner: open.owner.to_string(),
        };
        if let Some(existing) = id.and_then(|id| self.services.get(id)) {
            if existing.session != session {
                return Err(Refusal::IdTaken);
            }
            let same = existing.name == wanted.name
                && existing.version == wanted.version
                && existing.host == wanted.host
                && existing.namespace == wanted.namespace
                && (port == 0 || existing.port == port);
            return if same {
                Ok((
                    Registers::Existing(id.unwrap().to_string()),
                    existing.clone(),
                ))
            } else {
                Err(Refusal::IdConflict)
            };
        }
        let held = self
            .services
            .values()
            .filter(|s| s.session == session)
            .count();
        if held >= MAX_PER_SESSION {
            return Err(Refusal::TooMany);
        }
        if port == 0 {
            if self.assignable(host).is_empty() {
                return Err(Refusal::PortsExhausted);
            }
            return Ok((Registers::New(None), wanted));
        }
        if let Some(holder) = self.holder(host, port) {
            return Err(Refusal::PortTaken(holder.clone()));
        }
        Ok((Registers::New(Some(port)), wanted))
    }

    /// The open session `id`, if `identity` opened it.
    fn session_of(&self, id: &str, identity: &str) -> Result<&ModelSession, Refusal> {
        match self.sessions.get(id) {
            None => Err(Refusal::UnknownSession),
            Some(s) if s.owner != identity => Err(Refusal::NotSessionOwner),
            Some(s) => Ok(s),
        }
    }

    /// Whether `actor` may change `id` through `session`: the session that
    /// holds it, or any session of the identity that registered it, or (to
    /// free it) an admin. In the registry's order.
    fn authorize(
        &self,
        session: &str,
        id: &str,
        actor: &Actor,
        admin_may: bool,
    ) -> Result<(), Refusal> {
        self.session_of(session, &actor.identity)?;
        let Some(service) = self.services.get(id) else {
            return Err(Refusal::UnknownService);
        };
        let owner = service.session == session
            || (!service.owner.is_empty() && service.owner == actor.identity);
        if owner || (admin_may && actor.identity == ADMIN) {
            Ok(())
        } else {
            Err(Refusal::NotOwner)
        }
    }
}

/// A watch, and the services its events say are in its set.
struct Watcher {
    selector: Selector,
    watch: Watch,
    view: BTreeMap<String, Arc<Service>>,
    /// Revision of the last event: changes come in revision order.
    revision: u64,
}

impl Watcher {
    fn new(
        registry: &Registry,
        selector: Selector,
        since: u64,
        view: BTreeMap<String, Arc<Service>>,
    ) -> Self {
        Watcher {
            watch: registry.watch(selector.clone(), since),
            selector,
            view,
            revision: since,
        }
    }

    /// Applies every event the watch has now.
    fn catch_up(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(event) = Pin::new(&mut self.watch).poll_next(&mut cx) {
            let event = event.expect("a watch ends only with the registry");
            let selector = &self.selector;
            match event.kind {
                EventKind::Reset | EventKind::Synced | EventKind::Existing => {
                    assert!(
                        event.revision >= self.revision,
                        "{selector:?}: {event:?} went back"
                    );
                }
                _ => assert!(
                    event.revision > self.revision,
                    "{selector:?}: {event:?} not after revision {}",
                    self.revision
                ),
            }
            self.revision = event.revision;
            match event.kind {
                EventKind::Reset => self.view.clear(),
                EventKind::Synced => assert!(event.service.is_none()),
                EventKind::Existing | EventKind::Registered => {
                    let s = event.service.expect("the event names its service");
                    assert!(selector.matches(&s), "{selector:?} was sent {s:?}");
                    let was = self.view.insert(s.id.clone(), s);
                    assert!(
                        was.is_none(),
                        "{selector:?}: {:?} for one it had: {was:?}",
                        event.kind
                    );
                }
                EventKind::Updated => {
                    let s = event.service.expect("the event names its service");
                    assert!(selector.matches(&s), "{selector:?} was sent {s:?}");
                    let was = self.view.insert(s.id.clone(), s);
                    assert!(
                        was.is_some(),
                        "{selector:?}: an update of one it did not have"
                    );
                }
                EventKind::Freed => {
                    let s = event.service.expect("the event names its service");
                    let was = self.view.remove(&s.id);
                    assert!(
                        was.is_some(),
                        "{selector:?}: a free of one it did not have: {s:?}"
                    );
                }
            }
        }
    }
}

fn selector(namespace: &str, pattern: &str, metadata: &[(&str, &str)]) -> Selector {
    Selector {
        namespace: namespace.into(),
        pattern: pattern.parse().expect("a valid pattern"),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Which model services a watcher's selector should hold.
type Holds = fn(&ModelService) -> bool;

/// The watchers' selectors, and which model services each should hold.
fn selectors() -> Vec<(Selector, Holds)> {
    vec![
        (selector("default", "", &[]), |s| s.namespace == "default"),
        (selector("default", "web@1.x", &[]), |s| {
            s.namespace == "default"
                && s.name == "web"
                && s.version.as_deref().is_some_and(|v| v.starts_with("1."))
        }),
        (selector("default", "", &[("k", "1")]), |s| {
            s.namespace == "default" && s.metadata.get("k").is_some_and(|v| v == "1")
        }),
        (selector("other", "", &[]), |s| s.namespace == "other"),
    ]
}

fn by_id(services: Vec<Arc<Service>>) -> BTreeMap<String, Arc<Service>> {
    services.into_iter().map(|s| (s.id.clone(), s)).collect()
}

fn limits() -> Limits {
    Limits {
        port_range: FIRST_PORT..=LAST_PORT,
        port_quarantine: Duration::from_millis(QUARANTINE_MS),
        min_ttl: Duration::from_secs(1),
        default_ttl: Duration::from_millis(DEFAULT_TTL_MS),
        max_registrations_per_session: MAX_PER_SESSION,
        // Short enough that a watcher resuming from a few steps back is
        // sometimes reset, and that freeing a session's five lags watchers.
        history: 8,
        watch_buffer: 4,
        ..Limits::default()
    }
}

/// The registry's state at the end of a step, for watchers resuming from it.
struct Snapshot {
    revision: u64,
    services: Vec<Arc<Service>>,
}

struct Run {
    registry: Registry,
    model: Model,
    start: Instant,
    first_revision: u64,
    /// Every session id opened, in order.
    sessions: Vec<String>,
    /// Ids an update or free may name: the explicit ones, one never
    /// registered, then each generated one, in order.
    ids: Vec<String>,
    watchers: Vec<Watcher>,
    predicates: Vec<Holds>,
    snapshots: VecDeque<Snapshot>,
}

impl Run {
    /// The session `who` names; `target`, the registration the operation
    /// names, if any.
    fn session(&self, who: &Who, target: Option<&str>) -> String {
        let open = |index: &Index| {
            let open: Vec<&String> = self
                .sessions
                .iter()
                .filter(|s| self.model.sessions.contains_key(*s))
                .collect();
            match open.len() {
                0 => "no-such-session".to_string(),
                n => open[index.index(n)].clone(),
            }
        };
        match who {
            Who::Open(index) => open(index),
            Who::Owner(index) => match target.and_then(|id| self.model.services.get(id)) {
                Some(service) => service.session.clone(),
                None => open(index),
            },
            // One past the sessions opened: a session that never was.
            Who::Any(index) => self
                .sessions
                .get(index.index(self.sessions.len() + 1))
                .cloned()
                .unwrap_or_else(|| "no-such-session".into()),
        }
    }

    fn target(&self, target: &Target) -> String {
        let live: Vec<&String> = self
            .ids
            .iter()
            .filter(|id| self.model.services.contains_key(*id))
            .collect();
        match target {
            Target::Live(index) if !live.is_empty() => live[index.index(live.len())].clone(),
            Target::Live(index) | Target::Any(index) => {
                self.ids[index.index(self.ids.len())].clone()
            }
        }
    }

    fn register(&mut self, r: Registration) {
        let want = self.model.register(&r);
        let got = self
            .registry
            .register(
                NewService {
                    session_id: r.session.clone(),
                    role: r.role.clone(),
                    namespace: r.namespace.clone(),
                    host: r.host.clone().unwrap_or_default(),
                    port: r.port,
                    id: r.id.clone().unwrap_or_default(),
                    metadata: r.metadata.to_vec(),
                },
                &Actor {
                    identity: r.identity.clone(),
                },
            )
            .now();
        match (want, got) {
            (Err(want), got) => {
                assert_eq!(got.map_err(|e| refusal(&e)).err(), Some(want), "{r:?}");
            }
            (Ok(_), Err(e)) => panic!("{r:?} refused: {e}"),
            (Ok((Registers::Existing(id), existing)), Ok(got)) => {
                assert_eq!(got.id, id);
                assert_eq!(ModelService::of(&got), existing, "re-asserted as it was");
            }
            (Ok((Registers::New(port), mut wanted)), Ok(got)) => {
                match port {
                    Some(port) => assert_eq!(got.port, port),
                    None => assert!(
                        self.model.assignable(&wanted.host).contains(&got.port),
                        "assigned {} on {}: held or quarantined, or outside the range",
                        got.port,
                        wanted.host
                    ),
                }
                wanted.port = got.port;
                assert_eq!(ModelService::of(&got), wanted);
                match &r.id {
                    Some(id) => assert_eq!(&got.id, id),
                    None => assert_eq!(got.id.len(), 32, "a generated id: {}", got.id),
                }
                assert_eq!(got.create_revision, got.mod_revision);
                assert!(self.model.services.insert(got.id.clone(), wanted).is_none());
                self.model.changes += 1;
                if !self.ids.contains(&got.id) {
                    self.ids.push(got.id.clone());
                }
            }
        }
    }

    /// Who acts on `session`.
    fn actor(&self, session: &str, actor: &As) -> Actor {
        let identity = match actor {
            As::Holder => self.model.sessions.get(session).map_or("", |s| s.owner),
            As::Identity(i) => IDENTITIES[*i],
        };
        Actor {
            identity: identity.to_string(),
        }
    }

    async fn step(&mut self, op: &Op) {
        let registry = self.registry.clone();
        match op {
            Op::Open {
                ttl,
                observed,
                identity,
            } => {
                let asked = TTLS[*ttl];
                let info = registry
                    .open_session(
                        asked.map(Duration::from_millis),
                        OBSERVED[*observed].into(),
                        IDENTITIES[*identity].into(),
                    )
                    .now()
                    .unwrap();
                let ttl = asked.unwrap_or(DEFAULT_TTL_MS);
                assert_eq!(info.ttl, Duration::from_millis(ttl));
                assert!(!info.resumed);
                let deadline = self.model.now + ttl;
                let session = ModelSession {
                    ttl,
                    deadline,
                    observed: OBSERVED[*observed],
                    owner: IDENTITIES[*identity],
                    evicted: Vec::new(),
                };
                assert!(
                    self.model
                        .sessions
                        .insert(info.id.clone(), session)
                        .is_none()
                );
                self.sessions.push(info.id);
            }
            Op::Resume { session, actor } => {
                let id = self.session(session, None);
                let actor = self.actor(&id, actor);
                let got = registry.resume_session(&id, &actor);
                match self.model.session_of(&id, &actor.identity) {
                    Ok(s) => {
                        let info = got.expect("an open session resumes");
                        assert_eq!(
                            (info.ttl, info.resumed),
                            (Duration::from_millis(s.ttl), true)
                        );
                        let deadline = self.model.now + s.ttl;
                        self.model.sessions.get_mut(&id).expect("open").deadline = deadline;
                    }
                    Err(want) => assert_eq!(got.map_err(|e| refusal(&e)).err(), Some(want)),
                }
            }
            Op::Close { session } => {
                let id = self.session(session, None);
                let got = registry.close_session(&id).now().map_err(|e| refusal(&e));
                let want = if self.model.sessions.contains_key(&id) {
                    Ok(self.model.end_session(&id, self.model.now))
                } else {
                    Err(Refusal::UnknownSession)
                };
                assert_eq!(got, want, "close {id}");
            }
            Op::Expire { seconds } => {
                let until = self.model.now + seconds * 1000;
                tokio::time::sleep_until(self.start + Duration::from_millis(until)).await;
                let mut due: Vec<(u64, String)> = self
                    .model
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.deadline <= until)
                    .map(|(id, s)| (s.deadline, id.clone()))
                    .collect();
                due.sort();
                for (deadline, id) in due {
                    self.model.end_session(&id, deadline);
                }
                self.model.now = until;
                assert_eq!(Instant::now() - self.start, Duration::from_millis(until));
            }
            Op::Register {
                session,
                actor,
                role,
                namespace,
                host,
                port,
                id,
                metadata,
            } => {
                let session = self.session(session, None);
                let r = Registration {
                    identity: self.actor(&session, actor).identity,
                    session,
                    role: ROLES[*role].into(),
                    namespace: NAMESPACES[*namespace].into(),
                    host: host.map(|h| HOSTS[h].into()),
                    port: port.map_or(0, |p| PORTS[p]),
                    id: IDS[*id].map(Into::into),
                    metadata: metadata
                        .iter()
                        .map(|&(k, v)| (KEYS[k].to_string(), VALUES[v].to_string()))
                        .collect(),
                };
                self.register(r);
            }
            Op::Reassert {
                session,
                actor,
                target,
                port,
            } => {
                let id = self.target(target);
                let session = self.session(session, Some(&id));
                let identity = self.actor(&session, actor).identity;
                let r = match self.model.services.get(&id) {
                    Some(s) => Registration {
                        session,
                        identity,
                        role: match &s.version {
                            Some(v) => format!("{}@{v}", s.name),
                            None => s.name.clone(),
                        },
                        namespace: s.namespace.clone(),
                        host: Some(s.host.clone()),
                        port: if *port { u32::from(s.port) } else { 0 },
                        id: Some(id),
                        metadata: s.metadata.clone().into_iter().collect(),
                    },
                    // Gone: registers it again, under its id.
                    None => Registration {
                        session,
                        identity,
                        role: "web@1.0.0".into(),
                        namespace: String::new(),
                        host: None,
                        port: 0,
                        id: Some(id),
                        metadata: Vec::new(),
                    },
                };
                self.register(r);
            }
            Op::Update {
                session,
                actor,
                target,
                set,
                merge,
                remove,
            } => {
                let id = self.target(target);
                let session = self.session(session, Some(&id));
                let actor = self.actor(&session, actor);
                let set: Vec<(String, String)> = set
                    .iter()
                    .map(|&(k, v)| (KEYS[k].to_string(), VALUES[v].to_string()))
                    .collect();
                let remove: Vec<String> = remove.iter().map(|&k| KEYS[k].to_string()).collect();
                let got = registry
                    .update(
                        &session,
                        &id,
                        MetadataChange {
                            set: set.to_vec(),
                            merge: *merge,
                            remove: remove.clone(),
                        },
                        &actor,
                    )
                    .now();
                // The pairs sent are checked before the session and the
                // registration are looked up.
                let sent_empty_key = set.iter().any(|(k, _)| k.is_empty());
                let want = if sent_empty_key {
                    Err(Refusal::Invalid)
                } else {
                    Ok(())
                }
                .and_then(|()| self.model.authorize(&session, &id, &actor, false))
                .and_then(|()| {
                    let mut metadata = if *merge {
                        self.model.services[&id].metadata.clone()
                    } else {
                        BTreeMap::new()
                    };
                    if *merge {
                        for key in &remove {
                            metadata.remove(key);
                        }
                    }
                    metadata.extend(set);
                    if metadata.contains_key("") {
                        return Err(Refusal::Invalid);
                    }
                    Ok(metadata)
                });
                match (want, got) {
                    (Err(want), got) => {
                        assert_eq!(got.map_err(|e| refusal(&e)).err(), Some(want), "{op:?}");
                    }
                    (Ok(_), Err(e)) => panic!("{op:?} refused: {e}"),
                    (Ok(metadata), Ok(got)) => {
                        let service = self.model.services.get_mut(&id).expect("checked");
                        service.metadata = metadata;
                        assert_eq!(ModelService::of(&got), *service);
                        assert!(got.mod_revision > got.create_revision);
                        self.model.changes += 1;
                    }
                }
            }
            Op::Free {
                session,
                actor,
                target,
            } => {
                let id = self.target(target);
                let session = self.session(session, Some(&id));
                let actor = self.actor(&session, actor);
                let got = registry.free(&session, &id, &actor).now();
                match (self.model.authorize(&session, &id, &actor, true), got) {
                    (Err(want), got) => {
                        assert_eq!(got.map_err(|e| refusal(&e)).err(), Some(want), "{op:?}");
                    }
                    (Ok(()), Err(e)) => panic!("{op:?} refused: {e}"),
                    (Ok(()), Ok(got)) => {
                        let freed = self.model.remove(&id, self.model.now);
                        let by_owner = freed.session == session
                            || (!freed.owner.is_empty() && freed.owner == actor.identity);
                        if !by_owner
                            && let Some(holder) = self.model.sessions.get_mut(&freed.session)
                        {
                            holder.evicted.push(id.clone());
                        }
                        assert_eq!(ModelService::of(&got), freed);
                    }
                }
            }
            Op::Rewatch { watcher, back } => {
                let snapshot = &self.snapshots[(*back).min(self.snapshots.len() - 1)];
                let old = &self.watchers[*watcher];
                let view = snapshot
                    .services
                    .iter()
                    .filter(|s| old.selector.matches(s))
                    .map(|s| (s.id.clone(), s.clone()))
                    .collect();
                let selector = old.selector.clone();
                self.watchers[*watcher] =
                    Watcher::new(&self.registry, selector, snapshot.revision, view);
            }
        }
    }

    /// Everything the registry holds, checked against the model and
    /// against itself.
    fn check(&mut self, op: &Op) {
        let mut everything = Vec::new();
        let mut revision = 0;
        for namespace in ["default", "other"] {
            let (found, r) = self.registry.query(&selector(namespace, "", &[]));
            everything.extend(found);
            revision = r;
        }
        assert_eq!(
            revision - self.first_revision,
            self.model.changes,
            "the revision counts the changes, after {op:?}"
        );
        let mut ports = BTreeMap::new();
        for s in &everything {
            if let Some(other) = ports.insert((s.host.clone(), s.port), s.id.clone()) {
                panic!(
                    "{} and {other} both hold {}, after {op:?}",
                    s.id,
                    s.address()
                );
            }
        }
        let found: BTreeMap<String, ModelService> = everything
            .iter()
            .map(|s| (s.id.clone(), ModelService::of(s)))
            .collect();
        assert_eq!(
            found, self.model.services,
            "the registry and the model, after {op:?}"
        );

        for (watcher, predicate) in self.watchers.iter_mut().zip(&self.predicates) {
            watcher.catch_up();
            let fresh = by_id(self.registry.query(&watcher.selector).0);
            assert_eq!(
                watcher.view, fresh,
                "a watcher of {:?} and a fresh query, after {op:?}",
                watcher.selector
            );
            let want: Vec<&String> = self
                .model
                .services
                .iter()
                .filter(|(_, s)| predicate(s))
                .map(|(id, _)| id)
                .collect();
            assert_eq!(
                fresh.keys().collect::<Vec<_>>(),
                want,
                "{:?}",
                watcher.selector
            );
        }

        self.snapshots.push_front(Snapshot {
            revision,
            services: everything,
        });
        self.snapshots.truncate(12);
    }
}

async fn run(ops: Vec<Op>) {
    let (registry, _reaper) = Registry::new(limits());
    registry.set_policy(Policy::parse(POLICY, "model").unwrap());
    let first_revision = registry.query(&selector("default", "", &[])).1;
    let (selectors, predicates): (Vec<_>, Vec<_>) = selectors().into_iter().unzip();
    let watchers = selectors
        .into_iter()
        .map(|s| Watcher::new(&registry, s, 0, BTreeMap::new()))
        .collect();
    let mut run = Run {
        registry,
        model: Model::default(),
        start: Instant::now(),
        first_revision,
        sessions: Vec::new(),
        ids: ["a", "b", "c", "never"].map(String::from).to_vec(),
        watchers,
        predicates,
        snapshots: VecDeque::new(),
    };
    run.check(&Op::Expire { seconds: 0 });
    // Two sessions open from the start, on two hosts.
    let prelude = [
        Op::Open {
            ttl: 2,
            observed: 0,
            identity: 0,
        },
        Op::Open {
            ttl: 2,
            observed: 1,
            identity: 1,
        },
    ];
    for op in prelude.iter().chain(&ops) {
        run.step(op).await;
        run.check(op);
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(128),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

/// Runs the ops on a fresh registry in a runtime whose clock is paused.
fn check(ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    // The watchers are polled many times in one poll of the test's task;
    // tokio's cooperative budget would make a ready watch look idle.
    runtime.block_on(tokio::task::unconstrained(run(ops)));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_registry_behaves_as_its_model(ops in prop::collection::vec(op(), 1..80)) {
        check(ops);
    }
}
