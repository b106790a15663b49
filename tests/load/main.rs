//! `hostwatch-load`: N simulated agents against a running collector, on loopback, bounded in
//! count and time, for the collector's scale figures (BENCHMARKS.md, issue 15).
//!
//! Each simulated agent enrolls with the collector's enrollment secret (at a random moment of the
//! first interval, as a fleet that boots together does, or of the first `--boot-over` seconds, as
//! a fleet whose hosts came up one by one), sends a snapshot of a realistic host
//! (hundreds of processes with command lines, hashes, cgroups and ancestry; listeners;
//! connections), then one report per interval: a small delta (processes started and ended, a
//! connection opened and closed) every `--delta-every`th, a heartbeat otherwise, at intervals
//! jittered by ±10%, as the agent does. A report the collector refuses (413, 429, 503) or cannot take is sent again at the next
//! interval, as the agent's spool would (and at once, once, where its connection died before any
//! answer, as the agent's transport does); a `resync` answer makes the next one a snapshot. Agents
//! are spread over `--sources` loopback addresses (127.0.0.1, .2, ...), since the collector caps
//! connections per address.
//!
//! It measures what the collector gives a fleet: reports accepted per second against those
//! offered, latency (p50, p90, p99, max) of each answer, answers by status, transport errors, and
//! its own CPU (it shares the machine with the collector); with `--collector-pid`, the
//! collector's CPU and largest RSS over the window too. The first `--warmup` (default: one
//! interval: the enrollments and snapshots) is reported apart from the steady window, which
//! ends at `--duration`. Every agent goes on reporting for one more interval after it, unmeasured,
//! so that the window has the whole fleet in it to its last second (an agent that stopped at the
//! end of the window would leave its last interval lighter than the rest).
//!
//! The generator allocates with mimalloc: glibc's malloc, once the fleet's hosts were freed at
//! the end of a run, spent a whole core walking its free lists, and the answers the generator
//! was still waiting for took up to a second longer to be read (a stall of the generator that
//! looked like the collector's).
//!
//! `--trace FILE` writes every report sent, warm-up and window, one per line: the Unix time it
//! was sent (seconds), how long until its answer or error (microseconds), the simulated agent's
//! index, its outcome (an HTTP status or `transport_error`) and whether it was a snapshot and in the window
//! (`snapshot`/`delta`/`heartbeat`, `warmup`/`window`); what a percentile hides (when the slow
//! answers came, to whom, of what) is there.
//!
//! Plain HTTP only: TLS's cost per report is measured on its own (bench/ingest_cost.py).
//!
//! ```text
//! hostwatch-load --server http://127.0.0.1:8443 --secret-file DIR/enroll-secret --agents 1000 \
//!     [--interval 10] [--boot-over SECS] [--duration 120] [--warmup SECS] [--sources 8] [--processes 300] \
//!     [--delta-every 2] [--gzip] [--collector-pid PID[,PID...]] [--json] [--per-agent] [--trace FILE]
//! ```
//!
//! `--per-agent` adds each simulated host's last report the collector took (its hostname, the
//! sequence number, and how many it took over the whole run) to the JSON summary: a test
//! compares it with what the collector stored.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

mod host;

use host::{Host, Rng};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the generator was told to do.
#[derive(Debug, Clone)]
struct Args {
    /// Collectors, agents spread over them in turn (several behind one store).
    servers: Vec<String>,
    secret: String,
    agents: usize,
    interval: Duration,
    /// Agents boot at random moments over this long (default: one interval).
    boot_over: Duration,
    duration: Duration,
    warmup: Duration,
    sources: u8,
    processes: usize,
    delta_every: u64,
    gzip: bool,
    /// Collectors' pids: their CPU summed, their RSS summed.
    collector_pids: Vec<u32>,
    json: bool,
    per_agent: bool,
    trace: Option<String>,
}

impl Args {
    /// The collector agent `index` reports to.
    fn server_of(&self, index: usize) -> &str {
        &self.servers[index % self.servers.len()]
    }
}

const USAGE: &str = "usage: hostwatch-load --server URL[,URL...] --secret-file FILE --agents N [--interval SECS] \
[--boot-over SECS] [--duration SECS] [--warmup SECS] [--sources N] [--processes N] [--delta-every N] [--gzip] \
[--collector-pid PID[,PID...]] [--json] [--per-agent] [--trace FILE]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        servers: Vec::new(),
        secret: String::new(),
        agents: 0,
        interval: Duration::from_secs(10),
        boot_over: Duration::ZERO,
        duration: Duration::from_secs(120),
        warmup: Duration::ZERO,
        sources: 8,
        processes: 300,
        delta_every: 2,
        gzip: false,
        collector_pids: Vec::new(),
        json: false,
        per_agent: false,
        trace: None,
    };
    let (mut warmup, mut boot_over) = (None, None);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String, flag: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--server" => {
                a.servers = value()?.split(',').map(|s| s.trim().trim_end_matches('/').to_owned()).collect()
            }
            "--secret-file" => {
                let path = value()?;
                a.secret = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the enrollment secret {path}: {e}"))?
                    .trim()
                    .to_owned();
            }
            "--agents" => a.agents = number(value()?, &flag)? as usize,
            "--interval" => a.interval = Duration::from_secs(number(value()?, &flag)?.max(1)),
            "--boot-over" => boot_over = Some(Duration::from_secs(number(value()?, &flag)?.max(1))),
            "--duration" => a.duration = Duration::from_secs(number(value()?, &flag)?),
            "--warmup" => warmup = Some(Duration::from_secs(number(value()?, &flag)?)),
            "--sources" => a.sources = number(value()?, &flag)?.clamp(1, 250) as u8,
            "--processes" => a.processes = number(value()?, &flag)?.clamp(1, 5000) as usize,
            "--delta-every" => a.delta_every = number(value()?, &flag)?.max(1),
            "--collector-pid" => {
                for pid in value()?.split(',') {
                    a.collector_pids.push(number(pid.trim().to_owned(), &flag)? as u32);
                }
            }
            "--gzip" => a.gzip = true,
            "--json" => a.json = true,
            "--per-agent" => a.per_agent = true,
            "--trace" => a.trace = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.servers.is_empty() || a.secret.is_empty() || a.agents == 0 {
        return Err(format!("--server, --secret-file and --agents are needed\n{USAGE}"));
    }
    if a.servers.iter().any(|s| !s.starts_with("http://")) {
        return Err("--server must be a plain http:// address (TLS is measured on its own)".to_owned());
    }
    a.boot_over = boot_over.unwrap_or(a.interval);
    a.warmup = warmup.unwrap_or(a.interval.max(a.boot_over));
    if a.duration <= a.warmup {
        return Err(format!(
            "--duration ({:?}) must be longer than the warm-up ({:?})",
            a.duration, a.warmup
        ));
    }
    Ok(a)
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(u16),
    /// No answer: refused, reset, timed out.
    Transport,
}

impl Outcome {
    /// As the summary and the trace name it: the HTTP status, or `transport_error`.
    fn label(self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Transport => "transport_error".to_owned(),
        }
    }
}

/// One report as `--trace` writes it.
#[derive(Debug)]
struct Traced {
    sent: f64,
    micros: u32,
    index: usize,
    outcome: Outcome,
    kind: &'static str,
    window: bool,
}

/// What one agent measured; merged at the end (no lock on the hot path).
#[derive(Debug, Default)]
struct Stats {
    /// Latency in microseconds of each answered report in the steady window.
    latencies: Vec<u32>,
    /// With `--trace`: each report sent (see the module's doc).
    trace: Vec<Traced>,
    outcomes: BTreeMap<Outcome, u64>,
    warmup_outcomes: BTreeMap<Outcome, u64>,
    /// What each transport error was (its innermost cause), warm-up included: how often.
    transport_errors: BTreeMap<String, u64>,
    accepted: u64,
    enroll_failures: u64,
    bytes_sent: u64,
    /// Each host's hostname, the last sequence number the collector took, and how many reports
    /// it took over the whole run (warm-up included).
    hosts: Vec<(String, u64, u64)>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.latencies.extend(o.latencies);
        self.trace.extend(o.trace);
        for (k, v) in o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in o.warmup_outcomes {
            *self.warmup_outcomes.entry(k).or_default() += v;
        }
        for (k, v) in o.transport_errors {
            *self.transport_errors.entry(k).or_default() += v;
        }
        self.accepted += o.accepted;
        self.enroll_failures += o.enroll_failures;
        self.bytes_sent += o.bytes_sent;
        self.hosts.extend(o.hosts);
    }
}

/// Everything the generator shares between agents.
struct Shared {
    args: Args,
    start: Instant,
}

impl Shared {
    /// The end of the measured window.
    fn deadline(&self) -> Instant {
        self.start + self.args.duration
    }
    /// When agents stop: one longest interval (+10% jitter) after the window, so that none has
    /// stopped while it is measured.
    fn stop(&self) -> Instant {
        self.deadline() + self.args.interval.mul_f64(1.1)
    }
    fn in_warmup(&self, at: Instant) -> bool {
        at < self.start + self.args.warmup
    }
}

fn agent_status(args: &Args, started: OffsetDateTime) -> proto::AgentStatus {
    proto::AgentStatus::new("0.0.0-load", args.interval.as_secs() as u32, started)
}

async fn enroll(
    client: &reqwest::Client,
    shared: &Shared,
    host: &Host,
    started: OffsetDateTime,
) -> Result<String, String> {
    let req = proto::EnrollRequest {
        enroll_secret: shared.args.secret.clone(),
        host: host.facts(),
        agent: agent_status(&shared.args, started),
        instance_identity: None,
    };
    let url = format!("{}/api/v1/enroll", shared.args.server_of(host.index));
    // A fleet booting together is refused for a while (enrollment rate limits): try again,
    // within the run.
    let mut wait = Duration::from_millis(500);
    loop {
        match client.post(&url).json(&req).send().await {
            Ok(r) if r.status().is_success() => {
                let body: proto::EnrollResponse =
                    r.json().await.map_err(|e| format!("enroll answer: {e}"))?;
                return Ok(body.node_key);
            }
            Ok(r) if matches!(r.status().as_u16(), 429 | 503) => {}
            Ok(r) => return Err(format!("enroll answered {}", r.status())),
            Err(_) => {}
        }
        if Instant::now() + wait >= shared.deadline() {
            return Err("enrollment never accepted within the run".to_owned());
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

fn body_of(report: &proto::Report, gzip: bool) -> Vec<u8> {
    let json = serde_json::to_vec(report).unwrap_or_default();
    if !gzip {
        return json;
    }
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(&json);
    e.finish().unwrap_or_default()
}

async fn run_agent(index: usize, shared: Arc<Shared>) -> Stats {
    let args = &shared.args;
    let mut stats = Stats::default();
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(args.sources)) as u8));
    // Plain HTTP: no roots to load. Each of thousands of clients loading the system's CA store
    // (reqwest's default verifier) held the generator's one thread for most of the boot.
    let Ok(client) = reqwest::Client::builder()
        .tls_certs_only([])
        .local_address(source)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
    else {
        stats.enroll_failures += 1;
        return stats;
    };
    let mut rng = Rng::new(0xA5A5 ^ index as u64);
    // Boots at a random moment of the first `--boot-over` seconds; its host is made then, not
    // all at once at the start (a fleet's hosts at once held the generator's thread for seconds).
    let first = shared.start + Duration::from_millis(rng.below(args.boot_over.as_millis() as u64));
    tokio::time::sleep_until(first.into()).await;
    let mut host = Host::new(index, host::Shape::load(args.processes));
    let started = OffsetDateTime::now_utc();
    let key = match enroll(&client, &shared, &host, started).await {
        Ok(key) => key,
        Err(_) => {
            stats.enroll_failures += 1;
            return stats;
        }
    };
    let url = format!("{}/api/v1/report", args.server_of(index));
    let session = rng.next() >> 1;
    let mut seq = 0u64;
    let mut want_snapshot = true;
    // A report not taken is sent again as it was at the next interval (the spool's order).
    let mut pending: Option<proto::Report> = None;
    let (mut last_taken, mut taken) = (0u64, 0u64);
    let mut next = Instant::now();
    while next < shared.stop() {
        tokio::time::sleep_until(next.into()).await;
        // The agent's intervals stray by up to ±10% (agent/src/backoff.rs), so that a fleet
        // brought into step (booted at once, or held up together by a busy collector) drifts
        // apart again; a generator without it would keep every burst for ever.
        next += args.interval.mul_f64(0.9 + 0.2 * (rng.below(1 << 20) as f64 / f64::from(1u32 << 20)));
        let report = match pending.take() {
            Some(r) => r,
            None => {
                seq += 1;
                let (snapshot, delta) = if want_snapshot {
                    (Some(host.snapshot()), None)
                } else if seq.is_multiple_of(args.delta_every) {
                    (None, Some(host.delta(OffsetDateTime::now_utc(), 1)))
                } else {
                    (None, None)
                };
                proto::Report {
                    session,
                    seq,
                    sent_at: OffsetDateTime::now_utc(),
                    host: host.facts(),
                    agent: agent_status(args, started),
                    snapshot,
                    delta,
                    lost: 0,
                    goodbye: None,
                }
            }
        };
        let kind = if report.snapshot.is_some() {
            "snapshot"
        } else if report.delta.is_some() {
            "delta"
        } else {
            "heartbeat"
        };
        let body = body_of(&report, args.gzip);
        stats.bytes_sent += body.len() as u64;
        let mut req = client
            .post(&url)
            .bearer_auth(&key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if args.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let sent = Instant::now();
        let sent_at = OffsetDateTime::now_utc();
        // As the agent does (transport.rs): a report whose connection dies before any answer is
        // sent once more at once (the collector closed the kept-alive connection under it).
        let again = req.try_clone();
        let result = match (req.send().await, again) {
            (Err(e), Some(again)) if e.is_request() && !e.is_connect() && !e.is_timeout() => {
                again.send().await
            }
            (result, _) => result,
        };
        let outcome = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                if status == 200 {
                    match r.json::<proto::ReportResponse>().await {
                        Ok(answer) => {
                            want_snapshot = answer.resync;
                            (last_taken, taken) = (report.seq, taken + 1);
                        }
                        Err(_) => pending = Some(report),
                    }
                } else {
                    let _ = r.bytes().await;
                    pending = Some(report);
                }
                Outcome::Status(status)
            }
            Err(e) => {
                pending = Some(report);
                *stats.transport_errors.entry(cause(&e)).or_default() += 1;
                Outcome::Transport
            }
        };
        let took = sent.elapsed();
        let micros = took.as_micros().min(u128::from(u32::MAX)) as u32;
        if args.trace.is_some() && sent < shared.deadline() {
            stats.trace.push(Traced {
                sent: (sent_at.unix_timestamp_nanos() / 1_000_000) as f64 / 1000.0,
                micros,
                index,
                outcome,
                kind,
                window: !shared.in_warmup(sent),
            });
        }
        if shared.in_warmup(sent) {
            *stats.warmup_outcomes.entry(outcome).or_default() += 1;
            continue;
        }
        if sent >= shared.deadline() {
            continue;
        }
        *stats.outcomes.entry(outcome).or_default() += 1;
        if outcome == Outcome::Status(200) {
            stats.accepted += 1;
        }
        if matches!(outcome, Outcome::Status(_)) {
            stats.latencies.push(micros);
        }
    }
    stats.hosts.push((host.facts().hostname, last_taken, taken));
    stats
}

/// A transport error's kind and innermost cause ("timeout: ...", "connect: connection refused").
fn cause(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "answer"
    } else {
        "request"
    };
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    format!("{kind}: {inner}")
}

/// CPU seconds (user + system) and resident bytes of `pid` ("self" for this process).
/// CPU seconds and RSS of several processes, summed; `None` if one is gone.
fn usage(pids: &[String]) -> Option<(f64, u64)> {
    pids.iter().map(|p| usage_of(p)).try_fold((0.0, 0), |(c, r), u| u.map(|(uc, ur)| (c + uc, r + ur)))
}

fn usage_of(pid: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?) as f64 / ticks;
    let rss = fields.get(21)?.parse::<u64>().ok()? * 4096;
    Some((cpu, rss))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hostwatch-load: {e}");
            std::process::exit(2);
        }
    };
    // reqwest's TLS stack wants a process-wide provider even for plain HTTP clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostwatch-load: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let shared = Arc::new(Shared { args: args.clone(), start: Instant::now() });
    let steady_from = shared.start + args.warmup;
    // The collector's CPU and largest RSS over the steady window, and its largest RSS over the
    // warm-up, sampled each second.
    let collector = (!args.collector_pids.is_empty()).then(|| {
        let shared = shared.clone();
        let pids: Vec<String> = args.collector_pids.iter().map(u32::to_string).collect();
        tokio::spawn(async move {
            let pid = pids;
            let mut warmup_rss_max = 0;
            while Instant::now() < steady_from {
                tokio::time::sleep(Duration::from_secs(1).min(steady_from - Instant::now())).await;
                if let Some((_, rss)) = usage(&pid) {
                    warmup_rss_max = warmup_rss_max.max(rss);
                }
            }
            let begin = usage(&pid);
            let mut rss_max = begin.map_or(0, |u| u.1);
            while Instant::now() < shared.deadline() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some((_, rss)) = usage(&pid) {
                    rss_max = rss_max.max(rss);
                }
            }
            let end = usage(&pid);
            (begin.zip(end).map(|(b, e)| e.0 - b.0), rss_max, warmup_rss_max)
        })
    });
    let tasks: Vec<_> = (0..args.agents).map(|i| tokio::spawn(run_agent(i, shared.clone()))).collect();
    let self_begin = {
        tokio::time::sleep_until(steady_from.into()).await;
        usage_of("self")
    };
    let self_end = {
        tokio::time::sleep_until(shared.deadline().into()).await;
        usage_of("self")
    };
    let mut stats = Stats::default();
    let mut crashed = 0;
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(s),
            Err(e) => {
                crashed += 1;
                if crashed == 1 {
                    eprintln!("hostwatch-load: a simulated agent failed: {e}");
                }
            }
        }
    }
    if crashed > 0 {
        eprintln!("hostwatch-load: {crashed} simulated agents failed; the figures are not valid");
        return 1;
    }
    let window = shared.deadline().saturating_duration_since(steady_from).as_secs_f64().max(1e-3);
    let self_cpu = self_begin.zip(self_end).map(|(b, e)| (e.0 - b.0) / window * 100.0);
    if let Some(path) = &args.trace {
        let mut out = String::with_capacity(stats.trace.len() * 32);
        for t in &stats.trace {
            let phase = if t.window { "window" } else { "warmup" };
            let _ = writeln!(
                out,
                "{:.3} {} {} {} {} {phase}",
                t.sent,
                t.micros,
                t.index,
                t.outcome.label(),
                t.kind
            );
        }
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("hostwatch-load: cannot write the trace {path}: {e}");
            return 1;
        }
    }
    let (collector_cpu, collector_rss, warmup_rss) = match collector {
        Some(h) => match h.await {
            Ok((cpu, rss, warm)) => (cpu.map(|c| c / window * 100.0), Some(rss), Some(warm)),
            Err(_) => (None, None, None),
        },
        None => (None, None, None),
    };
    stats.latencies.sort_unstable();
    let l = &stats.latencies;
    let offered = args.agents as f64 / args.interval.as_secs_f64();
    let refused: u64 =
        stats.outcomes.iter().filter(|(k, _)| **k != Outcome::Status(200)).map(|(_, v)| v).sum();
    let outcomes = |m: &BTreeMap<Outcome, u64>| -> BTreeMap<String, u64> {
        m.iter().map(|(k, v)| (k.label(), *v)).collect()
    };
    let mut summary = serde_json::json!({
        "agents": args.agents,
        "interval_secs": args.interval.as_secs(),
        "window_secs": (window * 10.0).round() / 10.0,
        "offered_per_sec": (offered * 10.0).round() / 10.0,
        "accepted_per_sec": ((stats.accepted as f64 / window) * 10.0).round() / 10.0,
        "p50_ms": percentile(l, 0.50),
        "p90_ms": percentile(l, 0.90),
        "p99_ms": percentile(l, 0.99),
        "max_ms": percentile(l, 1.0),
        "not_accepted": refused,
        "outcomes": outcomes(&stats.outcomes),
        "warmup_outcomes": outcomes(&stats.warmup_outcomes),
        "transport_errors": stats.transport_errors,
        "enroll_failures": stats.enroll_failures,
        "mib_sent": (stats.bytes_sent as f64 / f64::from(1 << 20) * 10.0).round() / 10.0,
        "generator_cpu_percent": self_cpu.map(|c| (c * 10.0).round() / 10.0),
        "collector_cpu_percent": collector_cpu.map(|c| (c * 10.0).round() / 10.0),
        "collector_rss_max_mib": collector_rss.map(|r| (r as f64 / f64::from(1 << 20) * 10.0).round() / 10.0),
        "collector_rss_warmup_max_mib": warmup_rss.map(|r| (r as f64 / f64::from(1 << 20) * 10.0).round() / 10.0),
    });
    if args.per_agent {
        summary["per_agent"] = stats
            .hosts
            .iter()
            .map(|(name, last, taken)| {
                (name.clone(), serde_json::json!({ "last_seq": last, "taken": taken }))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{} agents every {} s: offered {:.1}/s, accepted {:.1}/s; p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             not accepted {} {:?}; enroll failures {}; generator CPU {:?} %, collector CPU {:?} %, RSS max {:?} MiB",
            args.agents,
            args.interval.as_secs(),
            offered,
            stats.accepted as f64 / window,
            percentile(l, 0.50),
            percentile(l, 0.90),
            percentile(l, 0.99),
            percentile(l, 1.0),
            refused,
            outcomes(&stats.outcomes),
            stats.enroll_failures,
            summary["generator_cpu_percent"],
            summary["collector_cpu_percent"],
            summary["collector_rss_max_mib"],
        );
    }
    i32::from(stats.enroll_failures > 0 || refused > 0)
}
