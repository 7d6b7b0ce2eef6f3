//! Headers between a client and an instance: hop-by-hop ones stay on
//! their hop (RFC 9110, 7.6.1), but for what an upgrade needs; and
//! X-Forwarded-For, -Host and -Proto tell the instance who asked, and how.

use std::net::IpAddr;

use hyper::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The comma-separated tokens of a header such as Connection.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The protocol a request asks to switch to (`websocket`), when it asks.
pub(crate) fn upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")));
    asks.then(|| headers.get(UPGRADE).cloned()).flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(tokens)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Keeps an upgrade's two headers across the hop.
fn keep_upgrade(headers: &mut HeaderMap, protocol: Option<HeaderValue>) {
    if let Some(protocol) = protocol {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
}

/// A client's request headers as the instance gets them. `host` is what
/// the client asked for (its Host, or its HTTP/2 authority).
pub(crate) fn to_instance(
    headers: &mut HeaderMap,
    upgrade: Option<HeaderValue>,
    peer: IpAddr,
    host: Option<HeaderValue>,
    proto: &'static str,
) {
    strip_hop_by_hop(headers);
    keep_upgrade(headers, upgrade);
    let prior: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let chain = if prior.is_empty() {
        peer.to_string()
    } else {
        format!("{}, {peer}", prior.join(", "))
    };
    if let Ok(chain) = HeaderValue::try_from(chain) {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(HOST, host);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// An instance's response headers as the client gets them; `switching`
/// for a 101 answering an upgrade.
pub(crate) fn to_client(headers: &mut HeaderMap, switching: bool) {
    let protocol = headers.get(UPGRADE).cloned();
    strip_hop_by_hop(headers);
    keep_upgrade(headers, protocol.filter(|_| switching));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_stay_and_forwarded_ones_are_set() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "a"),
            ("transfer-encoding", "chunked"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("accept", "*/*"),
        ]);
        let host = HeaderValue::from_static("stable.example.com");
        to_instance(
            &mut h,
            None,
            "127.0.0.1".parse().unwrap(),
            Some(host),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "stable.example.com");
        assert_eq!(h["host"], "stable.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["accept"], "*/*");
        for gone in ["connection", "keep-alive", "x-secret", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone} crossed the hop");
        }
    }

    #[test]
    fn an_upgrade_keeps_its_headers_both_ways() {
        let mut request = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let protocol = upgrade(&request);
        assert_eq!(protocol.as_ref().unwrap(), "websocket");
        to_instance(&mut request, protocol, "::1".parse().unwrap(), None, "http");
        assert_eq!(
            (&request["connection"], &request["upgrade"]),
            (
                &"upgrade".parse::<HeaderValue>().unwrap(),
                &"websocket".parse::<HeaderValue>().unwrap()
            )
        );
        assert_eq!(request["x-forwarded-for"], "::1");

        let mut response = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        to_client(&mut response, true);
        assert_eq!(response["upgrade"], "websocket");
        let mut refused = headers(&[("connection", "close"), ("upgrade", "websocket")]);
        to_client(&mut refused, false);
        assert!(refused.is_empty());
        assert!(upgrade(&headers(&[("upgrade", "websocket")])).is_none());
    }
}
