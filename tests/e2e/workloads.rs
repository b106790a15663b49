//! Workload selection and allowances in time: two baselines selecting a host with as many keys
//! is an ambiguous_workload finding, not a silent pick; a more specific one settles it; a rule's
//! `until` allows until then, and what it allowed becomes a finding when it passes, with no
//! report or apply to prompt it.

use std::process::Command;
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

use crate::support::{Collector, Guard, on_both_stores, start_agent, unique, wait_for};

const WAIT: Duration = Duration::from_secs(45);

fn apply(c: &Collector, dir: &std::path::Path, name: &str, body: &str) -> std::process::Output {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, format!("name = \"{name}\"\n{body}")).unwrap();
    let out = c.cli(&["baseline", "apply", file.to_str().unwrap()]);
    assert!(out.status.success(), "apply {name}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_tie_is_ambiguous_and_an_allowance_ends_with_its_until
);
async fn a_tie_is_ambiguous_and_an_allowance_ends_with_its_until() {
    let dir = tempfile::tempdir().unwrap();
    // offline_after makes the collector's chores run every few seconds.
    let c = Collector::start(dir.path(), "offline_after = \"10s\"\n");
    let (role, team) = (unique("role"), unique("team"));
    let (a, b, both) = (unique("by-role"), unique("by-team"), unique("by-both"));
    apply(&c, dir.path(), &a, &format!("selector = {{ role = \"{role}\" }}\n"));
    apply(&c, dir.path(), &b, &format!("selector = {{ team = \"{team}\" }}\n"));
    let _agent = start_agent(&c, dir.path(), &format!("role={role},team={team}"));
    let host = c.online(&role).await;
    let tie = wait_for("ambiguous_workload", WAIT, async || {
        c.findings(host.id, "ambiguous_workload", "open").into_iter().next()
    })
    .await;
    let mut names = [a.clone(), b.clone()];
    names.sort();
    assert_eq!(tie.subject, names.join(", "));
    assert!(host.workload.is_none(), "no silent pick: {:?}", host.workload);

    // A program allowed for 40 s from now, in a baseline that selects with both keys (time for
    // the tie to be settled and looked at on a slow machine, before the allowance ends).
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let exe = run.path().join(unique("migrate"));
    crate::support::copy_program("/bin/sleep", &exe);
    let _p = Guard(Command::new(&exe).arg("600").spawn().unwrap());
    let exe = exe.display().to_string();
    let until = OffsetDateTime::now_utc() + time::Duration::seconds(40);
    let until_text = hostwatch_proto::v1::timestamp::format(until);
    let file_body = format!(
        "selector = {{ role = \"{role}\", team = \"{team}\" }}\n[[process]]\nname = \"*\"\nexe = \"{exe}\"\nuntil = \"{until_text}\"\nreason = \"this week's migration\"\n"
    );
    apply(&c, dir.path(), &both, &file_body);
    wait_for("the tie resolved by the more specific baseline", WAIT, async || {
        c.findings(host.id, "ambiguous_workload", "resolved").into_iter().find(|f| f.id == tie.id)
    })
    .await;
    let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
    assert_eq!(hosts.iter().find(|h| h.id == host.id).and_then(|h| h.workload.clone()), Some(both.clone()));
    let about = || c.findings(host.id, "unexpected_process", "open").into_iter().find(|f| f.subject == exe);
    assert!(about().is_none(), "allowed until {until_text}");
    assert!(OffsetDateTime::now_utc() < until, "the allowance ended before it could be looked at");

    // Past its until: a finding, from the collector's own clock.
    let f = wait_for("the allowance's end", WAIT + Duration::from_secs(40), async || about()).await;
    assert!(f.first_seen >= until, "opened at {} for an until of {until_text}", f.first_seen);

    // Lint says so of the file now.
    let file = dir.path().join(format!("{both}.toml"));
    let lint = c.cli(&["baseline", "lint", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&lint.stderr);
    assert!(lint.status.success() && err.contains(":6:9: warning: this [[process]] rule expired"), "{err}");
}
