//! A host's life as the collector sees it: an agent killed is silent (agent_offline, high), one
//! stopped said goodbye (agent_offline, low); a host reporting again resolves its finding; a host
//! silent beyond `retire_after` is retired, hidden from default listings, its findings closed.

use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, on_both_stores, start_agent, unique, wait_for};

const WAIT: Duration = Duration::from_secs(45);

async fn offline_finding(c: &Collector, host: i64) -> proto::Finding {
    wait_for(&format!("agent_offline on host {host}"), WAIT, async || {
        c.findings(host, "agent_offline", "open").into_iter().next()
    })
    .await
}

fn kill(agent: &mut Guard) {
    use nix::sys::signal::{Signal, kill};
    kill(nix::unistd::Pid::from_raw(agent.pid()), Signal::SIGKILL).unwrap();
    let _ = agent.0.wait();
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_killed_agent_is_worse_than_a_stopped_one_and_a_return_resolves
);
async fn a_killed_agent_is_worse_than_a_stopped_one_and_a_return_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "offline_after = \"10s\"\n");
    let (killed_dir, stopped_dir) = (dir.path().join("killed"), dir.path().join("stopped"));
    std::fs::create_dir_all(&killed_dir).unwrap();
    std::fs::create_dir_all(&stopped_dir).unwrap();
    let (r1, r2) = (unique("killed"), unique("stopped"));
    let mut a1 = start_agent(&c, &killed_dir, &format!("role={r1}"));
    let mut a2 = start_agent(&c, &stopped_dir, &format!("role={r2}"));
    let (h1, h2) = (c.online(&r1).await, c.online(&r2).await);

    kill(&mut a1);
    assert!(a2.terminate(Duration::from_secs(15)).success());
    let silent = offline_finding(&c, h1.id).await;
    assert_eq!(
        (silent.severity, silent.detail["last_words"].as_str()),
        (proto::Severity::High, Some("none"))
    );
    let bye = offline_finding(&c, h2.id).await;
    assert_eq!((bye.severity, bye.detail["last_words"].as_str()), (proto::Severity::Low, Some("stopped")));
    let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
    let status = |id| hosts.iter().find(|h| h.id == id).map(|h| h.status);
    assert_eq!(
        (status(h1.id), status(h2.id)),
        (Some(proto::HostStatus::Offline), Some(proto::HostStatus::Stopped))
    );

    // The killed agent comes back (same state, same identity): its finding resolves.
    let _back = start_agent(&c, &killed_dir, &format!("role={r1}"));
    wait_for("agent_offline resolved on return", WAIT, async || {
        c.findings(h1.id, "agent_offline", "resolved").into_iter().find(|f| f.id == silent.id)
    })
    .await;
    assert!(
        c.findings(h2.id, "agent_offline", "open").iter().any(|f| f.id == bye.id),
        "the stopped one stays"
    );
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_host_silent_beyond_retire_after_is_retired_and_its_findings_closed
);
async fn a_host_silent_beyond_retire_after_is_retired_and_its_findings_closed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "offline_after = \"10s\"\nretire_after = \"20s\"\n");
    let role = unique("retire");
    let mut agent = start_agent(&c, dir.path(), &format!("role={role}"));
    let host = c.online(&role).await;
    // No baseline selects it: a no_baseline finding is open.
    wait_for("no_baseline open", WAIT, async || {
        c.findings(host.id, "no_baseline", "open").into_iter().next()
    })
    .await;
    kill(&mut agent);
    wait_for("the host retired", WAIT, async || {
        let all: Vec<proto::Host> = c.cli_json(&["hosts", "--all"]);
        all.into_iter().find(|h| h.id == host.id && h.status == proto::HostStatus::Retired)
    })
    .await;
    let listed: Vec<proto::Host> = c.cli_json(&["hosts"]);
    assert!(listed.iter().all(|h| h.id != host.id), "hidden from the default listing");
    let open: Vec<proto::Finding> =
        c.cli_json(&["findings", "--host", &host.id.to_string(), "--status", "open,acknowledged"]);
    assert!(open.is_empty(), "every finding closed: {open:?}");
}
