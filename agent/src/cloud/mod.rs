//! Cloud facts: which instance this is, in which account and region, from which image, with which
//! tags, as the cloud's metadata service says (EC2 IMDSv2, Azure IMDS).
//!
//! Invariants:
//! - Off the cloud, nothing is asked and nothing waits: with `provider = "auto"` the machine's DMI
//!   data (`/sys/class/dmi/id`) decides whether a metadata service is worth asking, and says "no"
//!   in microseconds. Where DMI says nothing, no service is asked either; `provider` set
//!   explicitly (or an `endpoint`) asks anyway.
//! - Only IMDSv2 on EC2: a token first, never the v1 fallback, which is what SSRF attacks steal
//!   credentials through. The agent reads the identity document and tags, never credentials.
//! - Metadata requests bypass any HTTP proxy, follow no redirect, time out in seconds and read
//!   bounded bodies: the service is trusted no more than any other input.
//! - A failure is said plainly (token refused, hop limit, timeout) in the agent's status and log,
//!   and retried later; it never stops the agent.

pub mod aws;
pub mod azure;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hostwatch_proto::v1::{self as proto, CloudFacts, CloudProvider, InstanceIdentity, limits};
use reqwest::Url;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long the agent waits for the first answer before its first report. Off the cloud there is
/// nothing to wait for; on it, the service answers in milliseconds, or fails fast (a refused
/// token, a hop limit): this bounds only a service that is slow.
pub const START_WAIT: Duration = Duration::from_secs(5);
/// Where both clouds serve their metadata.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Per request: a local service answers in milliseconds; more means it is not there or blocked.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often facts are read again once found (tags change), and the longest wait after a failure.
const REFRESH: Duration = Duration::from_secs(600);
const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Largest body read from the service: an identity document is under 1 KiB.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// `[cloud] provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderChoice {
    Auto,
    Aws,
    Azure,
    None,
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ProviderChoice::Auto),
            "aws" => Ok(ProviderChoice::Aws),
            "azure" => Ok(ProviderChoice::Azure),
            "none" => Ok(ProviderChoice::None),
            other => Err(format!("unknown provider {other:?}: expected auto, aws, azure or none")),
        }
    }
}

/// The `[cloud]` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    pub provider: ProviderChoice,
    /// The metadata service's base URL, in place of [`DEFAULT_ENDPOINT`] (tests, proxies).
    pub endpoint: Option<Url>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig { provider: ProviderChoice::Auto, endpoint: None }
    }
}

/// What asking found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Not on a cloud (or told so): nothing to ask, ever.
    NotCloud,
    Found(Box<Instance>),
    /// A cloud was expected and its service did not tell: why, to show and retry.
    Failed(String),
}

/// What the metadata service said of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub facts: CloudFacts,
    /// On EC2, the signed identity document the facts came from (`None` where the service serves
    /// no signature).
    pub identity: Option<InstanceIdentity>,
}

impl Detection {
    pub fn facts(&self) -> Option<&CloudFacts> {
        match self {
            Detection::Found(i) => Some(&i.facts),
            _ => None,
        }
    }

    /// EC2's signed identity document, for enrollment.
    pub fn identity(&self) -> Option<&InstanceIdentity> {
        match self {
            Detection::Found(i) => i.identity.as_ref(),
            _ => None,
        }
    }

    pub fn problem(&self) -> Option<&str> {
        match self {
            Detection::Failed(why) => Some(why),
            _ => None,
        }
    }
}

/// What the machine's firmware says about where it runs; `None` when it says nothing of a cloud
/// (or cannot be read). `sys` is the host's `/sys`.
pub fn dmi_hint(sys: &Path) -> Option<CloudProvider> {
    let read =
        |rel: &str| std::fs::read_to_string(sys.join(rel)).map(|s| s.trim().to_owned()).unwrap_or_default();
    let vendor = read("class/dmi/id/sys_vendor");
    let bios = read("class/dmi/id/bios_version").to_ascii_lowercase();
    let uuid = read("class/dmi/id/product_uuid").to_ascii_lowercase();
    let xen_uuid = read("hypervisor/uuid").to_ascii_lowercase();
    // Nitro instances say so; Xen ones put "amazon" in the BIOS version and "ec2" first in UUIDs.
    if vendor == "Amazon EC2"
        || bios.contains("amazon")
        || uuid.starts_with("ec2")
        || xen_uuid.starts_with("ec2")
    {
        return Some(CloudProvider::Aws);
    }
    // Azure's documented chassis asset tag; plain Hyper-V elsewhere does not carry it.
    if read("class/dmi/id/chassis_asset_tag") == "7783-7084-3265-9085-8269-3286-77" {
        return Some(CloudProvider::Azure);
    }
    None
}

/// A client for metadata services: no proxy, no redirects, short timeouts.
fn client() -> Result<reqwest::Client, String> {
    // Metadata is plain HTTP, but reqwest's builder wants a TLS provider all the same.
    crate::shared::tls::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("hostwatch-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Asks the metadata service the configuration and the machine point to.
pub async fn detect(config: &CloudConfig, sys: &Path) -> Detection {
    let which: &[CloudProvider] = match (config.provider, &config.endpoint) {
        (ProviderChoice::None, _) => return Detection::NotCloud,
        (ProviderChoice::Aws, _) => &[CloudProvider::Aws],
        (ProviderChoice::Azure, _) => &[CloudProvider::Azure],
        // An endpoint given with `auto`: ask it as both; whichever answers is the cloud.
        (ProviderChoice::Auto, Some(_)) => &[CloudProvider::Aws, CloudProvider::Azure],
        (ProviderChoice::Auto, None) => match dmi_hint(sys) {
            Some(CloudProvider::Aws) => &[CloudProvider::Aws],
            Some(CloudProvider::Azure) => &[CloudProvider::Azure],
            None => return Detection::NotCloud,
        },
    };
    let base = match &config.endpoint {
        Some(u) => u.clone(),
        None => match Url::parse(DEFAULT_ENDPOINT) {
            Ok(u) => u,
            Err(e) => return Detection::Failed(format!("bad built-in endpoint: {e}")),
        },
    };
    let http = match client() {
        Ok(c) => c,
        Err(e) => return Detection::Failed(e),
    };
    let mut problems = Vec::new();
    for provider in which {
        let got = match provider {
            CloudProvider::Aws => aws::fetch(&http, &base).await,
            CloudProvider::Azure => azure::fetch(&http, &base).await.map(|f| (f, None)),
        };
        match got {
            Ok((facts, identity)) => return Detection::Found(Box::new(Instance { facts, identity })),
            Err(why) => problems.push(format!("{}: {why}", provider.as_str())),
        }
    }
    Detection::Failed(problems.join("; "))
}

/// Host tags: the cloud's, then the configuration's over them (the configuration is the operator's
/// word). Cloud tags the wire cannot carry are left out and named; past the wire's count, cloud
/// tags go first.
pub fn merge_tags(
    cloud: &BTreeMap<String, String>,
    configured: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut tags = configured.clone();
    let mut left_out = Vec::new();
    for (k, v) in cloud {
        if tags.contains_key(k) {
            continue;
        }
        let one = BTreeMap::from([(k.clone(), v.clone())]);
        if proto::check_tags("tag", &one).is_err() || tags.len() >= limits::MAX_TAGS {
            left_out.push(k.clone());
            continue;
        }
        tags.insert(k.clone(), v.clone());
    }
    (tags, left_out)
}

/// Detects now, then keeps the facts current in the background until `stop`: every ten minutes
/// once found (tags change), sooner after a failure. Not on a cloud, the task ends at once.
pub fn watch(
    config: CloudConfig,
    sys: std::path::PathBuf,
    stop: CancellationToken,
) -> watch::Receiver<Option<Detection>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut retry = FIRST_RETRY;
        loop {
            let found = tokio::select! {
                _ = stop.cancelled() => return,
                d = detect(&config, &sys) => d,
            };
            let wait = match &found {
                Detection::NotCloud => None,
                Detection::Found(..) => {
                    retry = FIRST_RETRY;
                    Some(REFRESH)
                }
                Detection::Failed(why) => {
                    warn!(problem = %why, "cannot read the cloud's instance metadata; will retry");
                    let w = retry;
                    retry = (retry * 2).min(REFRESH);
                    Some(w)
                }
            };
            let changed = tx.borrow().as_ref() != Some(&found);
            if changed && let Some(f) = found.facts() {
                info!(provider = f.provider.as_str(), instance_id = %f.instance_id, tags = f.tags.len(), "cloud instance");
            }
            // A service that answered once and fails now (a hiccup) does not take the instance's
            // facts away: the last ones found stand until the next answer.
            tx.send_if_modified(|old| {
                if matches!(found, Detection::Failed(_)) && matches!(old, Some(Detection::Found(..))) {
                    return false;
                }
                let changed = old.as_ref() != Some(&found);
                *old = Some(found);
                changed
            });
            let Some(wait) = wait else { return };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(crate::backoff::jittered(wait)) => {}
            }
        }
    });
    rx
}

/// Reads at most `max` bytes of a response body; more is an error, not a truncation.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| format!("{what}: reading the answer failed: {e}"))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("{what}: the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Says what went wrong with a request in words an operator can act on.
pub(crate) fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".to_owned();
    }
    // reqwest's own message without the URL, which the caller already names, and its causes.
    let e = e.without_url();
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_says_which_cloud_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dmi = d.path().join("class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        assert_eq!(dmi_hint(d.path()), None, "no DMI files: no cloud");
        std::fs::write(dmi.join("sys_vendor"), "QEMU\n").unwrap();
        assert_eq!(dmi_hint(d.path()), None);
        std::fs::write(dmi.join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert_eq!(dmi_hint(d.path()), Some(CloudProvider::Aws));
        std::fs::write(dmi.join("sys_vendor"), "Xen\n").unwrap();
        std::fs::write(dmi.join("bios_version"), "4.11.amazon\n").unwrap();
        assert_eq!(dmi_hint(d.path()), Some(CloudProvider::Aws));
        std::fs::remove_file(dmi.join("bios_version")).unwrap();
        std::fs::write(dmi.join("sys_vendor"), "Microsoft Corporation\n").unwrap();
        assert_eq!(dmi_hint(d.path()), None, "Hyper-V alone is not Azure");
        std::fs::write(dmi.join("chassis_asset_tag"), "7783-7084-3265-9085-8269-3286-77\n").unwrap();
        assert_eq!(dmi_hint(d.path()), Some(CloudProvider::Azure));
    }

    #[test]
    fn configured_tags_win_and_unfit_cloud_tags_are_named() {
        let cloud = BTreeMap::from([
            ("role".to_owned(), "db".to_owned()),
            ("team".to_owned(), "payments".to_owned()),
            ("x".repeat(200), "too long a key".to_owned()),
            ("bell".to_owned(), "\u{7}".to_owned()),
        ]);
        let configured = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
        let (tags, left_out) = merge_tags(&cloud, &configured);
        assert_eq!(tags["role"], "web");
        assert_eq!(tags["team"], "payments");
        assert_eq!(tags.len(), 2);
        assert_eq!(left_out, vec!["bell".to_owned(), "x".repeat(200)]);
        // Past the wire's count, the configured tags stay and cloud tags are left out.
        let configured: BTreeMap<String, String> =
            (0..limits::MAX_TAGS).map(|i| (format!("c{i:02}"), String::new())).collect();
        let (tags, left_out) = merge_tags(&cloud, &configured);
        assert_eq!(tags, configured);
        assert_eq!(left_out.len(), 4);
    }

    #[tokio::test]
    async fn nothing_is_asked_off_the_cloud_or_when_told_not_to() {
        let d = tempfile::tempdir().unwrap();
        // Auto on a machine whose firmware says nothing: no request at all (an unroutable
        // endpoint would otherwise be tried).
        let auto = CloudConfig::default();
        assert_eq!(detect(&auto, d.path()).await, Detection::NotCloud);
        let none = CloudConfig {
            provider: ProviderChoice::None,
            endpoint: Some(Url::parse("http://127.0.0.1:9").unwrap()),
        };
        assert_eq!(detect(&none, d.path()).await, Detection::NotCloud);
    }
}
