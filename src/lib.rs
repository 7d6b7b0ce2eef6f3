//! Seaport's wire contract and shared types.
//!
//! `pb` is the code generated from `proto/seaport/v1/seaport.proto`; the rest
//! are the domain types every part speaks: [`Role`] (what a service is),
//! [`Pattern`] and [`Range`] (what a query asks for, with node-semver
//! meaning) and [`Service`] (one registration).

mod convert;
mod duration;
mod event;
mod metadata;
mod quote;
mod range;
mod role;
mod service;

pub use convert::ConvertError;
pub use duration::parse_duration;
pub use event::{EventKind, FreeReason};
pub use metadata::Metadata;
pub use quote::{QUOTE_LIMIT, Quoted, quote};
pub use range::{MAX_RANGE_LEN, Range, RangeError};
pub use role::{
    MAX_NAME_LEN, MAX_PATTERN_LEN, MAX_ROLE_LEN, Pattern, Role, RoleError, validate_name,
};
pub use service::Service;

/// Code generated from the proto: messages and the `Registry` client.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("seaport.v1");

    /// The encoded descriptor set of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("seaport_descriptor");
}
