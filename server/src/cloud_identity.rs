//! EC2 instance identity: the collector's check that a host enrolling as an EC2 instance is that
//! instance, from the identity document the metadata service signs with AWS's regional key.
//!
//! Off by default. With `[cloud] aws_identity_certificates` (AWS's public certificates for the
//! `signature` of the identity document, one per region the fleet runs in, in one PEM file), an
//! enrollment that claims an EC2 instance must bring the document and its signature: the
//! signature must verify under one of the certificates, and the document must name the instance,
//! account and region the host claims. The instance id verified is kept with the host; a report
//! claiming another is refused, so a node key cannot be moved to pose as another instance.
//!
//! Invariant: the decision is made on the document's own bytes, never on what the agent says it
//! contains.

use std::path::Path;

use base64::Engine;
use hostwatch_proto::v1::{CloudFacts, CloudProvider, InstanceIdentity};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::tls::read_certs;

/// AWS's certificates, loaded once at start.
#[derive(Debug, Clone)]
pub struct AwsIdentity {
    certs: Vec<CertificateDer<'static>>,
}

/// The fields of the document the check compares.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    instance_id: String,
    account_id: Option<String>,
    region: Option<String>,
}

impl AwsIdentity {
    /// Reads every certificate in the PEM file; each must parse as a certificate whose key can
    /// verify a signature. `Err` names the file and the problem.
    pub fn load(path: &Path) -> Result<AwsIdentity, String> {
        let certs = read_certs(path).map_err(|e| e.to_string())?;
        for (i, c) in certs.iter().enumerate() {
            webpki::EndEntityCert::try_from(c)
                .map_err(|e| format!("{}: certificate {} does not parse: {e:?}", path.display(), i + 1))?;
        }
        Ok(AwsIdentity { certs })
    }

    /// Checks that `identity` proves the instance `claimed` names. `Ok(None)`: the host claims
    /// no EC2 instance, nothing to check; `Ok(Some(id))`: the instance id verified.
    pub fn verify(
        &self,
        claimed: Option<&CloudFacts>,
        identity: Option<&InstanceIdentity>,
    ) -> Result<Option<String>, String> {
        let Some(claimed) = claimed.filter(|c| c.provider == CloudProvider::Aws) else { return Ok(None) };
        let identity = identity.ok_or_else(|| {
            format!(
                "the host claims EC2 instance {:?} without a signed instance identity document, and this \
                 collector checks them ([cloud] aws_identity_certificates)",
                claimed.instance_id
            )
        })?;
        let compact: String = identity.signature.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let signature = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| format!("the identity document's signature is not base64: {e}"))?;
        let signed = self.certs.iter().any(|c| {
            webpki::EndEntityCert::try_from(c).is_ok_and(|cert| {
                cert.verify_signature(
                    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                    identity.document.as_bytes(),
                    &signature,
                )
                .is_ok()
            })
        });
        if !signed {
            return Err("the instance identity document's signature does not verify under any certificate \
                 in [cloud] aws_identity_certificates"
                .to_owned());
        }
        let doc: Document = serde_json::from_str(&identity.document)
            .map_err(|e| format!("the signed identity document does not parse: {e}"))?;
        let differs = |what: &str, signed: Option<&str>, said: Option<&str>| -> Result<(), String> {
            match (signed, said) {
                (Some(a), Some(b)) if a != b => {
                    Err(format!("the host claims {what} {b:?}; its signed identity document says {a:?}"))
                }
                _ => Ok(()),
            }
        };
        differs("instance", Some(&doc.instance_id), Some(&claimed.instance_id))?;
        differs("account", doc.account_id.as_deref(), claimed.account.as_deref())?;
        differs("region", doc.region.as_deref(), claimed.region.as_deref())?;
        Ok(Some(doc.instance_id))
    }
}
