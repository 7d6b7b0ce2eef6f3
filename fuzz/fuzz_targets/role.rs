//! Any string as a role, a query pattern and a range: parsing never panics,
//! what parses prints back to something that parses to the same thing, and
//! a parsed range matches a few versions without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use seaport::{Pattern, Range, Role};
use semver::Version;

/// Versions every parsed range is matched against: releases, prereleases,
/// build metadata and the largest number npm accepts.
const VERSIONS: &[&str] = &[
    "0.0.0",
    "0.0.1",
    "1.2.3",
    "1.2.3-alpha.1",
    "1.2.3+build.5",
    "2.0.0-0",
    "9007199254740991.9007199254740991.9007199254740991",
    "18446744073709551615.0.0",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let versions: Vec<Version> = VERSIONS.iter().map(|v| v.parse().unwrap()).collect();

    if let Ok(role) = text.parse::<Role>() {
        let again: Role = role
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{role} printed from {text:?} does not parse: {e}"));
        assert_eq!(again, role, "{text:?} does not survive printing");
    }

    if let Ok(pattern) = text.parse::<Pattern>() {
        let printed = pattern.to_string();
        let again: Pattern = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} printed from {text:?} does not parse: {e}"));
        assert_eq!(again, pattern, "{text:?} does not survive printing");
        for v in &versions {
            let name = pattern.name.as_deref().unwrap_or("any");
            assert_eq!(
                pattern.matches(name, Some(v)),
                again.matches(name, Some(v)),
                "{text:?} and {printed:?} disagree on {v}"
            );
            let _ = pattern.matches(name, None);
        }
    }

    if let Ok(range) = text.parse::<Range>() {
        let again: Range = range
            .as_str()
            .parse()
            .unwrap_or_else(|e| panic!("{range} printed from {text:?} does not parse: {e}"));
        for v in &versions {
            assert_eq!(
                range.matches(v),
                again.matches(v),
                "{text:?} and {:?} disagree on {v}",
                range.as_str()
            );
        }
    }
});
