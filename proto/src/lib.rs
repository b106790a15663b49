//! The hostwatch wire contract: plain serde types, their limits and their validation.
//!
//! Architecture invariant: this crate does no I/O. It has no tokio, no HTTP client, no file access;
//! agent and server convert their own types to and from these at their edges. Every change to `v1`
//! only adds optional fields (so old and new agents and collectors keep talking); a breaking change
//! is a new module and a new `/api/v2` prefix.
#![forbid(unsafe_code)]

pub mod v1;
