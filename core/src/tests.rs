//! Time-based behaviour of the core, with tokio's clock paused.

use std::collections::BTreeMap;
use std::time::Duration;

use seaport::FreeReason;
use tokio_stream::StreamExt;

use super::*;

fn selector(pattern: &str) -> Selector {
    Selector {
        namespace: DEFAULT_NAMESPACE.into(),
        pattern: pattern.parse().unwrap(),
        metadata: BTreeMap::new(),
    }
}

async fn register(registry: &Registry, session: &str, role: &str) -> Arc<Service> {
    registry
        .register(
            NewService {
                session_id: session.into(),
                role: role.into(),
                ..Default::default()
            },
            &Actor::default(),
        )
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_session_expires_after_its_ttl_without_pings() {
    let (registry, _guard) = Registry::new(Limits::default());
    let s = registry
        .open_session(
            Some(Duration::from_secs(2)),
            "10.0.0.1".into(),
            String::new(),
        )
        .await
        .unwrap();
    register(&registry, &s.id, "web@1.0.0").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    registry.ping(&s.id).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        registry.query(&selector("web")).0.len(),
        1,
        "a ping extends the session"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        registry.query(&selector("web")).0.is_empty(),
        "silent for the ttl: freed"
    );
    assert!(matches!(
        registry.ping(&s.id),
        Err(RegistryError::UnknownSession)
    ));
}

#[tokio::test(start_paused = true)]
async fn ttl_is_clamped_to_the_bounds() {
    let (registry, _guard) = Registry::new(Limits::default());
    let s = registry
        .open_session(Some(Duration::from_millis(1)), String::new(), String::new())
        .await
        .unwrap();
    assert_eq!(s.ttl, Duration::from_secs(1));
    let s = registry
        .open_session(
            Some(Duration::from_secs(1 << 20)),
            String::new(),
            String::new(),
        )
        .await
        .unwrap();
    assert_eq!(s.ttl, Duration::from_secs(3600));
    let s = registry
        .open_session(None, String::new(), String::new())
        .await
        .unwrap();
    assert_eq!(s.ttl, Duration::from_secs(30), "the default");
}

#[tokio::test(start_paused = true)]
async fn a_watcher_that_falls_behind_is_reset_with_a_fresh_snapshot() {
    let limits = Limits {
        watch_buffer: 4,
        ..Limits::default()
    };
    let (registry, _guard) = Registry::new(limits);
    let s = registry
        .open_session(None, "h".into(), String::new())
        .await
        .unwrap();
    let mut watch = registry.watch(selector("web"), 0);
    assert_eq!(watch.next().await.unwrap().kind, EventKind::Synced);
    for _ in 0..10 {
        register(&registry, &s.id, "web@1.0.0").await;
    }
    let reset = watch.next().await.unwrap();
    assert_eq!(reset.kind, EventKind::Reset);
    let mut existing = 0;
    loop {
        let e = watch.next().await.unwrap();
        match e.kind {
            EventKind::Existing => existing += 1,
            EventKind::Synced => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(existing, 10);
}

#[tokio::test]
async fn a_cancelled_get_leaves_nothing_behind() {
    let (registry, _guard) = Registry::new(Limits::default());
    let waiter = registry.clone();
    let get = tokio::spawn(async move { waiter.get(&selector("web")).await });
    while registry.shared.feed.receiver_count() == 0 {
        tokio::task::yield_now().await;
    }
    get.abort();
    assert!(get.await.unwrap_err().is_cancelled());
    assert_eq!(
        registry.shared.feed.receiver_count(),
        0,
        "the waiter's subscription is gone"
    );
}

#[tokio::test]
async fn get_wakes_when_an_update_brings_a_service_into_its_set() {
    let (registry, _guard) = Registry::new(Limits::default());
    let s = registry
        .open_session(None, "h".into(), String::new())
        .await
        .unwrap();
    let web = register(&registry, &s.id, "web@1.0.0").await;
    let mut wanted = selector("web");
    wanted.metadata.insert("ready".into(), "yes".into());
    let waiter = registry.clone();
    let get = tokio::spawn(async move { waiter.get(&wanted).await });
    while registry.shared.feed.receiver_count() == 0 {
        tokio::task::yield_now().await;
    }
    let change = MetadataChange {
        set: [("ready".to_string(), "yes".to_string())].into(),
        ..Default::default()
    };
    registry
        .update(&s.id, &web.id, change, &Actor::default())
        .await
        .unwrap();
    let (found, _) = get.await.unwrap();
    assert_eq!(found[0].id, web.id);
}

#[tokio::test]
async fn every_table_holds_the_updated_record_and_a_close_empties_them() {
    let (registry, _guard) = Registry::new(Limits::default());
    let s = registry
        .open_session(None, "h".into(), String::new())
        .await
        .unwrap();
    let web = register(&registry, &s.id, "web@1.0.0").await;
    let change = MetadataChange {
        set: [("ready".to_string(), "yes".to_string())].into(),
        ..Default::default()
    };
    let updated = registry
        .update(&s.id, &web.id, change, &Actor::default())
        .await
        .unwrap();
    {
        let state = registry.lock();
        let held = state.ports.holder("h", web.port).unwrap();
        let in_session = state.sessions.open[s.id.as_str()]
            .services
            .get(&web.id)
            .unwrap();
        assert!(Arc::ptr_eq(held, &updated), "the port's holder is current");
        assert!(Arc::ptr_eq(in_session, &updated), "the session's is too");
    }
    assert_eq!(registry.close_session(&s.id).await.unwrap(), 1);
    let state = registry.lock();
    assert!(state.by_id.get(&web.id).is_none());
    assert!(state.ports.holder("h", web.port).is_none());
    assert_eq!(
        Arc::strong_count(&updated),
        3,
        "held only by the test and the history's Updated and Freed changes"
    );
}

#[test]
fn generated_ids_are_128_random_bits_in_lowercase_hex() {
    let ids: Vec<String> = (0..64).map(|_| random_id()).collect();
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
        // The digits are the number they spell: parsing gives them back.
        let n = u128::from_str_radix(id, 16).unwrap();
        assert_eq!(format!("{n:032x}"), *id);
    }
    // Every digit position varies: no nibble of the 128 bits is lost.
    for at in 0..32 {
        let digits: std::collections::HashSet<u8> =
            ids.iter().map(|id| id.as_bytes()[at]).collect();
        assert!(digits.len() > 1, "digit {at} never changes");
    }
}

#[tokio::test]
async fn no_client_can_use_the_servers_own_session() {
    let (registry, _guard) = Registry::new(Limits::default());
    let own = registry
        .register_server(NewService {
            role: "seaport@1.0.0".into(),
            host: "10.0.0.1".into(),
            port: 9090,
            ..Default::default()
        })
        .await
        .unwrap();
    let pinned = own.session_id.to_string();
    let anyone = Actor::default();
    let new = NewService {
        session_id: pinned.clone(),
        role: "web".into(),
        host: "10.0.0.1".into(),
        ..Default::default()
    };
    assert!(matches!(
        registry.register(new, &anyone).await,
        Err(RegistryError::UnknownSession)
    ));
    assert!(matches!(
        registry.free(&pinned, &own.id, &anyone).await,
        Err(RegistryError::UnknownSession)
    ));
    assert!(matches!(
        registry
            .update(&pinned, &own.id, MetadataChange::default(), &anyone)
            .await,
        Err(RegistryError::UnknownSession)
    ));
    assert!(matches!(
        registry.resume_session(&pinned, &anyone),
        Err(RegistryError::UnknownSession)
    ));
    assert_eq!(registry.query(&selector("seaport")).0, [own]);
}

/// A policy that makes `ops` an admin and lets anyone register anything.
const OPS_ADMIN: &str = "admins = [\"ops\"]\n[[allow]]\nidentities = [\"*\"]\nnames = [\"*\"]\n";

/// The reason of each FREED event `watch` has ready.
async fn free_reasons(watch: &mut Watch, count: usize) -> Vec<Option<FreeReason>> {
    let mut reasons = Vec::new();
    while reasons.len() < count {
        let event = watch.next().await.unwrap();
        if event.kind == EventKind::Freed {
            reasons.push(event.reason);
        }
    }
    reasons
}

#[tokio::test(start_paused = true)]
async fn frees_say_why_and_an_admins_is_final() {
    let (registry, _guard) = Registry::new(Limits::default());
    let mut watch = registry.watch(selector("web"), 0);
    registry.set_policy(Policy::parse(OPS_ADMIN, "test").unwrap());
    let alice = Actor {
        identity: "alice".into(),
    };
    let ops = Actor {
        identity: "ops".into(),
    };
    let s = registry
        .open_session(Some(Duration::from_secs(2)), "h".into(), "alice".into())
        .await
        .unwrap();
    let register_as = async |id: &str| {
        registry
            .register(
                NewService {
                    session_id: s.id.clone(),
                    role: "web".into(),
                    id: id.into(),
                    ..Default::default()
                },
                &alice,
            )
            .await
    };
    register_as("mine").await.unwrap();
    register_as("evicted").await.unwrap();
    registry.free(&s.id, "mine", &alice).await.unwrap();
    let admin_session = registry
        .open_session(None, "h".into(), "ops".into())
        .await
        .unwrap();
    registry
        .free(&admin_session.id, "evicted", &ops)
        .await
        .unwrap();
    assert_eq!(
        registry.ping(&s.id).unwrap(),
        [Eviction {
            id: "evicted".into(),
            by: "ops".into()
        }],
        "the holder is told with its next ping"
    );
    assert!(registry.ping(&s.id).unwrap().is_empty(), "once");
    assert!(
        matches!(register_as("evicted").await, Err(RegistryError::Evicted(id)) if id == "evicted"),
        "the session cannot register it again"
    );
    register_as("expiring").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closing = registry
        .open_session(None, "h".into(), "alice".into())
        .await
        .unwrap();
    registry
        .register(
            NewService {
                session_id: closing.id.clone(),
                role: "web".into(),
                ..Default::default()
            },
            &alice,
        )
        .await
        .unwrap();
    registry.close_session(&closing.id).await.unwrap();
    assert_eq!(
        free_reasons(&mut watch, 4).await,
        [
            Some(FreeReason::Owner),
            Some(FreeReason::Admin),
            Some(FreeReason::Expired),
            Some(FreeReason::Closed)
        ]
    );
}

#[tokio::test]
async fn the_policy_decides_who_registers_what() {
    let (registry, _guard) = Registry::new(Limits::default());
    let policy = "[[allow]]\nidentities = [\"web-*\"]\nnames = [\"web\"]\n";
    registry.set_policy(Policy::parse(policy, "test").unwrap());
    let web1 = Actor {
        identity: "web-1".into(),
    };
    let s = registry
        .open_session(None, "h".into(), "web-1".into())
        .await
        .unwrap();
    let new = |role: &str| NewService {
        session_id: s.id.clone(),
        role: role.into(),
        ..Default::default()
    };
    registry.register(new("web@1.0.0"), &web1).await.unwrap();
    let refused = registry.register(new("db@1.0.0"), &web1).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "identity \"web-1\" may not register \"db\"; the server's --policy allows it other names only"
    );
    assert_eq!(registry.query(&selector("")).0.len(), 1, "changed nothing");
}
