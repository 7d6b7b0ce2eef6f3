//! Checks of a request's names, hosts and ids, before any table is read.

use seaport::{quote, validate_name};

use crate::{DEFAULT_NAMESPACE, RegistryError, Result};

/// The namespace to use: the given one, checked, or the default.
pub fn namespace_or_default(namespace: &str) -> Result<&str> {
    if namespace.is_empty() {
        return Ok(DEFAULT_NAMESPACE);
    }
    validate_name("namespace", namespace)?;
    Ok(namespace)
}

/// The namespace of a request already checked: the given one or the
/// default.
pub(crate) fn namespace_unchecked(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

/// Longest host name, as RFC 1123 allows.
const MAX_HOST_LEN: usize = 253;

/// Longest registration id.
const MAX_ID_LEN: usize = 128;

/// A host is an IP address (IPv6 without brackets) or an RFC 1123 name:
/// dot-separated labels of 1-63 letters, digits and `-`, not starting or
/// ending with `-`, at most 253 bytes in all. Anything else would be
/// handed to every client that connects to it.
pub(crate) fn check_host(host: &str) -> Result<()> {
    if host.len() > MAX_HOST_LEN {
        return Err(RegistryError::Invalid(format!(
            "host is {} bytes long; the limit is {MAX_HOST_LEN}",
            host.len()
        )));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(RegistryError::Invalid(format!(
            "host {} is neither an IP address nor a host name; give one such as 10.0.0.5, fd00::5 (no brackets) or web-1.internal: labels of letters, digits and `-`, no port",
            quote(host)
        )));
    }
    Ok(())
}

pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.len() > MAX_ID_LEN {
        return Err(RegistryError::Invalid(format!(
            "id is {} bytes long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b':'))
    {
        return Err(RegistryError::Invalid(format!(
            "id {} is not valid; use letters, digits, `.`, `_`, `-` or `:`",
            quote(id)
        )));
    }
    Ok(())
}
