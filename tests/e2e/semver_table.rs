//! The range table generated from npm's own `semver` package
//! (`scripts/semver-table`), run against Query: for every range, the
//! registered versions it returns are exactly those npm says satisfy it.

use std::collections::{BTreeMap, BTreeSet};

use seaport::pb;

use crate::harness::*;

const TABLE: &str = include_str!("../data/semver-ranges.tsv");

/// range -> version -> satisfies, in file order.
fn table() -> BTreeMap<&'static str, BTreeMap<&'static str, bool>> {
    let mut cases: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for line in TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<_> = line.split('\t').collect();
        let [range, version, expected] = cols[..] else {
            panic!("malformed line {line:?}")
        };
        cases
            .entry(range)
            .or_default()
            .insert(version, expected == "true");
    }
    cases
}

#[tokio::test]
async fn query_agrees_with_npm_semver_on_every_case() {
    let cases = table();
    assert!(
        cases.values().map(BTreeMap::len).sum::<usize>() >= 150,
        "the table has at least 150 cases"
    );
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let versions: BTreeSet<&str> = cases.values().flat_map(|m| m.keys().copied()).collect();
    for v in &versions {
        register(&mut client, &s, &format!("sv@{v}")).await;
    }

    let mut wrong = Vec::new();
    for (range, expected) in &cases {
        let request = pb::QueryRequest {
            pattern: format!("sv@{range}"),
            ..Default::default()
        };
        let found: BTreeSet<String> = match client.query(request).await {
            Ok(r) => r
                .into_inner()
                .services
                .into_iter()
                .map(|s| s.version)
                .collect(),
            Err(e) => {
                wrong.push(format!("{range:?}: refused: {}", e.message()));
                continue;
            }
        };
        for (version, satisfies) in expected {
            if found.contains(*version) != *satisfies {
                wrong.push(format!("{range:?} vs {version}: npm says {satisfies}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
