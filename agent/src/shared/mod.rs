//! What both binaries share: the agent and the collector (`hostwatch`) read their configuration
//! the same way ([`config`]), log the same way ([`logging`]), stop on the same signals
//! ([`signals`]), write private files the same way ([`private_file`]) and set up TLS the same way
//! ([`tls`]). It lives in the agent crate because the agent must not depend on the collector;
//! the collector imports the agent crate only for this module and for dev mode
//! (`server/src/dev.rs`, which runs the agent in its own process).
//!
//! Invariant: nothing here knows what an agent or a collector does.

pub mod config;
pub mod logging;
pub mod private_file;
pub mod signals;
pub mod tls;
