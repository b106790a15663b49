//! Cloud facts against test doubles of the EC2 (IMDSv2) and Azure metadata services on loopback
//! (`support/imds.py`): identity, tags becoming host tags, and failures said plainly without
//! holding the agent back. Nothing here asks a real metadata address.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, Turn, agent_log, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A metadata service double; killed when dropped. It holds a shared turn on the machine (its
/// python is news to every other test's agent), given back after it is gone.
struct Imds {
    _process: Guard,
    url: String,
    _turn: Turn,
}

impl Imds {
    fn start(cloud: &str, behaviour: &str, delay: f64, instance_id: &str, tags: &[(&str, &str)]) -> Imds {
        Self::start_signed(cloud, behaviour, delay, instance_id, tags, None)
    }

    /// The same, signing the identity document with `key` (EC2).
    fn start_signed(
        cloud: &str,
        behaviour: &str,
        delay: f64,
        instance_id: &str,
        tags: &[(&str, &str)],
        key: Option<&Path>,
    ) -> Imds {
        let turn = Turn::shared();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/support/imds.py");
        let mut cmd = crate::support::tool("python3");
        cmd.arg(script).args(["--cloud", cloud, "--behaviour", behaviour, "--instance-id", instance_id]);
        if let Some(k) = key {
            cmd.arg("--sign-key").arg(k);
        }
        cmd.args(["--delay", &delay.to_string()]);
        for (k, v) in tags {
            cmd.args(["--tag", &format!("{k}={v}")]);
        }
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("python3 for the IMDS double");
        let stdout = child.stdout.take().unwrap();
        let guard = Guard(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("IMDS double said {line:?}"));
        Imds { _process: guard, url: format!("http://127.0.0.1:{port}"), _turn: turn }
    }
}

/// `hostwatch-agent snapshot` with `env`: the report and what the agent logged.
fn snapshot(env: &[(&str, &str)]) -> (proto::Report, String) {
    let (report, _, stderr) = crate::support::agent_snapshot(env);
    (report, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_identity_and_tags_reach_the_collector_under_the_configured_tags() {
    let role = unique("cloudweb");
    let instance = unique("i-0e2e");
    let imds =
        Imds::start("aws", "ok", 0.0, &instance, &[("role", &role), ("team", "payments"), ("env", "cloud")]);
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    // The configuration's `env` wins over the cloud's; the workload comes from the cloud's role.
    let _agent = start_agent_with(
        &c,
        dir.path(),
        "env=staging",
        &[("HOSTWATCH_CLOUD_PROVIDER", "aws"), ("HOSTWATCH_CLOUD_ENDPOINT", &imds.url)],
    );
    let host = wait_for("the host, tagged from the cloud", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    assert_eq!(host.tags.get("team").map(String::as_str), Some("payments"));
    assert_eq!(host.tags.get("env").map(String::as_str), Some("staging"), "configured tags win");
    let cloud = host.cloud.expect("cloud facts");
    assert_eq!(cloud.provider, proto::CloudProvider::Aws);
    assert_eq!(cloud.instance_id, instance);
    assert_eq!(cloud.account.as_deref(), Some("123456789012"));
    assert_eq!(cloud.region.as_deref(), Some("eu-west-1"));
    assert_eq!(cloud.zone.as_deref(), Some("eu-west-1b"));
    assert_eq!(cloud.image.as_deref(), Some("ami-0abcdef1234567890"));
    assert_eq!(cloud.instance_type.as_deref(), Some("t3.small"));
    // The cloud's own tags are kept as the cloud has them.
    assert_eq!(cloud.tags.get("env").map(String::as_str), Some("cloud"));
    // The hosts table names the instance.
    let table = String::from_utf8_lossy(&c.cli(&["hosts"]).stdout).into_owned();
    assert!(table.contains(&format!("aws {instance} eu-west-1")), "{table}");
    let detail: proto::HostDetail = c.cli_json(&["host", &host.id.to_string()]);
    assert_eq!(detail.agent_stats.and_then(|s| s.cloud_problem), None);
}

#[test]
fn azure_identity_and_tags_and_ec2_without_tags() {
    // The metadata double and the agent are news to every host watching this machine.
    let _turn = Turn::shared();
    let vm = unique("vm-");
    let azure = Imds::start("azure", "ok", 0.0, &vm, &[("role", "db"), ("owner", "ops:team")]);
    // `auto` with an endpoint asks it as either cloud.
    let (report, _) = snapshot(&[("HOSTWATCH_CLOUD_ENDPOINT", &azure.url)]);
    let cloud = report.host.cloud.expect("cloud facts");
    assert_eq!((cloud.provider, cloud.instance_id.as_str()), (proto::CloudProvider::Azure, vm.as_str()));
    assert_eq!(cloud.resource_group.as_deref(), Some("rg-test"));
    assert_eq!(cloud.account.as_deref(), Some("8d10da13-8125-4ba9-a717-bf7490507b3d"));
    assert_eq!(cloud.image.as_deref(), Some("debian:debian-12:12-gen2:latest"));
    assert_eq!(report.host.tags.get("owner").map(String::as_str), Some("ops:team"));

    // EC2 with tags in metadata off: identity without tags, and no complaint.
    let instance = unique("i-0notags");
    let ec2 = Imds::start("aws", "no-tags", 0.0, &instance, &[("role", "hidden")]);
    let (report, log) =
        snapshot(&[("HOSTWATCH_CLOUD_PROVIDER", "aws"), ("HOSTWATCH_CLOUD_ENDPOINT", &ec2.url)]);
    let cloud = report.host.cloud.expect("cloud facts");
    assert_eq!(cloud.instance_id, instance);
    assert!(cloud.tags.is_empty() && !report.host.tags.contains_key("role"));
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn a_refused_token_and_a_hop_limit_are_said_plainly() {
    let _turn = Turn::shared();
    let refused = Imds::start("aws", "refuse-token", 0.0, "i-x", &[]);
    let (report, log) =
        snapshot(&[("HOSTWATCH_CLOUD_PROVIDER", "aws"), ("HOSTWATCH_CLOUD_ENDPOINT", &refused.url)]);
    assert!(report.host.cloud.is_none());
    assert!(log.contains("refused a token (403"), "{log}");
    assert!(!report.snapshot.unwrap().processes.is_empty(), "the snapshot is whole all the same");

    // A token request that is never answered: the hop limit, named with its fix.
    let hanging = Imds::start("aws", "hang-token", 0.0, "i-x", &[]);
    let (report, log) =
        snapshot(&[("HOSTWATCH_CLOUD_PROVIDER", "aws"), ("HOSTWATCH_CLOUD_ENDPOINT", &hanging.url)]);
    assert!(report.host.cloud.is_none());
    assert!(log.contains("HttpPutResponseHopLimit"), "{log}");

    // Something that is no metadata service at all.
    let (_other, port) = crate::support::python_http_server(0);
    let (report, log) = snapshot(&[("HOSTWATCH_CLOUD_ENDPOINT", &format!("http://127.0.0.1:{port}"))]);
    assert!(report.host.cloud.is_none());
    assert!(log.contains("aws: ") && log.contains("azure: "), "both were tried and both said why: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_metadata_service_does_not_hold_the_agent_back() {
    // 1.5 s per answer, seven answers (token, document, tag list, four tags): the facts take
    // about 10 s, twice what the agent waits before enrolling.
    let role = unique("slowcloud");
    let tags = [("role", role.as_str()), ("a", "1"), ("b", "2"), ("c", "3")];
    let imds = Imds::start("aws", "slow", 1.5, "i-0slow", &tags);
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let _agent = start_agent_with(
        &c,
        dir.path(),
        "",
        &[("HOSTWATCH_CLOUD_PROVIDER", "aws"), ("HOSTWATCH_CLOUD_ENDPOINT", &imds.url)],
    );
    let host = wait_for("the host, with its cloud facts in the end", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    assert_eq!(host.cloud.map(|c| c.instance_id).as_deref(), Some("i-0slow"));
    // The agent enrolled (and reported) before the facts came, not after.
    let log = agent_log(dir.path());
    let enrolled = log.find("enrolled").unwrap_or_else(|| panic!("no enrollment in:\n{log}"));
    let found = log.find("cloud instance").unwrap_or_else(|| panic!("no cloud facts in:\n{log}"));
    assert!(enrolled < found, "the agent waited for the slow service:\n{log}");
}

/// A self-signed RSA certificate and its key, made with openssl, standing for AWS's.
fn rsa_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pem")));
    let out = crate::support::tool("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (the tests make their certificates with it)");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (key, cert)
}

/// `data` signed with `key` (RSA-SHA256), base64, as EC2 serves signatures.
fn sign(key: &Path, data: &str) -> String {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl dgst -sha256 -sign '{}' | openssl base64 -A", key.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The double's identity document and signature, fetched as the agent does (IMDSv2).
async fn identity_of(imds: &Imds) -> proto::InstanceIdentity {
    let http = reqwest::Client::new();
    let token = http
        .put(format!("{}/latest/api/token", imds.url))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = async |path: &str| {
        http.get(format!("{}/latest/dynamic/instance-identity/{path}", imds.url))
            .header("X-aws-ec2-metadata-token", &token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    proto::InstanceIdentity { document: get("document").await, signature: get("signature").await }
}

fn ec2(instance_id: &str) -> proto::CloudFacts {
    proto::CloudFacts {
        provider: proto::CloudProvider::Aws,
        instance_id: instance_id.to_owned(),
        account: Some("123456789012".into()),
        region: Some("eu-west-1".into()),
        zone: None,
        image: None,
        instance_type: None,
        resource_group: None,
        tags: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_aws_certificates_only_a_proven_instance_enrolls_and_its_key_stays_there() {
    // openssl makes the certificates: the machine's turn first.
    let _turn = Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let (aws_key, aws_cert) = rsa_certificate(dir.path(), "aws-test");
    let (other_key, _) = rsa_certificate(dir.path(), "not-aws");
    let instance = unique("i-0proven");
    let role = unique("proven");
    let imds = Imds::start_signed("aws", "ok", 0.0, &instance, &[("role", &role)], Some(&aws_key));
    let c = Collector::start(
        dir.path(),
        &format!("[cloud]\naws_identity_certificates = {:?}\n", aws_cert.display().to_string()),
    );

    // The agent proves its instance and enrolls.
    let _agent = start_agent_with(
        &c,
        dir.path(),
        "",
        &[("HOSTWATCH_CLOUD_PROVIDER", "aws"), ("HOSTWATCH_CLOUD_ENDPOINT", &imds.url)],
    );
    let host = wait_for("the proven instance enrolled", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    assert_eq!(host.cloud.map(|c| c.instance_id), Some(instance.clone()));

    // By hand: every way of claiming an instance without proving it is refused, saying why.
    let secret = std::fs::read_to_string(&c.enroll_secret_file).unwrap().trim().to_owned();
    let real = identity_of(&imds).await;
    let enroll = async |cloud: Option<proto::CloudFacts>, identity: Option<proto::InstanceIdentity>| {
        let req = proto::EnrollRequest {
            enroll_secret: secret.clone(),
            host: proto::HostFacts { cloud, ..proto::HostFacts::new("claimant", unique("m-claim")) },
            agent: proto::AgentStatus::new("0.0.1", 10, time::OffsetDateTime::now_utc()),
            instance_identity: identity,
        };
        c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await
    };
    let refused = |(code, body): (u16, String), says: &str| {
        assert_eq!(code, 403, "{body}");
        assert!(crate::bad_input::error_of(&body).contains(says), "{says:?} not in {body}");
    };
    refused(enroll(Some(ec2("i-0victim")), Some(real.clone())).await, "claims instance \"i-0victim\"");
    refused(enroll(Some(ec2(&instance)), None).await, "without a signed instance identity document");
    let forged = proto::InstanceIdentity { signature: sign(&other_key, &real.document), ..real.clone() };
    refused(enroll(Some(ec2(&instance)), Some(forged)).await, "does not verify");
    let edited =
        proto::InstanceIdentity { document: real.document.replace(&instance, "i-0victim"), ..real.clone() };
    refused(enroll(Some(ec2("i-0victim")), Some(edited)).await, "does not verify");
    let (code, body) = enroll(
        Some(ec2(&instance)),
        Some(proto::InstanceIdentity { signature: "%%".into(), ..real.clone() }),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    // A host that claims no instance is not an EC2 claim: it enrolls.
    let (code, body) = enroll(None, None).await;
    assert_eq!(code, 200, "{body}");

    // A proven key cannot move: a report claiming another instance is refused.
    let (code, body) = enroll(Some(ec2(&instance)), Some(real.clone())).await;
    assert_eq!(code, 200, "{body}");
    let key = serde_json::from_str::<proto::EnrollResponse>(&body).unwrap().node_key;
    let mut report = crate::bad_input::report(1, "m-proven-report");
    report.host.cloud = Some(ec2("i-0victim"));
    let (code, body) = c.post(proto::REPORT_PATH, Some(&key), serde_json::to_vec(&report).unwrap()).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("issued to EC2 instance"), "{body}");
    report.host.cloud = Some(ec2(&instance));
    let (code, body) = c.post(proto::REPORT_PATH, Some(&key), serde_json::to_vec(&report).unwrap()).await;
    assert_eq!(code, 200, "{body}");
}
