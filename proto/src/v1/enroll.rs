//! Enrollment: an enroll secret in, a node key out.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::validate::{Validate, ValidationError, limits, nonempty};
use super::{AgentStatus, HostFacts};

/// Sent once by an agent that has no node key (or whose machine changed under it).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Shared by the agents of a fleet; only ever stored hashed by the collector.
    pub enroll_secret: String,
    pub host: HostFacts,
    pub agent: AgentStatus,
    /// On EC2: the instance identity document and its signature, as the metadata service gave
    /// them, for a collector that checks them against AWS's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_identity: Option<InstanceIdentity>,
}

/// EC2's signed instance identity document: `document` as served (JSON text), `signature` the
/// base64 RSA-SHA256 signature of it (`/latest/dynamic/instance-identity/signature`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceIdentity {
    pub document: String,
    pub signature: String,
}

/// Largest identity document or signature accepted: AWS's are about 500 and 350 bytes.
pub const MAX_IDENTITY_BYTES: usize = 16 << 10;

/// The collector's answer: the host's id and the key it signs its reports with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub host_id: i64,
    /// Bearer credential for [`super::REPORT_PATH`]; the agent keeps it mode 0600.
    pub node_key: String,
}

// Secrets never reach a log through `{:?}`.
impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("enroll_secret", &"<redacted>")
            .field("host", &self.host)
            .field("agent", &self.agent)
            .finish()
    }
}

impl fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("host_id", &self.host_id)
            .field("node_key", &"<redacted>")
            .finish()
    }
}

impl Validate for EnrollRequest {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("enroll_secret", &self.enroll_secret, limits::MAX_SECRET_BYTES)?;
        self.host.validate().map_err(|e| e.within("host"))?;
        if let Some(i) = &self.instance_identity {
            nonempty("instance_identity.document", &i.document, MAX_IDENTITY_BYTES)?;
            nonempty("instance_identity.signature", &i.signature, MAX_IDENTITY_BYTES)?;
        }
        self.agent.validate().map_err(|e| e.within("agent"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let r = EnrollResponse { host_id: 7, node_key: "hwn_supersecret".into() };
        let s = format!("{r:?}");
        assert!(!s.contains("supersecret"), "{s}");
        assert!(s.contains("host_id: 7"));
    }
}
