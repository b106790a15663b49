//! Faults, each tried for real and bounded in time, each checked for nothing lost and nothing
//! twice: a collector that fails or answers slowly for long, a collector killed during heavy
//! ingest, an agent killed, a database restarted under the collector. Positive marks only: a
//! program started while the fault lasts must arrive once it is over, exactly once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hostwatch_proto::v1 as proto;

use crate::collection::{execs, named_sleep};
use crate::ingest::rss_kib;
use crate::support::proxy::{FaultProxy, Mode};
use crate::support::{Collector, Guard, on_both_stores, simulated_fleet, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Rows of the history recorded more than once: the same exec or exit of the same process at
/// the same moment, or the same change of the same file.
fn duplicates(c: &Collector) -> Vec<Vec<String>> {
    let mut twice = c.rows(
        "SELECT host_id, kind, pid, count(*) FROM process_events \
         GROUP BY host_id, kind, pid, start_time, at HAVING count(*) > 1",
    );
    twice.extend(c.rows(
        "SELECT host_id, change, path, count(*) FROM file_changes \
         GROUP BY host_id, change, path, at HAVING count(*) > 1",
    ));
    twice
}

/// Waits until the program `name` has run on `host` once, and checks it is there once only.
async fn ran_once(c: &Collector, host: i64, name: &str) {
    let runs = wait_for(&format!("{name} in the history"), WAIT, async || {
        let runs = execs(c, host, name);
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1, "{name} recorded more than once: {runs:#?}");
}

/// After a fault under the store: the program `name` run during it arrives once, the agent's
/// spool (`spool`) empties, nothing is lost or recorded twice, and the store is whole.
async fn arrived_once_and_whole(c: &Collector, host: i64, name: &str, spool: &Path) {
    ran_once(c, host, name).await;
    wait_for("the spool emptied", WAIT, async || (spooled(spool).0 == 0).then_some(())).await;
    assert!(data_lost(c, host).is_empty(), "{:#?}", data_lost(c, host));
    c.check_store_integrity();
    assert_eq!(duplicates(c), Vec::<Vec<String>>::new(), "history recorded twice");
}

/// The files of `dir` (the agent's spool), and their bytes.
fn spooled(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json.gz"))
        .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.metadata().map(|m| m.len()).unwrap_or(0)))
}

fn data_lost(c: &Collector, host: i64) -> Vec<proto::Finding> {
    c.findings(host, "data_lost", "all")
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_collector_failing_then_slow_for_long_is_backed_off_from_and_loses_nothing
);
/// The collector (behind a proxy the test switches) answers every report `503` for 30 s, then
/// each only after 3 s for 10 s. Meanwhile the agent tries again with exponential backoff and
/// full jitter up to its ceiling (`retry_max`, 6 s here), never faster, its memory and spool
/// bounded; once the collector answers again, what ran meanwhile arrives, once, and the spool
/// empties.
async fn a_collector_failing_then_slow_for_long_is_backed_off_from_and_loses_nothing() {
    const CEILING: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, "");
    let proxy = FaultProxy::start(([127, 0, 0, 1], c.port).into()).await;
    let role = unique("backoff");
    let url = proxy.url();
    let agent = start_agent_with(
        &c,
        d,
        &format!("role={role}"),
        &[
            ("HOSTWATCH_SERVER", &url),
            ("HOSTWATCH_RETRY_MAX", "6s"),
            ("HOSTWATCH_SPOOL_MAX_BYTES", "1048576"),
        ],
    );
    let host = c.online(&role).await.id;
    let spool = d.join("agent-state").join("spool");
    let rss_before = rss_kib(agent.pid());

    proxy.set(Mode::Fail(503));
    let failing = Instant::now();
    let (long_exe, long) = named_sleep(d, "hwfault-long");
    let _long = Guard(Command::new(&long_exe).arg("600").spawn().unwrap());
    let (brief_exe, brief) = named_sleep(d, "hwfault-brief");
    Command::new(&brief_exe).arg("0.05").status().unwrap();
    let (mut rss_max, mut spool_max) = (0, 0);
    while failing.elapsed() < Duration::from_secs(30) {
        rss_max = rss_max.max(rss_kib(agent.pid()));
        spool_max = spool_max.max(spooled(&spool).1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.set(Mode::Slow(Duration::from_secs(3)));
    let slow = Instant::now();
    let (slow_exe, during_slow) = named_sleep(d, "hwfault-slow");
    Command::new(&slow_exe).arg("0.05").status().unwrap();
    while slow.elapsed() < Duration::from_secs(10) {
        rss_max = rss_max.max(rss_kib(agent.pid()));
        spool_max = spool_max.max(spooled(&spool).1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.set(Mode::Pass);

    // Backoff: a try at most every ceiling, never at once again, not in step.
    let refused: Vec<Instant> = proxy
        .seen()
        .iter()
        .filter(|s| s.status == 503 && s.path == proto::REPORT_PATH)
        .map(|s| s.at)
        .collect();
    let gaps: Vec<Duration> = refused.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        (4..=20).contains(&refused.len()),
        "{} tries in 30 s of 503s (a report a second without backoff): {gaps:?}",
        refused.len()
    );
    assert!(
        gaps.iter().all(|g| *g <= CEILING + Duration::from_millis(500)),
        "a wait past the ceiling: {gaps:?}"
    );
    let mut distinct: Vec<u128> = gaps.iter().map(|g| g.as_millis() / 50).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 3, "waits without jitter: {gaps:?}");
    // Bounded: memory, and the spool within its 1 MiB (one report may overstep it alone).
    assert!(spool_max > 0, "nothing was spooled while the collector failed");
    assert!(spool_max <= 2 << 20, "the spool grew to {spool_max} bytes");
    assert!(rss_max <= rss_before + 32 * 1024, "the agent grew from {rss_before} KiB to {rss_max} KiB");

    // Once it answers: everything, once.
    for name in [&long, &brief, &during_slow] {
        ran_once(&c, host, name).await;
    }
    wait_for("the spool emptied", WAIT, async || (spooled(&spool).0 == 0).then_some(())).await;
    assert!(data_lost(&c, host).is_empty(), "{:#?}", data_lost(&c, host));
    assert_eq!(duplicates(&c), Vec::<Vec<String>>::new(), "history recorded twice");
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_collector_killed_during_heavy_ingest_restarts_whole_and_every_agent_delivers
);
/// Sixty simulated agents (the load generator, a report every second each) and a real one
/// report while the collector is killed outright (SIGKILL) and started again 3 s later on the
/// same address. Its store is whole, nothing is recorded twice, each simulated host's last
/// applied report is the last its agent saw taken (none lost, none applied twice), every host
/// reported after the restart, and the real agent's program that ran while the collector was
/// down arrives once.
async fn a_collector_killed_during_heavy_ingest_restarts_whole_and_every_agent_delivers() {
    const AGENTS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, "");
    let port = c.port;
    let role = unique("killed");
    let _agent = start_agent_with(&c, d, &format!("role={role}"), &[]);
    let host = c.online(&role).await.id;
    let load = simulated_fleet(
        &c,
        AGENTS,
        &["--interval", "1", "--duration", "20", "--warmup", "0", "--processes", "60", "--delta-every", "1"],
    );
    // Heavy ingest under way: the simulated fleet enrolled and reporting.
    wait_for("the simulated fleet reporting", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        (hosts.len() > AGENTS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut c = c;
    c.process.0.kill().unwrap();
    c.process.0.wait().unwrap();
    drop(c);
    let (down_exe, down) = named_sleep(d, "hwfault-down");
    Command::new(&down_exe).arg("0.05").status().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = time::OffsetDateTime::now_utc();
    let c = Collector::start_on(d, "", port);

    let summary = load.await.unwrap();
    assert_eq!(summary["enroll_failures"], 0, "{summary}");
    let per_agent = summary["per_agent"].as_object().unwrap();
    assert_eq!(per_agent.len(), AGENTS, "{summary}");

    ran_once(&c, host, &down).await;
    c.check_store_integrity();
    let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
    assert_eq!(hosts.len(), AGENTS + 1);
    for h in &hosts {
        let detail: proto::HostDetail = c.cli_json(&["host", &h.id.to_string()]);
        assert!(
            detail.host.last_seen.is_some_and(|t| t > restarted),
            "{} has not reported since the restart",
            h.hostname
        );
        if h.id == host {
            continue;
        }
        let sent = &per_agent[&h.hostname];
        assert_eq!(detail.last_seq, sent["last_seq"].as_u64().unwrap(), "{}: {sent}", h.hostname);
        assert!(data_lost(&c, h.id).is_empty(), "{}: {:#?}", h.hostname, data_lost(&c, h.id));
    }
    assert!(data_lost(&c, host).is_empty(), "{:#?}", data_lost(&c, host));
    assert_eq!(duplicates(&c), Vec::<Vec<String>>::new(), "history recorded twice");
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_agent_killed_and_started_again_reconciles_and_reports_nothing_twice
);
/// An agent killed outright (SIGKILL) while a program it reported runs, a program that ends
/// and one that starts and a watched file that changes while it is down: started again, its new
/// session's snapshot holds what runs now (not what ended), the change is reported once, its
/// manifest is whole (its coverage says nothing of it), and nothing it had reported is reported
/// again.
async fn an_agent_killed_and_started_again_reconciles_and_reports_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, "");
    let watched = d.join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let file = watched.join("app.conf");
    std::fs::write(&file, "listen 80\n").unwrap();
    let role = unique("agentkill");
    let tags = format!("role={role}");
    let env = [("HOSTWATCH_FILES_PATHS", watched.to_str().unwrap())];
    let mut agent = start_agent_with(&c, d, &tags, &env);
    let host = c.online(&role).await.id;
    let h = host.to_string();
    let (kept_exe, kept) = named_sleep(d, "hwfault-kept");
    let (ended_exe, ended) = named_sleep(d, "hwfault-ended");
    let _kept = Guard(Command::new(&kept_exe).arg("600").spawn().unwrap());
    let mut ended_run = Guard(Command::new(&ended_exe).arg("600").spawn().unwrap());
    let (kept_pid, ended_pid) = (_kept.pid() as u32, ended_run.pid() as u32);
    let running = |c: &Collector| -> Vec<u32> {
        let ps: Vec<proto::Located<proto::Process>> = c.cli_json(&["ps", "--host", &h]);
        ps.into_iter().map(|p| p.item.pid).collect()
    };
    wait_for("both programs reported", WAIT, async || {
        let pids = running(&c);
        (pids.contains(&kept_pid) && pids.contains(&ended_pid)).then_some(())
    })
    .await;

    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    ended_run.terminate(Duration::from_secs(5));
    let (new_exe, started) = named_sleep(d, "hwfault-new");
    let new_run = Guard(Command::new(&new_exe).arg("600").spawn().unwrap());
    std::fs::write(&file, "listen 8080\n").unwrap();
    let _agent = start_agent_with(&c, d, &tags, &env);

    wait_for("the new session's state", WAIT, async || {
        let pids = running(&c);
        (pids.contains(&(new_run.pid() as u32)) && pids.contains(&kept_pid) && !pids.contains(&ended_pid))
            .then_some(())
    })
    .await;
    let path = file.to_str().unwrap().to_owned();
    let changes = wait_for("the change made while the agent was down", WAIT, async || {
        let events: Vec<proto::FileEvent> = c.cli_json(&["files", "--host", &h, "--limit", "10000"]);
        let of: Vec<_> = events.into_iter().filter(|e| e.change.path == path).collect();
        (!of.is_empty()).then_some(of)
    })
    .await;
    // A last program, after all that: once it is in, everything before it is.
    let (last_exe, last) = named_sleep(d, "hwfault-last");
    Command::new(&last_exe).arg("0.05").status().unwrap();
    ran_once(&c, host, &last).await;

    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0].change.change, proto::FileChangeKind::Modified, "{changes:#?}");
    for name in [&kept, &ended, &started] {
        assert_eq!(execs(&c, host, name).len(), 1, "{name} recorded other than once");
    }
    let detail: proto::HostDetail = c.cli_json(&["host", &h]);
    // The manifest whole: had it been damaged, the coverage would say it was rebuilt (the only
    // reason given here is the socket events the tests turn off).
    let why = &detail.host.coverage.why;
    assert!(!why.is_empty() && why.iter().all(|w| w.contains("socket_events = false")), "{why:?}");
    assert!(data_lost(&c, host).is_empty(), "{:#?}", data_lost(&c, host));
    assert_eq!(duplicates(&c), Vec::<Vec<String>>::new(), "history recorded twice");
}

/// PostgreSQL stopped as a crash would under a running collector until the agent holds five
/// undelivered reports, then started again: the collector stays up and says what is wrong, the
/// agent keeps its reports and sends them again, and once the database is back what ran
/// meanwhile arrives once, the store whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crashed_and_restarted_under_the_collector_loses_nothing() {
    crate::support::on_postgres(async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut c = Collector::start(d, "");
        let role = unique("dbcrash");
        let _agent = start_agent_with(&c, d, &format!("role={role}"), &[]);
        let host = c.online(&role).await.id;

        c.crash_database();
        let (down_exe, down) = named_sleep(d, "hwfault-dbdown");
        Command::new(&down_exe).arg("0.05").status().unwrap();
        // The agent is refused while it lasts, and the collector says why.
        wait_for("a report refused while the database is down", WAIT, async || {
            let refused = c.log().lines().any(|l| l.contains("report refused") && l.contains("503"));
            refused.then_some(())
        })
        .await;
        // For long: until the agent holds five reports it could not deliver (a report a second).
        let spool = d.join("agent-state").join("spool");
        wait_for("five reports held while the database is down", WAIT, async || {
            (spooled(&spool).0 >= 5).then_some(())
        })
        .await;
        assert!(
            matches!(c.process.0.try_wait(), Ok(None)),
            "the collector ended while its database was down"
        );
        c.restart_database();

        ran_once(&c, host, &down).await;
        assert!(data_lost(&c, host).is_empty(), "{:#?}", data_lost(&c, host));
        c.check_store_integrity();
        assert_eq!(duplicates(&c), Vec::<Vec<String>>::new(), "history recorded twice");
    })
    .await
}

/// A tmpfs of its own mounted by the test (root), unmounted when dropped: a disk the test can
/// fill.
struct Tmpfs {
    at: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        Self::mount_with_mode(at, size, "0700")
    }

    /// The same, its root of `mode` (`0755`: another user, PostgreSQL's, may reach in).
    fn mount_with_mode(at: &Path, size: &str, mode: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode={mode}"), "hostwatch-test"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs at {} (the disk-full tests need root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { at: at.to_owned() }
    }

    /// Fills it with a file of zeros, written until the disk takes no more; returns the file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.at.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for size in [1 << 20, 4096, 1] {
            let chunk = vec![0u8; size];
            while f.write_all(&chunk).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: whatever still holds a file there lets go as it ends.
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// The collector's disk (its data directory on a small tmpfs) filled while an agent reports:
/// reports are answered `503` saying the disk is full, the collector says so in its log (a line
/// per 10 s, not per report), the agent keeps them spooled; once space is freed, what ran
/// meanwhile arrives once and the store is whole. (On PostgreSQL the store is not in the
/// collector's directory: the database's own disk full is the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_collector_refuses_reports_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = Tmpfs::mount(&d.join("server"), "48m");
    let c = Collector::start(d, "");
    let role = unique("fulldisk");
    let _agent = start_agent_with(&c, d, &format!("role={role}"), &[]);
    let host = c.online(&role).await.id;
    let spool = d.join("agent-state").join("spool");

    let filler = disk.fill();
    let (exe, name) = named_sleep(d, "hwfault-full");
    let _run = Guard(Command::new(&exe).arg("600").spawn().unwrap());
    wait_for("a report refused for the full disk", WAIT, async || {
        let said = c.log().lines().any(|l| l.contains("store unavailable") && l.contains("disk is full"));
        said.then_some(())
    })
    .await;
    let held = wait_for("reports spooled by the agent", WAIT, async || {
        let n = spooled(&spool).0;
        (n >= 2).then_some(n)
    })
    .await;
    assert!(held >= 2);
    let lines = c.log().lines().filter(|l| l.contains("store unavailable")).count();
    assert!(lines <= 3, "{lines} log lines for a full disk: one per 10 s at most");

    std::fs::remove_file(filler).unwrap();
    arrived_once_and_whole(&c, host, &name, &spool).await;
    drop(c);
    drop(disk);
}

/// PostgreSQL's disk (its cluster on a small tmpfs) filled under a collector while an agent
/// reports: the database refuses to grow a table (`disk full`) or, where its write-ahead log
/// cannot grow, stops itself; either way the collector stays up and answers `503`, the agent
/// spools; once space is freed (and the server started again if it stopped), what ran meanwhile
/// arrives once and the store is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_database_refuses_reports_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    // In a directory of /tmp's own (the test's is root's alone): PostgreSQL runs as `postgres`.
    let at = tempfile::Builder::new().prefix("hw-pgdisk-").tempdir().unwrap();
    let disk = Tmpfs::mount_with_mode(at.path(), "160m", "0755");
    let pg_parent = disk.at.clone();
    crate::support::on_postgres_in(&pg_parent, async {
        let mut c = Collector::start(&d, "");
        let role = unique("dbfull");
        let _agent = start_agent_with(&c, &d, &format!("role={role}"), &[]);
        let host = c.online(&role).await.id;
        let spool = d.join("agent-state").join("spool");

        let filler = disk.fill();
        // Programs of their own name, each a report's worth of history, until one is refused.
        let (exe, name) = named_sleep(&d, "hwfault-dbfull");
        let _run = Guard(Command::new(&exe).arg("600").spawn().unwrap());
        let (busy_exe, _) = named_sleep(&d, "hwfault-dbbusy");
        let refused = wait_for("a report refused for the database's full disk", WAIT, async || {
            Command::new(&busy_exe).arg("0.01").status().unwrap();
            let log = c.log();
            let line = log.lines().find(|l| l.contains("report refused") && l.contains("503"))?;
            Some(line.to_owned())
        })
        .await;
        // Said as the store's state (its disk full, or the server stopping or away), not a 500.
        assert!(refused.contains("store temporarily unavailable"), "refused for another reason: {refused}");
        assert!(
            matches!(c.process.0.try_wait(), Ok(None)),
            "the collector ended when its database's disk filled"
        );
        wait_for("reports spooled by the agent", WAIT, async || (spooled(&spool).0 >= 2).then_some(())).await;

        std::fs::remove_file(filler).unwrap();
        // A server that stopped itself is started again, as its operator would once space is back.
        wait_for("the database back", WAIT, async || {
            if !c.database_running() {
                c.restart_database();
            }
            c.database_running().then_some(())
        })
        .await;
        arrived_once_and_whole(&c, host, &name, &spool).await;
        drop(c);
    })
    .await;
    drop(disk);
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_full_disk_under_the_agent_holds_reports_in_memory_and_loses_nothing
);
/// The agent's state directory (a small tmpfs) filled: it says so once, holds its reports in
/// memory and sends them from there, so what runs meanwhile arrives once; once space is freed
/// it says so and spools to disk again.
async fn a_full_disk_under_the_agent_holds_reports_in_memory_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, "");
    let disk = Tmpfs::mount(&d.join("agent-state"), "8m");
    let role = unique("agentdisk");
    let agent = start_agent_with(&c, d, &format!("role={role}"), &[]);
    let host = c.online(&role).await.id;

    let filler = disk.fill();
    let (exe, name) = named_sleep(d, "hwfault-agentfull");
    let _run = Guard(Command::new(&exe).arg("600").spawn().unwrap());
    let said = "cannot write the spool (disk full?); holding reports in memory";
    wait_for("the agent saying its disk is full", WAIT, async || {
        crate::support::agent_log(d).contains(said).then_some(())
    })
    .await;
    ran_once(&c, host, &name).await;

    std::fs::remove_file(filler).unwrap();
    wait_for("the agent spooling to disk again", WAIT, async || {
        crate::support::agent_log(d).contains("the spool is written to disk again").then_some(())
    })
    .await;
    let (exe, after) = named_sleep(d, "hwfault-agentfreed");
    let _after = Guard(Command::new(&exe).arg("600").spawn().unwrap());
    ran_once(&c, host, &after).await;
    assert_eq!(crate::support::agent_log(d).matches(said).count(), 1, "said once, not per report");
    assert!(data_lost(&c, host).is_empty(), "{:#?}", data_lost(&c, host));
    assert_eq!(duplicates(&c), Vec::<Vec<String>>::new(), "history recorded twice");
    drop(agent);
    drop(disk);
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_link_cut_and_mended_loses_nothing
);
/// The agent in a network namespace of its own, reaching the collector over a veth pair the
/// test made; the link cut until the agent holds a dozen undelivered reports, then mended: it
/// delivers what it saw meanwhile once, and its spool empties. (In a namespace of its own the agent polls /proc,
/// so the programs it must see run for long.)
async fn a_link_cut_and_mended_loses_nothing() {
    let link = crate::support::netns::Linked::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start_at(d, "", &format!("{}:0", link.host_ip));
    let role = unique("linkcut");
    let url = c.url.clone();
    let env = [("HOSTWATCH_SERVER", url.as_str()), ("HOSTWATCH_ALLOW_INSECURE_HTTP", "true")];
    let _agent = crate::support::start_agent_in(Some(&link.ns.0), &c, d, &format!("role={role}"), &env);
    let host = c.online(&role).await.id;
    let spool = d.join("agent-state").join("spool");

    link.cut();
    let (exe, name) = named_sleep(d, "hwfault-cut");
    let _run = Guard(Command::new(&exe).arg("600").spawn().unwrap());
    // For long: until the agent holds a dozen reports it could not deliver (a report a second).
    wait_for("a dozen reports held while the link is down", WAIT, async || {
        (spooled(&spool).0 >= 12).then_some(())
    })
    .await;
    link.mend();

    ran_once(&c, host, &name).await;
    wait_for("the spool emptied", WAIT, async || (spooled(&spool).0 == 0).then_some(())).await;
    assert!(data_lost(&c, host).is_empty(), "{:#?}", data_lost(&c, host));
    assert_eq!(duplicates(&c), Vec::<Vec<String>>::new(), "history recorded twice");
}
