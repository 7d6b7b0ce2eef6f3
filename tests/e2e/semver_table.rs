//! The range table generated from npm's own `semver` package
//! (`scripts/semver-table`), a sample of it run against Query: for every
//! sampled range, the registered versions it returns are exactly those npm
//! says satisfy it, and a range npm rejects is refused. Every row runs
//! against the matcher directly in `src/range.rs`; this checks the path
//! through a real server (pattern parsing, errors, the index).

use std::collections::{BTreeMap, BTreeSet};

use seaport::pb;
use tonic::Code;

use seaport_testkit::*;

const TABLE: &str = include_str!("../data/semver-ranges.tsv");

/// Every this-many-th range of the table is sampled (deterministically).
const EVERY: usize = 30;

/// What npm says about one range: rejected, or version -> satisfies.
enum Expected {
    Invalid,
    Valid(BTreeMap<&'static str, bool>),
}

/// The table's ranges in file order.
fn table() -> Vec<(&'static str, Expected)> {
    let mut ranges: Vec<(&str, Expected)> = Vec::new();
    for line in TABLE.lines().filter(|l| !l.starts_with('#')) {
        let [range, version, expected] = line.split('\t').collect::<Vec<_>>()[..] else {
            panic!("malformed line {line:?}")
        };
        if ranges.last().is_none_or(|(r, _)| *r != range) {
            let entry = match expected {
                "invalid" => Expected::Invalid,
                _ => Expected::Valid(BTreeMap::new()),
            };
            ranges.push((range, entry));
        }
        if let (_, Expected::Valid(versions)) = ranges.last_mut().unwrap() {
            versions.insert(version, expected == "true");
        }
    }
    ranges
}

#[tokio::test]
async fn query_agrees_with_npm_semver_on_a_sample_of_the_table() {
    let ranges = table();
    let sample: Vec<_> = ranges.iter().step_by(EVERY).collect();
    let rows: usize = sample
        .iter()
        .map(|(_, e)| match e {
            Expected::Invalid => 1,
            Expected::Valid(v) => v.len(),
        })
        .sum();
    assert!(
        sample.len() >= 150 && rows >= 1000,
        "{} ranges, {rows} rows",
        sample.len()
    );
    assert!(
        sample.iter().any(|(_, e)| matches!(e, Expected::Invalid)),
        "the sample has ranges npm rejects"
    );

    let server = TestServer::start().await;
    let mut client = server.client().await;
    let s = open(&mut client, 0).await;
    let versions: BTreeSet<&str> = ranges
        .iter()
        .filter_map(|(_, e)| match e {
            Expected::Valid(v) => Some(v.keys().copied()),
            Expected::Invalid => None,
        })
        .flatten()
        .collect();
    for v in &versions {
        register(&mut client, &s, &format!("sv@{v}")).await;
    }

    let mut wrong = Vec::new();
    for (range, expected) in sample {
        let request = pb::QueryRequest {
            pattern: format!("sv@{range}"),
            ..Default::default()
        };
        let answer = client.query(request).await;
        match (expected, answer) {
            (Expected::Invalid, Err(e)) if e.code() == Code::InvalidArgument => {}
            (Expected::Invalid, Err(e)) => wrong.push(format!("{range:?}: refused with {e:?}")),
            (Expected::Invalid, Ok(_)) => wrong.push(format!("{range:?}: npm rejects it")),
            (Expected::Valid(_), Err(e)) => {
                wrong.push(format!("{range:?}: refused: {}", e.message()))
            }
            (Expected::Valid(expected), Ok(r)) => {
                let found: BTreeSet<String> = r
                    .into_inner()
                    .services
                    .into_iter()
                    .map(|s| s.version)
                    .collect();
                for (version, satisfies) in expected {
                    if found.contains(*version) != *satisfies {
                        wrong.push(format!("{range:?} vs {version}: npm says {satisfies}"));
                    }
                }
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
