//! The registry's contract, run on both stores: the memory store in this
//! process and the etcd store on a real etcd that each test starts. Every
//! test is written once, against `Registry`, and generated for each store
//! by `contract!`: register, re-assert, ids and ports taken, update, free
//! and ownership, admins' frees, close and expiry with their reasons, the
//! watch's events, a watch resumed by revision, and draining. Then, on etcd alone,
//! two registries on one etcd (two servers): ownership, policy and an
//! admin's free hold across them.

use std::time::Duration;

use seaport::{EventKind, FreeReason};
use seaport_core::{
    Actor, Limits, MetadataChange, NewService, Policy, Registry, RegistryError, Selector, Watch,
    WatchEvent,
};
use seaport_etcd::{EtcdOptions, EtcdStore, Unobserved};
use seaport_testkit::{EtcdCluster, PATIENCE};
use tokio_stream::StreamExt;

/// A registry on one store, and what keeps that store alive.
struct Subject {
    registry: Registry,
    _keep: Keep,
}

enum Keep {
    Memory(#[allow(dead_code)] seaport_core::ReaperGuard),
    Etcd(#[allow(dead_code)] EtcdCluster),
}

fn limits() -> Limits {
    Limits {
        port_range: 20000..=20049,
        port_quarantine: Duration::from_millis(500),
        min_ttl: Duration::from_millis(100),
        max_registrations_per_session: 60,
        ..Limits::default()
    }
}

async fn memory() -> Subject {
    let (registry, guard) = Registry::new(limits());
    Subject {
        registry,
        _keep: Keep::Memory(guard),
    }
}

async fn etcd() -> Subject {
    let cluster = EtcdCluster::start(1).await;
    let options = EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: "/contract".into(),
        ca: None,
        cert: None,
        key: None,
    };
    let registry = EtcdStore::start(&options, limits(), std::sync::Arc::new(Unobserved))
        .await
        .unwrap();
    synced(&registry).await;
    Subject {
        registry,
        _keep: Keep::Etcd(cluster),
    }
}

/// Generates each contract test for both stores.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(#[tokio::test] async fn $name() { super::$name(super::memory().await.registry).await; })*
        }
        mod on_etcd {
            $(#[tokio::test] async fn $name() { super::$name(super::etcd().await.registry).await; })*
        }
    };
}

contract!(
    registers_reasserts_and_refuses_what_is_taken,
    updates_and_frees_only_by_the_owner,
    admins_free_and_it_is_final,
    a_close_frees_all_with_its_reason,
    a_silent_session_expires_and_a_pinged_one_lives,
    ports_assigned_on_one_host_never_repeat,
    a_watch_sees_every_change_in_order,
    a_watch_resumed_by_revision_gets_exactly_what_followed,
    a_drained_registration_is_listed_but_not_got,
);

fn actor(identity: &str) -> Actor {
    Actor {
        identity: identity.into(),
    }
}

fn selector(registry: &Registry, pattern: &str) -> Selector {
    registry
        .selector(pattern, "", Vec::<(String, String)>::new())
        .unwrap()
}

fn new(session: &str, role: &str) -> NewService {
    NewService {
        session_id: session.into(),
        role: role.into(),
        host: "10.0.0.1".into(),
        ..Default::default()
    }
}

fn with_id(new: NewService, id: &str) -> NewService {
    NewService {
        id: id.into(),
        ..new
    }
}

async fn open(registry: &Registry, owner: &str) -> String {
    registry
        .open_session(
            Some(Duration::from_secs(10)),
            "10.0.0.9".into(),
            owner.into(),
        )
        .await
        .unwrap()
        .id
}

/// The next event of `watch` that is not a snapshot marker.
async fn next(watch: &mut Watch) -> WatchEvent {
    loop {
        let event = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("an event in time")
            .expect("the watch goes on");
        if event.kind != EventKind::Synced {
            return event;
        }
    }
}

async fn registers_reasserts_and_refuses_what_is_taken(registry: Registry) {
    let s = open(&registry, "").await;
    let other = open(&registry, "").await;
    let web = registry
        .register(with_id(new(&s, "web@1.2.3"), "web-1"), &actor(""))
        .await
        .unwrap();
    assert!((20000..=20049).contains(&web.port));
    assert_eq!(web.create_revision, web.mod_revision);
    let again = registry
        .register(with_id(new(&s, "web@1.2.3"), "web-1"), &actor(""))
        .await
        .unwrap();
    assert_eq!(
        (again.port, again.create_revision),
        (web.port, web.create_revision),
        "a re-assert answers the registration as it is"
    );
    let taken = registry
        .register(with_id(new(&other, "web@1.2.3"), "web-1"), &actor(""))
        .await;
    assert!(matches!(taken, Err(RegistryError::IdTaken(_))), "{taken:?}");
    let port_taken = registry
        .register(
            NewService {
                port: u32::from(web.port),
                ..new(&other, "db@1.0.0")
            },
            &actor(""),
        )
        .await;
    assert!(
        matches!(port_taken, Err(RegistryError::PortTaken { ref holder_id, .. }) if holder_id == "web-1"),
        "{port_taken:?}"
    );
    let unknown = registry
        .register(new("no-such-session", "web"), &actor(""))
        .await;
    assert!(matches!(unknown, Err(RegistryError::UnknownSession)));
    let (found, revision) = registry.query(&selector(&registry, "web@1.x"));
    assert_eq!(found.len(), 1);
    assert!(revision >= web.mod_revision);
}

async fn updates_and_frees_only_by_the_owner(registry: Registry) {
    let alice = open(&registry, "alice").await;
    let bob = open(&registry, "bob").await;
    let web = registry
        .register(new(&alice, "web@1.0.0"), &actor("alice"))
        .await
        .unwrap();
    let change = MetadataChange {
        set: vec![("zone".into(), "a".into())],
        ..Default::default()
    };
    let refused = registry
        .update(&bob, &web.id, change.clone(), &actor("bob"))
        .await;
    assert!(
        matches!(refused, Err(RegistryError::NotOwner { .. })),
        "{refused:?}"
    );
    let updated = registry
        .update(&alice, &web.id, change, &actor("alice"))
        .await
        .unwrap();
    assert_eq!(updated.metadata.get("zone").map(String::as_str), Some("a"));
    assert!(updated.mod_revision > web.mod_revision);
    assert_eq!(updated.create_revision, web.create_revision);
    let refused = registry.free(&bob, &web.id, &actor("bob")).await;
    assert!(
        matches!(refused, Err(RegistryError::NotOwner { .. })),
        "{refused:?}"
    );
    // Under mTLS, any session of the owning identity may free it.
    let alice_again = open(&registry, "alice").await;
    registry
        .free(&alice_again, &web.id, &actor("alice"))
        .await
        .unwrap();
    assert!(registry.query(&selector(&registry, "web")).0.is_empty());
    let gone = registry.free(&alice, &web.id, &actor("alice")).await;
    assert!(
        matches!(gone, Err(RegistryError::UnknownService(_))),
        "{gone:?}"
    );
}

async fn admins_free_and_it_is_final(registry: Registry) {
    registry.set_policy(
        Policy::parse(
            "admins = [\"ops\"]\n[[allow]]\nidentities = [\"*\"]\nnames = [\"*\"]\n",
            "test",
        )
        .unwrap(),
    );
    let mut watch = registry.watch(selector(&registry, "web"), 0);
    let alice = open(&registry, "alice").await;
    let ops = open(&registry, "ops").await;
    let web = registry
        .register(with_id(new(&alice, "web"), "web-1"), &actor("alice"))
        .await
        .unwrap();
    registry.free(&ops, &web.id, &actor("ops")).await.unwrap();
    assert_eq!(next(&mut watch).await.kind, EventKind::Registered);
    let freed = next(&mut watch).await;
    assert_eq!(
        (freed.kind, freed.reason),
        (EventKind::Freed, Some(FreeReason::Admin))
    );
    let notices = registry.ping(&alice).unwrap();
    assert_eq!(
        notices.len(),
        1,
        "the holder hears of it with its next ping"
    );
    assert_eq!(
        (notices[0].id.as_str(), notices[0].by.as_str()),
        ("web-1", "ops")
    );
    let again = registry
        .register(with_id(new(&alice, "web"), "web-1"), &actor("alice"))
        .await;
    assert!(matches!(again, Err(RegistryError::Evicted(_))), "{again:?}");
}

async fn a_drained_registration_is_listed_but_not_got(registry: Registry) {
    registry.set_policy(
        Policy::parse(
            "admins = [\"ops\"]\n[[allow]]\nidentities = [\"*\"]\nnames = [\"*\"]\n",
            "test",
        )
        .unwrap(),
    );
    let alice = open(&registry, "alice").await;
    let bob = open(&registry, "bob").await;
    let ops = open(&registry, "ops").await;
    let web = registry
        .register(new(&alice, "web@1.0.0"), &actor("alice"))
        .await
        .unwrap();
    assert!(!web.draining);
    let mut watch = registry.watch(selector(&registry, "web"), 0);
    assert_eq!(next(&mut watch).await.kind, EventKind::Existing);
    let refused = registry.drain(&bob, &web.id, &actor("bob")).await;
    assert!(
        matches!(refused, Err(RegistryError::NotOwner { .. })),
        "{refused:?}"
    );
    let unknown = registry.drain(&alice, "no-such-id", &actor("alice")).await;
    assert!(
        matches!(unknown, Err(RegistryError::UnknownService(_))),
        "{unknown:?}"
    );
    let drained = registry
        .drain(&alice, &web.id, &actor("alice"))
        .await
        .unwrap();
    assert!(drained.draining);
    assert!(drained.mod_revision > web.mod_revision);
    let event = next(&mut watch).await;
    assert_eq!(event.kind, EventKind::Updated);
    assert!(event.service.unwrap().draining);
    let again = registry.drain(&ops, &web.id, &actor("ops")).await.unwrap();
    assert_eq!(
        again.mod_revision, drained.mod_revision,
        "draining twice changes nothing"
    );

    let (listed, _) = registry.query(&selector(&registry, "web"));
    assert!(listed.len() == 1 && listed[0].draining, "{listed:?}");
    let got = tokio::time::timeout(
        Duration::from_millis(200),
        registry.get(&selector(&registry, "web")),
    )
    .await;
    assert!(got.is_err(), "get waits while every match drains: {got:?}");
    let change = MetadataChange {
        set: vec![("zone".into(), "a".into())],
        ..Default::default()
    };
    let updated = registry
        .update(&alice, &web.id, change, &actor("alice"))
        .await
        .unwrap();
    assert!(updated.draining, "an update keeps it draining");
    let fresh = registry
        .register(new(&alice, "web@1.0.1"), &actor("alice"))
        .await
        .unwrap();
    let (got, _) = tokio::time::timeout(PATIENCE, registry.get(&selector(&registry, "web")))
        .await
        .expect("get answers once one match does not drain");
    assert_eq!(
        got.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [fresh.id.as_str()]
    );
}

async fn a_close_frees_all_with_its_reason(registry: Registry) {
    let mut watch = registry.watch(selector(&registry, "web"), 0);
    let s = open(&registry, "").await;
    for _ in 0..3 {
        registry
            .register(new(&s, "web@2.0.0"), &actor(""))
            .await
            .unwrap();
    }
    assert_eq!(registry.close_session(&s).await.unwrap(), 3);
    assert!(registry.query(&selector(&registry, "web")).0.is_empty());
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let event = next(&mut watch).await;
        if event.kind == EventKind::Freed {
            reasons.push(event.reason);
        }
    }
    assert_eq!(reasons, [Some(FreeReason::Closed); 3]);
    assert!(matches!(
        registry.ping(&s),
        Err(RegistryError::UnknownSession)
    ));
}

async fn a_silent_session_expires_and_a_pinged_one_lives(registry: Registry) {
    let mut watch = registry.watch(selector(&registry, "web"), 0);
    let ttl = Some(Duration::from_secs(1));
    let silent = registry
        .open_session(ttl, "h".into(), String::new())
        .await
        .unwrap()
        .id;
    let pinged = registry
        .open_session(ttl, "h".into(), String::new())
        .await
        .unwrap()
        .id;
    registry
        .register(new(&silent, "web@1.0.0"), &actor(""))
        .await
        .unwrap();
    registry
        .register(new(&pinged, "web@2.0.0"), &actor(""))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let freed = loop {
        registry.ping(&pinged).unwrap();
        tokio::select! {
            event = next(&mut watch) => if event.kind == EventKind::Freed { break event },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        assert!(started.elapsed() < PATIENCE, "the silent session expires");
    };
    assert_eq!(freed.reason, Some(FreeReason::Expired));
    assert_eq!(
        freed.service.unwrap().version.as_ref().unwrap().to_string(),
        "1.0.0",
        "only the silent session's"
    );
    // The pinged one outlives a few more of its ttls.
    for _ in 0..15 {
        registry.ping(&pinged).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(registry.query(&selector(&registry, "web")).0.len(), 1);
}

async fn ports_assigned_on_one_host_never_repeat(registry: Registry) {
    let s = open(&registry, "").await;
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..50 {
        let service = registry
            .register(new(&s, &format!("svc{i}")), &actor(""))
            .await
            .unwrap();
        assert!(
            ports.insert(service.port),
            "port {} given twice",
            service.port
        );
    }
    let full = registry.register(new(&s, "one-more"), &actor("")).await;
    assert!(
        matches!(full, Err(RegistryError::PortsExhausted { .. })),
        "{full:?}"
    );
}

/// (kind, version, reason) of `count` change events of `watch`.
async fn changes(
    watch: &mut Watch,
    count: usize,
) -> Vec<(EventKind, String, Option<FreeReason>, u64)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = next(watch).await;
        if event.kind == EventKind::Existing {
            continue;
        }
        let version = event
            .service
            .as_ref()
            .and_then(|s| s.version.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default();
        seen.push((event.kind, version, event.reason, event.revision));
    }
    seen
}

async fn a_watch_sees_every_change_in_order(registry: Registry) {
    let mut watch = registry.watch(selector(&registry, "web@1.x"), 0);
    let s = open(&registry, "").await;
    let one = registry
        .register(new(&s, "web@1.0.0"), &actor(""))
        .await
        .unwrap();
    registry
        .register(new(&s, "web@2.0.0"), &actor(""))
        .await
        .unwrap();
    let change = MetadataChange {
        set: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    registry
        .update(&s, &one.id, change, &actor(""))
        .await
        .unwrap();
    registry.free(&s, &one.id, &actor("")).await.unwrap();
    let seen = changes(&mut watch, 3).await;
    let kinds: Vec<_> = seen
        .iter()
        .map(|(k, v, r, _)| (*k, v.as_str(), *r))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Registered, "1.0.0", None),
            (EventKind::Updated, "1.0.0", None),
            (EventKind::Freed, "1.0.0", Some(FreeReason::Owner)),
        ],
        "web@2 is not in the set"
    );
    assert!(
        seen.windows(2).all(|w| w[0].3 < w[1].3),
        "revisions grow: {seen:?}"
    );
}

async fn a_watch_resumed_by_revision_gets_exactly_what_followed(registry: Registry) {
    let s = open(&registry, "").await;
    let first = registry
        .register(new(&s, "web@1.0.0"), &actor(""))
        .await
        .unwrap();
    let since = registry.query(&selector(&registry, "web")).1;
    let second = registry
        .register(new(&s, "web@1.1.0"), &actor(""))
        .await
        .unwrap();
    registry.free(&s, &first.id, &actor("")).await.unwrap();
    let mut resumed = registry.watch(selector(&registry, "web"), since);
    let seen = changes(&mut resumed, 2).await;
    let kinds: Vec<_> = seen.iter().map(|(k, v, _, _)| (*k, v.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Registered, "1.1.0"),
            (EventKind::Freed, "1.0.0")
        ]
    );
    assert_eq!(seen[0].3, second.create_revision);
    let marker = tokio::time::timeout(PATIENCE, resumed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marker.kind, EventKind::Synced, "then the replay ends");
}

/// Two registries on one etcd, as two seaportd: ownership, policy and an
/// admin's free hold across them as on one.
#[tokio::test]
async fn ownership_and_policy_hold_across_servers() {
    let cluster = EtcdCluster::start(1).await;
    let options = EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: "/across".into(),
        ca: None,
        cert: None,
        key: None,
    };
    let policy =
        "admins = [\"ops\"]\n[[allow]]\nidentities = [\"alice\", \"ops\"]\nnames = [\"web\"]\n";
    let mut servers = Vec::new();
    for _ in 0..2 {
        let registry = EtcdStore::start(&options, limits(), std::sync::Arc::new(Unobserved))
            .await
            .unwrap();
        synced(&registry).await;
        registry.set_policy(Policy::parse(policy, "test").unwrap());
        servers.push(registry);
    }
    let (a, b) = (&servers[0], &servers[1]);
    let on_a = open(a, "alice").await;
    let web = a
        .register(new(&on_a, "web@1.0.0"), &actor("alice"))
        .await
        .unwrap();
    let bob = open(b, "bob").await;
    let refused = b.register(new(&bob, "web@1.0.0"), &actor("bob")).await;
    assert!(
        matches!(refused, Err(RegistryError::NotAllowed { .. })),
        "{refused:?}"
    );
    let refused = b.free(&bob, &web.id, &actor("bob")).await;
    assert!(
        matches!(refused, Err(RegistryError::NotOwner { .. })),
        "{refused:?}"
    );
    // alice, through the other server and another session of hers.
    let on_b = open(b, "alice").await;
    let updated = b
        .update(
            &on_b,
            &web.id,
            MetadataChange {
                set: vec![("via".into(), "b".into())],
                ..Default::default()
            },
            &actor("alice"),
        )
        .await
        .unwrap();
    assert_eq!(updated.metadata.get("via").map(String::as_str), Some("b"));
    b.free(&on_b, &web.id, &actor("alice")).await.unwrap();
    // An admin's free through one server reaches the holder on the other.
    let again = a
        .register(with_id(new(&on_a, "web@1.0.0"), "web-2"), &actor("alice"))
        .await
        .unwrap();
    let ops = open(b, "ops").await;
    b.free(&ops, &again.id, &actor("ops")).await.unwrap();
    let mut notices = Vec::new();
    let started = tokio::time::Instant::now();
    while notices.is_empty() {
        notices = a.ping(&on_a).unwrap();
        assert!(started.elapsed() < PATIENCE, "the holder hears of it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(notices[0].id, "web-2");
    let refused = a
        .register(with_id(new(&on_a, "web@1.0.0"), "web-2"), &actor("alice"))
        .await;
    assert!(
        matches!(refused, Err(RegistryError::Evicted(_))),
        "{refused:?}"
    );
}

/// A server started after many registrations loads them all, page by
/// page, and sees the same revision.
#[tokio::test]
async fn a_server_started_later_loads_the_whole_registry() {
    let cluster = EtcdCluster::start(1).await;
    let options = EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: "/later".into(),
        ca: None,
        cert: None,
        key: None,
    };
    let first = EtcdStore::start(&options, limits(), std::sync::Arc::new(Unobserved))
        .await
        .unwrap();
    synced(&first).await;
    let mut calls = tokio::task::JoinSet::new();
    for s in 0..10 {
        let session = open(&first, "").await;
        for i in 0..50 {
            let (registry, session) = (first.clone(), session.clone());
            calls.spawn(async move {
                let new = NewService {
                    host: format!("10.0.{s}.{i}"),
                    ..new(&session, "web@1.0.0")
                };
                registry.register(new, &actor("")).await.unwrap();
            });
        }
    }
    calls.join_all().await;
    let (all, revision) = first.query(&selector(&first, "web"));
    assert_eq!(all.len(), 500);
    let later = EtcdStore::start(&options, limits(), std::sync::Arc::new(Unobserved))
        .await
        .unwrap();
    synced(&later).await;
    let (loaded, at) = later.query(&selector(&later, "web"));
    assert_eq!(loaded.len(), 500, "every page loaded");
    assert!(at >= revision);
}

async fn synced(registry: &Registry) {
    let mut health = registry.health();
    tokio::time::timeout(
        PATIENCE,
        health.wait_for(|h| *h == seaport_core::StoreHealth::Synced),
    )
    .await
    .expect("the index loads")
    .unwrap();
}
