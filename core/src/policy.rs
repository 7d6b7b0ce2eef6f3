//! The policy file: which identities may register which names, and who is
//! admin. The registry consults it for every Register and Free, so the
//! rules live in one place whatever front end asks.

use std::path::Path;

use serde::Deserialize;

/// The policy file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Identities (globs) that may free any registration.
    #[serde(default)]
    admins: Vec<String>,
    /// Who may register what.
    #[serde(default)]
    allow: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    identities: Vec<String>,
    names: Vec<String>,
}

/// Which identities may register which names, and which are admins.
#[derive(Debug, Default)]
pub struct Policy {
    /// `None`: no policy file, so any verified identity may register any name.
    rules: Option<Vec<(Vec<glob::Pattern>, Vec<glob::Pattern>)>>,
    admins: Vec<glob::Pattern>,
}

fn patterns(origin: &str, globs: &[String]) -> Result<Vec<glob::Pattern>, String> {
    globs
        .iter()
        .map(|g| glob::Pattern::new(g).map_err(|e| format!("{origin}: bad glob {g:?}: {e}")))
        .collect()
}

impl Policy {
    /// Reads a TOML policy file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// Reads a policy from TOML text; errors name `origin` (the file).
    pub fn parse(text: &str, origin: &str) -> Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let rules = file
            .allow
            .iter()
            .map(|r| {
                Ok((
                    patterns(origin, &r.identities)?,
                    patterns(origin, &r.names)?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Policy {
            rules: Some(rules),
            admins: patterns(origin, &file.admins)?,
        })
    }

    /// True when `identity` may register services named `name`.
    pub fn may_register(&self, identity: &str, name: &str) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules.iter().any(|(ids, names)| {
                ids.iter().any(|p| p.matches(identity)) && names.iter().any(|p| p.matches(name))
            }),
        }
    }

    /// True when `identity` may free any registration.
    pub fn is_admin(&self, identity: &str) -> bool {
        !identity.is_empty() && self.admins.iter().any(|p| p.matches(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_globs_identities_and_names() {
        let dir = std::env::temp_dir().join(format!("seaport-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            "admins = [\"ops-*\"]\n[[allow]]\nidentities = [\"web-*\"]\nnames = [\"web\", \"web-*\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        assert!(policy.may_register("web-1", "web"));
        assert!(policy.may_register("web-1", "web-api"));
        assert!(!policy.may_register("web-1", "db"));
        assert!(!policy.may_register("db-1", "web"));
        assert!(policy.is_admin("ops-alice"));
        assert!(!policy.is_admin("web-1"));
        assert!(!policy.is_admin(""), "no certificate, no admin");
        std::fs::write(&path, "allow = 3").unwrap();
        assert!(Policy::load(&path).unwrap_err().contains("policy.toml"));
        assert!(
            Policy::default().may_register("anyone", "anything"),
            "no policy file allows everyone"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
