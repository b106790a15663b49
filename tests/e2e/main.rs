//! End-to-end tests of hostwatch: the real collector and agent binaries, real processes, real
//! sockets, real SQLite and PostgreSQL. Each test starts its own collector in a temporary
//! directory on a free loopback port, so tests run in parallel and touch nothing outside their
//! directories. The tests of what the collector decides and keeps run on both stores
//! (`support::on_both_stores!`: `NAME::sqlite` and `NAME::postgres`, the latter on a private
//! PostgreSQL of its own).

#![allow(clippy::unwrap_used)]

mod alerts;
mod bad_input;
mod cloud;
mod collection;
mod collectors;
mod connections;
mod credentials;
mod dev_mode;
mod doctor;
mod events;
mod faults;
mod files;
mod identity;
mod ingest;
mod learn;
mod lifecycle;
mod metrics;
mod namespaces;
mod oracle;
mod postgres;
mod probes;
mod process_facts;
mod protocol;
mod queries;
mod rollout;
mod rules;
mod sessions;
mod skeleton;
mod stores;
mod stores_state;
mod support;
mod tls;
mod workloads;
