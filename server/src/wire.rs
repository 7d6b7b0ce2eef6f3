//! `seaport.v1.Service` as the server sends it: encoded straight from the
//! registry's shared record. Every answer (a query's matches, each
//! watcher's copy of a change) would otherwise first copy each service into
//! a `pb::Service`, a dozen allocations apiece, only to encode and drop it.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType, uint32, uint64};
use semver::Version;

/// A registry record on its way out. The server only ever encodes a
/// `Service` (no request carries one), so decoding one skips its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Service(pub Arc<seaport::Service>);

impl Default for Service {
    fn default() -> Self {
        Service(Arc::new(seaport::Service {
            id: String::new(),
            name: String::new(),
            version: None,
            host: "".into(),
            port: 0,
            metadata: seaport::Metadata::new(),
            namespace: "".into(),
            owner: "".into(),
            session_id: "".into(),
            create_revision: 0,
            mod_revision: 0,
            draining: false,
        }))
    }
}

/// Field numbers of `seaport.v1.Service`. Field 9 is reserved: it held
/// the session id, which no answer may carry.
mod tag {
    pub(super) const ID: u32 = 1;
    pub(super) const NAME: u32 = 2;
    pub(super) const VERSION: u32 = 3;
    pub(super) const HOST: u32 = 4;
    pub(super) const PORT: u32 = 5;
    pub(super) const METADATA: u32 = 6;
    pub(super) const NAMESPACE: u32 = 7;
    pub(super) const OWNER: u32 = 8;
    pub(super) const CREATE_REVISION: u32 = 10;
    pub(super) const MOD_REVISION: u32 = 11;
    pub(super) const DRAINING: u32 = 12;
}

/// Proto3 leaves out fields that hold their default.
fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value.len() as u64) + value.len()
    }
}

/// A length-delimited field's size: key, length, bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The length of `version` as text, `1.2.3-pre+build`.
fn version_len(v: &Version) -> usize {
    let suffix = |s: &str| if s.is_empty() { 0 } else { s.len() + 1 };
    digits(v.major) + digits(v.minor) + digits(v.patch) + 2 + suffix(&v.pre) + suffix(&v.build)
}

fn put_number(n: u64, buf: &mut impl BufMut) {
    buf.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes `version` as text without going through `fmt`, which is most of
/// what encoding a service would otherwise cost.
fn put_version(tag: u32, v: &Version, buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(version_len(v) as u64, buf);
    put_number(v.major, buf);
    buf.put_u8(b'.');
    put_number(v.minor, buf);
    buf.put_u8(b'.');
    put_number(v.patch, buf);
    for (mark, part) in [(b'-', v.pre.as_str()), (b'+', v.build.as_str())] {
        if !part.is_empty() {
            buf.put_u8(mark);
            buf.put_slice(part.as_bytes());
        }
    }
}

/// A map entry is a message of key (1) and value (2).
fn entry_len(key: &str, value: &str) -> usize {
    string_len(1, key) + string_len(2, value)
}

impl prost::Message for Service {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let s = &*self.0;
        put_string(tag::ID, &s.id, buf);
        put_string(tag::NAME, &s.name, buf);
        if let Some(version) = &s.version {
            put_version(tag::VERSION, version, buf);
        }
        put_string(tag::HOST, &s.host, buf);
        if s.port != 0 {
            uint32::encode(tag::PORT, &u32::from(s.port), buf);
        }
        for (key, value) in s.metadata.iter() {
            encoding::encode_key(tag::METADATA, WireType::LengthDelimited, buf);
            encoding::encode_varint(entry_len(key, value) as u64, buf);
            put_string(1, key, buf);
            put_string(2, value, buf);
        }
        put_string(tag::NAMESPACE, &s.namespace, buf);
        put_string(tag::OWNER, &s.owner, buf);
        if s.create_revision != 0 {
            uint64::encode(tag::CREATE_REVISION, &s.create_revision, buf);
        }
        if s.mod_revision != 0 {
            uint64::encode(tag::MOD_REVISION, &s.mod_revision, buf);
        }
        if s.draining {
            encoding::bool::encode(tag::DRAINING, &true, buf);
        }
    }

    fn encoded_len(&self) -> usize {
        let s = &*self.0;
        let version = s
            .version
            .as_ref()
            .map_or(0, |v| delimited_len(tag::VERSION, version_len(v)));
        let port = if s.port == 0 {
            0
        } else {
            uint32::encoded_len(tag::PORT, &u32::from(s.port))
        };
        let metadata: usize = s
            .metadata
            .iter()
            .map(|(k, v)| delimited_len(tag::METADATA, entry_len(k, v)))
            .sum();
        let revisions = [
            (tag::CREATE_REVISION, s.create_revision),
            (tag::MOD_REVISION, s.mod_revision),
        ]
        .iter()
        .filter(|(_, r)| *r != 0)
        .map(|(t, r)| uint64::encoded_len(*t, r))
        .sum::<usize>();
        string_len(tag::ID, &s.id)
            + string_len(tag::NAME, &s.name)
            + version
            + string_len(tag::HOST, &s.host)
            + port
            + metadata
            + string_len(tag::NAMESPACE, &s.namespace)
            + string_len(tag::OWNER, &s.owner)
            + revisions
            + if s.draining {
                encoding::bool::encoded_len(tag::DRAINING, &true)
            } else {
                0
            }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        *self = Service::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use seaport::pb;

    fn service(version: Option<&str>, metadata: &[(&str, &str)]) -> seaport::Service {
        seaport::Service {
            id: "01J9Z3Q5".into(),
            name: "web".into(),
            version: version.map(|v| v.parse().unwrap()),
            host: "10.0.0.7".into(),
            port: 8080,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            namespace: "default".into(),
            owner: "spiffe://example.org/web".into(),
            session_id: "s-1".into(),
            create_revision: 1_732_000_000_000_000,
            mod_revision: 1_732_000_000_000_123,
            draining: true,
        }
    }

    /// What the clients decode must be exactly what `pb::Service` would
    /// have said, field for field and byte count for byte count.
    #[test]
    fn encodes_as_the_generated_message_would() {
        let cases = [
            service(Some("1.2.3-beta.1+build.5"), &[("zone", "a"), ("tier", "")]),
            service(Some("18446744073709551615.0.10+exp.sha.5114f85"), &[]),
            service(Some("9.99.100-rc.1"), &[]),
            service(None, &[]),
            service(Some("0.0.0"), &[("", "empty key"), ("k", "v")]),
            seaport::Service {
                port: 0,
                create_revision: 0,
                host: "".into(),
                draining: false,
                ..service(Some("10.20.30"), &[])
            },
        ];
        for s in cases {
            let ours = Service(Arc::new(s.clone()));
            let generated = pb::Service::from(&s);
            assert_eq!(ours.encoded_len(), generated.encoded_len(), "{s:?}");
            let decoded = pb::Service::decode(ours.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, generated);
        }
    }

    /// Every field the proto gives `Service` is written: a field added to
    /// the proto and not here fails this test rather than vanishing from
    /// every answer.
    #[test]
    fn every_field_of_the_protos_service_is_written() {
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let message = set
            .file
            .iter()
            .filter(|f| f.package() == "seaport.v1")
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == "Service")
            .expect("seaport.v1.Service");
        let in_proto: std::collections::BTreeMap<u32, &str> = message
            .field
            .iter()
            .map(|f| (f.number() as u32, f.name()))
            .collect();
        let full = service(Some("1.2.3"), &[("zone", "a")]);
        let bytes = Service(Arc::new(full)).encode_to_vec();
        let mut written = std::collections::BTreeSet::new();
        let mut buf = bytes.as_slice();
        while !buf.is_empty() {
            let (tag, wire_type) = encoding::decode_key(&mut buf).unwrap();
            written.insert(tag);
            encoding::skip_field(wire_type, tag, &mut buf, DecodeContext::default()).unwrap();
        }
        for (number, name) in &in_proto {
            assert!(
                written.contains(number),
                "wire.rs does not write field {number} ({name}) of seaport.v1.Service"
            );
        }
        assert!(
            written.iter().all(|n| in_proto.contains_key(n)),
            "wire.rs writes a field the proto does not have: {written:?}"
        );
    }

    #[test]
    fn an_answer_holding_services_decodes_in_the_client() {
        let s = service(Some("1.0.0"), &[("zone", "b")]);
        let answer = crate::pb::QueryResponse {
            services: vec![Service(Arc::new(s.clone())), Service::default()],
            revision: 9,
        };
        let decoded = pb::QueryResponse::decode(answer.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.revision, 9);
        assert_eq!(decoded.services[0], pb::Service::from(&s));
        assert_eq!(decoded.services[1], pb::Service::default());
    }
}
