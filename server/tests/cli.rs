//! The `hostwatch` binary without a collector: lint, configuration refusals, client errors.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn hostwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hostwatch"));
    c.env_clear();
    c
}

#[test]
fn lint_says_file_line_and_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\nselector = {}\n[[process]]\nname = \"x\"\nnmae = \"y\"\n").unwrap();
    let out = hostwatch().args(["baseline", "lint"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:1: unknown field `nmae`", bad.display())), "{err}");

    let syntax = d.path().join("syntax.toml");
    std::fs::write(&syntax, "name = \"s\"\n[[listen]\n").unwrap();
    let out = hostwatch().args(["baseline", "lint"]).arg(&syntax).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:2:", syntax.display())));
}

#[test]
fn lint_accepts_the_shipped_baselines_and_resolves_includes_among_siblings() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/baselines");
    let out = hostwatch()
        .args(["baseline", "lint"])
        .arg(format!("{dir}/linux-base.toml"))
        .arg(format!("{dir}/web.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("web.toml: ok (baseline `web`") && stdout.contains("selects role=web"),
        "{stdout}"
    );
    assert!(stdout.contains("linux-base.toml: ok") && stdout.contains("library"), "{stdout}");
    assert!(stderr.is_empty(), "no warnings expected: {stderr}");

    let d = tempfile::tempdir().unwrap();
    let lone = d.path().join("lone.toml");
    std::fs::write(&lone, "name = \"lone\"\nselector = {}\ninclude = [\"elsewhere\"]\n").unwrap();
    let out = hostwatch().args(["baseline", "lint"]).arg(&lone).output().unwrap();
    assert!(out.status.success(), "a missing include may be on the collector: a warning");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: baseline `lone` includes `elsewhere`"));
}

#[test]
fn serve_refuses_a_bad_config_with_ex_config() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("server.toml");
    std::fs::write(&f, "listen = \"127.0.0.1:0\"\nretension = \"30d\"\n").unwrap();
    let out = hostwatch().args(["serve", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2:1: unknown field `retension`"));
    // A known key with a value out of its range names the key and the range.
    std::fs::write(&f, "retention = \"10m\"\n[query]\nmax_rows = 0\n").unwrap();
    let out = hostwatch().args(["serve", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retention"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&f, "[query]\nmax_rows = 0\n").unwrap();
    let out = hostwatch().args(["serve", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("query.max_rows"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_broken_baseline_in_baselines_dir_stops_the_start() {
    let d = tempfile::tempdir().unwrap();
    let baselines = d.path().join("baselines");
    std::fs::create_dir(&baselines).unwrap();
    std::fs::write(
        baselines.join("web.toml"),
        "name = \"web\"\n[[listen]]\nprotocol = \"tcp\"\nport = 99999\n",
    )
    .unwrap();
    let f = d.path().join("server.toml");
    std::fs::write(
        &f,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nbaselines_dir = {:?}\n",
            d.path().join("data"),
            baselines
        ),
    )
    .unwrap();
    let out = hostwatch().args(["serve", "--config"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "a broken baseline is configuration: no restart loop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web.toml:4:8: port 99999 is outside 1-65535"), "{err}");
}

#[test]
fn client_errors_say_what_to_do() {
    let out = hostwatch().args(["hosts"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = hostwatch()
        .args(["hosts", "--server", &format!("http://127.0.0.1:{port}"), "--token", "hwt_x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the collector"));
}
