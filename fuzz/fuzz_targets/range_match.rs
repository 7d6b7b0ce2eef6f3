//! A range and versions, one per line: matching never panics, and holds to
//! what node's semver promises of any version `v` that a range can name:
//! `v`, `=v`, `>=v`, `<=v`, `^v`, `~v` and `v - v` match it, `>v` and `<v`
//! do not, `*` matches it unless it is a prerelease, and a range ORed with
//! one that matches nothing matches what it matched alone. A range whose
//! every `||` alternative is comparators on full versions (`>=1.2.3
//! <2.0.0-0`) means the same to the `semver` crate, prerelease rule and
//! all, so the two must agree on it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use seaport::Range;
use semver::{Version, VersionReq};

fn parse(range: &str) -> Option<Range> {
    range.parse().ok()
}

/// The range as `semver::VersionReq`s, one per alternative, when each is
/// comparators on full versions without build metadata.
fn as_version_reqs(range: &str) -> Option<Vec<VersionReq>> {
    range
        .split("||")
        .map(|alternative| {
            let mut comparators = Vec::new();
            for word in alternative.split_whitespace() {
                let (op, version) = [">=", "<=", ">", "<", "="]
                    .iter()
                    .find_map(|op| word.strip_prefix(op).map(|v| (*op, v)))
                    .unwrap_or(("=", word));
                let version: Version = version.parse().ok()?;
                if !version.build.is_empty() {
                    return None;
                }
                comparators.push(format!("{op}{version}"));
            }
            if comparators.is_empty() {
                return None;
            }
            comparators.join(", ").parse().ok()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let range = parse(first);
    let reqs = range.as_ref().and_then(|_| as_version_reqs(first));
    for line in lines.take(16) {
        let Ok(v) = line.parse::<Version>() else {
            continue;
        };
        if let Some(range) = &range {
            let matched = range.matches(&v);
            if let Some(reqs) = &reqs {
                let semver = reqs.iter().any(|r| r.matches(&v));
                assert_eq!(
                    matched, semver,
                    "{first:?} on {v}: the semver crate says {semver}"
                );
            }
            let never = parse(&format!("{} || <0.0.0-0", range.as_str())).unwrap_or_else(|| {
                panic!("{:?} parses but not ORed with <0.0.0-0", range.as_str())
            });
            assert_eq!(
                never.matches(&v),
                matched,
                "`{} || <0.0.0-0` on {v}",
                range.as_str()
            );
        }

        // A version beyond npm's largest number is not a range's to name.
        let Some(exact) = parse(&v.to_string()) else {
            continue;
        };
        assert!(exact.matches(&v), "{v} does not match itself");
        for op in ["=", ">=", "<=", "^", "~", ">= ", "v"] {
            let r = parse(&format!("{op}{v}"))
                .unwrap_or_else(|| panic!("`{op}{v}` does not parse though `{v}` does"));
            assert!(r.matches(&v), "`{op}{v}` does not match {v}");
        }
        let hyphen = parse(&format!("{v} - {v}")).expect("a hyphen range of a version parses");
        assert!(hyphen.matches(&v), "`{v} - {v}` does not match {v}");
        for op in [">", "<"] {
            let r = parse(&format!("{op}{v}")).expect("an operator and a version parse");
            assert!(!r.matches(&v), "`{op}{v}` matches {v}");
        }
        let both = parse(&format!(">={v} <{v}")).expect("two comparators parse");
        assert!(!both.matches(&v), "`>={v} <{v}` matches {v}");
        let any = parse("*").expect("* parses");
        assert_eq!(any.matches(&v), v.pre.is_empty(), "`*` on {v}");
    }
});
