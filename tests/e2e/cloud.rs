//! Cloud facts against test doubles of the EC2 (IMDSv2) and Azure metadata services on loopback
//! (`support/imds.py`): identity, tags becoming host tags, and failures said plainly without
//! holding the agent back. Nothing here asks a real metadata address.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, agent_log, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A metadata service double; killed when dropped.
struct Imds {
    _process: Guard,
    url: String,
}

impl Imds {
    fn start(cloud: &str, behaviour: &str, delay: f64, instance_id: &str, tags: &[(&str, &str)]) -> Imds {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/support/imds.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(["--cloud", cloud, "--behaviour", behaviour, "--instance-id", instance_id]);
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
        Imds { _process: guard, url: format!("http://127.0.0.1:{port}") }
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
    let _turn = crate::support::Turn::shared();
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
