//! The agent's state directory and its identity: the node key the collector gave it, bound to
//! the machine it was given on.
//!
//! Files in `state_dir` (mode 0700): `node-key` (mode 0600, the bearer credential), `identity.json`
//! (host id, machine id, and the collector URL it was issued by, for people), and `agent-id` (a
//! generated machine id for hosts without `/etc/machine-id`). An identity whose machine id is not
//! this machine's (an image baked with a key in it and booted elsewhere) is dropped and the agent
//! enrolls again instead of posing as the original. A changed collector URL alone keeps the key:
//! the same collector may be reached by another name, and a collector that does not know the key
//! answers 401, upon which the agent enrolls again.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::shared::config::Secret;
use crate::shared::private_file::{StateError, write_private};

/// Who the agent is to its collector.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host_id: i64,
    pub node_key: Secret,
    pub machine_id: String,
    /// The cloud instance it was issued on, where the agent knew it.
    pub instance_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdentityFile {
    host_id: i64,
    machine_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
    server: String,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// The node key's file in the state directory.
pub const NODE_KEY: &str = "node-key";
const IDENTITY: &str = "identity.json";
const AGENT_ID: &str = "agent-id";
const SPOOL: &str = "spool";

impl StateDir {
    /// Opens the directory, creating it mode 0700 if needed, and making an existing one that
    /// others can enter private again (with a warning).
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        let err = |action, source| StateError { action, path: path.to_owned(), source };
        DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| err("create", e))?;
        let mode = fs::metadata(path).map_err(|e| err("stat", e))?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "state directory was open to others; setting mode 0700");
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| err("chmod", e))?;
        }
        Ok(StateDir { path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored identity, if it belongs to this machine (its machine id, and its cloud instance
    /// where both are known) and this collector.
    pub fn load(
        &self,
        machine_id: &str,
        instance_id: Option<&str>,
        server: &Url,
    ) -> Result<Option<Identity>, StateError> {
        let id_path = self.path.join(IDENTITY);
        let text = match fs::read_to_string(&id_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError { action: "read", path: id_path, source });
            }
        };
        let file: IdentityFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %id_path.display(), error = %e, "identity file unreadable; enrolling again");
                return Ok(None);
            }
        };
        if file.machine_id != machine_id {
            tracing::warn!(
                stored = %file.machine_id, current = %machine_id,
                "this machine is not the one the node key was issued to (cloned image?); enrolling again"
            );
            return Ok(None);
        }
        // An image baked with a key and a fixed machine id, booted as another instance.
        if let (Some(stored), Some(current)) = (file.instance_id.as_deref(), instance_id)
            && stored != current
        {
            tracing::warn!(
                stored,
                current,
                "this instance is not the one the node key was issued to (an image with a baked identity?); enrolling again"
            );
            return Ok(None);
        }
        if file.server != server.as_str() {
            tracing::info!(stored = %file.server, configured = %server, "collector URL changed; trying the stored node key");
        }
        let key_path = self.path.join(NODE_KEY);
        let key = match fs::read_to_string(&key_path) {
            Ok(k) => k.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError { action: "read", path: key_path, source });
            }
        };
        tighten(&key_path)?;
        if key.is_empty() {
            return Ok(None);
        }
        Ok(Some(Identity {
            host_id: file.host_id,
            node_key: Secret::new(key),
            machine_id: file.machine_id,
            instance_id: file.instance_id,
        }))
    }

    /// Stores an identity: the key first (mode 0600), then the file that makes it valid.
    pub fn save(&self, id: &Identity, server: &Url) -> Result<(), StateError> {
        write_private(&self.path.join(NODE_KEY), id.node_key.expose().as_bytes())?;
        let file = IdentityFile {
            host_id: id.host_id,
            machine_id: id.machine_id.clone(),
            instance_id: id.instance_id.clone(),
            server: server.to_string(),
        };
        let json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        write_private(&self.path.join(IDENTITY), &json)
    }

    /// Drops the identity (the collector no longer knows the key).
    pub fn forget(&self) -> Result<(), StateError> {
        self.remove(&[IDENTITY, NODE_KEY])
    }

    /// For an image bake (`hostwatch-agent reset-identity`): everything that makes this agent
    /// this host (identity, node key, generated machine id) and the reports spooled under it go;
    /// the file manifest stays, so the image's files are the baseline of every instance. Returns
    /// what was removed.
    pub fn reset(&self) -> Result<Vec<PathBuf>, StateError> {
        let mut removed = Vec::new();
        for name in [IDENTITY, NODE_KEY, AGENT_ID] {
            if self.path.join(name).exists() {
                removed.push(self.path.join(name));
            }
        }
        self.remove(&[IDENTITY, NODE_KEY, AGENT_ID])?;
        let spool = self.path.join(SPOOL);
        match fs::remove_dir_all(&spool) {
            Ok(()) => removed.push(spool),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError { action: "remove", path: spool, source }),
        }
        Ok(removed)
    }

    /// Where reports wait to be sent.
    pub fn spool_dir(&self) -> PathBuf {
        self.path.join(SPOOL)
    }

    fn remove(&self, names: &[&str]) -> Result<(), StateError> {
        for name in names {
            let p = self.path.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError { action: "remove", path: p, source });
                }
            }
        }
        Ok(())
    }

    /// A stable id for a machine without `/etc/machine-id`: generated once, kept here.
    pub fn agent_id(&self) -> Result<String, StateError> {
        let p = self.path.join(AGENT_ID);
        match fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StateError { action: "read", path: p, source });
            }
        }
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| StateError {
            action: "generate an id for",
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let id = format!("agent-{}", hex(&bytes));
        write_private(&p, id.as_bytes())?;
        Ok(id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key file readable by others is made private again, with a warning.
fn tighten(path: &Path) -> Result<(), StateError> {
    let meta =
        fs::metadata(path).map_err(|source| StateError { action: "stat", path: path.to_owned(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "node key was readable by others; setting mode 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| StateError {
            action: "chmod",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn identity_round_trip_is_private_and_bound_to_the_machine() {
        let d = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&d.path().join("state")).unwrap();
        assert_eq!(fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
        let server = url("http://127.0.0.1:1/");
        assert!(dir.load("m1", None, &server).unwrap().is_none());
        let id = Identity {
            host_id: 3,
            node_key: Secret::new("hwn_k"),
            machine_id: "m1".into(),
            instance_id: Some("i-1".into()),
        };
        dir.save(&id, &server).unwrap();
        let key_mode = fs::metadata(dir.path().join(NODE_KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o600);
        let back = dir.load("m1", Some("i-1"), &server).unwrap().unwrap();
        assert_eq!((back.host_id, back.node_key.expose()), (3, "hwn_k"));
        assert!(dir.load("m2", Some("i-1"), &server).unwrap().is_none(), "another machine must enroll again");
        assert!(
            dir.load("m1", Some("i-2"), &server).unwrap().is_none(),
            "the same machine id on another instance (a baked image) must enroll again"
        );
        assert!(dir.load("m1", None, &server).unwrap().is_some(), "no cloud now: the machine id decides");
        assert!(
            dir.load("m1", Some("i-1"), &url("http://other:1/")).unwrap().is_some(),
            "another URL keeps the key until the collector refuses it"
        );
        dir.forget().unwrap();
        assert!(dir.load("m1", Some("i-1"), &server).unwrap().is_none());
    }

    #[test]
    fn a_reset_for_an_image_keeps_the_file_manifest_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = StateDir::open(d.path()).unwrap();
        let server = url("http://127.0.0.1:1/");
        let id =
            Identity { host_id: 1, node_key: Secret::new("k"), machine_id: "m".into(), instance_id: None };
        dir.save(&id, &server).unwrap();
        dir.agent_id().unwrap();
        fs::create_dir_all(dir.spool_dir()).unwrap();
        fs::write(dir.spool_dir().join("00000000000000000001.json"), "{}").unwrap();
        fs::write(d.path().join("files.manifest"), "kept").unwrap();
        let removed = dir.reset().unwrap();
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(dir.load("m", None, &server).unwrap().is_none());
        assert!(!d.path().join(AGENT_ID).exists() && !dir.spool_dir().exists());
        assert_eq!(fs::read_to_string(d.path().join("files.manifest")).unwrap(), "kept");
        assert!(dir.reset().unwrap().is_empty(), "a second reset finds nothing");
    }

    #[test]
    fn loose_key_file_is_tightened() {
        let d = tempfile::tempdir().unwrap();
        let dir = StateDir::open(d.path()).unwrap();
        let server = url("http://127.0.0.1:1/");
        let id =
            Identity { host_id: 1, node_key: Secret::new("k"), machine_id: "m".into(), instance_id: None };
        dir.save(&id, &server).unwrap();
        let key = d.path().join(NODE_KEY);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(dir.load("m", None, &server).unwrap().is_some());
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_open_state_directory_is_made_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn agent_id_is_stable() {
        let d = tempfile::tempdir().unwrap();
        let dir = StateDir::open(d.path()).unwrap();
        let a = dir.agent_id().unwrap();
        assert!(a.starts_with("agent-") && a.len() == 38);
        assert_eq!(dir.agent_id().unwrap(), a);
    }
}
