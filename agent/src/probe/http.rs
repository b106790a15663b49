//! The services that speak HTTP: one or two read-only requests each, plain HTTP or TLS (the
//! ports where TLS is the norm are asked over TLS first), no credentials, no redirects followed,
//! the body read up to [`READ_MAX`].
//!
//! | service | asks | unauthenticated when |
//! |---|---|---|
//! | Docker Engine | `GET /version`, then `GET /containers/json?limit=1` | both answer 200 |
//! | Elasticsearch, OpenSearch | `GET /` | 200 with a cluster name or version |
//! | etcd | `POST /v3/kv/range` counting the keys from `\0` (v2: `GET /v2/keys/`) | 200 |
//! | kubelet | `GET /pods` | 200 with a pod list |
//! | Jupyter | `GET /api/kernels` | 200 with a list |
//! | Prometheus-style metrics | `GET /metrics` | 200 with metric text |
//! | Go pprof | `GET /debug/pprof/` | 200 with the profile index |
//!
//! 401 and 403 (and, for Jupyter, a redirect to its login) are "authenticated"; a TLS handshake
//! that asks for a client certificate is too.

use std::net::SocketAddr;
use std::time::Duration;

use hostwatch_proto::v1::AuthVerdict;
use reqwest::{Method, StatusCode};

use super::wire::{self, printable_bytes};
use super::{Outcome, READ_MAX, Service};

const USER_AGENT: &str =
    concat!("hostwatch-probe/", env!("CARGO_PKG_VERSION"), " (read-only check for unauthenticated access)");

/// What one request got.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

pub async fn probe(service: Service, target: SocketAddr, timeout: Duration) -> Outcome {
    let tls_first = matches!(target.port(), 443 | 2376 | 2379 | 6443 | 9443 | 10250);
    let schemes: [bool; 2] = [tls_first, !tls_first];
    let mut why = Vec::new();
    for tls in schemes {
        let client = match client(tls, timeout) {
            Ok(c) => c,
            Err(e) => return Outcome::new(AuthVerdict::Unknown, e),
        };
        let ask = |method: Method, path: &'static str, body: Option<&'static str>| {
            let client = client.clone();
            async move { request(&client, tls, target, method, path, body).await }
        };
        let outcome = match service {
            Service::Docker => docker(ask).await,
            Service::Elasticsearch => elasticsearch(ask).await,
            Service::Etcd => etcd(ask).await,
            Service::Kubelet => simple(ask, "/pods", |b| contains(b, "PodList"), "the kubelet").await,
            Service::Jupyter => jupyter(ask).await,
            Service::Metrics => {
                simple(
                    ask,
                    "/metrics",
                    |b| contains(b, "# HELP") || contains(b, "# TYPE"),
                    "the metrics endpoint",
                )
                .await
            }
            Service::Pprof => simple(ask, "/debug/pprof/", |b| contains(b, "profile"), "Go's pprof").await,
            Service::Redis | Service::Memcached | Service::Mongodb => {
                return Outcome::new(
                    AuthVerdict::Unknown,
                    format!("{} does not speak HTTP", service.as_str()),
                );
            }
        };
        match outcome {
            Err(Fail::Transport(e)) => why.push(format!("{}: {e}", if tls { "TLS" } else { "HTTP" })),
            Err(Fail::ClientCertificate) => {
                return Outcome::new(
                    AuthVerdict::Authenticated,
                    "the TLS handshake asks for a client certificate",
                );
            }
            Ok(o) if o.verdict == AuthVerdict::Unknown && !tls && looks_like_tls_wanted(&o.reason) => {
                why.push(o.reason);
            }
            Ok(o) => return o,
        }
    }
    Outcome::new(AuthVerdict::Unknown, format!("no HTTP answer ({})", why.join("; ")))
}

/// Why a request got no answer to judge.
#[derive(Debug)]
pub enum Fail {
    Transport(String),
    /// The TLS handshake failed for want of a client certificate.
    ClientCertificate,
}

fn client(tls: bool, timeout: Duration) -> Result<reqwest::Client, String> {
    crate::shared::tls::install_tls_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .user_agent(USER_AGENT);
    if tls {
        // A probe asks whether a service answers a stranger, not whether it is who it says: any
        // server certificate is accepted, and none is presented (a service that wants one
        // refuses the handshake, which is the answer).
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| format!("cannot build the probes' HTTP client: {e}"))
}

async fn request(
    client: &reqwest::Client,
    tls: bool,
    target: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&'static str>,
) -> Result<Got, Fail> {
    let url = format!("{}://{}{}", if tls { "https" } else { "http" }, target, path);
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b);
    }
    let mut resp = req.send().await.map_err(|e| fail(&e))?;
    let status = resp.status();
    let mut body = Vec::new();
    while body.len() < READ_MAX {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(READ_MAX - body.len())]),
            Ok(None) => break,
            // A body cut short is judged on what came.
            Err(_) => break,
        }
    }
    Ok(Got { status, body })
}

/// Tells a handshake refused for want of a client certificate from other failures.
fn fail(e: &reqwest::Error) -> Fail {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        chain.push_str(&s.to_string());
        chain.push_str(": ");
        source = s.source();
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificaterequired")
        || lower.contains("certificate required")
        || lower.contains("handshakefailure")
        || lower.contains("badcertificate")
    {
        return Fail::ClientCertificate;
    }
    Fail::Transport(wire::printable(chain.trim_end_matches(": "), 200))
}

/// A plain-HTTP answer that says the port wants TLS.
fn looks_like_tls_wanted(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("https") || r.contains("tls") || r.contains("ssl")
}

fn contains(body: &[u8], needle: &str) -> bool {
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// 401/403: authenticated; 200 with what the service says: unauthenticated; else no verdict.
fn judge(what: &str, request: &str, got: &Got, recognised: impl Fn(&[u8]) -> bool) -> Outcome {
    match got.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Outcome::new(
            AuthVerdict::Authenticated,
            format!("{request} answered {} without credentials", got.status.as_u16()),
        ),
        StatusCode::OK if recognised(&got.body) => Outcome::new(
            AuthVerdict::Unauthenticated,
            format!("{what} answered {request} without credentials"),
        ),
        status => Outcome::new(
            AuthVerdict::Unknown,
            format!(
                "not {what}: {request} answered {} {:?}",
                status.as_u16(),
                printable_bytes(&got.body, 60)
            ),
        ),
    }
}

async fn simple<F, Fut>(
    ask: F,
    path: &'static str,
    recognised: impl Fn(&[u8]) -> bool,
    what: &str,
) -> Result<Outcome, Fail>
where
    F: Fn(Method, &'static str, Option<&'static str>) -> Fut,
    Fut: Future<Output = Result<Got, Fail>>,
{
    let got = ask(Method::GET, path, None).await?;
    Ok(judge(what, &format!("GET {path}"), &got, recognised))
}

async fn docker<F, Fut>(ask: F) -> Result<Outcome, Fail>
where
    F: Fn(Method, &'static str, Option<&'static str>) -> Fut,
    Fut: Future<Output = Result<Got, Fail>>,
{
    let version = ask(Method::GET, "/version", None).await?;
    let first = judge("the Docker API", "GET /version", &version, |b| contains(b, "ApiVersion"));
    if first.verdict != AuthVerdict::Unauthenticated {
        return Ok(first);
    }
    let containers = ask(Method::GET, "/containers/json?limit=1", None).await?;
    let second = judge("the Docker API", "GET /containers/json", &containers, |b| b.first() == Some(&b'['));
    Ok(match second.verdict {
        AuthVerdict::Unauthenticated => Outcome::new(
            AuthVerdict::Unauthenticated,
            "the Docker API answered GET /version and GET /containers/json without credentials: anyone can run containers",
        ),
        _ => second,
    })
}

async fn elasticsearch<F, Fut>(ask: F) -> Result<Outcome, Fail>
where
    F: Fn(Method, &'static str, Option<&'static str>) -> Fut,
    Fut: Future<Output = Result<Got, Fail>>,
{
    let got = ask(Method::GET, "/", None).await?;
    Ok(judge("Elasticsearch", "GET /", &got, |b| {
        contains(b, "cluster_name") || contains(b, "You Know, for Search")
    }))
}

async fn etcd<F, Fut>(ask: F) -> Result<Outcome, Fail>
where
    F: Fn(Method, &'static str, Option<&'static str>) -> Fut,
    Fut: Future<Output = Result<Got, Fail>>,
{
    // Counts the keys from "\0" on: reads no value, writes nothing.
    let got =
        ask(Method::POST, "/v3/kv/range", Some(r#"{"key":"AA==","range_end":"AA==","count_only":true}"#))
            .await?;
    if got.status == StatusCode::NOT_FOUND {
        let v2 = ask(Method::GET, "/v2/keys/", None).await?;
        return Ok(judge("etcd's v2 API", "GET /v2/keys/", &v2, |b| contains(b, "\"node\"")));
    }
    // etcd's gateway answers a missing token with a gRPC error in JSON: code 16, "user name is empty".
    if contains(&got.body, "user name is empty") || contains(&got.body, "invalid auth token") {
        return Ok(Outcome::new(
            AuthVerdict::Authenticated,
            "the v3 API refused a read without credentials (authentication on)",
        ));
    }
    Ok(judge("etcd's v3 API", "a v3 range read", &got, |b| contains(b, "\"header\"")))
}

async fn jupyter<F, Fut>(ask: F) -> Result<Outcome, Fail>
where
    F: Fn(Method, &'static str, Option<&'static str>) -> Fut,
    Fut: Future<Output = Result<Got, Fail>>,
{
    let got = ask(Method::GET, "/api/kernels", None).await?;
    if got.status.is_redirection() {
        return Ok(Outcome::new(AuthVerdict::Authenticated, "GET /api/kernels sends a stranger to log in"));
    }
    Ok(judge("Jupyter", "GET /api/kernels", &got, |b| b.first() == Some(&b'[')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn got(status: u16, body: &str) -> Got {
        Got { status: StatusCode::from_u16(status).unwrap(), body: body.as_bytes().to_vec() }
    }

    #[test]
    fn statuses_and_bodies_are_judged() {
        let yes = |b: &[u8]| contains(b, "PodList");
        assert_eq!(
            judge("the kubelet", "GET /pods", &got(200, r#"{"kind":"PodList"}"#), yes).verdict,
            AuthVerdict::Unauthenticated
        );
        assert_eq!(
            judge("the kubelet", "GET /pods", &got(401, "Unauthorized"), yes).verdict,
            AuthVerdict::Authenticated
        );
        assert_eq!(judge("the kubelet", "GET /pods", &got(403, ""), yes).verdict, AuthVerdict::Authenticated);
        let other = judge("the kubelet", "GET /pods", &got(200, "<html>\u{1b}"), yes);
        assert_eq!(other.verdict, AuthVerdict::Unknown);
        assert!(!other.reason.contains('\u{1b}'), "{}", other.reason);
    }
}
