//! Where an HTTP request goes: a --host rule first (as the original
//! seaport's router: by the Host's first label, with a catch-all), else
//! the gateway's own paths.

use percent_encoding::percent_decode_str;

/// What the gateway's paths name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `/role/NAME@RANGE/PATH`: an instance of the role, at `/PATH`.
    Role { pattern: String, path: String },
    /// `/list/NAME@RANGE`: the matching instances, as JSON.
    List { pattern: String },
    /// `/instance/ID/PATH`: that instance, at `/PATH`.
    Instance { id: String, path: String },
}

/// Why a path names nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Not one of the gateway's paths.
    NotFound,
    /// One of them, malformed: the text says how.
    Bad(String),
}

/// The usage line answers carry.
pub(crate) const USAGE: &str =
    "use /role/NAME@RANGE/PATH, /list/NAME@RANGE or /instance/ID/PATH (ranges percent-encoded)";

/// The target of `path` (still percent-encoded) and `query`.
pub(crate) fn parse(path: &str, query: Option<&str>) -> Result<Target, Miss> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let rewritten = || match query {
        Some(q) => format!("/{tail}?{q}"),
        None => format!("/{tail}"),
    };
    match kind {
        "role" if segment.is_empty() => Err(Miss::Bad(format!("name a role: {USAGE}"))),
        "role" => Ok(Target::Role {
            pattern: decode(segment)?,
            path: rewritten(),
        }),
        "list" if tail.is_empty() => Ok(Target::List {
            pattern: decode(segment)?,
        }),
        "instance" if segment.is_empty() => Err(Miss::Bad(format!("name an instance id: {USAGE}"))),
        "instance" => Ok(Target::Instance {
            id: decode(segment)?,
            path: rewritten(),
        }),
        _ => Err(Miss::NotFound),
    }
}

fn decode(segment: &str) -> Result<String, Miss> {
    percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Miss::Bad(format!("{segment:?} is not UTF-8 once decoded")))
}

/// The value of the rule that takes `host` (a Host header): the rule for
/// the whole name or for its first label, else the `*` rule.
pub(crate) fn host_rule<'a, T>(rules: &'a [(String, T)], host: Option<&str>) -> Option<&'a T> {
    let name = without_port(host.unwrap_or("")).to_ascii_lowercase();
    let label = name.split('.').next().unwrap_or("");
    let rule = |want: &dyn Fn(&str) -> bool| rules.iter().find(|(h, _)| want(h)).map(|(_, v)| v);
    rule(&|h| !name.is_empty() && (h == name || h == label)).or_else(|| rule(&|h| h == "*"))
}

fn without_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_roles_lists_and_instances() {
        assert_eq!(
            parse("/role/web@1.2.x/a/b", Some("q=1")),
            Ok(Target::Role {
                pattern: "web@1.2.x".into(),
                path: "/a/b?q=1".into()
            })
        );
        assert_eq!(
            parse("/role/web@%3E%3D1.0.0%20%3C2.0.0", None),
            Ok(Target::Role {
                pattern: "web@>=1.0.0 <2.0.0".into(),
                path: "/".into()
            })
        );
        assert_eq!(
            parse("/role/web/", None),
            Ok(Target::Role {
                pattern: "web".into(),
                path: "/".into()
            })
        );
        assert_eq!(
            parse("/list/web@1.x", None),
            Ok(Target::List {
                pattern: "web@1.x".into()
            })
        );
        assert_eq!(
            parse("/list", None),
            Ok(Target::List { pattern: "".into() })
        );
        assert_eq!(
            parse("/instance/abc/x", None),
            Ok(Target::Instance {
                id: "abc".into(),
                path: "/x".into()
            })
        );
        assert_eq!(parse("/", None), Err(Miss::NotFound));
        assert_eq!(parse("/list/web/x", None), Err(Miss::NotFound));
        assert!(matches!(parse("/role/", None), Err(Miss::Bad(m)) if m.contains("name a role")));
        assert!(matches!(parse("/instance", None), Err(Miss::Bad(_))));
        assert!(matches!(parse("/role/%ff/", None), Err(Miss::Bad(m)) if m.contains("UTF-8")));
    }

    #[test]
    fn host_rules_match_the_name_or_its_first_label_then_the_catch_all() {
        let rules = vec![
            ("stable".to_string(), 0),
            ("unstable".to_string(), 1),
            ("api.example.com".to_string(), 2),
            ("*".to_string(), 3),
        ];
        let to = |host: Option<&str>| host_rule(&rules, host).copied();
        assert_eq!(to(Some("stable")), Some(0));
        assert_eq!(to(Some("Unstable:8080")), Some(1));
        assert_eq!(to(Some("unstable.example.com")), Some(1));
        assert_eq!(to(Some("api.example.com")), Some(2));
        assert_eq!(to(Some("other")), Some(3));
        assert_eq!(to(None), Some(3));
        assert_eq!(to(Some("[::1]:8080")), Some(3));
        assert_eq!(host_rule(&rules[..2], Some("other")), None);
        assert_eq!(host_rule(&rules[..2], None), None);
    }
}
