//! Azure's instance metadata service: one `GET /metadata/instance` with `Metadata: true`.

use std::collections::BTreeMap;

use hostwatch_proto::v1::{CloudFacts, CloudProvider};
use reqwest::Url;
use serde::Deserialize;

use super::{MAX_BODY, describe, read_body};

/// A version every Azure region serves, with `tagsList`.
pub const API_VERSION: &str = "2021-02-01";

#[derive(Debug, Deserialize)]
struct Instance {
    compute: Compute,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Compute {
    vm_id: String,
    location: Option<String>,
    zone: Option<String>,
    subscription_id: Option<String>,
    resource_group_name: Option<String>,
    vm_size: Option<String>,
    /// `k1:v1;k2:v2`: older API versions, and values cannot hold `;`.
    #[serde(default)]
    tags: String,
    #[serde(default)]
    tags_list: Vec<Tag>,
    storage_profile: Option<StorageProfile>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StorageProfile {
    image_reference: Option<ImageReference>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageReference {
    #[serde(default)]
    id: String,
    #[serde(default)]
    publisher: String,
    #[serde(default)]
    offer: String,
    #[serde(default)]
    sku: String,
    #[serde(default)]
    version: String,
}

/// Reads the instance's facts; `Err` says what failed in an operator's words.
pub async fn fetch(http: &reqwest::Client, base: &Url) -> Result<CloudFacts, String> {
    let mut url = base.join("metadata/instance").map_err(|e| format!("bad metadata URL {base}: {e}"))?;
    url.query_pairs_mut().append_pair("api-version", API_VERSION);
    let resp = http
        .get(url.clone())
        .header("Metadata", "true")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", describe(e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url}: answered {status}: not an Azure metadata service, or it is busy"));
    }
    let body = read_body(resp, MAX_BODY, &format!("GET {url}")).await?;
    let instance: Instance =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not Azure instance metadata: {e}"))?;
    Ok(facts(instance.compute))
}

fn facts(c: Compute) -> CloudFacts {
    let mut tags: BTreeMap<String, String> = c.tags_list.into_iter().map(|t| (t.name, t.value)).collect();
    if tags.is_empty() {
        tags = c
            .tags
            .split(';')
            .filter_map(|kv| kv.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .filter(|(k, _)| !k.is_empty())
            .collect();
    }
    let image = c.storage_profile.and_then(|s| s.image_reference).and_then(|i| {
        if !i.id.is_empty() {
            Some(i.id)
        } else if !i.publisher.is_empty() {
            Some(format!("{}:{}:{}:{}", i.publisher, i.offer, i.sku, i.version))
        } else {
            None
        }
    });
    let some = |s: Option<String>| s.filter(|s| !s.is_empty());
    CloudFacts {
        provider: CloudProvider::Azure,
        instance_id: c.vm_id,
        account: some(c.subscription_id),
        region: some(c.location),
        zone: some(c.zone),
        image,
        instance_type: some(c.vm_size),
        resource_group: some(c.resource_group_name),
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_fields_and_both_tag_forms() {
        let i: Instance = serde_json::from_str(
            r#"{"compute":{"vmId":"02aab8a4-74ef-476e-8182-f6d2ba4166a6","location":"westeurope",
                "zone":"","subscriptionId":"8d10da13-8125-4ba9-a717-bf7490507b3d",
                "resourceGroupName":"rg-web","vmSize":"Standard_D2s_v3","tags":"role:web;env:prod",
                "tagsList":[{"name":"role","value":"web"},{"name":"env","value":"prod"}],
                "storageProfile":{"imageReference":{"id":"","offer":"0001-com-ubuntu-server-jammy",
                "publisher":"canonical","sku":"22_04-lts-gen2","version":"latest"}}},
                "network":{"interface":[]}}"#,
        )
        .unwrap();
        let f = facts(i.compute);
        assert_eq!(f.instance_id, "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
        assert_eq!(f.zone, None, "an empty zone is no zone");
        assert_eq!(f.resource_group.as_deref(), Some("rg-web"));
        assert_eq!(f.image.as_deref(), Some("canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"));
        assert_eq!(f.tags.len(), 2);
        // Without tagsList (older API versions), the string form.
        let i: Instance =
            serde_json::from_str(r#"{"compute":{"vmId":"v","tags":"role:db;owner:ops:team"}}"#).unwrap();
        let f = facts(i.compute);
        assert_eq!(f.tags["role"], "db");
        assert_eq!(f.tags["owner"], "ops:team", "only the first colon separates");
    }
}
