//! The CLI's HTTP client for the collector's API.

use anyhow::{Context, anyhow, bail};
use hostwatch_agent::shared::config::Secret;
use hostwatch_proto::v1 as proto;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
}

impl ApiClient {
    /// A client for `server`. A token goes over plain `http://` only to this machine, unless
    /// `allow_insecure_http`; over https the collector's certificate and name are verified (against
    /// `ca_cert` alone when given).
    pub fn new(
        server: &str,
        token: Option<Secret>,
        ca_cert: Option<&std::path::Path>,
        allow_insecure_http: bool,
    ) -> anyhow::Result<Self> {
        let base = hostwatch_agent::shared::config::parse_server_url(server)
            .map_err(|e| anyhow!("--server: {e}"))?;
        if base.scheme() == "http"
            && !hostwatch_agent::shared::config::is_loopback(&base)
            && !allow_insecure_http
        {
            bail!(
                "--server {base}: plain http to another machine would send the API token in clear; use https://, or pass --allow-insecure-http (HOSTWATCH_ALLOW_INSECURE_HTTP) on a network you trust"
            );
        }
        hostwatch_agent::shared::tls::install_tls_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("hostwatch-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60));
        if let Some(ca) = ca_cert {
            let certs =
                hostwatch_agent::shared::tls::ca_certificates(ca).map_err(|e| anyhow!("--ca-cert: {e}"))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(ApiClient { http, base, token })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<T> {
        let req = self.http.get(self.url(path)?).query(query);
        Ok(self.send(req).await?.0)
    }

    /// One page of a listing and the cursor of the next, if the collector says there is one.
    pub async fn get_page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<(Vec<T>, Option<String>)> {
        let req = self.http.get(self.url(path)?).query(query);
        self.send(req).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let req = self.http.post(self.url(path)?).json(body);
        Ok(self.send(req).await?.0)
    }

    fn url(&self, path: &str) -> anyhow::Result<Url> {
        self.base.join(path).with_context(|| format!("bad API path {path}"))
    }

    /// The answer, and the next cursor of a listing's page.
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<(T, Option<String>)> {
        let Some(token) = &self.token else {
            bail!("no API token: pass --token, or set HOSTWATCH_TOKEN or HOSTWATCH_TOKEN_FILE");
        };
        let resp = req.bearer_auth(token.expose()).send().await.map_err(|e| {
            anyhow!(
                "cannot reach the collector at {}: {e} (is it running? set --server or HOSTWATCH_SERVER)",
                self.base
            )
        })?;
        let status = resp.status();
        let next =
            resp.headers().get(proto::NEXT_CURSOR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = resp.bytes().await.context("cannot read the collector's answer")?;
        if status.is_success() {
            let value = serde_json::from_slice(&bytes)
                .context("the collector's answer is not what this CLI expects (version mismatch?)")?;
            return Ok((value, next));
        }
        let message = serde_json::from_slice::<proto::ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().chars().take(300).collect());
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (check --token / HOSTWATCH_TOKEN)",
            StatusCode::FORBIDDEN => " (ask an admin for a token with that role)",
            _ => "",
        };
        bail!("collector answered {status}: {message}{hint}")
    }
}
