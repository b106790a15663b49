//! Every event judged, not only what is alive at a report: a program that lives 20 ms is a
//! finding with its parent chain, 1,000 runs of one are one finding with 1,000 occurrences, a
//! finding first seen transient resolves only by acknowledgement, and a burst of 5,000 distinct
//! programs is bounded without hiding a built-in rule's finding in the middle of it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, Manager, on_both_stores, spawn_copy, unique, wait_for};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The machine is shared with the other tests' programs, which this test's host sees too and its
/// baseline does not name: the budget of new findings is the burst test's business, not this one's.
pub(crate) const NO_BUDGET: &str = "[findings]\nmax_new_per_host_per_minute = 1000000\n";

/// Applies a baseline under a role unique to the test that names no process but those of `rules`
/// (so every other program is unexpected), starts an agent under that role, and waits until its
/// host is online with it.
pub(crate) async fn host_with_workload(c: &Collector, dir: &Path, rules: &str) -> (Guard, proto::Host) {
    host_with_workload_env(c, dir, rules, &[]).await
}

/// The same, with more `HOSTWATCH_*` variables for the agent.
pub(crate) async fn host_with_workload_env(
    c: &Collector,
    dir: &Path,
    rules: &str,
    env: &[(&str, &str)],
) -> (Guard, proto::Host) {
    let role = unique("ev");
    let baseline = dir.join("empty.toml");
    std::fs::write(
        &baseline,
        format!(
            "name = \"{role}\"\nselector = {{ role = \"{role}\" }}\n[[listen]]\nprotocol = \"tcp\"\nport = {}\n{rules}",
            c.port
        ),
    )
    .unwrap();
    let applied: Vec<proto::BaselineSummary> = c.cli_json(&["baseline", "apply", baseline.to_str().unwrap()]);
    assert_eq!(applied[0].name, role);
    let agent = crate::support::start_agent_with(c, dir, &format!("role={role}"), env);
    let host = wait_for("the host online with its workload", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| {
            h.tags.get("role") == Some(&role)
                && h.status == proto::HostStatus::Online
                && h.workload.as_deref() == Some(role.as_str())
        })
    })
    .await;
    (agent, host)
}

/// A copy of `/bin/sleep` named `name` in `dir`.
pub(crate) fn sleep_copy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    crate::support::copy_program("/bin/sleep", &path);
    path
}

/// Runs `script` with `sh -c` to its end.
fn sh(script: &str) -> u32 {
    let mut child = Command::new("sh").args(["-c", script]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "sh -c {script:?}");
    pid
}

/// The finding of `kind` (and `rule`) about `subject` in any status once `until` holds for it.
pub(crate) async fn finding_where(
    c: &Collector,
    host: i64,
    kind: &str,
    rule: Option<&str>,
    subject: &str,
    what: &str,
    until: impl Fn(&proto::Finding) -> bool,
) -> proto::Finding {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = c.findings(host, kind, "all");
        if let Some(f) = all.iter().find(|f| f.subject == subject && f.rule.as_deref() == rule && until(f)) {
            return f.clone();
        }
        // What there was instead, so that a miss says whether the finding was absent or other.
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {kind} {rule:?} on {subject}: {what}; findings of that kind: {:?}",
            all.iter()
                .map(|f| (&f.subject, &f.rule, f.status, f.transient, f.occurrences, &f.detail))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(crate::support::POLL).await;
    }
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_program_of_20ms_is_a_finding_with_its_parents_and_a_thousand_runs_are_one
);
async fn a_program_of_20ms_is_a_finding_with_its_parents_and_a_thousand_runs_are_one() {
    let dir = tempfile::tempdir().unwrap();
    // Every one of 1,000 runs of 20 ms read whole: the machine to itself (see the collection
    // test of the same).
    let c = Collector::start_alone(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let h = host.id;

    // Outside the temporary directories: unexpected, nothing more.
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let short = sleep_copy(run.path(), &unique("hwshort"));
    let sh_pid = sh(&format!("{} 0.02; true", short.display()));
    let subject = short.to_str().unwrap();
    let f = finding_where(&c, h, "unexpected_process", None, subject, "transient", |f| f.transient).await;
    assert_eq!(
        (f.status, f.occurrences, f.severity),
        (proto::FindingStatus::Open, 1, proto::Severity::Medium)
    );
    assert_eq!(f.detail["transient"], true, "{}", f.detail);
    assert!(f.detail["exited_at"].is_string() && f.detail["started_at"].is_string(), "{}", f.detail);
    assert_eq!(f.detail["cmdline"], format!("{subject} 0.02"));
    // Its parent chain: the shell that ran it (gone too), then this test.
    let parents = f.detail["parents"].as_array().unwrap_or_else(|| panic!("parents in {}", f.detail));
    assert_eq!(parents[0]["pid"].as_u64(), Some(u64::from(sh_pid)), "{}", f.detail);
    assert_eq!(parents[0]["name"], "sh", "{}", f.detail);
    assert_eq!(parents[1]["pid"].as_u64(), Some(u64::from(std::process::id())), "{}", f.detail);
    assert!(
        c.findings(h, "suspicious_process", "all").iter().all(|f| f.subject != subject),
        "nothing built-in about a program outside the temporary directories"
    );

    // From /tmp: exe-in-temp as well; and 1,000 runs are one finding each, counted.
    let tmp = tempfile::tempdir().unwrap();
    assert!(tmp.path().starts_with("/tmp"), "the test's temporary directory is under /tmp");
    let in_tmp = sleep_copy(tmp.path(), &unique("hwtmp"));
    let subject = in_tmp.to_str().unwrap();
    sh(&format!("{subject} 0.02"));
    let temp =
        finding_where(&c, h, "suspicious_process", Some("exe-in-temp"), subject, "once", |_| true).await;
    assert_eq!((temp.severity, temp.transient), (proto::Severity::High, true));
    finding_where(&c, h, "unexpected_process", None, subject, "once", |_| true).await;
    // 999 more, ten at a time, each living 20 ms (read whole before it ends, as the collection
    // tests check).
    sh(&format!(
        "i=0; while [ $i -lt 111 ]; do for j in 1 2 3 4 5 6 7 8 9; do {subject} 0.02 & done; wait; i=$((i+1)); done"
    ));
    // Every run is counted: under its program, or, caught as it ended with its program already
    // gone (on a loaded machine a 20 ms program can end before the reader gets a core), under
    // the name it had. Never lost, never counted twice.
    let name = in_tmp.file_name().unwrap().to_str().unwrap();
    let count =
        |fs: &[proto::Finding], s: &str| fs.iter().find(|f| f.subject == s).map_or(0, |f| f.occurrences);
    let deadline = Instant::now() + WAIT;
    let (by_exe, by_name) = loop {
        let all = c.findings(h, "unexpected_process", "all");
        let (by_exe, by_name) = (count(&all, subject), count(&all, name));
        if by_exe + by_name >= 1000 {
            break (by_exe, by_name);
        }
        if Instant::now() > deadline {
            let detail: proto::HostDetail = c.cli_json(&["host", &h.to_string()]);
            panic!(
                "{by_exe} runs of 1,000 counted by program, {by_name} by name after {WAIT:?}; agent stats: {:?}",
                detail.agent_stats
            );
        }
        tokio::time::sleep(crate::support::POLL).await;
    };
    assert_eq!(by_exe + by_name, 1000, "{by_exe} by program, {by_name} by name");
    assert!(by_name <= 10, "{by_name} of 1,000 runs of 20 ms read too late for their program");
    let temp =
        finding_where(&c, h, "suspicious_process", Some("exe-in-temp"), subject, "every run counted", |f| {
            f.occurrences >= by_exe
        })
        .await;
    assert_eq!(temp.occurrences, by_exe);
    let ours: Vec<proto::Finding> = c.cli_json(&["findings", "--host", &h.to_string(), "--status", "all"]);
    assert_eq!(ours.iter().filter(|f| f.subject == subject).count(), 2, "one finding per kind and rule");
}

/// A dropper that hands over to its payload by exec leaves no process of its own: the pid runs the
/// payload at the next report. Each of five runs is still a finding for the dropper, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_execs_its_payload_is_judged_though_its_pid_runs_another() {
    let dir = tempfile::tempdir().unwrap();
    // Alone, for the same reason as the 20 ms program's test: the dropper is read in the 100 ms
    // before its exec or not at all (the pid then shows the payload), and in a full CI run with
    // both cores loaded by other tests the exec reader once waited longer than that.
    let c = Collector::start_alone(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let h = host.id;
    let tmp = tempfile::tempdir().unwrap();
    let dropper = tmp.path().join(unique("hwdrop"));
    crate::support::copy_program("/bin/dash", &dropper);
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let payload = sleep_copy(run.path(), &unique("hwpayload"));
    let (dropper, payload) = (dropper.to_str().unwrap(), payload.to_str().unwrap());
    // 100 ms as the dropper (its own child `sleep` aside), then the payload under the same pid.
    for _ in 0..5 {
        sh(&format!("{dropper} -c 'sleep 0.1; exec {payload} 0.05'"));
    }
    let f = finding_where(&c, h, "suspicious_process", Some("exe-in-temp"), dropper, "5 occurrences", |f| {
        f.occurrences >= 5
    })
    .await;
    assert_eq!((f.occurrences, f.transient), (5, true), "{}", f.detail);
    assert!(f.detail["exited_at"].is_string(), "replaced by its exec: gone; {}", f.detail);
    let p =
        finding_where(&c, h, "unexpected_process", None, payload, "5 occurrences", |f| f.occurrences >= 5)
            .await;
    assert_eq!(p.occurrences, 5);
    // Both in the history under the same pids.
    let history: Vec<proto::ProcessEvent> =
        c.cli_json(&["history", "processes", "--host", &h.to_string(), "--limit", "100000"]);
    let pids = |exe: &str| {
        let mut v: Vec<u32> = history
            .iter()
            .filter(|e| e.kind == "exec" && e.exe.as_deref() == Some(exe))
            .map(|e| e.pid)
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(pids(dropper).len(), 5, "{:?}", pids(dropper));
    assert_eq!(pids(dropper), pids(payload));
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_finding_first_seen_transient_resolves_only_by_acknowledgement
);
async fn a_finding_first_seen_transient_resolves_only_by_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    // Alone: a 20 ms run must be read whole before it exits (an exec with nothing read is
    // history, not a finding), and must be gone before the report that carries it; with the
    // whole suite loading both cores the exec reader once waited too long for one (a timeout
    // in a full run, never alone).
    let c = Collector::start_alone(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let h = host.id;
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let prog = sleep_copy(run.path(), &unique("hwonce"));
    let subject = prog.to_str().unwrap();

    sh(&format!("{subject} 0.02"));
    let first = finding_where(&c, h, "unexpected_process", None, subject, "transient", |f| f.transient).await;
    // The same program, now running long, then stopped.
    let mut long = Guard(Command::new(&prog).arg("600").spawn().unwrap());
    let pid = long.pid();
    finding_where(&c, h, "unexpected_process", None, subject, "a second occurrence", |f| f.occurrences == 2)
        .await;
    long.terminate(Duration::from_secs(10));
    // Its exit is recorded (a positive marker that the collector has judged the state without
    // it) ...
    wait_for("the long run's exit in the history", WAIT, async || {
        let ev: Vec<proto::ProcessEvent> =
            c.cli_json(&["history", "processes", "--host", &h.to_string(), "--since", "10m"]);
        ev.into_iter().find(|e| e.pid == pid as u32 && e.kind == "exit")
    })
    .await;
    // ... and the finding is still open: one finding, not resolved by the program's absence.
    let all = c.findings(h, "unexpected_process", "all");
    let f: Vec<&proto::Finding> = all.iter().filter(|f| f.subject == subject).collect();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].id, f[0].status, f[0].transient), (first.id, proto::FindingStatus::Open, true));

    // Acknowledged: closed. The next run reopens it.
    let acked: Vec<proto::Finding> =
        c.cli_json(&["ack", &first.id.to_string(), "--note", "the test's program"]);
    assert_eq!(acked[0].status, proto::FindingStatus::Acknowledged);
    sh(&format!("{subject} 0.02"));
    let again = finding_where(&c, h, "unexpected_process", None, subject, "reopened", |f| {
        f.status == proto::FindingStatus::Open
    })
    .await;
    assert_eq!((again.id, again.occurrences), (first.id, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_5000_programs_is_bounded_without_hiding_a_built_in_finding() {
    let dir = tempfile::tempdir().unwrap();
    // Alone: 5,000 new programs would be news to every other test's host as well.
    let c = Collector::start_alone(dir.path(), "[findings]\nmax_new_per_host_per_minute = 50\n");
    // The payload is named: only the built-in rule speaks of it.
    let (_agent, host) = host_with_workload(&c, dir.path(), "[[process]]\nname = \"payload*\"\n").await;
    let h = host.id;
    // Whatever else this host runs (the shell that runs the burst too) opens first: the burst
    // starts once nothing new is opening, after at least the shell's finding.
    sh("sleep 0.05; true");
    let opened = |c: &Collector| c.findings(h, "unexpected_process", "all").len();
    wait_for("the shell's finding", WAIT, async || {
        let all = c.findings(h, "unexpected_process", "all");
        all.iter().any(|f| f.detail["name"] == "sh" || f.subject.ends_with("/dash")).then_some(())
    })
    .await;
    let mut before = opened(&c);
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = opened(&c);
        if now == before {
            break;
        }
        before = now;
    }
    // 5,000 distinct programs: hard links to one copy of sleep, each under its own name, outside
    // the temporary directories (so no built-in rule fires on them).
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let one = sleep_copy(run.path(), "step-0");
    for i in 1..5000 {
        std::fs::hard_link(&one, run.path().join(format!("step-{i}"))).unwrap();
    }
    let shm = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/dev/shm").unwrap();
    let payload = sleep_copy(shm.path(), &unique("payload"));
    let started = Instant::now();
    let started_at = time::OffsetDateTime::now_utc();
    let d = run.path().display();
    sh(&format!(
        "i=0; while [ $i -lt 2500 ]; do {d}/step-$i 0.1 & i=$((i+1)); [ $((i % 50)) -eq 0 ] && wait; done; wait; \
         {payload} 0.1; \
         while [ $i -lt 5000 ]; do {d}/step-$i 0.1 & i=$((i+1)); [ $((i % 50)) -eq 0 ] && wait; done; wait",
        payload = payload.display()
    ));
    // The collector answers while it judges the burst.
    let health = reqwest::get(format!("{}/healthz", c.url)).await.unwrap();
    assert!(health.status().is_success());
    // The built-in rule's finding, in the middle of the burst, is never held back.
    let p = payload.to_str().unwrap();
    finding_where(&c, h, "suspicious_process", Some("exe-in-temp"), p, "opened", |_| true).await;
    // Every one of the 5,000 is either a finding or counted as held back, exactly.
    let steps = |fs: &[proto::Finding]| {
        fs.iter().filter(|f| f.subject.starts_with(&format!("{d}/step-"))).count() as u64
    };
    let (opened, held) = wait_for("all 5,000 accounted for", Duration::from_secs(60), async || {
        let opened = steps(&c.findings(h, "unexpected_process", "all"));
        let held = c.findings(h, "findings_held_back", "all").first().map_or(0, |f| f.occurrences);
        (opened + held >= 5000).then_some((opened, held))
    })
    .await;
    let minutes = started.elapsed().as_secs() / 60 + 1;
    // Exact, but for two documented cases. An item held back while it still runs opens once a
    // later minute's budget allows, so it is counted in both: only a finding first seen after the
    // burst's first minute can be such a late open. And the held-back count is the host's, not
    // the burst's: a program the machine itself started meanwhile (a timer, another test's
    // helper) is held back too, so each start of a program other than the steps that the history
    // shows since the burst may add one.
    let late = c
        .findings(h, "unexpected_process", "all")
        .iter()
        .filter(|f| f.subject.starts_with(&format!("{d}/step-")))
        .filter(|f| f.first_seen > started_at + Duration::from_secs(60))
        .count() as u64;
    let path = format!("{}?host={h}&since=10m&limit=100000", proto::PROCESS_HISTORY_PATH);
    let execs: Vec<proto::ProcessEvent> = c.get(&path).await;
    let mut by_exe = std::collections::BTreeMap::<String, usize>::new();
    for e in execs.iter().filter(|e| e.kind == "exec" && e.at >= started_at) {
        *by_exe.entry(e.exe.clone().unwrap_or_default()).or_default() += 1;
    }
    let prefix = format!("{d}/step-");
    let others: Vec<_> = by_exe.iter().filter(|(x, _)| !x.starts_with(&prefix)).collect();
    // Sockets opened meanwhile count the same way (this test's own requests to the collector,
    // another test's listener in this binary): each may be a finding held back.
    let path = format!("{}?host={h}&since=10m&limit=100000", proto::SOCKET_HISTORY_PATH);
    let sockets: Vec<proto::SocketEvent> = c.get(&path).await;
    let opened_sockets: Vec<String> = sockets
        .iter()
        .filter(|e| e.kind == "open" && e.at >= started_at)
        .map(|e| {
            format!("{} {}:{} {:?} {:?}", e.socket, e.local_address, e.local_port, e.remote_address, e.exe)
        })
        .collect();
    let extra = others.iter().map(|(_, n)| **n as u64).sum::<u64>() + opened_sockets.len() as u64;
    if !(opened + held >= 5000 && opened + held <= 5000 + late + extra) {
        let twice: Vec<_> = by_exe.iter().filter(|(x, n)| x.starts_with(&prefix) && **n > 1).collect();
        let all: Vec<proto::Finding> =
            c.get(&format!("{}?host={h}&status=all&limit=100000", proto::FINDINGS_PATH)).await;
        let opened_others: Vec<_> = all
            .into_iter()
            .filter(|f| f.first_seen >= started_at && !f.subject.starts_with(&prefix))
            .map(|f| (f.kind, f.subject, f.occurrences))
            .collect();
        panic!(
            "{opened} opened ({late} after the first minute), {held} held back; steps started more than once: \
             {twice:?}; other programs started since the burst: {others:?}; sockets opened since: \
             {opened_sockets:?}; other findings since: {opened_others:?}"
        );
    }
    assert!(
        opened <= 50 * (minutes + 1),
        "{opened} opened in about {minutes} minute(s), 50 allowed a minute"
    );
    assert!(held >= 5000 - 50 * (minutes + 1), "{held} held back");
    let count = &c.findings(h, "findings_held_back", "all")[0];
    assert_eq!((count.status, count.subject.as_str()), (proto::FindingStatus::Open, "new findings"));
    assert!(count.detail["history"].as_str().unwrap_or_default().contains("hostwatch history processes"));
}

/// Spooled reports (gzip-compressed files in the agent's spool) that mention `needle`.
fn spooled_with(state: &Path, needle: &str) -> usize {
    use std::io::Read;
    let mentions = |path: &Path| {
        let mut text = String::new();
        let file = std::fs::File::open(path).ok()?;
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).ok()?;
        Some(text.contains(needle))
    };
    std::fs::read_dir(state.join("spool"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json.gz")))
                .filter(|e| mentions(&e.path()) == Some(true))
                .count()
        })
        .unwrap_or(0)
}

/// How long the collector stays away in the outage test.
const OUTAGE: Duration = Duration::from_secs(25);

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_listener_that_lived_while_the_collector_was_down_is_a_finding_once_it_returns
);
async fn a_listener_that_lived_while_the_collector_was_down_is_a_finding_once_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Collector::start(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let h = host.id;
    let port = c.port;
    c.process.terminate(Duration::from_secs(15));
    let down = Instant::now();

    // Opened and closed with the agent watching: both in its spool before the collector returns.
    let (mut python, lport) = crate::support::python_http_server(0);
    let needle = format!("\"port\":{lport}");
    let state = dir.path().join("agent-state");
    wait_for("the listener's opening spooled", WAIT, async || {
        (spooled_with(&state, &needle) >= 1).then_some(())
    })
    .await;
    python.terminate(Duration::from_secs(10));
    wait_for("its closing spooled", WAIT, async || (spooled_with(&state, &needle) >= 2).then_some(())).await;

    // Away long enough that an agent backing off exponentially would wait 16 s or more for its
    // next try: only one that probes an absent collector every second meets the deadline below.
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;

    // Back, on the same address, with the same store.
    let back = Collector::start_on(dir.path(), NO_BUDGET, port);
    let returned = Instant::now();
    let subject = format!("tcp/127.0.0.1:{lport}");
    let f =
        finding_where(&back, h, "unexpected_listener", None, &subject, "transient", |f| f.transient).await;
    // The target is 2 s from the return; the bound leaves a busy machine some room.
    let after = returned.elapsed();
    assert!(after < Duration::from_secs(4), "the finding came {after:?} after the collector returned");
    assert_eq!((f.status, f.occurrences), (proto::FindingStatus::Open, 1), "{f:?}");
    assert!(f.detail["closed_at"].is_string(), "{}", f.detail);
    // Once the backlog is delivered: still one finding, open, counted once.
    wait_for("the spool drained", WAIT, async || (spooled_with(&state, &needle) == 0).then_some(())).await;
    let all: Vec<proto::Finding> =
        back.findings(h, "unexpected_listener", "all").into_iter().filter(|f| f.subject == subject).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0].id, all[0].status, all[0].occurrences, all[0].transient),
        (f.id, proto::FindingStatus::Open, 1, true)
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_later_reads_from_a_socket_is_a_reverse_shell() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let h = host.id;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let go = dir.path().join("go");
    // A shell started with nothing on its standard input; once told, it connects its own standard
    // input to a TCP socket (bash's /dev/tcp: no new program), then waits in a child.
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.2; done; exec 0<>/dev/tcp/127.0.0.1/{port}; sleep 600; true",
        go = go.display()
    );
    let shell =
        Guard(Command::new("bash").args(["-c", &script]).stdin(std::process::Stdio::null()).spawn().unwrap());
    let pid = shell.pid() as u32;
    // Past its first 10 s, when a new process is read whole at every scan anyway: only the
    // late look at its standard streams can see what it does now.
    let seen = wait_for("the shell reported", WAIT, async || {
        let ps: Vec<proto::Located<proto::Process>> = c.cli_json(&["ps", "--host", &h.to_string()]);
        ps.into_iter().find(|p| p.item.pid == pid)
    })
    .await;
    assert!(seen.item.stdio_socket.is_none());
    let young = time::OffsetDateTime::now_utc() - seen.item.start_time;
    tokio::time::sleep(Duration::from_secs_f64((12.0 - young.as_seconds_f64()).max(0.0))).await;
    std::fs::write(&go, "").unwrap();
    let (_peer, _) = listener.accept().unwrap();
    // Within a few of the agent's 1 s intervals. (Every known process is also read whole once in
    // 30 scans: a bound of 30 s would let a missing look pass; 6 s lets it pass one time in five.)
    let f = wait_for("a reverse-shell finding", Duration::from_secs(6), async || {
        c.findings(h, "suspicious_process", "open")
            .into_iter()
            .find(|f| f.rule.as_deref() == Some("reverse-shell") && f.detail["pid"] == pid)
    })
    .await;
    assert_eq!(f.severity, proto::Severity::Critical);
    assert_eq!(f.detail["stdio_socket"], format!("tcp 127.0.0.1:{port}"));
    assert!(!f.transient, "the shell is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_executable_is_an_upgrade_only_when_its_package_installed_the_new_file() {
    replaced_executables_are_judged_by_their_package(Manager::Dpkg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_executable_is_judged_by_its_rpm_package_too() {
    replaced_executables_are_judged_by_their_package(Manager::Rpm).await;
}

async fn replaced_executables_are_judged_by_their_package(m: Manager) {
    use crate::support::start_agent_with;
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), NO_BUDGET);
    // A root of the test's own, with its own package database, outside the temporary directories.
    let root = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let r = root.path();
    m.init(r);
    let sleep = std::fs::read("/bin/sleep").unwrap();
    let mut sleep2 = sleep.clone();
    sleep2.extend_from_slice(b"\0version 2");
    let d = dir.path();
    m.install(r, d, "hwup", "1.0", "opt/hwup/bin/up", &sleep);
    m.install(r, d, "hwkeep", "1.0", "opt/hwkeep/bin/keep", &sleep);
    let loose = r.join("opt/loose");
    std::fs::write(&loose, &sleep).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();

    let role = unique("pkg");
    let (var, db) = m.setting(r);
    let _agent = start_agent_with(&c, d, &format!("role={role}"), &[(var, &db)]);
    let host = c.online(&role).await;
    let h = host.id;
    let (up, keep) = (r.join("opt/hwup/bin/up"), r.join("opt/hwkeep/bin/keep"));
    let running: Vec<Guard> =
        [&up, &keep, &loose].iter().map(|p| Guard(spawn_copy(Command::new(p).arg("600")))).collect();
    wait_for("the three programs reported", WAIT, async || {
        let ps: Vec<proto::Located<proto::Process>> = c.cli_json(&["ps", "--host", &h.to_string()]);
        running.iter().all(|g| ps.iter().any(|p| p.item.pid == g.pid() as u32)).then_some(())
    })
    .await;

    // An upgrade: the package installs a new file at the running program's path.
    m.install(r, d, "hwup", "2.0", "opt/hwup/bin/up", &sleep2);
    // By hand: a new file over a package's program, and over a program no package owns.
    for path in [&keep, &loose] {
        let new = path.with_extension("new");
        std::fs::write(&new, &sleep2).unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, path).unwrap();
    }
    let rule_on = async |path: &PathBuf, rule: &str| {
        finding_where(&c, h, "suspicious_process", Some(rule), path.to_str().unwrap(), "open", |f| {
            f.status == proto::FindingStatus::Open
        })
        .await
    };
    let upgraded = rule_on(&up, "exe-replaced").await;
    assert_eq!(upgraded.severity, proto::Severity::Info);
    assert_eq!(upgraded.detail["exe_replacement"]["package"]["name"], "hwup", "{}", upgraded.detail);
    assert_eq!(
        upgraded.detail["exe_replacement"]["package"]["version"],
        m.recorded("2.0").as_str(),
        "{}",
        upgraded.detail
    );
    let tampered = rule_on(&keep, "exe-tampered").await;
    assert_eq!(tampered.severity, proto::Severity::Critical);
    assert_eq!(tampered.detail["exe_replacement"]["package"]["name"], "hwkeep", "{}", tampered.detail);
    assert_eq!(tampered.detail["exe_replacement"]["package"]["matches"], false, "{}", tampered.detail);
    let unowned = rule_on(&loose, "exe-tampered").await;
    assert!(unowned.detail["exe_replacement"]["package"].is_null(), "{}", unowned.detail);
    // Each is one rule's finding: the upgrade is not tampering, nor the other way round.
    let all = c.findings(h, "suspicious_process", "all");
    let rules_on = |p: &PathBuf| {
        let mut r: Vec<String> =
            all.iter().filter(|f| f.subject == p.to_str().unwrap()).filter_map(|f| f.rule.clone()).collect();
        r.sort();
        r
    };
    assert_eq!(rules_on(&up), ["exe-replaced"]);
    assert_eq!(rules_on(&keep), ["exe-tampered"]);
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_names_its_login_and_a_parent_that_has_exited_since() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, dir.path(), "").await;
    let h = host.id;
    let prog = sleep_copy(dir.path(), &unique("hw-lineage"));
    let pidfile = dir.path().join("child.pid");
    // A login of uid 4321 (root may set a fresh process's login uid once) whose shell starts the
    // program in the background, then waits for its input to end.
    let script = format!(
        "echo 4321 > /proc/self/loginuid && {} 600 & echo $! > {}; read _",
        prog.display(),
        pidfile.display()
    );
    let mut shell =
        Command::new("sh").args(["-c", &script]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    let sh_pid = shell.id();
    let child: u32 = wait_for("the child's pid", WAIT, async || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await;
    let kill_child = KillOnDrop(child);
    let seen = wait_for("the program with its ancestry", WAIT, async || {
        processes_of(&c, h).into_iter().find(|p| p.pid == child && !p.ancestry.is_empty())
    })
    .await;
    assert_eq!((seen.ancestry[0].pid, seen.ancestry[0].name.as_str()), (sh_pid, "sh"), "{:?}", seen.ancestry);
    assert_eq!(seen.login_uid, Some(4321));
    assert!(seen.session_id.is_some());

    // The shell ends; the program is adopted by init, and its lineage is still what it was.
    shell.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(shell.wait().unwrap().success());
    let adopted = wait_for("the program re-parented", WAIT, async || {
        processes_of(&c, h).into_iter().find(|p| p.pid == child && p.ppid != sh_pid)
    })
    .await;
    assert_eq!(adopted.ancestry, seen.ancestry, "the chain is the one at its start");

    // What a person sees: the login's finding and the history name the gone shell.
    let subject = format!("session {} of 4321", seen.session_id.unwrap());
    let f = finding_where(&c, h, "unexpected_session", None, &subject, "open", |_| true).await;
    let ran = f.detail["ran"].as_array().unwrap();
    let entry = ran.iter().find(|r| r["pid"] == child).unwrap_or_else(|| panic!("{}", f.detail));
    assert_eq!(
        (&entry["parent"]["name"], &entry["parent"]["pid"]),
        (&"sh".into(), &sh_pid.into()),
        "{}",
        f.detail
    );
    assert_eq!(f.detail["login_uid"], 4321, "{}", f.detail);
    let history: Vec<proto::ProcessEvent> =
        c.cli_json(&["history", "processes", "--host", &h.to_string(), "--since", "1h"]);
    let exec = history.iter().find(|e| e.pid == child && e.kind == "exec").expect("the program's exec");
    assert_eq!(exec.ancestry.first().map(|a| a.pid), Some(sh_pid));
    assert_eq!(exec.login_uid, Some(4321));
    let name = prog.file_name().unwrap().to_str().unwrap();
    let table = c.cli(&["history", "processes", "--host", &h.to_string(), "--since", "1h", "--name", name]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.contains(&child.to_string()) && l.contains("> sh")), "{table}");
    drop(kill_child);
}

/// Kills `pid` when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The processes the collector holds for host `h` now.
pub(crate) fn processes_of(c: &Collector, h: i64) -> Vec<proto::Process> {
    c.cli_json::<Vec<proto::Located<proto::Process>>>(&["ps", "--host", &h.to_string()])
        .into_iter()
        .map(|l| l.item)
        .collect()
}

/// A copy of `/bin/dash` at `dir/name`: a shell under a name (or a path) of the test's own.
fn dash_copy(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    crate::support::copy_program("/bin/dash", &path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ancestor_rules_match_at_any_depth_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, NO_BUDGET);
    let (lvl1, lvl4) = (unique("hw-lvl1"), unique("hw-lvl4"));
    let (p1, p4, p5) = (
        sleep_copy(d, &unique("hw-anc1")),
        sleep_copy(d, &unique("hw-anc4")),
        sleep_copy(d, &unique("hw-anc5")),
    );
    let rule = |p: &Path, ancestor: &str| {
        format!("[[process]]\nname = \"*\"\nexe = {:?}\nancestor = \"{ancestor}\"\n", p.display().to_string())
    };
    let rules =
        [rule(&p1, &format!("{lvl1}*")), rule(&p4, &format!("*/{lvl4}")), rule(&p5, "no-such-ancestor*")]
            .concat();
    let (_agent, host) = host_with_workload(&c, d, &rules).await;
    let h = host.id;

    // Depth 1: the program's parent is the shell named lvl1 (matched by name).
    let shell1 = dash_copy(d, &lvl1);
    let group = |cmd: &mut Command| Group(spawn_copy(cmd.process_group(0)));
    let _run1 = group(Command::new(&shell1).args(["-c", &format!("{} 600; true", p1.display())]));
    // Depth 4: three wrappers between the program and the shell named lvl4 (matched by exe).
    let wrap = d.join("wrap.sh");
    std::fs::write(&wrap, "#!/bin/sh\n\"$@\"; true\n").unwrap();
    std::fs::set_permissions(&wrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shell4 = dash_copy(d, &lvl4);
    let w = wrap.display().to_string();
    let _run4 = group(Command::new(&shell4).args([w.as_str(), &w, &w, &w, p4.to_str().unwrap(), "600"]));
    let p4_seen = wait_for("the depth-4 program with its ancestry", WAIT, async || {
        processes_of(&c, h).into_iter().find(|p| p.exe.as_deref() == p4.to_str() && p.ancestry.len() >= 4)
    })
    .await;
    assert_eq!(p4_seen.ancestry[3].exe.as_deref(), shell4.to_str(), "{:?}", p4_seen.ancestry);
    // The positive marker: a program whose rule's ancestor matches nothing is a finding, and
    // was judged after the two others.
    let _run5 = group(Command::new(&shell1).args(["-c", &format!("{} 600; true", p5.display())]));
    let subject5 = p5.display().to_string();
    finding_where(&c, h, "unexpected_process", None, &subject5, "open", |_| true).await;
    let findings = c.findings(h, "unexpected_process", "all");
    for p in [&p1, &p4] {
        assert!(
            findings.iter().all(|f| f.subject != p.to_str().unwrap()),
            "{} is explained by its ancestor rule",
            p.display()
        );
    }
}

/// A process started in a group of its own, the whole group killed when dropped: a shell and
/// what it started go together.
pub(crate) struct Group(pub(crate) std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_under_a_listening_service_is_critical_and_under_a_quiet_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Alone: every process this test starts descends from the test binary, which holds the
    // listeners other tests open (webhook receivers, oracles). On a host without systemd units
    // nothing bounds the walk up, so the quiet service's shell would rightly count as theirs
    // (alone does not rule that out: a test may bind before it waits for its turn).
    let c = Collector::start_alone(d, NO_BUDGET);
    let (_agent, host) = host_with_workload(&c, d, "").await;
    let h = host.id;
    // Two shells named sh at paths of the test's own, so their findings are told apart.
    let (loud_sh, quiet_sh) = (dash_copy(&d.join("loud"), "sh"), dash_copy(&d.join("quiet"), "sh"));
    let (loud_prog, quiet_prog) = (sleep_copy(d, &unique("hw-loud")), sleep_copy(d, &unique("hw-quiet")));
    // A service (python3) that listens and runs a shell, as a web application might.
    let service = |listen: bool, shell: &Path, prog: &Path| {
        let script = format!(
            "import socket, subprocess\n\
             s = socket.socket()\n\
             if {}:\n    s.bind(('127.0.0.1', 0)); s.listen()\n\
             subprocess.run([{:?}, '-c', '{} 600; true'])\n",
            if listen { "True" } else { "False" },
            shell.display().to_string(),
            prog.display()
        );
        Group(crate::support::tool("python3").args(["-c", &script]).process_group(0).spawn().unwrap())
    };
    let loud = service(true, &loud_sh, &loud_prog);
    let quiet = service(false, &quiet_sh, &quiet_prog);

    let f = finding_where(
        &c,
        h,
        "suspicious_process",
        Some("service-spawned-shell"),
        loud_sh.to_str().unwrap(),
        "open",
        |_| true,
    )
    .await;
    assert_eq!(f.severity, proto::Severity::Critical);
    assert_eq!(f.detail["service"]["pid"], loud.0.id(), "{}", f.detail);
    assert_eq!(f.detail["service"]["name"], "python3", "{}", f.detail);
    assert_eq!(f.detail["parents"][0]["pid"], loud.0.id(), "{}", f.detail);

    // The quiet service's shell: judged (its program is an unexpected_process, the positive
    // marker), never a service-spawned-shell.
    finding_where(&c, h, "unexpected_process", None, quiet_prog.to_str().unwrap(), "open", |_| true).await;
    let quiet_shell = quiet_sh.to_str().unwrap();
    finding_where(&c, h, "unexpected_process", None, quiet_shell, "open", |_| true).await;
    // The walk up goes on past the quiet service to this test binary, and a test waiting for
    // its turn may hold a listener in it already (bound before it waits): a finding naming the
    // test binary as the listening service is right. Naming the quiet service never is.
    let wrong: Vec<proto::Finding> = c
        .findings(h, "suspicious_process", "all")
        .into_iter()
        .filter(|f| f.subject == quiet_shell && f.rule.as_deref() == Some("service-spawned-shell"))
        .filter(|f| f.detail["service"]["pid"] != u64::from(std::process::id()))
        .collect();
    assert!(
        wrong.is_empty(),
        "a shell under a service that listens on nothing is no service-spawned-shell: {wrong:?}"
    );
    drop((loud, quiet));
}
