//! Agents and people over verified TLS: a collector serving HTTPS from PEM files made here by a
//! test CA (nothing fetched), agents pinned to that CA, a name that does not match and a foreign
//! CA refused, a rotated certificate served without a restart, and mutual TLS that turns away an
//! agent without a client certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::support::{Collector, agent_log, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// A test CA that signs server and client certificates into files.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: PathBuf,
}

impl Ca {
    pub(crate) fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("hostwatch test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, written to
    /// `stem.pem` and `stem.key`; returns the certificate's DER, to recognise it when served.
    pub(crate) fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        // Written whole and renamed, as a rotation should be: the collector never reads half a file.
        let tmp = dir.join(format!("{stem}.tmp"));
        std::fs::write(&tmp, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, &key_path).unwrap();
        std::fs::write(&tmp, cert.pem()).unwrap();
        std::fs::rename(&tmp, &cert_path).unwrap();
        (cert_path, key_path, cert.der().to_vec())
    }
}

/// A client that trusts `ca` alone.
fn client(ca: &Path) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only(certs).tls_info(true).build().unwrap()
}

async fn hosts(http: &reqwest::Client, url: &str, token: &str) -> Option<Vec<proto::Host>> {
    let resp = http.get(format!("{url}{}", proto::HOSTS_PATH)).bearer_auth(token).send().await.ok()?;
    resp.json().await.ok()
}

/// The DER of the certificate a new connection to `url` is served.
async fn served(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let resp = http.get(format!("{url}{}", proto::HEALTHZ_PATH)).send().await.unwrap();
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a peer certificate").to_vec()
}

/// A collector serving HTTPS with a certificate for localhost and 127.0.0.1 from a new CA in
/// `dir/pki`: the collector, the CA, and the served certificate's DER.
pub(crate) fn tls_collector(dir: &Path) -> (Collector, Ca, Vec<u8>) {
    let pki = dir.join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ca = Ca::new(&pki, "fleet");
    let (cert, key, der) =
        ca.issue(&pki, "server", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let c = Collector::start(
        dir,
        &format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string()),
    );
    (c, ca, der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_over_verified_tls_and_a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (c, ca, first) = tls_collector(dir.path());
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.url);
    let http = client(&ca.pem);
    assert_eq!(served(&http, &c.url).await, first);

    // An agent pinned to the fleet's CA enrolls and reports.
    let role = unique("tls");
    let a = dir.path().join("a");
    std::fs::create_dir(&a).unwrap();
    let ca_path = ca.pem.display().to_string();
    let _agent = start_agent_with(&c, &a, &format!("role={role}"), &[("HOSTWATCH_CA_CERT", &ca_path)]);
    let host = wait_for("the TLS agent online", WAIT, async || {
        hosts(&http, &c.url, &c.admin_token)
            .await?
            .into_iter()
            .find(|h| h.tags.get("role") == Some(&role) && h.last_seen.is_some())
    })
    .await;

    // The CLI over TLS, with the same CA.
    let out = std::process::Command::new(crate::support::bin("hostwatch"))
        .args(["host", &host.id.to_string(), "-o", "json"])
        .env_clear()
        .env("HOSTWATCH_SERVER", &c.url)
        .env("HOSTWATCH_TOKEN", &c.admin_token)
        .env("HOSTWATCH_CA_CERT", &ca_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Another CA's agent is refused by its own side: the collector is not who it trusts.
    let other = Ca::new(&pki, "other");
    let b = dir.path().join("b");
    std::fs::create_dir(&b).unwrap();
    let other_path = other.pem.display().to_string();
    let _stranger = start_agent_with(&c, &b, "role=stranger", &[("HOSTWATCH_CA_CERT", &other_path)]);
    wait_for("the stranger's refusal in its log", WAIT, async || {
        let log = agent_log(&b);
        (log.contains("enrollment failed") && log.contains("certificate")).then_some(())
    })
    .await;
    // A name the certificate does not carry is refused too.
    let addr: std::net::SocketAddr = c.url.trim_start_matches("https://").parse().unwrap();
    let wrong = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca.pem).unwrap()).unwrap())
        .resolve("collector.wrong.example", addr)
        .build()
        .unwrap();
    let e = wrong
        .get(format!("https://collector.wrong.example:{}{}", addr.port(), proto::HEALTHZ_PATH))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
    // And plain http to the TLS port gets nothing.
    assert!(reqwest::get(format!("http://{addr}{}", proto::HEALTHZ_PATH)).await.is_err());

    // Rotation: new files in place; new connections get them within the reload period.
    let (_, _, second) =
        ca.issue(&pki, "server", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    assert_ne!(first, second);
    wait_for("the rotated certificate served", WAIT, async || {
        let fresh = client(&ca.pem);
        (served(&fresh, &c.url).await == second).then_some(())
    })
    .await;
    assert!(c.log().contains("TLS files changed; new connections use them"), "{}", c.log());
    // The agent carries on across the rotation.
    let rotated = time::OffsetDateTime::now_utc() + Duration::from_secs(1);
    wait_for("a report after the rotation", WAIT, async || {
        hosts(&http, &c.url, &c.admin_token)
            .await?
            .into_iter()
            .find(|h| h.id == host.id && h.last_seen.is_some_and(|t| t > rotated))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_turns_away_an_agent_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ca = Ca::new(&pki, "fleet");
    let (cert, key, _) =
        ca.issue(&pki, "server", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key, _) =
        ca.issue(&pki, "agent", &["agent.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let s = |p: &Path| p.display().to_string();
    let c = Collector::start(
        dir.path(),
        &format!(
            "api_listen = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            s(&cert),
            s(&key),
            s(&ca.pem)
        ),
    );
    // People's API: its own listener, the same certificate, no client certificate asked.
    let api = c
        .log()
        .lines()
        .find_map(|l| l.split("listening on ").nth(1).filter(|r| r.contains("(API")))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no API listener in:\n{}", c.log()));
    let http = client(&ca.pem);

    let ca_path = s(&ca.pem);
    let bare = dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let _bare = start_agent_with(&c, &bare, "role=bare", &[("HOSTWATCH_CA_CERT", &ca_path)]);
    let role = unique("mtls");
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let (cc, ck) = (s(&client_cert), s(&client_key));
    let _good = start_agent_with(
        &c,
        &good,
        &format!("role={role}"),
        &[("HOSTWATCH_CA_CERT", &ca_path), ("HOSTWATCH_CLIENT_CERT", &cc), ("HOSTWATCH_CLIENT_KEY", &ck)],
    );
    wait_for("the agent with a client certificate online", WAIT, async || {
        hosts(&http, &api, &c.admin_token).await?.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    wait_for("the bare agent refused", WAIT, async || {
        agent_log(&bare).contains("enrollment failed").then_some(())
    })
    .await;
    let all = hosts(&http, &api, &c.admin_token).await.unwrap();
    assert!(all.iter().all(|h| h.tags.get("role").map(String::as_str) != Some("bare")), "{all:?}");
}
