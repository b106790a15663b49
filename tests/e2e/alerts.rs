//! Alert sinks, silences and acknowledgement: a webhook receiver on loopback hears of each new
//! finding exactly once, and again after it reopens; while the receiver is down nothing is lost;
//! a finding that opens during a silence is recorded, marked silenced, and not sent; a file sink
//! with `resolved = true` has every event as a JSON line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Collector, Guard, on_both_stores, start_agent, unique, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// A webhook receiver: keeps each JSON body POSTed to it; answers 503 while `down`.
pub(crate) struct Receiver {
    pub(crate) port: u16,
    pub(crate) got: Arc<Mutex<Vec<serde_json::Value>>>,
    down: Arc<AtomicBool>,
    refused: Arc<Mutex<u32>>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (got, down, refused) =
            (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(0)));
        let (g, d, r) = (got.clone(), down.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (g, d, r) = (g.clone(), d.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then as many body bytes as Content-Length says.
                    let body = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break buf[end + 4..end + 4 + len].to_vec();
                        }
                    };
                    let status = if d.load(Ordering::SeqCst) {
                        *r.lock().unwrap() += 1;
                        "503 Service Unavailable"
                    } else {
                        g.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        "200 OK"
                    };
                    let _ = sock
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        Receiver { port, got, down, refused }
    }

    /// The events received about `subject`: (event, finding id).
    pub(crate) fn about(&self, subject: &str) -> Vec<(String, i64)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p["finding"]["subject"] == subject)
            .map(|p| {
                (p["event"].as_str().unwrap_or_default().to_owned(), p["finding"]["id"].as_i64().unwrap_or(0))
            })
            .collect()
    }
}

/// A copy of `/bin/sleep` run from `path` (a built-in rule's finding whatever the baseline).
pub(crate) fn run_from(path: &std::path::Path) -> Guard {
    Guard(std::process::Command::new(path).arg("600").spawn().unwrap())
}

/// A copy of `/bin/sleep` named after `name` in a directory of `/dev/shm` (kept while the
/// directory is): what `exe-in-temp` finds.
pub(crate) fn sleep_in_shm(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let shm = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/dev/shm").unwrap();
    let exe = shm.path().join(unique(name));
    crate::support::copy_program("/bin/sleep", &exe);
    (shm, exe)
}

/// Waits until the host's next three reports are judged (each judges its open findings again)
/// and every alert event queued meanwhile is delivered (`hostwatch_alert_outbox` at 0 for every
/// sink): a positive mark before a check that nothing more was sent, where a sleep would pass
/// on a slow machine without having looked.
async fn judged_and_delivered(c: &Collector, host: i64) {
    let seq = || c.cli_json::<proto::HostDetail>(&["host", &host.to_string()]).last_seq;
    let from = seq();
    wait_for("three more reports judged and every alert delivered", WAIT, async || {
        if seq() < from + 3 {
            return None;
        }
        let text = c.metrics_text().await;
        let left: f64 = text
            .lines()
            .filter(|l| l.starts_with("hostwatch_alert_outbox{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (left == 0.0).then_some(())
    })
    .await;
}

/// A baseline for `role` that explains everything the machine runs (other tests run beside
/// this one), so that the findings are the built-in rules'; `extra` is TOML after it.
pub(crate) fn explaining_everything(role: &str, extra: &str) -> String {
    format!(
        "name = \"{role}\"\nselector = {{ role = \"{role}\" }}\n[[process]]\nname = \"*\"\n\
         [[listen]]\nprotocol = \"tcp\"\nport = \"1-65535\"\n[[listen]]\nprotocol = \"udp\"\nport = \"1-65535\"\n\
         [[connect]]\nremote = [\"0.0.0.0/0\", \"::/0\"]\n{extra}"
    )
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sinks_hear_each_opening_once_lose_nothing_while_down_and_silences_hold_them_back
);
async fn sinks_hear_each_opening_once_lose_nothing_while_down_and_silences_hold_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start().await;
    let jsonl = dir.path().join("alerts.jsonl");
    let c = Collector::start(
        dir.path(),
        &format!(
            "[[alerts]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook/secret-part\"\n\n\
             [[alerts]]\ntype = \"file\"\npath = {:?}\nresolved = true\n",
            hook.port,
            jsonl.display().to_string()
        ),
    );
    // Everything the machine runs is explained (other tests run beside this one): the findings
    // here are the built-in rule's.
    let role = unique("alerts");
    let baseline = dir.path().join("all.toml");
    std::fs::write(&baseline, explaining_everything(&role, "")).unwrap();
    let _: Vec<proto::BaselineSummary> = c.cli_json(&["baseline", "apply", baseline.to_str().unwrap()]);
    let _agent = start_agent(&c, dir.path(), &format!("role={role}"));
    let host = c.online(&role).await;

    let (_shm, exe) = sleep_in_shm("alerted");
    let subject = exe.to_str().unwrap().to_owned();
    let open =
        || c.findings(host.id, "suspicious_process", "open").into_iter().find(|f| f.subject == subject);

    // Opens: heard once, and not again while it stays open (the agent keeps reporting).
    let mut p = run_from(&exe);

    wait_for("the opening delivered", WAIT, async || (!hook.about(&subject).is_empty()).then_some(())).await;
    let id = open().expect("open finding").id;
    judged_and_delivered(&c, host.id).await;
    assert_eq!(hook.about(&subject), [("opened".to_owned(), id)], "once while open");

    // Resolves (the webhook does not ask for resolutions), then reopens while the receiver is
    // down: delivered once it is back.
    p.terminate(Duration::from_secs(5));
    wait_for("resolved", WAIT, async || {
        c.findings(host.id, "suspicious_process", "resolved").into_iter().find(|f| f.id == id)
    })
    .await;
    hook.down.store(true, Ordering::SeqCst);
    let mut p = run_from(&exe);
    wait_for("reopened", WAIT, async || open()).await;
    wait_for("the receiver refusing retries", WAIT, async || {
        (*hook.refused.lock().unwrap() >= 2).then_some(())
    })
    .await;
    assert_eq!(hook.about(&subject).len(), 1, "nothing got through while down");
    hook.down.store(false, Ordering::SeqCst);
    wait_for("the reopening delivered after the outage", WAIT, async || {
        (hook.about(&subject).len() == 2).then_some(())
    })
    .await;
    assert_eq!(hook.about(&subject)[1], ("reopened".to_owned(), id));

    // A silence: the finding resolves and reopens within it, recorded and marked, not sent.
    let s: Vec<proto::Silence> = c.cli_json(&[
        "silence",
        "create",
        "--host",
        &host.id.to_string(),
        "--for",
        "10m",
        "--reason",
        "patching",
    ]);
    assert_eq!((s[0].host_id, s[0].reason.as_str()), (Some(host.id), "patching"));
    let listed: Vec<proto::Silence> = c.cli_json(&["silence", "list"]);
    assert!(listed.iter().any(|x| x.id == s[0].id));
    p.terminate(Duration::from_secs(5));
    wait_for("resolved again", WAIT, async || {
        c.findings(host.id, "suspicious_process", "resolved").into_iter().find(|f| f.id == id)
    })
    .await;
    let _p = run_from(&exe);
    let silenced = wait_for("reopened in the silence", WAIT, async || open()).await;
    assert!(silenced.silenced, "marked silenced: {silenced:?}");
    judged_and_delivered(&c, host.id).await;
    assert_eq!(hook.about(&subject).len(), 2, "a silenced reopening is not sent");

    // Acknowledged with a note.
    let acked: Vec<proto::Finding> = c.cli_json(&["ack", &id.to_string(), "--note", "our own test binary"]);
    assert_eq!(
        (acked[0].status, acked[0].ack_note.as_deref(), acked[0].acked_by.is_some()),
        (proto::FindingStatus::Acknowledged, Some("our own test binary"), true)
    );
    let missing = c.cli(&["ack", "999999"]);
    assert!(
        !missing.status.success()
            && String::from_utf8_lossy(&missing.stderr).contains("no finding with id 999999")
    );

    // The file sink asked for everything, resolutions too: opened, resolved, reopened; what
    // happened within the silence (a resolution, a reopening) went to no sink.
    let lines = std::fs::read_to_string(&jsonl).unwrap();
    let events: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["finding"]["subject"] == subject.as_str())
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["opened", "resolved", "reopened"], "{lines}");
    // The webhook's secret path is never logged.
    assert!(!c.log().contains("secret-part"), "the hook's path leaked into the log");
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_finding_that_grows_worse_while_open_is_sent_as_escalated
);
/// A finding whose severity rises while it is open (its workload re-grades the rule) is sent
/// again as `escalated`: a sink that left it out for its severity hears of it then, once.
async fn a_finding_that_grows_worse_while_open_is_sent_as_escalated() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start().await;
    let c = Collector::start(
        dir.path(),
        &format!(
            "[[alerts]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\nmin_severity = \"high\"\n",
            hook.port
        ),
    );
    let role = unique("escalate");
    let baseline = |severity: &str| {
        let path = dir.path().join(format!("{severity}.toml"));
        let regraded = format!("[[builtin]]\nrule = \"exe-in-temp\"\nseverity = \"{severity}\"\n");
        std::fs::write(&path, explaining_everything(&role, &regraded)).unwrap();
        path
    };
    let low = baseline("low");
    let _: Vec<proto::BaselineSummary> = c.cli_json(&["baseline", "apply", low.to_str().unwrap()]);
    let _agent = start_agent(&c, dir.path(), &format!("role={role}"));
    let host = c.online(&role).await;

    let (_shm, exe) = sleep_in_shm("graded");
    let subject = exe.to_str().unwrap().to_owned();
    let open =
        || c.findings(host.id, "suspicious_process", "open").into_iter().find(|f| f.subject == subject);
    let _p = run_from(&exe);
    let first = wait_for("the low finding open", WAIT, async || open()).await;
    assert_eq!(first.severity, proto::Severity::Low, "{first:?}");
    // The sink has read past the opening (written with the finding): it left it out. (A finding
    // escalated before its sink reads the opening is sent as opened, at its new severity, and
    // again as escalated: the outbox holds the finding as it is now.)
    wait_for("the sink past the opening", WAIT, async || {
        (c.metric("hostwatch_alert_outbox{sink=\"webhook-1\"}").await == 0).then_some(())
    })
    .await;

    // Re-graded high while it runs: the same finding, now high, and the sink hears of it once.
    let high = baseline("high");
    let _: Vec<proto::BaselineSummary> = c.cli_json(&["baseline", "apply", high.to_str().unwrap()]);
    wait_for("the escalation delivered", WAIT, async || (!hook.about(&subject).is_empty()).then_some(()))
        .await;
    assert_eq!(
        hook.about(&subject),
        [("escalated".to_owned(), first.id)],
        "only the escalation: the low opening was below the sink"
    );
    let now = open().expect("still open");
    assert_eq!((now.id, now.severity), (first.id, proto::Severity::High));
}
