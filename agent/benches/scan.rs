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
//! The two sides take turns running first. It prints every round, each column's median, min and
//! max, and the ratios round by round against `ps` + `ss -tuanp` of the same round: the headline
//! is the snapshot command, a whole process like its peers; the in-process figures are beside it.
//! Nothing here is a pass/fail assertion: the machine is shared and noisy.

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

/// Median, least and most of one column.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v.to_vec()), lo, hi)
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
        "snapshot cmd",
        "cold",
        "cold, no hash",
        "steady",
        "sock_diag",
        "proc_net",
    ];
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    println!("round {}", names.map(|n| format!("{n:>14}")).join(""));
    for round in 0..rounds {
        // The peers' three and the agent's six, in turn first: a page cache or a CPU frequency
        // warmed by whichever runs first favours neither side.
        let peers = || {
            [
                child(&["ps", "-eo", "pid,ppid,user,lstart,args"]),
                child(&["ss", "-tuanp"]),
                child(&["ss", "-tuan"]),
            ]
        };
        let ours = || {
            let cmd = child(&[agent, "snapshot"]);
            let mut obs = None;
            let mut seen_counts = (0, 0);
            let cold = measure(|| {
                let mut o = Observer::new(root.clone(), Reader::SockDiag, Redactor::default());
                let seen = o.observe();
                seen_counts = (
                    seen.snapshot.processes.len(),
                    seen.snapshot.listeners.len() + seen.snapshot.connections.len(),
                );
                obs = Some(o);
            });
            let cold_no_hash = measure(|| {
                let mut o =
                    Observer::new(root.clone(), Reader::SockDiag, Redactor::default()).without_hashing();
                o.observe();
            });
            let mut o = obs.expect("observer");
            let steady = measure(|| {
                o.observe();
            });
            let want = Want { listen: true, connected: true };
            let diag = measure(|| {
                SocketSource::new(Reader::SockDiag).read(&root, &namespaces, want);
            });
            let procnet = measure(|| {
                SocketSource::new(Reader::ProcNet).read(&root, &namespaces, want);
            });
            (seen_counts, [cmd, cold, cold_no_hash, steady, diag, procnet])
        };
        let (p, (counts, o)) = if round % 2 == 0 {
            let p = peers();
            (p, ours())
        } else {
            let o = ours();
            (peers(), o)
        };
        (processes, sockets) = counts;
        let row = [p[0], p[1], p[2], o[0], o[1], o[2], o[3], o[4], o[5]].map(ms);
        let first = if round % 2 == 0 { "peers" } else { "ours " };
        println!("{first} {}", row.map(|v| format!("{v:>14.1}")).join(""));
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    let m: Vec<(f64, f64, f64)> = cols.iter().map(|c| spread(c)).collect();
    println!(
        "\nCPU ms over {rounds} rounds, in alternating order; host: {processes} processes, {sockets} sockets"
    );
    println!("{:16}{:>10}{:>10}{:>10}", "", "median", "min", "max");
    for (n, (med, lo, hi)) in names.iter().zip(&m) {
        println!("{n:16}{med:>10.1}{lo:>10.1}{hi:>10.1}");
    }
    // Ratios round by round (each against the peers of its own round), then their spread.
    let per_round =
        |col: usize| -> Vec<f64> { (0..rounds).map(|r| cols[col][r] / (cols[0][r] + cols[1][r])).collect() };
    let line = |what: &str, col: usize| {
        let (med, lo, hi) = spread(&per_round(col));
        println!("{what:44}{med:>8.2}x  (min {lo:.2}x, max {hi:.2}x)");
    };
    println!("\nagainst ps + ss -tuanp as whole processes, round by round:");
    line("hostwatch-agent snapshot (a whole process)", 3);
    line("in process: cold full scan", 4);
    line("in process: cold full scan, no hashing", 5);
    line("in process: steady rescan", 6);
    let (med, lo, hi) = spread(&(0..rounds).map(|r| cols[7][r] / cols[8][r]).collect::<Vec<_>>());
    println!("{:44}{med:>8.2}x  (min {lo:.2}x, max {hi:.2}x)", "sock_diag / proc_net readers");
}
