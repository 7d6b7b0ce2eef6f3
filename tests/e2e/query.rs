//! Query and Get: semver ranges, ordering, namespaces, metadata filters,
//! waiting and deadlines.

use std::time::Duration;

use seaport::pb;
use tonic::Code;

use seaport_testkit::*;

fn versions(services: &[pb::Service]) -> Vec<&str> {
    services.iter().map(|s| s.version.as_str()).collect()
}

#[tokio::test]
async fn versions_select_by_semver_range() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    for v in ["0.1.2", "1.2.3", "1.3.0"] {
        register(&mut client, &s, &format!("beep@{v}")).await;
    }
    assert_eq!(
        versions(&query(&mut client, "beep").await),
        ["1.3.0", "1.2.3", "0.1.2"]
    );
    assert_eq!(versions(&query(&mut client, "beep@1.2.x").await), ["1.2.3"]);
    assert_eq!(
        versions(&query(&mut client, "beep@>1.2.0").await),
        ["1.3.0", "1.2.3"]
    );
    assert_eq!(
        versions(&query(&mut client, "beep@1.2.3").await),
        ["1.2.3"],
        "a bare version is exact"
    );
    assert!(query(&mut client, "beep@2.x").await.is_empty());
}

#[tokio::test]
async fn an_empty_range_is_star_as_in_npm() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    for role in ["beep@0.1.2", "beep@1.3.0-beta", "beep"] {
        register(&mut client, &s, role).await;
    }
    for pattern in ["beep@", "beep@ ", "beep@*", "beep@* || 1.3.0-beta"] {
        assert_eq!(
            versions(&query(&mut client, pattern).await),
            ["0.1.2"],
            "{pattern:?}: every release, no prerelease, no unversioned service"
        );
    }
}

#[tokio::test]
async fn results_are_ordered_by_name_then_version_descending_then_id() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    for (role, id) in [
        ("b@1.0.0", "z"),
        ("a@1.0.0", "y"),
        ("b@2.0.0", "x"),
        ("b@1.0.0", "w"),
        ("b", "v"),
    ] {
        register_with(
            &mut client,
            pb::RegisterRequest {
                id: id.into(),
                ..register_request(&s, role)
            },
        )
        .await;
    }
    let all = query(&mut client, "").await;
    let order: Vec<_> = all
        .iter()
        .filter(|s| s.name != "seaport")
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(order, ["y", "x", "w", "z", "v"]);
}

#[tokio::test]
async fn an_invalid_range_is_an_error_never_a_string_match() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (pattern, needle) in [
        ("web@1.2.3.4", "has more than three version parts"),
        ("web@>>1", "has two operators"),
        ("web@latest", "is not a version"),
        ("web@18446744073709551615.x", "has a number too large"),
        ("web@v=1.2.3", "has a prefix npm does not accept"),
        ("web@1.2.3-", "ends its version in `-`"),
        ("web@1.2.3 -", "is a hyphen with a side missing"),
        ("web@x.1.2", "has a wildcard before a number"),
        ("Web", "use lowercase letters"),
    ] {
        let r = client
            .query(pb::QueryRequest {
                pattern: pattern.into(),
                ..Default::default()
            })
            .await;
        assert_status(r, Code::InvalidArgument, needle);
    }
}

#[tokio::test]
async fn namespaces_and_metadata_filters_narrow_a_query() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let zone = |z: &str| [("zone".to_string(), z.to_string())].into();
    register_with(
        &mut client,
        pb::RegisterRequest {
            metadata: zone("a"),
            ..register_request(&s, "web@1.0.0")
        },
    )
    .await;
    register_with(
        &mut client,
        pb::RegisterRequest {
            metadata: zone("b"),
            ..register_request(&s, "web@1.0.1")
        },
    )
    .await;
    register_with(
        &mut client,
        pb::RegisterRequest {
            namespace: "staging".into(),
            ..register_request(&s, "web@9.0.0")
        },
    )
    .await;

    let in_a = client
        .query(pb::QueryRequest {
            pattern: "web".into(),
            metadata: zone("a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&in_a.services), ["1.0.0"]);
    let staging = client
        .query(pb::QueryRequest {
            pattern: "web".into(),
            namespace: "staging".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&staging.services), ["9.0.0"]);
    assert_eq!(
        versions(&query(&mut client, "web").await),
        ["1.0.1", "1.0.0"]
    );
}

#[tokio::test]
async fn get_waits_for_a_later_registration() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut waiter = client.clone();
    let get = tokio::spawn(async move {
        waiter
            .get(pb::GetRequest {
                pattern: "web@1.2.x".into(),
                ..Default::default()
            })
            .await
    });
    let s = open(&mut client, 0).await;
    register(&mut client, &s, "web@2.0.0").await;
    register(&mut client, &s, "api@1.2.0").await;
    let web = register(&mut client, &s, "web@1.2.7").await;
    let got = tokio::time::timeout(PATIENCE, get)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got.services, vec![web]);
}

#[tokio::test]
async fn get_returns_at_once_when_something_matches() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let web = register(&mut client, &s, "web@1.2.3").await;
    let got = client
        .get(pb::GetRequest {
            pattern: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().services, vec![web]);
}

#[tokio::test]
async fn get_ends_with_deadline_exceeded() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let r = client
        .get(pb::GetRequest {
            pattern: "nobody".into(),
            timeout_ms: 200,
            ..Default::default()
        })
        .await;
    assert_status(r, Code::DeadlineExceeded, "no service matched \"nobody\"");

    let mut request = tonic::Request::new(pb::GetRequest {
        pattern: "nobody".into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    assert_status(
        client.get(request).await,
        Code::DeadlineExceeded,
        "no service matched",
    );
}
