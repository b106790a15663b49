//! The golden manifest of an image: `hostwatch-agent bake`, run last in an image build, records
//! every watched file (hashed) and marks the manifest as the image's. An instance booted from
//! the image hashes every file again at its first start and reports each difference from the
//! image as a `file_changed` with origin `bake`, so drift is caught from the first boot; after
//! that first scan the manifest is the instance's own.
//!
//! Invariant: a golden manifest is only written into a state directory without an identity, so
//! no image carries a node key (`reset-identity` first).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::manifest::Manifest;
use super::{FilesConfig, MANIFEST_FILE, scan};
use crate::identity::NODE_KEY;
use crate::ratelimit::TokenBucket;
use crate::shared::private_file::StateError;

/// What a bake recorded.
#[derive(Debug)]
pub struct Baked {
    pub manifest_path: PathBuf,
    pub entries: usize,
    pub hashed_bytes: u64,
    pub took: Duration,
    /// Configured paths that do not exist (recorded as absent: one created later is reported).
    pub missing: Vec<PathBuf>,
    /// Paths that could not be read.
    pub unreadable: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error(
        "{} holds this machine's identity (a node key): an image must not carry it; run `hostwatch-agent reset-identity` first",
        .0.display()
    )]
    HasIdentity(PathBuf),
    #[error("the scan of the watched paths was cut short")]
    Interrupted,
    #[error(transparent)]
    Save(#[from] StateError),
}

/// Scans and hashes every watched path at full speed (an image build waits for it, nothing else
/// runs) and saves the result in `state_dir` as the image's golden manifest.
pub fn bake(config: &FilesConfig, state_dir: &Path, machine_id: &str) -> Result<Baked, BakeError> {
    let key = state_dir.join(NODE_KEY);
    if key.exists() {
        return Err(BakeError::HasIdentity(key));
    }
    let started = Instant::now();
    let mut budget = TokenBucket::new(0);
    let outcome = scan::scan(config, None, true, &mut budget, &|| false).ok_or(BakeError::Interrupted)?;
    let mut manifest: Manifest = outcome.manifest;
    manifest.machine_id = machine_id.to_owned();
    manifest.baked = true;
    let manifest_path = state_dir.join(MANIFEST_FILE);
    manifest.save(&manifest_path)?;
    Ok(Baked {
        manifest_path,
        entries: manifest.len(),
        hashed_bytes: outcome.hashed_bytes,
        took: started.elapsed(),
        missing: outcome.missing,
        unreadable: outcome.unreadable,
    })
}
