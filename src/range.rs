//! node-semver ranges (`1.2.x`, `^1.2`, `>=1.0.0 <2.0.0 || 3.x`), parsed
//! here because no crate reads them as npm does.
//!
//! Each `||` alternative is lowered to a set of comparators the way node's
//! `semver` package desugars it (`^1.2.3` becomes `>=1.2.3 <2.0.0-0`), and
//! a version matches when every comparator of some set holds and, if the
//! version is a prerelease, a comparator of that set names a prerelease of
//! the same major.minor.patch.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use semver::{BuildMetadata, Prerelease, Version};

/// The largest version number npm accepts (JavaScript's MAX_SAFE_INTEGER);
/// it also keeps `n + 1` in the desugaring from overflowing.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A malformed range; the message names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {reason}", crate::quote(part))]
pub struct RangeError {
    /// The offending part of the range.
    pub part: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed node-semver range.
#[derive(Clone, Debug)]
pub struct Range {
    source: String,
    /// Alternatives joined by `||`; an empty set matches every release.
    sets: Vec<Vec<Comparator>>,
}

impl PartialEq for Range {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Range {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
struct Comparator {
    op: Op,
    version: Version,
}

impl Comparator {
    fn new(op: Op, major: u64, minor: u64, patch: u64, pre: Prerelease) -> Self {
        Comparator {
            op,
            version: Version {
                major,
                minor,
                patch,
                pre,
                build: BuildMetadata::EMPTY,
            },
        }
    }

    /// `<M.m.p-0`: below every release and prerelease of M.m.p, as npm writes it.
    fn below(major: u64, minor: u64, patch: u64) -> Self {
        Comparator::new(Op::Lt, major, minor, patch, zero_pre())
    }

    fn holds(&self, v: &Version) -> bool {
        let ord = cmp_precedence(v, &self.version);
        match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

fn zero_pre() -> Prerelease {
    Prerelease::new("0").expect("`0` is a valid prerelease")
}

/// Semver precedence: build metadata does not count.
fn cmp_precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

impl Range {
    /// True when `version` satisfies the range, by npm's rules.
    pub fn matches(&self, version: &Version) -> bool {
        self.sets.iter().any(|set| {
            set.iter().all(|c| c.holds(version))
                && (version.pre.is_empty()
                    || set.iter().any(|c| {
                        !c.version.pre.is_empty()
                            && (c.version.major, c.version.minor, c.version.patch)
                                == (version.major, version.minor, version.patch)
                    }))
        })
    }

    /// The range as it was written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sets = s
            .split("||")
            .map(parse_alternative)
            .collect::<Result<_, _>>()?;
        Ok(Range {
            source: s.trim().to_string(),
            sets,
        })
    }
}

fn err(part: &str, reason: &'static str) -> RangeError {
    RangeError {
        part: part.trim().to_string(),
        reason,
    }
}

/// One `||` alternative: a hyphen range or comparators joined by spaces.
fn parse_alternative(alt: &str) -> Result<Vec<Comparator>, RangeError> {
    let alt = alt.trim();
    if let Some((from, to)) = alt.split_once(" - ") {
        return hyphen(from.trim(), to.trim());
    }
    let mut set = Vec::new();
    let mut words = alt.split_whitespace();
    while let Some(word) = words.next() {
        // npm allows a space between an operator and its version: `>= 1.2.3`.
        let joined;
        let word = if word.chars().all(|c| "<>=~^".contains(c)) {
            let next = words
                .next()
                .ok_or_else(|| err(word, "needs a version after it"))?;
            joined = format!("{word}{next}");
            joined.as_str()
        } else {
            word
        };
        simple(word, &mut set)?;
    }
    Ok(set)
}

/// A version with parts possibly left out or written as `x`, `X` or `*`.
#[derive(Debug)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

fn parse_partial(text: &str) -> Result<Partial, RangeError> {
    let body = text.trim_start_matches(|c: char| c == 'v' || c == '=' || c.is_whitespace());
    if body.is_empty() {
        return Err(err(text, "needs a version such as 1.2.3 or 1.x"));
    }
    let (body, _build) = match body.split_once('+') {
        Some((b, build)) => {
            BuildMetadata::new(build).map_err(|_| err(text, "has malformed build metadata"))?;
            (b, Some(build))
        }
        None => (body, None),
    };
    let (core, pre) = match body.split_once('-') {
        Some((core, pre)) => (
            core,
            Prerelease::new(pre).map_err(|_| {
                err(
                    text,
                    "has a malformed prerelease (use dot-separated [0-9A-Za-z-] parts)",
                )
            })?,
        ),
        None => (body, Prerelease::EMPTY),
    };
    let mut parts = core.split('.');
    let mut next = || -> Result<Option<Option<u64>>, RangeError> {
        match parts.next() {
            None => Ok(None),
            Some("x" | "X" | "*") => Ok(Some(None)),
            Some(n)
                if n == "0"
                    || (!n.starts_with('0')
                        && !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                n.parse::<u64>()
                    .ok()
                    .filter(|v| *v <= MAX_SAFE_INTEGER)
                    .map(|v| Some(Some(v)))
                    .ok_or_else(|| {
                        err(
                            text,
                            "has a number too large (the limit is 2^53-1, as in npm)",
                        )
                    })
            }
            Some(_) => Err(err(
                text,
                "is not a version: each part must be a number without leading zeros, or x, X or *",
            )),
        }
    };
    let major = next()?.ok_or_else(|| err(text, "needs a version such as 1.2.3 or 1.x"))?;
    let minor = next()?.unwrap_or(None);
    let patch = next()?.unwrap_or(None);
    if parts.next().is_some() {
        return Err(err(text, "has more than three version parts"));
    }
    // A wildcard makes every later part a wildcard too (`1.x.3` is `1.x`).
    let (minor, patch) = match (major, minor) {
        (None, _) => (None, None),
        (_, None) => (None, None),
        _ => (minor, patch),
    };
    if !pre.is_empty() && patch.is_none() {
        return Err(err(text, "has a prerelease but no full major.minor.patch"));
    }
    Ok(Partial {
        major,
        minor,
        patch,
        pre,
    })
}

/// `A - B`: inclusive of A and B, with the missing parts of B rounded up.
fn hyphen(from: &str, to: &str) -> Result<Vec<Comparator>, RangeError> {
    let (from, to) = (parse_partial(from)?, parse_partial(to)?);
    let mut set = Vec::new();
    match (from.major, from.minor, from.patch) {
        (None, _, _) => {}
        (Some(m), None, _) => set.push(Comparator::new(Op::Ge, m, 0, 0, Prerelease::EMPTY)),
        (Some(m), Some(n), None) => set.push(Comparator::new(Op::Ge, m, n, 0, Prerelease::EMPTY)),
        (Some(m), Some(n), Some(p)) => set.push(Comparator::new(Op::Ge, m, n, p, from.pre)),
    }
    match (to.major, to.minor, to.patch) {
        (None, _, _) => {}
        (Some(m), None, _) => set.push(Comparator::below(m + 1, 0, 0)),
        (Some(m), Some(n), None) => set.push(Comparator::below(m, n + 1, 0)),
        (Some(m), Some(n), Some(p)) => set.push(Comparator::new(Op::Le, m, n, p, to.pre)),
    }
    Ok(set)
}

/// One word of a range: a primitive (`>=1.2`), tilde, caret or x-range.
fn simple(word: &str, set: &mut Vec<Comparator>) -> Result<(), RangeError> {
    if let Some(rest) = word.strip_prefix("~>").or_else(|| word.strip_prefix('~')) {
        return tilde(parse_partial(rest)?, set);
    }
    if let Some(rest) = word.strip_prefix('^') {
        return caret(parse_partial(rest)?, set);
    }
    let (op, rest) = if let Some(r) = word.strip_prefix(">=") {
        (Op::Ge, r)
    } else if let Some(r) = word.strip_prefix("<=") {
        (Op::Le, r)
    } else if let Some(r) = word.strip_prefix('>') {
        (Op::Gt, r)
    } else if let Some(r) = word.strip_prefix('<') {
        (Op::Lt, r)
    } else {
        (Op::Eq, word)
    };
    if rest.starts_with(['<', '>', '~', '^']) {
        return Err(err(word, "has two operators; write one, such as >=1.2.3"));
    }
    primitive(op, parse_partial(rest)?, set);
    Ok(())
}

fn primitive(op: Op, p: Partial, set: &mut Vec<Comparator>) {
    let Some(major) = p.major else {
        // `>*` and `<*` match nothing; every other operator with `*` matches all.
        if matches!(op, Op::Gt | Op::Lt) {
            set.push(Comparator::below(0, 0, 0));
        }
        return;
    };
    let (Some(minor), Some(patch)) = (p.minor, p.patch) else {
        let minor = p.minor;
        match op {
            Op::Eq => match minor {
                None => {
                    set.push(Comparator::new(Op::Ge, major, 0, 0, Prerelease::EMPTY));
                    set.push(Comparator::below(major + 1, 0, 0));
                }
                Some(n) => {
                    set.push(Comparator::new(Op::Ge, major, n, 0, Prerelease::EMPTY));
                    set.push(Comparator::below(major, n + 1, 0));
                }
            },
            Op::Gt => set.push(match minor {
                None => Comparator::new(Op::Ge, major + 1, 0, 0, Prerelease::EMPTY),
                Some(n) => Comparator::new(Op::Ge, major, n + 1, 0, Prerelease::EMPTY),
            }),
            Op::Ge => set.push(Comparator::new(
                Op::Ge,
                major,
                minor.unwrap_or(0),
                0,
                Prerelease::EMPTY,
            )),
            Op::Lt => set.push(Comparator::below(major, minor.unwrap_or(0), 0)),
            Op::Le => set.push(match minor {
                None => Comparator::below(major + 1, 0, 0),
                Some(n) => Comparator::below(major, n + 1, 0),
            }),
        }
        return;
    };
    set.push(Comparator::new(op, major, minor, patch, p.pre));
}

/// `~1.2.3`: patch-level changes; `~1`: minor-level changes.
fn tilde(p: Partial, set: &mut Vec<Comparator>) -> Result<(), RangeError> {
    match (p.major, p.minor, p.patch) {
        (None, _, _) => {}
        (Some(m), None, _) => {
            set.push(Comparator::new(Op::Ge, m, 0, 0, Prerelease::EMPTY));
            set.push(Comparator::below(m + 1, 0, 0));
        }
        (Some(m), Some(n), patch) => {
            set.push(Comparator::new(Op::Ge, m, n, patch.unwrap_or(0), p.pre));
            set.push(Comparator::below(m, n + 1, 0));
        }
    }
    Ok(())
}

/// `^1.2.3`: changes that do not modify the left-most non-zero part.
fn caret(p: Partial, set: &mut Vec<Comparator>) -> Result<(), RangeError> {
    let (lower, upper) = match (p.major, p.minor, p.patch) {
        (None, _, _) => return Ok(()),
        (Some(m), None, _) => ((m, 0, 0), (m + 1, 0, 0)),
        (Some(0), Some(n), None) => ((0, n, 0), (0, n + 1, 0)),
        (Some(m), Some(n), None) => ((m, n, 0), (m + 1, 0, 0)),
        (Some(0), Some(0), Some(pt)) => ((0, 0, pt), (0, 0, pt + 1)),
        (Some(0), Some(n), Some(pt)) => ((0, n, pt), (0, n + 1, 0)),
        (Some(m), Some(n), Some(pt)) => ((m, n, pt), (m + 1, 0, 0)),
    };
    set.push(Comparator::new(Op::Ge, lower.0, lower.1, lower.2, p.pre));
    set.push(Comparator::below(upper.0, upper.1, upper.2));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sat(range: &str, version: &str) -> bool {
        range
            .parse::<Range>()
            .unwrap()
            .matches(&Version::parse(version).unwrap())
    }

    #[test]
    fn bare_version_is_exact_unlike_the_semver_crate() {
        assert!(sat("1.2.3", "1.2.3"));
        assert!(!sat("1.2.3", "1.2.4"));
        assert!(!sat("1.2.3", "1.3.0"));
    }

    #[test]
    fn comparators_joined_by_space_are_anded() {
        assert!(!sat(">=1.2.3 <1.2.3", "1.2.3"));
        assert!(!sat(">=1.2.3 <1.2.3", "5.0.0"));
        assert!(sat(">=1.0.0 <2.0.0", "1.9.9"));
    }

    #[test]
    fn alternatives_hyphens_and_wildcards() {
        assert!(sat("1.x || >=2.5.0", "2.6.0"));
        assert!(!sat("1.x || >=2.5.0", "2.4.0"));
        assert!(sat("1.2.3 - 2.3.4", "2.3.4"));
        assert!(!sat("1.2.3 - 2.3", "2.4.0"));
        assert!(sat("1.2.3 - 2.3", "2.3.9"));
        assert!(sat("*", "0.0.1"));
        assert!(sat("1.2.* || ", "9.9.9"), "an empty side of || is *");
    }

    #[test]
    fn prereleases_match_only_when_named_for_the_same_patch() {
        assert!(!sat("*", "1.2.3-beta"));
        assert!(sat(">1.2.3-alpha.3", "1.2.3-alpha.7"));
        assert!(!sat(">1.2.3-alpha.3", "3.4.5-alpha.9"));
        assert!(sat(">1.2.3-alpha.3", "3.4.5"));
        assert!(sat("^1.2.3-beta.2", "1.2.3-beta.4"));
        assert!(!sat("^1.2.3-beta.2", "1.2.4-beta.4"));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = "1.2.3.4".parse::<Range>().unwrap_err().to_string();
        assert_eq!(e, "\"1.2.3.4\" has more than three version parts");
        let e = ">= ".parse::<Range>().unwrap_err().to_string();
        assert_eq!(e, "\">=\" needs a version after it");
        let e = "01.2.3".parse::<Range>().unwrap_err().to_string();
        assert!(e.contains("without leading zeros"), "{e}");
        assert!("web".parse::<Range>().is_err());
        let e = "18446744073709551615.x"
            .parse::<Range>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("has a number too large"), "{e}");
        assert!(
            "^9007199254740991".parse::<Range>().is_ok(),
            "the largest safe number parses"
        );
        assert!(">>1".parse::<Range>().is_err());
    }
}
