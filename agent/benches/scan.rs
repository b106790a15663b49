//! CPU cost of reading the host, side by side with the tools people use for it.
//!
//! Run under load with `python3 bench/agent_scan.py`, which starts `hostload.py` first, or alone:
//! `cargo bench -p hostwatch-agent --bench scan -- [ROUNDS]`. Each round measures, by getrusage:
//! - peers, as child processes: `ps -eo pid,ppid,user,lstart,args`, `ss -tuanp`, `ss -tuan`;
//! - the agent's cold full scan (a new `Observer`: processes with exe, cmdline, cgroup, sockets
//!   in every namespace with their owners, and executables hashed within the hash budget);
//! - the same without hashing, to show what hashing costs;
//! - the steady-state full rescan (the same `Observer` again, caches warm);
//! - the one-shot `hostwatch-agent snapshot` as a child process (start-up and JSON included);
//! - both socket readers alone (sock_diag and /proc/net), without owners.
//!
//! It prints one line per round and the medians, and the ratios the agent-collection issue asks
//! for. Nothing here is a pass/fail assertion: the machine is shared and noisy.

use std::process::{Command, Stdio};
use std::time::Duration;

use hostwatch_agent::collect::redact::Redactor;
use hostwatch_agent::collect::sockets::{Reader, SocketSource, Want};
use hostwatch_agent::collect::{HostRoot, netns};
use hostwatch_agent::snapshot::Observer;
use nix::sys::resource::{UsageWho, getrusage};

fn cpu(who: UsageWho) -> Duration {
    let u = getrusage(who).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// CPU used by `f` in this process (all threads).
fn measure(f: impl FnOnce()) -> Duration {
    let before = cpu(UsageWho::RUSAGE_SELF);
    f();
    cpu(UsageWho::RUSAGE_SELF).saturating_sub(before)
}

/// CPU used by a child process run to its end, output discarded.
fn child(argv: &[&str]) -> Duration {
    let before = cpu(UsageWho::RUSAGE_CHILDREN);
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .env("HOSTWATCH_CLOUD_PROVIDER", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(status.success(), "{argv:?} failed");
    cpu(UsageWho::RUSAGE_CHILDREN).saturating_sub(before)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(7);
    let root = HostRoot::default();
    let agent = env!("CARGO_BIN_EXE_hostwatch-agent");
    let pids = hostwatch_agent::collect::process::list_pids(&root).expect("list /proc");
    let namespaces = netns::discover(&root, &pids);
    let (mut sockets, mut processes) = (0, 0);
    let names = [
        "ps",
        "ss -tuanp",
        "ss -tuan",
        "cold",
        "cold, no hash",
        "steady",
        "snapshot cmd",
        "sock_diag",
        "proc_net",
    ];
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    println!("{}", names.map(|n| format!("{n:>14}")).join(""));
    for _ in 0..rounds {
        let ps = child(&["ps", "-eo", "pid,ppid,user,lstart,args"]);
        let ssp = child(&["ss", "-tuanp"]);
        let ss = child(&["ss", "-tuan"]);
        let mut obs = None;
        let cold = measure(|| {
            let mut o = Observer::new(root.clone(), Reader::SockDiag, Redactor::default());
            let seen = o.observe();
            (processes, sockets) = (
                seen.snapshot.processes.len(),
                seen.snapshot.listeners.len() + seen.snapshot.connections.len(),
            );
            obs = Some(o);
        });
        let cold_no_hash = measure(|| {
            let mut o = Observer::new(root.clone(), Reader::SockDiag, Redactor::default()).without_hashing();
            o.observe();
        });
        let mut o = obs.expect("observer");
        let steady = measure(|| {
            o.observe();
        });
        let cmd = child(&[agent, "snapshot"]);
        let want = Want { listen: true, connected: true };
        let diag = measure(|| {
            SocketSource::new(Reader::SockDiag).read(&root, &namespaces, want);
        });
        let procnet = measure(|| {
            SocketSource::new(Reader::ProcNet).read(&root, &namespaces, want);
        });
        let row = [ps, ssp, ss, cold, cold_no_hash, steady, cmd, diag, procnet].map(ms);
        println!("{}", row.map(|v| format!("{v:>14.1}")).join(""));
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let m: Vec<f64> = cols.into_iter().map(median).collect();
    println!("{}", m.iter().map(|v| format!("{v:>14.1}")).collect::<String>());
    println!("\nmedians of {rounds} rounds, CPU ms; host: {processes} processes, {sockets} sockets");
    let peers = m[0] + m[1];
    println!("ps + ss -tuanp                     {peers:8.1} ms");
    println!("cold full scan / peers            {:8.2}x", m[3] / peers);
    println!("cold full scan, no hashing / peers {:7.2}x", m[4] / peers);
    println!("steady rescan / peers             {:8.2}x", m[5] / peers);
    println!("snapshot command / peers          {:8.2}x", m[6] / peers);
    println!("sock_diag / proc_net readers      {:8.2}x", m[7] / m[8]);
}
