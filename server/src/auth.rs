//! Who may do what: identities from client certificates, and the policy
//! that says which identities may register which names and who is admin.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;
use seaport::{Role, RoleError};
use serde::Deserialize;
use tonic::{Code, Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::registry::Actor;

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

fn patterns(path: &Path, globs: &[String]) -> Result<Vec<glob::Pattern>, String> {
    globs
        .iter()
        .map(|g| {
            glob::Pattern::new(g).map_err(|e| format!("{}: bad glob {g:?}: {e}", path.display()))
        })
        .collect()
}

impl Policy {
    /// Reads a TOML policy file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: PolicyFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let rules = file
            .allow
            .iter()
            .map(|r| Ok((patterns(path, &r.identities)?, patterns(path, &r.names)?)))
            .collect::<Result<_, String>>()?;
        Ok(Policy {
            rules: Some(rules),
            admins: patterns(path, &file.admins)?,
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

/// The identity a certificate proves: its first URI SAN, else its first
/// DNS SAN, else its Common Name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let sans: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uri = sans.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = sans.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    };
    uri.or(dns).or_else(cn)
}

/// The authorization settings of a running server.
#[derive(Debug, Default)]
pub struct Auth {
    /// Client certificates are verified (`--client-ca`): writes need one.
    pub mtls: bool,
    /// Reads need one too.
    pub require_cert_for_reads: bool,
    /// The policy in force; replaced whole on reload.
    pub policy: RwLock<Arc<Policy>>,
}

impl Auth {
    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The name `role` asks for, when the policy in force does not let
    /// `identity` register it. Reads the policy once and in place (a
    /// Register does not count a reference on it, a line both cores would
    /// write), and parses the role only when the policy limits names: the
    /// registry parses it anyway.
    pub fn refused_name(&self, identity: &str, role: &str) -> Result<Option<String>, RoleError> {
        let policy = self.policy.read().unwrap_or_else(|e| e.into_inner());
        if policy.rules.is_none() {
            return Ok(None);
        }
        let name = role.parse::<Role>()?.name;
        Ok((!policy.may_register(identity, &name)).then_some(name))
    }

    /// The caller of `request`. Under mTLS a write (`write`) without a
    /// verified certificate, or a read when reads need one, is refused.
    pub fn caller<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        write: bool,
    ) -> Result<Actor, Status> {
        if !self.mtls {
            return Ok(Actor::default());
        }
        let identity = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(identity));
        match identity {
            Some(identity) => Ok(Actor {
                admin: self.policy().is_admin(&identity),
                identity,
            }),
            None if write || self.require_cert_for_reads => {
                let message = format!(
                    "{rpc} needs a client certificate signed by this server's client CA; pass one (seaportctl --cert and --key)"
                );
                crate::grpc::log_refusal(
                    rpc,
                    request.remote_addr(),
                    Code::Unauthenticated,
                    &message,
                );
                Err(Status::unauthenticated(message))
            }
            None => Ok(Actor::default()),
        }
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
        let auth = |policy: Policy| Auth {
            mtls: true,
            require_cert_for_reads: false,
            policy: RwLock::new(Arc::new(policy)),
        };
        let limited = auth(Policy::load(&path).unwrap());
        assert_eq!(limited.refused_name("web-1", "web-api@1.2.3"), Ok(None));
        assert_eq!(
            limited.refused_name("web-1", "db@1.0.0"),
            Ok(Some("db".into())),
            "the refused name, without its version"
        );
        assert!(limited.refused_name("web-1", "Bad Name").is_err());
        assert_eq!(
            auth(Policy::default()).refused_name("anyone", "Bad Name"),
            Ok(None),
            "without rules the role is left for the registry to parse and reject"
        );
        assert!(policy.may_register("web-1", "web"));
        assert!(policy.may_register("web-1", "web-api"));
        assert!(!policy.may_register("web-1", "db"));
        assert!(!policy.may_register("db-1", "web"));
        assert!(policy.is_admin("ops-alice"));
        assert!(!policy.is_admin("web-1"));
        std::fs::write(&path, "allow = 3").unwrap();
        assert!(Policy::load(&path).unwrap_err().contains("policy.toml"));
        assert!(
            Policy::default().may_register("anyone", "anything"),
            "no policy file allows everyone"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
