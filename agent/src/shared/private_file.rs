//! Files only their owner may read (keys, tokens, the agent's spool and manifest): written mode
//! 0600 through a temporary file and a rename, so that a crash leaves the old content or the new,
//! never half of one, and never a moment where another user could read it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("state directory: cannot {action} {}: {source}", path.display())]
pub struct StateError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes a file mode 0600 through a temporary file and a rename, so that a crash leaves the old
/// content or the new, never half of one.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), StateError> {
    write_private_with(path, |f| f.write_all(data))
}

/// [`write_private`] with the content written by `write`, for content too large to build in
/// memory first.
pub fn write_private_with(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let err = |action, source| StateError { action, path: path.to_owned(), source };
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err("create", e))?;
    if let Err(e) = write(&mut f).and_then(|()| f.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    fs::rename(&tmp, path).map_err(|e| err("replace", e))
}
