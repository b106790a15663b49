//! hostwatch-server: the collector and the `hostwatch` CLI.
//!
//! Agents report to [`api`]; [`ingest`] records what they report through the [`store`] and has the
//! [`engine`] explain it against the host's workload from [`baseline`]; whatever the engine cannot
//! explain becomes a finding, whose life (open, refreshed, reopened, held back, resolved)
//! [`findings`] decides. [`auth`] is the one place credentials are checked. [`serve`] starts
//! the collector, [`dev`] its one-command local mode, [`cli`] the command line.

pub mod admission;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod baseline;
pub mod cli;
pub mod cloud_identity;
pub mod config;
pub mod dev;
pub mod engine;
pub mod findings;
pub mod housekeeping;
pub mod ingest;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod peers;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod store;
pub mod tags;
pub mod tls;
