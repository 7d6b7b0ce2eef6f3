//! Roles (`name@1.2.3`, what a service is) and patterns (`name@1.2.x`, what
//! a query asks for).

use std::fmt;
use std::str::FromStr;

use semver::Version;

use crate::range::MAX_RANGE_LEN;
use crate::{Range, quote};

/// Longest service name or namespace accepted, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Longest version in a role, in bytes: npm's limit on a version.
const MAX_VERSION_LEN: usize = 256;

/// Longest role (`name@version`) accepted, in bytes; checked before parsing.
pub const MAX_ROLE_LEN: usize = MAX_NAME_LEN + 1 + MAX_VERSION_LEN;

/// Longest pattern (`name@range`) accepted, in bytes; checked before parsing.
pub const MAX_PATTERN_LEN: usize = MAX_NAME_LEN + 1 + MAX_RANGE_LEN;

/// The largest version number npm accepts (JavaScript's MAX_SAFE_INTEGER).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

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
    /// The whole role or pattern is too long to parse.
    #[error("{what} is {len} bytes long; the limit is {limit}")]
    TooLong {
        /// What was given ("role", "pattern").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing follows the `@` of a role.
    #[error("{} has nothing after `@`; write `name` or `name@1.2.3`", quote(.0))]
    EmptyVersion(String),
    /// The range of a pattern is malformed.
    #[error("range in pattern {}: {source}", quote(pattern))]
    Range {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with the range.
        source: crate::RangeError,
    },
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
        if s.len() > MAX_ROLE_LEN {
            return Err(RoleError::TooLong {
                what: "role",
                len: s.len(),
                limit: MAX_ROLE_LEN,
            });
        }
        let (name, version) = match s.split_once('@') {
            Some((_, "")) => return Err(RoleError::EmptyVersion(s.to_string())),
            Some((name, v)) => {
                let bad = |reason: String| RoleError::Version {
                    role: s.to_string(),
                    version: v.to_string(),
                    reason,
                };
                let version = Version::parse(v).map_err(|e| bad(e.to_string()))?;
                // npm's limits, so a registered version is one npm could match.
                if v.len() > MAX_VERSION_LEN {
                    return Err(bad(format!(
                        "it is longer than {MAX_VERSION_LEN} bytes, npm's limit"
                    )));
                }
                if [version.major, version.minor, version.patch]
                    .iter()
                    .any(|n| *n > MAX_SAFE_INTEGER)
                {
                    return Err(bad("a number is over 2^53-1, npm's limit".into()));
                }
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
/// node-semver range (`name@` has the empty range, which npm reads as `*`).
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
        if s.len() > MAX_PATTERN_LEN {
            return Err(RoleError::TooLong {
                what: "pattern",
                len: s.len(),
                limit: MAX_PATTERN_LEN,
            });
        }
        // The range keeps its own whitespace: it trims as npm does.
        let s = s.trim_start();
        if s.trim_end().is_empty() {
            return Ok(Pattern::default());
        }
        let (name, range) = match s.split_once('@') {
            Some((name, r)) => {
                let range = r.parse::<Range>().map_err(|source| RoleError::Range {
                    pattern: s.to_string(),
                    source,
                })?;
                (name, Some(range))
            }
            None => (s.trim_end(), None),
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

    #[test]
    fn an_empty_range_is_star_as_in_npm() {
        for text in ["beep@", "beep@ ", " beep@\u{a0}"] {
            let p: Pattern = text.parse().unwrap();
            assert_eq!(p.name.as_deref(), Some("beep"));
            assert!(p.matches("beep", Some(&Version::new(0, 0, 1))), "{text:?}");
            assert!(
                !p.matches("beep", None),
                "{text:?}: a range needs a version"
            );
            let pre = Version::parse("1.2.3-beta").unwrap();
            assert!(!p.matches("beep", Some(&pre)), "{text:?}");
        }
    }

    #[test]
    fn lengths_are_capped_before_parsing() {
        let long_range = format!("web@{}", "1".repeat(MAX_PATTERN_LEN));
        let e = long_range.parse::<Pattern>().unwrap_err().to_string();
        assert!(e.starts_with("pattern is "), "{e}");
        let e = format!("web@1.2.3-{}", "a".repeat(MAX_ROLE_LEN))
            .parse::<Role>()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("role is "), "{e}");
        let e = format!("web@1.2.3-{}", "a".repeat(251))
            .parse::<Role>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than 256 bytes"), "{e}");
        let e = "web@9007199254740992.0.0"
            .parse::<Role>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("over 2^53-1"), "{e}");
        assert!("web@9007199254740991.0.0".parse::<Role>().is_ok());
    }
}
