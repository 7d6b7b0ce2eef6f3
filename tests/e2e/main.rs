//! End-to-end tests: a real seaportd on 127.0.0.1:0, spoken to over gRPC.

mod client;
mod draining;

mod hardening;
mod health;
mod metrics;
mod ports;
mod query;
mod register;
mod semver_table;
mod sessions;
mod tls;
mod watch;
