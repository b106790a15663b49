//! The file monitor's scans over a tree, one kind per run, for `bench/fim_vs_aide.py`, which
//! runs them side by side with `aide --init` and `aide --check` and drops the page cache where a
//! cold run is wanted. Not a pass/fail test.
//!
//! `cargo bench -p hostwatch-agent --bench fim -- MODE MANIFEST PATH...`, MODE one of:
//! - `init`: build the manifest of PATHs (hashing everything), write it to MANIFEST;
//! - `rehash`: read MANIFEST, scan again hashing everything, compare;
//! - `check`: read MANIFEST, scan trusting unchanged (inode, size, mtime, ctime), compare.
//!
//! Prints one line of JSON: wall and CPU seconds, peak RSS, entries, bytes hashed, changes.
//! The byte budget is lifted (`hash_rate = 0`), as the file-integrity issue's benchmarks ask.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostwatch_agent::files::manifest::Manifest;
use hostwatch_agent::files::{Budget, FilesConfig, scan};
use hostwatch_agent::ratelimit::TokenBucket;
use nix::sys::resource::{UsageWho, getrusage};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let (mode, manifest_path, paths) = match args.as_slice() {
        [mode, manifest, paths @ ..] if !paths.is_empty() => {
            (mode.clone(), PathBuf::from(manifest), paths.iter().map(PathBuf::from).collect::<Vec<_>>())
        }
        _ => {
            eprintln!("usage: fim init|rehash|check MANIFEST PATH...");
            std::process::exit(2);
        }
    };
    let budget = Budget {
        hash_rate: 0,
        hash_max_size: 128 << 20,
        rescan_every: Duration::from_secs(3600),
        rehash_every: Duration::from_secs(86400),
        max_watches: 0,
    };
    let config =
        FilesConfig::new(false, &paths, &[], budget, PathBuf::from("/var/lib/dpkg")).expect("config");
    let old = match mode.as_str() {
        "init" => None,
        "rehash" | "check" => {
            Some(Manifest::load(&manifest_path).expect("read manifest").expect("no manifest"))
        }
        other => panic!("unknown mode {other}"),
    };
    let started = Instant::now();
    let outcome = scan::scan(&config, old.as_ref(), mode == "rehash", &mut TokenBucket::new(0), &|| false)
        .expect("not stopped");
    let changes = old.as_ref().map_or(0, |o| {
        scan::changes(
            o,
            &outcome.manifest,
            hostwatch_proto::v1::ChangeOrigin::Rescan,
            time::OffsetDateTime::now_utc(),
        )
        .len()
    });
    let wall = started.elapsed();
    if mode == "init" {
        outcome.manifest.save(&manifest_path).expect("write manifest");
    }
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    println!(
        "{{\"mode\":\"{mode}\",\"wall_s\":{:.3},\"cpu_s\":{:.3},\"max_rss_kib\":{},\"entries\":{},\"hashed_bytes\":{},\"changes\":{},\"unreadable\":{}}}",
        wall.as_secs_f64(),
        secs(u.user_time()) + secs(u.system_time()),
        u.max_rss(),
        outcome.manifest.len(),
        outcome.hashed_bytes,
        changes,
        outcome.unreadable
    );
}
