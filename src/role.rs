//! Roles (`name@1.2.3`, what a service is) and patterns (`name@1.2.x`, what
//! a query asks for).

use std::fmt;
use std::str::FromStr;

use semver::Version;

use crate::{Range, quote};

/// Longest service name or namespace accepted, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Longest role (`name@version`) accepted, in bytes; checked before parsing.
pub const MAX_ROLE_LEN: usize = 256;

/// Longest query pattern (`name@range`) accepted, in bytes; checked before
/// parsing.
pub const MAX_PATTERN_LEN: usize = 1024;

/// A malformed role, pattern or name; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The name part is empty.
    #[error("{what} is empty; give a name such as `web`")]
    EmptyName {
        /// What was being named ("service name", "namespace").
        what: &'static str,
    },
    /// The name part is too long.
    #[error(
        "{what} {} is {len} bytes long; the limit is {MAX_NAME_LEN}",
        quote(name)
    )]
    NameTooLong {
        /// What was being named.
        what: &'static str,
        /// The name as given.
        name: String,
        /// Its length.
        len: usize,
    },
    /// The name part has a character outside the allowed set.
    #[error(
        "{what} {} has {bad:?}; use lowercase letters, digits, `.`, `_` and `-`",
        quote(name)
    )]
    NameChar {
        /// What was being named.
        what: &'static str,
        /// The name as given.
        name: String,
        /// The first offending character.
        bad: char,
    },
    /// The version of a role is not an exact semver.
    #[error(
        "version {} in role {} is not an exact semver such as 1.2.3: {reason}",
        quote(version),
        quote(role)
    )]
    Version {
        /// The role as given.
        role: String,
        /// The version part.
        version: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Nothing follows the `@`.
    #[error("{} has nothing after `@`; write `name`, `name@1.2.3` or `name@1.x`", quote(.0))]
    EmptyVersion(String),
    /// The range of a pattern is malformed.
    #[error("range in pattern {}: {source}", quote(pattern))]
    Range {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with the range.
        source: crate::RangeError,
    },
    /// The role or pattern is longer than any valid one; not parsed.
    #[error("{what} is {len} bytes long; the limit is {limit}")]
    TooLong {
        /// What it is ("role", "pattern").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Refuses `text` longer than `limit` before any work that grows with it.
fn check_len(what: &'static str, text: &str, limit: usize) -> Result<(), RoleError> {
    if text.len() > limit {
        return Err(RoleError::TooLong {
            what,
            len: text.len(),
            limit,
        });
    }
    Ok(())
}

/// Checks a service name or namespace: 1 to [`MAX_NAME_LEN`] bytes of
/// lowercase letters, digits, `.`, `_` and `-`. `what` names it in errors.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), RoleError> {
    if name.is_empty() {
        return Err(RoleError::EmptyName { what });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(RoleError::NameTooLong {
            what,
            name: name.to_string(),
            len: name.len(),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(RoleError::NameChar {
            what,
            name: name.to_string(),
            bad,
        });
    }
    Ok(())
}

/// What a registration is: a name and an optional exact version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Role {
    /// Service name.
    pub name: String,
    /// Exact version, if any.
    pub version: Option<Version>,
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_len("role", s, MAX_ROLE_LEN)?;
        let (name, version) = match s.split_once('@') {
            Some((_, "")) => return Err(RoleError::EmptyVersion(s.to_string())),
            Some((name, v)) => {
                let version = Version::parse(v).map_err(|e| RoleError::Version {
                    role: s.to_string(),
                    version: v.to_string(),
                    reason: e.to_string(),
                })?;
                (name, Some(version))
            }
            None => (s, None),
        };
        validate_name("service name", name)?;
        Ok(Role {
            name: name.to_string(),
            version,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{}", self.name, v),
            None => f.write_str(&self.name),
        }
    }
}

/// What a query asks for: every service (empty), a name, or a name and a
/// node-semver range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pattern {
    /// The name to match; `None` matches every name.
    pub name: Option<String>,
    /// The range to match; `None` matches every version, and unversioned
    /// services too.
    pub range: Option<Range>,
}

impl Pattern {
    /// True when a service named `name` at `version` matches. A pattern with
    /// a range never matches an unversioned service.
    pub fn matches(&self, name: &str, version: Option<&Version>) -> bool {
        if self.name.as_deref().is_some_and(|n| n != name) {
            return false;
        }
        match (&self.range, version) {
            (None, _) => true,
            (Some(range), Some(v)) => range.matches(v),
            (Some(_), None) => false,
        }
    }
}

impl FromStr for Pattern {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_len("pattern", s, MAX_PATTERN_LEN)?;
        let s = s.trim();
        if s.is_empty() {
            return Ok(Pattern::default());
        }
        let (name, range) = match s.split_once('@') {
            Some((_, r)) if r.trim().is_empty() => return Err(RoleError::EmptyVersion(s.into())),
            Some((name, r)) => {
                let range = r.parse::<Range>().map_err(|source| RoleError::Range {
                    pattern: s.to_string(),
                    source,
                })?;
                (name, Some(range))
            }
            None => (s, None),
        };
        validate_name("service name", name)?;
        Ok(Pattern {
            name: Some(name.to_string()),
            range,
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.range) {
            (None, _) => Ok(()),
            (Some(n), None) => f.write_str(n),
            (Some(n), Some(r)) => write!(f, "{n}@{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_parses_name_and_exact_version() {
        let r: Role = "web@1.2.3".parse().unwrap();
        assert_eq!(r.name, "web");
        assert_eq!(r.version, Some(Version::new(1, 2, 3)));
        assert_eq!(r.to_string(), "web@1.2.3");
        let r: Role = "db".parse().unwrap();
        assert_eq!(r.version, None);
    }

    #[test]
    fn role_errors_say_what_to_fix() {
        let e = "web@1.2".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("not an exact semver such as 1.2.3"), "{e}");
        let e = "Web@1.2.3".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("has 'W'; use lowercase letters"), "{e}");
        let e = "web@".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("nothing after `@`"), "{e}");
        let e = "@1.2.3".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("service name is empty"), "{e}");
        let long = "a".repeat(64);
        let e = long.parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("the limit is 63"), "{e}");
    }

    #[test]
    fn oversized_roles_and_patterns_are_refused_before_parsing() {
        let e = format!("web@{}", "1".repeat(1_000_000))
            .parse::<Role>()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "role is 1000004 bytes long; the limit is 256"
        );
        let e = "x".repeat(2000).parse::<Pattern>().unwrap_err();
        assert!(e.to_string().contains("the limit is 1024"), "{e}");
        let e = "Web".repeat(30).parse::<Role>().unwrap_err().to_string();
        assert!(e.len() < 200, "input quoted in short: {e}");
    }

    #[test]
    fn pattern_matches_by_name_and_range() {
        let p: Pattern = "beep@1.2.x".parse().unwrap();
        assert!(p.matches("beep", Some(&Version::new(1, 2, 9))));
        assert!(!p.matches("beep", Some(&Version::new(1, 3, 0))));
        assert!(!p.matches("boop", Some(&Version::new(1, 2, 0))));
        assert!(!p.matches("beep", None));
        let all: Pattern = "".parse().unwrap();
        assert!(all.matches("anything", None));
        let name: Pattern = "beep".parse().unwrap();
        assert!(name.matches("beep", None));
        assert_eq!(name.to_string(), "beep");
    }

    #[test]
    fn pattern_with_bad_range_is_an_error_not_a_string_match() {
        let e = "beep@1.2.3.4".parse::<Pattern>().unwrap_err().to_string();
        assert!(e.starts_with("range in pattern \"beep@1.2.3.4\""), "{e}");
    }
}
