//! Files: what the agent reports of the watched paths. The agent keeps a manifest of every watched
//! file; the collector hears of changes only, each with the state before and after.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{Validate, ValidationError, limits, opt_text, stored, text};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A device, socket or FIFO.
    Other,
}

/// One path as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileState {
    pub kind: FileKind,
    /// Permission bits and the setuid, setgid and sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(with = "timestamp")]
    pub mtime: OffsetDateTime,
    pub inode: u64,
    /// SHA-256 of the content, lowercase hex: regular files up to the agent's size cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A regular file above the size cap: compared by metadata only, and said so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metadata_only: bool,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChangeKind {
    Created,
    /// The content (or a symlink's target, or the kind of file) changed.
    Modified,
    Deleted,
    /// Mode, owner or group changed, the content did not.
    Metadata,
    /// Moved from `from_path`, content unchanged.
    Renamed,
}

/// How the agent came to see a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOrigin {
    /// As it happened (inotify).
    Live,
    /// Made while the agent was not running: found by the comparison at start.
    Downtime,
    /// Found by a periodic or recovery rescan (after an event queue overflow, on a path beyond the
    /// watch budget).
    Rescan,
    /// Between the image's bake and this instance's first start (the manifest came with the image
    /// from another machine).
    Bake,
}

/// A package that owns a path, and whether the new content is what the package installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackageMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The content matches the package's record: a package made this change.
    pub matches: bool,
}

/// One change to one watched path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub change: FileChangeKind,
    pub origin: ChangeOrigin,
    /// When the agent saw it (for a downtime change: when the agent found it).
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
    /// The state before; absent for a creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<FileState>,
    /// The state after; absent for a deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<FileState>,
    /// For a rename: where the file was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_path: Option<String>,
    /// The package that owns the path, where a package database knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageMatch>,
}

/// The agent's account of its file watching, in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    /// Files and directories in the manifest.
    pub entries: u64,
    /// Directories watched by inotify, and how many the kernel allows this user.
    pub watches: u64,
    #[serde(default)]
    pub watch_limit: u64,
    /// Directories beyond the watch budget, covered by the periodic scan only.
    #[serde(default)]
    pub unwatched_dirs: u64,
    /// Times the kernel's event queue overflowed (each followed by a rescan).
    #[serde(default)]
    pub overflows: u64,
    /// Configured paths that do not exist (watched once they appear).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// When the last full scan of the watched paths ended.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "timestamp::option")]
    pub last_scan: Option<OffsetDateTime>,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
    }
}

impl std::str::FromStr for FileKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [FileKind::File, FileKind::Dir, FileKind::Symlink, FileKind::Other]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown file kind {s:?}"))
    }
}

impl FileChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileChangeKind::Created => "created",
            FileChangeKind::Modified => "modified",
            FileChangeKind::Deleted => "deleted",
            FileChangeKind::Metadata => "metadata",
            FileChangeKind::Renamed => "renamed",
        }
    }
}

impl ChangeOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOrigin::Live => "live",
            ChangeOrigin::Downtime => "downtime",
            ChangeOrigin::Rescan => "rescan",
            ChangeOrigin::Bake => "bake",
        }
    }
}

impl Validate for FileState {
    fn validate(&self) -> Result<(), ValidationError> {
        stored("size", self.size)?;
        stored("inode", self.inode)?;
        if let Some(h) = &self.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ValidationError::new("sha256", "not 64 hex digits"));
        }
        opt_text("target", &self.target, limits::MAX_PATH_BYTES)
    }
}

impl Validate for FileChange {
    fn validate(&self) -> Result<(), ValidationError> {
        text("path", &self.path, limits::MAX_PATH_BYTES)?;
        if self.path.is_empty() {
            return Err(ValidationError::new("path", "empty"));
        }
        opt_text("from_path", &self.from_path, limits::MAX_PATH_BYTES)?;
        let expected = match self.change {
            FileChangeKind::Created => (false, true),
            FileChangeKind::Deleted => (true, false),
            _ => (true, true),
        };
        if (self.old.is_some(), self.new.is_some()) != expected {
            return Err(ValidationError::new(
                "change",
                format!("{:?} needs {} old and {} new state", self.change, has(expected.0), has(expected.1)),
            ));
        }
        if (self.change == FileChangeKind::Renamed) != self.from_path.is_some() {
            return Err(ValidationError::new("from_path", "given exactly when the change is a rename"));
        }
        if let Some(old) = &self.old {
            old.validate().map_err(|e| e.within("old"))?;
        }
        if let Some(new) = &self.new {
            new.validate().map_err(|e| e.within("new"))?;
        }
        if let Some(p) = &self.package {
            text("package.name", &p.name, limits::MAX_NAME_BYTES)?;
            opt_text("package.version", &p.version, limits::MAX_NAME_BYTES)?;
        }
        Ok(())
    }
}

fn has(yes: bool) -> &'static str {
    if yes { "an" } else { "no" }
}

impl Validate for FileStats {
    fn validate(&self) -> Result<(), ValidationError> {
        for (field, n) in [
            ("entries", self.entries),
            ("watches", self.watches),
            ("watch_limit", self.watch_limit),
            ("unwatched_dirs", self.unwatched_dirs),
            ("overflows", self.overflows),
        ] {
            stored(field, n)?;
        }
        super::validate::count("missing", &self.missing, limits::MAX_REASONS)?;
        for (i, m) in self.missing.iter().enumerate() {
            text(format_args!("missing[{i}]"), m, limits::MAX_PATH_BYTES)?;
        }
        Ok(())
    }
}
