//! Register, Update and Free: the rules and every error they give.

use std::collections::HashMap;

use seaport::pb;
use tonic::Code;

use seaport_testkit::*;

#[tokio::test]
async fn alloc_gives_a_port_in_range_on_the_clients_address() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let web = register(&mut client, &s, "web@1.2.3").await;
    assert!((10000..=65535).contains(&web.port), "port {}", web.port);
    assert_eq!(web.host, "127.0.0.1");
    assert_eq!((web.name.as_str(), web.version.as_str()), ("web", "1.2.3"));
    assert_eq!(web.namespace, "default");
    assert_eq!(web.id.len(), 32);
    let found = query(&mut client, "web").await;
    assert_eq!(found, vec![web]);
}

#[tokio::test]
async fn explicit_host_port_and_id_are_kept() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let request = pb::RegisterRequest {
        host: "db-1.internal".into(),
        port: 5432,
        id: "pg-main".into(),
        ..register_request(&s, "db")
    };
    let db = register_with(&mut client, request).await;
    assert_eq!(
        (
            db.host.as_str(),
            db.port,
            db.id.as_str(),
            db.version.as_str()
        ),
        ("db-1.internal", 5432, "pg-main", "")
    );
}

#[tokio::test]
async fn free_by_id_and_its_errors() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let owner = open(&mut client, 0).await;
    let other = open(&mut client, 0).await;
    let web = register(&mut client, &owner, "web@1.0.0").await;

    let by_other = client
        .free(pb::FreeRequest {
            session_id: other.id.clone(),
            id: web.id.clone(),
        })
        .await;
    assert_status(
        by_other,
        Code::PermissionDenied,
        "belongs to another session; only its owner",
    );
    let unknown_session = client
        .free(pb::FreeRequest {
            session_id: "gone".into(),
            id: web.id.clone(),
        })
        .await;
    assert_status(unknown_session, Code::NotFound, "the session is not open");

    let freed = client
        .free(pb::FreeRequest {
            session_id: owner.id.clone(),
            id: web.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(freed.into_inner().service.unwrap().id, web.id);
    assert!(query(&mut client, "web").await.is_empty());
    let again = client
        .free(pb::FreeRequest {
            session_id: owner.id.clone(),
            id: web.id.clone(),
        })
        .await;
    assert_status(again, Code::NotFound, "no service with id");
}

#[tokio::test]
async fn metadata_round_trips_and_updates_replace_or_merge() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let metadata: HashMap<_, _> = [
        ("zone".to_string(), "a".to_string()),
        ("weight".into(), "3".into()),
    ]
    .into();
    let web = register_with(
        &mut client,
        pb::RegisterRequest {
            metadata: metadata.clone(),
            ..register_request(&s, "web@1.0.0")
        },
    )
    .await;
    assert_eq!(query(&mut client, "web").await[0].metadata, metadata);

    let update = |set: &[(&str, &str)], merge: bool, remove: &[&str]| pb::UpdateRequest {
        session_id: s.id.clone(),
        id: web.id.clone(),
        metadata: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        merge,
        remove_keys: remove.iter().map(|k| k.to_string()).collect(),
    };
    let merged = client
        .update(update(&[("zone", "b")], true, &["weight"]))
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(
        merged.metadata,
        [("zone".to_string(), "b".to_string())].into()
    );
    assert!(merged.mod_revision > web.mod_revision);
    assert_eq!(merged.create_revision, web.create_revision);
    let replaced = client
        .update(update(&[("tier", "gold")], false, &[]))
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(
        replaced.metadata,
        [("tier".to_string(), "gold".to_string())].into()
    );
    assert_eq!(
        query(&mut client, "web").await[0].metadata,
        replaced.metadata
    );

    let other = open(&mut client, 0).await;
    let r = client
        .update(pb::UpdateRequest {
            session_id: other.id.clone(),
            ..update(&[], false, &[])
        })
        .await;
    assert_status(r, Code::PermissionDenied, "belongs to another session");
    let big = "x".repeat(5000);
    let r = client.update(update(&[("blob", &big)], true, &[])).await;
    assert_status(
        r,
        Code::InvalidArgument,
        "metadata value of \"blob\" is 5000 bytes; the limit is 4096",
    );
}

#[tokio::test]
async fn bad_registrations_are_refused_with_what_to_fix_and_change_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let before = client
        .query(pb::QueryRequest::default())
        .await
        .unwrap()
        .into_inner();

    let cases: Vec<(pb::RegisterRequest, Code, &str)> = vec![
        (
            register_request(&s, "web@1.2"),
            Code::InvalidArgument,
            "not an exact semver such as 1.2.3",
        ),
        (
            register_request(&s, "Web@1.2.3"),
            Code::InvalidArgument,
            "use lowercase letters",
        ),
        (
            register_request(&s, ""),
            Code::InvalidArgument,
            "service name is empty",
        ),
        (
            pb::RegisterRequest {
                port: 70000,
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "port 70000 is out of range",
        ),
        (
            pb::RegisterRequest {
                namespace: "Prod".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "namespace \"Prod\"",
        ),
        (
            pb::RegisterRequest {
                host: "a b".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: "h:80".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: "a;b|c$(x)".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: "bücher.example".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: "[::1]".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: "-web.internal".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: "a..b".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "is neither an IP address nor a host name",
        ),
        (
            pb::RegisterRequest {
                host: format!("{}.internal", "a".repeat(250)),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "host is 259 bytes long; the limit is 253",
        ),
        (
            pb::RegisterRequest {
                id: "a/b".into(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "id \"a/b\" is not valid",
        ),
        (
            pb::RegisterRequest {
                metadata: (0..65).map(|i| (format!("k{i}"), String::new())).collect(),
                ..register_request(&s, "web")
            },
            Code::InvalidArgument,
            "metadata has 65 entries; the limit is 64",
        ),
        (
            pb::RegisterRequest {
                session_id: "nope".into(),
                ..register_request(&s, "web")
            },
            Code::NotFound,
            "the session is not open",
        ),
    ];
    for (request, code, needle) in cases {
        assert_status(client.register(request).await, code, needle);
    }
    let after = client
        .query(pb::QueryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "refused registrations changed nothing");
}

#[tokio::test]
async fn re_asserting_an_id_is_idempotent_and_other_sessions_cannot_take_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let request = pb::RegisterRequest {
        id: "web-1".into(),
        ..register_request(&s, "web@1.0.0")
    };
    let first = register_with(&mut client, request.clone()).await;
    let revision = client
        .query(pb::QueryRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    let again = register_with(
        &mut client,
        pb::RegisterRequest {
            port: first.port,
            ..request.clone()
        },
    )
    .await;
    assert_eq!(again, first);
    let revision_after = client
        .query(pb::QueryRequest::default())
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(revision_after, revision, "a re-assert changes nothing");

    let moved = client
        .register(pb::RegisterRequest {
            port: first.port + 1,
            ..request.clone()
        })
        .await;
    assert_status(
        moved,
        Code::AlreadyExists,
        "this session already registered id \"web-1\" as web@1.0.0",
    );
    let other = open(&mut client, 0).await;
    let stolen = client
        .register(pb::RegisterRequest {
            session_id: other.id.clone(),
            ..request
        })
        .await;
    assert_status(
        stolen,
        Code::AlreadyExists,
        "id \"web-1\" is held by another session",
    );
}

#[tokio::test]
async fn a_session_may_hold_only_so_many_registrations() {
    let mut config = test_config();
    config.limits.max_registrations_per_session = 2;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    register(&mut client, &s, "a").await;
    register(&mut client, &s, "b").await;
    let r = client.register(register_request(&s, "c")).await;
    assert_status(
        r,
        Code::ResourceExhausted,
        "session holds 2 registrations, the limit",
    );
}

#[tokio::test]
async fn after_a_restart_a_client_gets_its_ids_and_ports_back() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let web = register(&mut client, &s, "web@1.2.3").await;
    server.stop().await;

    let server = TestServer::start_on(addr, test_config()).await;
    let mut client = server.client().await;
    assert!(
        query(&mut client, "web").await.is_empty(),
        "a restarted server starts empty"
    );
    let s = open(&mut client, 0).await;
    let back = register_with(
        &mut client,
        pb::RegisterRequest {
            id: web.id.clone(),
            port: web.port,
            ..register_request(&s, "web@1.2.3")
        },
    )
    .await;
    assert_eq!(
        (back.id, back.port, back.host),
        (web.id, web.port, web.host)
    );
}

#[tokio::test]
async fn the_server_registers_itself_as_seaport() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let me = query(
        &mut client,
        &format!("seaport@{}", env!("CARGO_PKG_VERSION")),
    )
    .await;
    assert_eq!(me.len(), 1);
    assert_eq!(
        (me[0].host.as_str(), me[0].port),
        ("127.0.0.1", u32::from(server.addr.port()))
    );
}
