//! EC2's instance metadata service, version 2 only: a session token from `PUT /latest/api/token`,
//! then the instance identity document and, where the instance allows it, its tags.

use std::collections::BTreeMap;

use hostwatch_proto::v1::{CloudFacts, CloudProvider, InstanceIdentity, limits};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{MAX_BODY, describe, read_body};

/// Seconds the token lives: it is used at once, for a handful of requests.
const TOKEN_TTL_SECS: &str = "60";
const TOKEN_PATH: &str = "latest/api/token";
const IDENTITY_PATH: &str = "latest/dynamic/instance-identity/document";
/// The document's RSA-SHA256 signature under AWS's regional certificate, base64.
const SIGNATURE_PATH: &str = "latest/dynamic/instance-identity/signature";
const TAGS_PATH: &str = "latest/meta-data/tags/instance";

/// The fields of the identity document the agent keeps.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    instance_id: String,
    account_id: Option<String>,
    region: Option<String>,
    availability_zone: Option<String>,
    image_id: Option<String>,
    instance_type: Option<String>,
}

fn url(base: &Url, path: &str) -> Result<Url, String> {
    base.join(path).map_err(|e| format!("bad metadata URL {base}{path}: {e}"))
}

/// Reads the instance's facts and its signed identity document; `Err` says what failed in an
/// operator's words.
pub async fn fetch(
    http: &reqwest::Client,
    base: &Url,
) -> Result<(CloudFacts, Option<InstanceIdentity>), String> {
    let token_url = url(base, TOKEN_PATH)?;
    let resp = http
        .put(token_url.clone())
        .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                // The classic: IMDSv2 answers a PUT with IP TTL = the hop limit (1 by default), so
                // from a container behind a bridge the answer never arrives.
                format!(
                    "the token request (PUT {token_url}) got no answer in time; if the agent runs in a \
                     container, the instance's metadata hop limit (HttpPutResponseHopLimit) is probably 1: \
                     set it to 2 (aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)"
                )
            } else {
                format!("the token request (PUT {token_url}) failed: {}", describe(e))
            }
        })?;
    match resp.status() {
        s if s.is_success() => {}
        StatusCode::FORBIDDEN => {
            return Err(format!(
                "the metadata service refused a token (403 at PUT {token_url}): instance metadata is \
                 disabled for this instance (HttpEndpoint) or the request was blocked"
            ));
        }
        s => {
            return Err(format!(
                "the token request (PUT {token_url}) was answered {s}: not an EC2 IMDSv2 service"
            ));
        }
    }
    let token = String::from_utf8(read_body(resp, 4096, "token").await?)
        .map_err(|_| "the token is not text".to_owned())?
        .trim()
        .to_owned();
    if token.is_empty() || token.chars().any(|c| c.is_control()) {
        return Err("the metadata service gave an empty or malformed token".to_owned());
    }

    let doc_url = url(base, IDENTITY_PATH)?;
    let body = get(http, &doc_url, &token).await?.ok_or_else(|| format!("GET {doc_url}: not found"))?;
    let doc: IdentityDocument = serde_json::from_slice(&body)
        .map_err(|e| format!("GET {doc_url}: not an instance identity document: {e}"))?;
    // Kept as served: the signature is over these very bytes.
    let document =
        String::from_utf8(body).map_err(|_| format!("GET {doc_url}: the document is not UTF-8"))?;
    let sig_url = url(base, SIGNATURE_PATH)?;
    let identity = match get(http, &sig_url, &token).await? {
        Some(sig) => Some(InstanceIdentity {
            document,
            signature: String::from_utf8(sig)
                .map_err(|_| format!("GET {sig_url}: the signature is not text"))?,
        }),
        None => None,
    };
    let tags = tags(http, base, &token).await?;
    let facts = CloudFacts {
        provider: CloudProvider::Aws,
        instance_id: doc.instance_id,
        account: doc.account_id,
        region: doc.region,
        zone: doc.availability_zone,
        image: doc.image_id,
        instance_type: doc.instance_type,
        resource_group: None,
        tags,
    };
    Ok((facts, identity))
}

/// `GET` with the token; `Ok(None)` on 404.
async fn get(http: &reqwest::Client, url: &Url, token: &str) -> Result<Option<Vec<u8>>, String> {
    let resp = http
        .get(url.clone())
        .header("X-aws-ec2-metadata-token", token)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", describe(e)))?;
    match resp.status() {
        s if s.is_success() => Ok(Some(read_body(resp, MAX_BODY, &format!("GET {url}")).await?)),
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::UNAUTHORIZED => Err(format!("GET {url}: the token was refused (401)")),
        s => Err(format!("GET {url}: answered {s}")),
    }
}

/// The instance's tags; none where tags in metadata are not enabled (the listing is a 404).
async fn tags(http: &reqwest::Client, base: &Url, token: &str) -> Result<BTreeMap<String, String>, String> {
    let list_url = url(base, TAGS_PATH)?;
    let Some(list) = get(http, &list_url, token).await? else { return Ok(BTreeMap::new()) };
    let list = String::from_utf8_lossy(&list).into_owned();
    let mut tags = BTreeMap::new();
    // EC2 allows 50 tags per instance; more than the wire carries is not EC2.
    for key in list.lines().map(str::trim).filter(|k| !k.is_empty()).take(limits::MAX_TAGS) {
        let mut key_url = list_url.clone();
        key_url
            .path_segments_mut()
            .map_err(|()| format!("bad metadata URL {list_url}"))?
            .pop_if_empty()
            .push(key);
        if let Some(value) = get(http, &key_url, token).await? {
            tags.insert(key.to_owned(), String::from_utf8_lossy(&value).into_owned());
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_document_fields() {
        // As EC2 serves it, with fields the agent does not keep.
        let doc: IdentityDocument = serde_json::from_str(
            r#"{"accountId":"123456789012","architecture":"x86_64","availabilityZone":"eu-west-1b",
                "imageId":"ami-0abcdef1234567890","instanceId":"i-0123456789abcdef0",
                "instanceType":"m5.large","pendingTime":"2026-11-28T10:00:00Z","privateIp":"10.0.0.5",
                "region":"eu-west-1","version":"2017-09-30"}"#,
        )
        .unwrap();
        assert_eq!(doc.instance_id, "i-0123456789abcdef0");
        assert_eq!(doc.account_id.as_deref(), Some("123456789012"));
        assert_eq!(doc.availability_zone.as_deref(), Some("eu-west-1b"));
        assert_eq!(doc.image_id.as_deref(), Some("ami-0abcdef1234567890"));
        assert!(serde_json::from_str::<IdentityDocument>(r#"{"region":"x"}"#).is_err(), "no instance id");
    }
}
