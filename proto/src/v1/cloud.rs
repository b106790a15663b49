//! What the cloud's metadata service says about the instance an agent runs on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::{self, Validate, ValidationError, limits, name, nonempty};

/// The cloud an instance runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    Aws,
    Azure,
}

impl CloudProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            CloudProvider::Aws => "aws",
            CloudProvider::Azure => "azure",
        }
    }
}

/// The instance as its cloud describes it. The same fields serve both clouds; each names what it
/// holds on each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudFacts {
    pub provider: CloudProvider,
    /// EC2 instance id (`i-0abc…`) or Azure `vmId`: unique to the instance, unlike a machine id
    /// baked into an image.
    pub instance_id: String,
    /// AWS account id, or Azure subscription id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// AWS region, or Azure location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The AMI id, or the Azure image (its resource id, else `publisher:offer:sku:version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// EC2 instance type, or Azure VM size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Azure only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// The instance's tags as the cloud has them (EC2 only with tags in metadata enabled). The
    /// agent also adds them to the host's tags, under its configured ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl Validate for CloudFacts {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("instance_id", &self.instance_id, limits::MAX_NAME_BYTES)?;
        name("instance_id", &self.instance_id, limits::MAX_NAME_BYTES)?;
        for (field, value) in [
            ("account", &self.account),
            ("region", &self.region),
            ("zone", &self.zone),
            ("instance_type", &self.instance_type),
            ("resource_group", &self.resource_group),
        ] {
            if let Some(v) = value {
                name(field, v, limits::MAX_NAME_BYTES)?;
            }
        }
        if let Some(image) = &self.image {
            name("image", image, limits::MAX_PATH_BYTES)?;
        }
        validate::tags("tags", &self.tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> CloudFacts {
        CloudFacts {
            provider: CloudProvider::Aws,
            instance_id: "i-0123456789abcdef0".into(),
            account: Some("123456789012".into()),
            region: Some("eu-west-1".into()),
            zone: Some("eu-west-1a".into()),
            image: Some("ami-0abcdef1234567890".into()),
            instance_type: Some("t3.micro".into()),
            resource_group: None,
            tags: BTreeMap::from([("role".into(), "web".into())]),
        }
    }

    #[test]
    fn wire_form_and_limits() {
        let v = serde_json::to_value(facts()).unwrap();
        assert_eq!(v["provider"], "aws");
        assert!(v.get("resource_group").is_none());
        assert!(facts().validate().is_ok());
        let mut bad = facts();
        bad.instance_id = String::new();
        assert_eq!(bad.validate().unwrap_err().to_string(), "instance_id: must not be empty");
        let mut bad = facts();
        bad.region = Some("eu\u{1b}[31m".into());
        assert_eq!(bad.validate().unwrap_err().path, "region");
    }
}
