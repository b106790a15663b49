//! `hostwatch`: the collector (`serve`) and the command line people and scripts use against it.
//! Data goes to stdout, messages to stderr; any failure exits non-zero.

mod client;
mod output;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use hostwatch_agent::shared::config::Secret;
use hostwatch_agent::shared::logging::{self, LogFormat};
use hostwatch_agent::shared::signals;
use hostwatch_proto::v1 as proto;

use self::client::ApiClient;
use self::output::{OutputFormat, print};
use crate::baseline::{self, BaselineSet, SetError};
use crate::config::{DEFAULT_PATH, ServerConfig};
use crate::dev::{self, DevOptions};
use crate::serve;

/// hostwatch: the collector, and the command line over its API.
#[derive(Debug, Parser)]
#[command(name = "hostwatch", version, about, propagate_version = true)]
pub struct Cli {
    /// The collector's URL.
    #[arg(long, env = "HOSTWATCH_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    /// API token (prefer --token-file or HOSTWATCH_TOKEN_FILE: arguments are visible to other users).
    #[arg(long, env = "HOSTWATCH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the API token.
    #[arg(long, env = "HOSTWATCH_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Trust only the CA certificates in this PEM file for the collector (default: the system's roots).
    #[arg(long, env = "HOSTWATCH_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Send the token over plain http:// to another machine (it crosses the network in clear).
    #[arg(long, env = "HOSTWATCH_ALLOW_INSECURE_HTTP", global = true)]
    allow_insecure_http: bool,
    /// Output format of listings.
    #[arg(long, short = 'o', value_enum, default_value_t, global = true)]
    output: OutputFormat,
    /// Log format on stderr.
    #[arg(long, env = "HOSTWATCH_LOG_FORMAT", value_enum, default_value_t, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector.
    Serve(ServeArgs),
    /// List hosts: id, hostname, workload, tags, status, coverage, last seen, agent version, open findings.
    Hosts {
        /// Include retired hosts.
        #[arg(long)]
        all: bool,
        /// Only these statuses: online, offline, stopped, retired (comma-separated).
        #[arg(long)]
        status: Option<String>,
        /// Only hosts judged as this workload.
        #[arg(long)]
        workload: Option<String>,
        /// Only hosts with this tag, as k=v (repeat for several).
        #[arg(long)]
        tag: Vec<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one host (by id or hostname) with its processes and listeners; `host revoke H`
    /// revokes its node keys. A host named `show` or `revoke`: `host show NAME`, or its id.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Host {
        #[arg(required = true)]
        host: Option<String>,
        #[command(subcommand)]
        action: Option<HostCommand>,
    },
    /// List findings (default: open and acknowledged), most severe first, then the most
    /// recently seen; every one unless --limit.
    Findings {
        /// A host id or hostname.
        #[arg(long)]
        host: Option<String>,
        /// A finding kind, such as unexpected_listener.
        #[arg(long)]
        kind: Option<String>,
        /// open, acknowledged, resolved, a comma-separated list, or all.
        #[arg(long)]
        status: Option<String>,
        /// This severity or worse: info, low, medium, high, critical.
        #[arg(long)]
        severity: Option<String>,
        /// Hosts judged as this workload.
        #[arg(long)]
        workload: Option<String>,
        /// Seen within this long: 24h.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Processes across the fleet (or one host), by host and pid; every one unless --limit.
    Ps {
        #[arg(long)]
        host: Option<String>,
        /// Exact process name.
        #[arg(long)]
        name: Option<String>,
        /// User name or uid.
        #[arg(long)]
        user: Option<String>,
        /// The executable's SHA-256.
        #[arg(long)]
        sha256: Option<String>,
        /// The executable's path, a glob: /tmp/*, */xmrig.
        #[arg(long)]
        exe: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Listening sockets across the fleet (or one host); every one unless --limit.
    Ports {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// The bound address: 0.0.0.0, ::, 127.0.0.1.
        #[arg(long)]
        address: Option<String>,
        /// tcp or udp.
        #[arg(long)]
        protocol: Option<String>,
        /// The owning executable, a glob.
        #[arg(long)]
        exe: Option<String>,
        /// Only services the agents' probes found answering without credentials (to anyone, or
        /// to their own host's clients), with what answered.
        #[arg(long)]
        unauthenticated: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Established connections across the fleet (or one host); every one unless --limit.
    Conns {
        #[arg(long)]
        host: Option<String>,
        /// The remote address, or a CIDR block: 10.0.0.0/8.
        #[arg(long)]
        remote: Option<String>,
        /// Remote port.
        #[arg(long)]
        port: Option<u16>,
        /// inbound or outbound.
        #[arg(long)]
        direction: Option<String>,
        #[arg(long)]
        protocol: Option<String>,
        /// The owning executable, a glob.
        #[arg(long)]
        exe: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Changes to watched files, newest first.
    Files {
        #[command(flatten)]
        window: HistoryArgs,
        /// Paths matching this glob (`*` matches any characters, `/` too): /etc/*, */authorized_keys.
        #[arg(long)]
        path: Option<String>,
        /// The latest state of each changed path instead of the changes.
        #[arg(long)]
        current: bool,
    },
    /// What started and ended: processes (exec, exit) or sockets (open, close), newest first.
    History {
        #[command(subcommand)]
        what: HistoryCommand,
    },
    /// Manage baselines.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Acknowledge a finding (analyst): a state finding stays acknowledged while its item
    /// persists; a file change until the path changes again.
    Ack {
        id: i64,
        /// Why it is fine, for whoever looks next.
        #[arg(long)]
        note: Option<String>,
    },
    /// Maintenance windows: findings are still recorded, marked silenced, and not alerted.
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// API tokens for people and tools (admin): each shown once, at creation; stored hashed.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enroll secrets agents enroll with (admin): each shown once, at creation; stored hashed.
    /// Several may be active at once, for rotation.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Read-only SQL over the views hosts, processes, listeners, connections, files,
    /// file_changes, process_events, socket_events and findings (analyst; audited). One
    /// statement; docs/queries.md has examples.
    Query {
        /// One SELECT (or WITH … SELECT) statement.
        sql: String,
    },
    /// Who created or revoked a credential, enrolled a host, acknowledged, applied a baseline,
    /// and when (admin); newest first.
    Audit {
        /// How far back, as 24h or 30d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (default 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Show the host (for a host whose name is a subcommand's).
    Show { host: String },
    /// Revoke the host's node keys at once (admin): its agent is refused from its next report and
    /// enrolls again, as a new host, only with an enroll secret that works.
    Revoke { host: String },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints it on stdout (the one time it is shown).
    Create {
        /// Who or what holds it.
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["reader", "analyst", "admin"])]
        role: String,
        /// Stops working after this long, as 90d or 12h; default: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// Every token: id, name, role, state (active, expired, revoked), times. Never the token.
    List,
    /// Stop a token working, at once.
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Create an enroll secret; prints it on stdout (the one time it is shown).
    Create {
        /// What it is for.
        #[arg(long, default_value = "enroll")]
        name: String,
        /// Tags every host it enrolls carries whatever the host reports, as k=v[,k=v].
        #[arg(long)]
        tags: Option<String>,
        /// Stops enrolling after this long, as 7d; default: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// Every enroll secret: id, name, tags, state, hosts enrolled, times. Never the secret.
    List,
    /// Stop a secret enrolling hosts, at once (hosts it enrolled keep their node keys).
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
enum SilenceCommand {
    /// Silence one host, or every host a selector picks, from now (analyst).
    Create {
        /// A host id or hostname.
        #[arg(long, conflicts_with = "selector", required_unless_present = "selector")]
        host: Option<String>,
        /// Host tags, as k=v[,k=v].
        #[arg(long)]
        selector: Option<String>,
        /// How long, as 30m or 2h.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        reason: String,
    },
    /// The silences in force or to come.
    List,
}

#[derive(Debug, Subcommand)]
enum HistoryCommand {
    /// Processes that started or ended.
    Processes {
        #[command(flatten)]
        window: HistoryArgs,
        /// Exact process name.
        #[arg(long)]
        name: Option<String>,
        /// The executable's SHA-256.
        #[arg(long)]
        sha256: Option<String>,
        /// The executable's path, a glob.
        #[arg(long)]
        exe: Option<String>,
    },
    /// Listeners and connections that opened or closed.
    Sockets {
        #[command(flatten)]
        window: HistoryArgs,
        /// Connections to this address or CIDR block: 10.0.0.0/8.
        #[arg(long)]
        remote: Option<String>,
        /// Connections to this remote port, and listeners on this local one.
        #[arg(long)]
        port: Option<u16>,
        /// The owning executable, a glob.
        #[arg(long)]
        exe: Option<String>,
    },
}

/// A history listing's window and how much of it: newest first.
#[derive(Debug, Args)]
struct HistoryArgs {
    #[arg(long)]
    host: Option<String>,
    /// How far back, as 15m or 24h.
    #[arg(long)]
    since: Option<String>,
    /// At most this many rows, newest first (default 1000; when more remain, stderr says how to
    /// go on).
    #[arg(long, default_value_t = 1000)]
    limit: u64,
    /// Go on from where a listing stopped (the cursor it gave).
    #[arg(long)]
    cursor: Option<String>,
}

/// How much of a state listing: every row by default.
#[derive(Debug, Args)]
struct PageArgs {
    /// At most this many rows (when more remain, stderr says how to go on).
    #[arg(long)]
    limit: Option<u64>,
    /// Go on from where a listing stopped (the cursor it gave).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file [default: /etc/hostwatch/server.toml, if it exists]; not read with --dev.
    #[arg(long, env = "HOSTWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Local mode: embedded store in --data-dir, an in-process agent watching this machine.
    #[arg(long)]
    dev: bool,
    /// Data directory of --dev.
    #[arg(long, requires = "dev", default_value = "hostwatch-data")]
    data_dir: PathBuf,
    /// Listen address of --dev.
    #[arg(long, requires = "dev", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Report interval of --dev's agent.
    #[arg(long, requires = "dev", default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Check the configuration and exit: 0 when it loads, 78 (naming what is wrong) when not.
    #[arg(long, conflicts_with = "dev")]
    check: bool,
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// Store or replace a baseline on the collector (admin).
    Apply { file: PathBuf },
    /// List the collector's baselines.
    List,
    /// Print (TOML on stdout) a baseline that explains what the hosts run, learned by the
    /// collector: review it, then `baseline apply` it.
    Learn {
        /// One host (id or hostname): the baseline selects its tags.
        #[arg(long, conflicts_with = "selector", required_unless_present = "selector")]
        host: Option<String>,
        /// Every host whose tags hold these, as k=v[,k=v].
        #[arg(long)]
        selector: Option<String>,
        /// Also what they ran in this window, as 24h or 7d; default: what runs now.
        #[arg(long)]
        since: Option<String>,
        /// The baseline's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Check baseline files without a collector: syntax, rules, and includes among the files of
    /// their directories.
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// A credential just created: JSON whole, or else the value alone on stdout (for a file or a
/// secret store) and what it is on stderr.
fn shown_once<T: serde::Serialize>(
    created: &T,
    value: &str,
    name: &str,
    id: i64,
    expires_at: Option<time::OffsetDateTime>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        println!("{}", output::json(created)?);
        return Ok(());
    }
    println!("{value}");
    let until = expires_at
        .map_or_else(|| "until revoked".to_owned(), |t| format!("until {}", proto::timestamp::format(t)));
    eprintln!("created {id} ({}), valid {until}; it is shown this once", output::safe(name, 80));
    Ok(())
}

/// Exit code for a configuration the collector refuses (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// The `hostwatch` binary.
pub fn main() -> ExitCode {
    // `serve --dev` runs the agent in this process, and the agent its eBPF loader as this binary.
    if let Some(code) = dev::agent_helper() {
        return code;
    }
    let cli = Cli::parse();
    let _log = logging::init(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hostwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Baseline(BaselineCommand::Lint { files }) = &cli.command {
        return Ok(if lint(files) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if let Command::Serve(args) = &cli.command {
        return serve_main(args);
    }
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(Secret::new(t.trim())),
        (None, Some(p)) => Some(Secret::new(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the token file {}", p.display()))?
                .trim(),
        )),
        (None, None) => None,
    };
    let client = ApiClient::new(&cli.server, token, cli.ca_cert.as_deref(), cli.allow_insecure_http)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(client_command(&client, cli.command, cli.output))?;
    Ok(ExitCode::SUCCESS)
}

/// Large buffers (report bodies, inflated gzip, decoded snapshots) go back to the system when
/// freed. By default glibc raises its mmap threshold to the size of each large block freed (up
/// to 32 MiB), after which such blocks come from per-thread arenas that keep them: a burst of
/// large bodies left the collector at its peak for good (+150 MiB after a minute of gzip bombs
/// against +30 MiB of bodies actually held; BENCHMARKS.md, "20 agents while each attack runs").
/// A fixed threshold of 1 MiB maps every larger block on its own.
#[cfg(target_env = "gnu")]
fn return_large_blocks() {
    // SAFETY: mallopt only sets a parameter of the allocator; it is called before the runtime
    // starts any thread, and M_MMAP_THRESHOLD with 1 MiB is within glibc's documented range.
    #[allow(unsafe_code)]
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    if set != 1 {
        tracing::warn!("cannot set the allocator's mmap threshold; large freed buffers may stay resident");
    }
}

#[cfg(not(target_env = "gnu"))]
fn return_large_blocks() {}

fn serve_main(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    return_large_blocks();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    if !args.check {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "hostwatch collector starting");
    }
    hostwatch_agent::shared::tls::install_tls_provider();
    if args.dev {
        if let Some(c) = &args.config {
            tracing::warn!(config = %c.display(), "--dev does not read a configuration file; ignoring it");
        }
        let opts =
            DevOptions { data_dir: args.data_dir.clone(), listen: args.listen, interval: args.interval };
        let result = rt.block_on(async {
            dev::run(opts, signals::cancel_on_signal().context("cannot watch for SIGTERM and SIGINT")?).await
        });
        return start_result(result);
    }
    let default = Path::new(DEFAULT_PATH);
    let path = args.config.as_deref().or(default.exists().then_some(default));
    let loaded = match ServerConfig::load(path, hostwatch_agent::shared::config::env::process_env()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hostwatch: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if args.check {
        match path {
            Some(p) => println!("{}: configuration OK", p.display()),
            None => println!("no configuration file: the defaults and HOSTWATCH_* variables are OK"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let result = rt.block_on(async {
        serve::run(loaded.config, signals::cancel_on_signal().context("cannot watch for SIGTERM and SIGINT")?)
            .await
    });
    start_result(result)
}

/// The collector's exit: 78 where configuration stopped it (restarting cannot help), else 1.
fn start_result(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<serve::ConfigProblem>().is_some() => {
            eprintln!("hostwatch: {e:#}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(e) => Err(e),
    }
}

async fn client_command(client: &ApiClient, command: Command, format: OutputFormat) -> anyhow::Result<()> {
    match command {
        Command::Hosts { all, status, workload, tag, page } => {
            let tag = (!tag.is_empty()).then(|| tag.join(","));
            let q = query([
                ("all", all.then(|| "true".to_owned())),
                ("status", status),
                ("workload", workload),
                ("tag", tag),
            ]);
            list::<proto::Host>(client, proto::HOSTS_PATH, q, page.limit, page.cursor, format).await
        }
        Command::Host { action: Some(HostCommand::Revoke { host }), .. } => {
            let r: proto::HostRevoked = client
                .post(
                    &format!("{}/{}/revoke", proto::HOSTS_PATH, encode_segment(&host)),
                    &serde_json::json!({}),
                )
                .await?;
            if format == OutputFormat::Json {
                println!("{}", output::json(&r)?);
            } else {
                println!(
                    "host {} ({}): {} node key(s) revoked",
                    r.host_id,
                    output::safe(&r.hostname, 80),
                    r.keys_revoked
                );
            }
            Ok(())
        }
        Command::Host { host, action } => {
            let host = match action {
                Some(HostCommand::Show { host }) => host,
                _ => host.context("name a host")?,
            };
            let d: proto::HostDetail =
                client.get(&format!("{}/{}", proto::HOSTS_PATH, encode_segment(&host)), &[]).await?;
            if format == OutputFormat::Json {
                println!("{}", output::json(&d)?);
                return Ok(());
            }
            print(std::slice::from_ref(&d.host), format)?;
            if !d.reported_tags.is_empty() {
                let tags: Vec<String> = d
                    .reported_tags
                    .iter()
                    .map(|(k, v)| format!("{}={}", output::safe(k, 60), output::safe(v, 100)))
                    .collect();
                println!("\nreported tags (not all judged by; see [tags] from_agents): {}", tags.join(","));
            }
            if let Some(s) = &d.agent_stats {
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                println!(
                    "\nagent: execs via {}{} ({} seen, {} unread, {} overruns); sockets via {}; spool {} reports ({:.1} MiB){}",
                    output::safe(&s.exec_source, 40),
                    s.exec_source_why
                        .as_deref()
                        .map(|w| format!(" ({})", output::safe(w, 120)))
                        .unwrap_or_default(),
                    s.exec_events,
                    s.exec_read_misses,
                    s.events_lost,
                    output::safe(&s.socket_reader, 40),
                    s.spool_reports,
                    mib(s.spool_bytes),
                    match (s.rss_bytes, s.cpu_seconds) {
                        (Some(r), Some(c)) => format!("; rss {:.1} MiB, cpu {c:.1} s", mib(r)),
                        _ => String::new(),
                    }
                );
                if let Some(source) = &s.connection_source {
                    println!(
                        "connections via {}{} ({} events, {} dropped by the kernel's ring)",
                        output::safe(source, 40),
                        s.connection_source_why
                            .as_deref()
                            .map(|w| format!(
                                " ({}: connections and listeners shorter than a scan are not seen)",
                                output::safe(w, 200)
                            ))
                            .unwrap_or_default(),
                        s.socket_events,
                        s.socket_events_dropped,
                    );
                }
            }
            println!();
            print(&d.listeners, format)?;
            println!();
            print(&d.connections, format)?;
            println!();
            print(&d.processes, format)
        }
        Command::Ack { id, note } => {
            let f: proto::Finding =
                client.post(&format!("{}/{id}/ack", proto::FINDINGS_PATH), &proto::Ack { note }).await?;
            print(&[f], format)
        }
        Command::Silence(SilenceCommand::Create { host, selector, duration, reason }) => {
            let selector = selector
                .as_deref()
                .map(hostwatch_agent::shared::config::env::pairs)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--selector: {e}"))?;
            let req = proto::CreateSilence { host, selector, seconds: duration.as_secs().max(1), reason };
            let s: proto::Silence = client.post(proto::SILENCES_PATH, &req).await?;
            print(&[s], format)
        }
        Command::Token(TokenCommand::Create { name, role, expires }) => {
            let req = proto::CreateToken { name, role, expires_in_secs: expires.map(|d| d.as_secs().max(1)) };
            let created: proto::CreatedToken = client.post(proto::TOKENS_PATH, &req).await?;
            shown_once(
                &created,
                &created.token,
                &created.info.name,
                created.info.id,
                created.info.expires_at,
                format,
            )
        }
        Command::Token(TokenCommand::List) => {
            let list: Vec<proto::TokenInfo> = client.get(proto::TOKENS_PATH, &[]).await?;
            print(&list, format)
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let t: proto::TokenInfo =
                client.post(&format!("{}/{id}/revoke", proto::TOKENS_PATH), &serde_json::json!({})).await?;
            print(&[t], format)
        }
        Command::Secret(SecretCommand::Create { name, tags, expires }) => {
            let tags = tags
                .as_deref()
                .map(hostwatch_agent::shared::config::env::pairs)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--tags: {e}"))?
                .unwrap_or_default();
            let req =
                proto::CreateSecret { name, tags, expires_in_secs: expires.map(|d| d.as_secs().max(1)) };
            let created: proto::CreatedSecret = client.post(proto::SECRETS_PATH, &req).await?;
            shown_once(
                &created,
                &created.secret,
                &created.info.name,
                created.info.id,
                created.info.expires_at,
                format,
            )
        }
        Command::Secret(SecretCommand::List) => {
            let list: Vec<proto::SecretInfo> = client.get(proto::SECRETS_PATH, &[]).await?;
            print(&list, format)
        }
        Command::Secret(SecretCommand::Revoke { id }) => {
            let s: proto::SecretInfo =
                client.post(&format!("{}/{id}/revoke", proto::SECRETS_PATH), &serde_json::json!({})).await?;
            print(&[s], format)
        }
        Command::Audit { since, limit } => {
            let q = query([("since", since), ("limit", limit.map(|l| l.to_string()))]);
            let rows: Vec<proto::AuditEntry> = client.get(proto::AUDIT_PATH, &q).await?;
            print(&rows, format)
        }
        Command::Query { sql } => {
            let r: proto::QueryResult = client.post(proto::QUERY_PATH, &proto::QueryRequest { sql }).await?;
            output::print_rows(&r.columns, &r.rows, format)?;
            if r.truncated {
                eprintln!(
                    "hostwatch: the answer was cut at {} rows (the collector's [query] max_rows or its size bound): narrow the query, or page it with a WHERE on a key",
                    r.rows.len()
                );
            }
            Ok(())
        }
        Command::Silence(SilenceCommand::List) => {
            let list: Vec<proto::Silence> = client.get(proto::SILENCES_PATH, &[]).await?;
            print(&list, format)
        }
        Command::Findings { host, kind, status, severity, workload, since, page } => {
            let q = query([
                ("host", host),
                ("kind", kind),
                ("status", status),
                ("severity", severity),
                ("workload", workload),
                ("since", since),
            ]);
            list::<proto::Finding>(client, proto::FINDINGS_PATH, q, page.limit, page.cursor, format).await
        }
        Command::Ps { host, name, user, sha256, exe, page } => {
            let q = query([("host", host), ("name", name), ("user", user), ("sha256", sha256), ("exe", exe)]);
            list::<proto::Located<proto::Process>>(
                client,
                proto::PROCESSES_PATH,
                q,
                page.limit,
                page.cursor,
                format,
            )
            .await
        }
        Command::Ports { host, port, address, protocol, exe, unauthenticated, page } => {
            let q = query([
                ("host", host),
                ("port", port.map(|p| p.to_string())),
                ("address", address),
                ("protocol", protocol),
                ("exe", exe),
                ("unauthenticated", unauthenticated.then(|| "true".to_owned())),
            ]);
            list::<proto::Located<proto::Listener>>(
                client,
                proto::LISTENERS_PATH,
                q,
                page.limit,
                page.cursor,
                format,
            )
            .await
        }
        Command::Conns { host, remote, port, direction, protocol, exe, page } => {
            let q = query([
                ("host", host),
                ("remote", remote),
                ("port", port.map(|p| p.to_string())),
                ("direction", direction),
                ("protocol", protocol),
                ("exe", exe),
            ]);
            list::<proto::Located<proto::Connection>>(
                client,
                proto::CONNECTIONS_PATH,
                q,
                page.limit,
                page.cursor,
                format,
            )
            .await
        }
        Command::History { what: HistoryCommand::Processes { window, name, sha256, exe } } => {
            let q = query([
                ("host", window.host),
                ("since", window.since),
                ("name", name),
                ("sha256", sha256),
                ("exe", exe),
            ]);
            list::<proto::ProcessEvent>(
                client,
                proto::PROCESS_HISTORY_PATH,
                q,
                Some(window.limit),
                window.cursor,
                format,
            )
            .await
        }
        Command::Files { window, path, current } => {
            let q = query([("host", window.host), ("since", window.since), ("path", path)]);
            if current {
                list::<proto::FileRecord>(
                    client,
                    proto::CURRENT_FILES_PATH,
                    q,
                    Some(window.limit),
                    window.cursor,
                    format,
                )
                .await
            } else {
                list::<proto::FileEvent>(
                    client,
                    proto::FILES_PATH,
                    q,
                    Some(window.limit),
                    window.cursor,
                    format,
                )
                .await
            }
        }
        Command::History { what: HistoryCommand::Sockets { window, remote, port, exe } } => {
            let q = query([
                ("host", window.host),
                ("since", window.since),
                ("remote", remote),
                ("port", port.map(|p| p.to_string())),
                ("exe", exe),
            ]);
            list::<proto::SocketEvent>(
                client,
                proto::SOCKET_HISTORY_PATH,
                q,
                Some(window.limit),
                window.cursor,
                format,
            )
            .await
        }
        Command::Baseline(BaselineCommand::List) => {
            let list: Vec<proto::BaselineSummary> = client.get(proto::BASELINES_PATH, &[]).await?;
            print(&list, format)
        }
        Command::Baseline(BaselineCommand::Apply { file }) => {
            let source =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // Refuse locally what the collector would refuse, with the same message.
            baseline::parse(&file.display().to_string(), &source).map_err(|e| anyhow::anyhow!("{e}"))?;
            let req = proto::ApplyBaseline { source, file: Some(file.display().to_string()) };
            let applied: proto::BaselineSummary = client.post(proto::BASELINES_PATH, &req).await?;
            for w in &applied.warnings {
                eprintln!("{w}");
            }
            print(&[applied], format)
        }
        Command::Baseline(BaselineCommand::Learn { host, selector, since, name }) => {
            let q = query([("host", host), ("selector", selector), ("since", since), ("name", name)]);
            let learned: proto::LearnedBaseline = client.get(proto::LEARN_PATH, &q).await?;
            // Hostnames come from agents: quoted, so none can write to the terminal.
            let hosts: Vec<String> = learned.hosts.iter().map(|h| format!("{h:?}")).collect();
            eprintln!("learned {:?} from {} host(s): {}", learned.name, hosts.len(), hosts.join(", "));
            print!("{}", learned.source);
            Ok(())
        }
        Command::Baseline(BaselineCommand::Lint { .. }) | Command::Serve(_) => bail!("not a client command"),
    }
}

/// Rows asked for in one page of a listing.
const PAGE: u64 = 5_000;

/// A listing, page after page until its end or `limit` rows, printed as the pages come (see
/// [`output::Stream`]); when rows remain beyond `limit`, stderr says how to go on.
async fn list<T>(
    client: &ApiClient,
    path: &str,
    q: Vec<(&'static str, String)>,
    limit: Option<u64>,
    mut cursor: Option<String>,
    format: OutputFormat,
) -> anyhow::Result<()>
where
    T: output::Tabular + serde::Serialize + serde::de::DeserializeOwned,
{
    if limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let mut out = output::Stream::<T>::new(format);
    loop {
        let want = limit.map_or(PAGE, |l| (l - out.len() as u64).min(PAGE));
        let mut page_q = q.clone();
        page_q.push(("limit", want.to_string()));
        if let Some(c) = &cursor {
            page_q.push(("cursor", c.clone()));
        }
        let (items, next) = client.get_page::<T>(path, &page_q).await?;
        out.push(&items)?;
        cursor = next;
        if cursor.is_none() || out.closed || limit.is_some_and(|l| out.len() as u64 >= l) {
            break;
        }
    }
    let (shown, closed) = (out.len(), out.closed);
    out.finish()?;
    if let Some(c) = cursor
        && !closed
    {
        eprintln!(
            "hostwatch: {shown} rows shown, and more remain: add --cursor {c} to go on (or raise --limit)"
        );
    }
    Ok(())
}

/// Query parameters, leaving out those not given.
fn query<const N: usize>(params: [(&'static str, Option<String>); N]) -> Vec<(&'static str, String)> {
    params.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
}

/// Percent-encodes a path segment (a hostname could hold anything).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Lints files; prints `FILE: ok` on stdout per good file and each problem on stderr. Includes are
/// resolved among the `*.toml` files of each file's directory; one not found there is a warning,
/// as it may already be on the collector.
fn lint(files: &[PathBuf]) -> bool {
    let mut ok = true;
    let mut good = Vec::new();
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f)
            .map_err(|e| format!("{name}: cannot read: {e}"))
            .and_then(|src| baseline::parse(&name, &src).map_err(|e| e.to_string()))
        {
            Ok(b) => {
                for w in baseline::warnings(&b, &name, time::OffsetDateTime::now_utc()) {
                    eprintln!("{w}");
                }
                good.push((f.clone(), b))
            }
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    for (f, b) in &good {
        let mut set = BaselineSet::default();
        if let Some(dir) = f.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for p in entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            {
                if let Ok(src) = std::fs::read_to_string(&p)
                    && let Ok(sib) = baseline::parse(&p.display().to_string(), &src)
                {
                    set.insert(sib);
                }
            }
        }
        set.insert(b.clone());
        match set.workload(&b.name) {
            Ok(_) => {}
            Err(e @ SetError::MissingInclude { .. }) => {
                eprintln!("{}: warning: {e}; apply it to the collector first", f.display())
            }
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                ok = false;
                continue;
            }
        }
        let what = match &b.selector {
            None => "library".to_owned(),
            Some(s) if s.is_empty() => "selects every host".to_owned(),
            Some(s) => {
                format!("selects {}", s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            }
        };
        println!("{}: ok (baseline `{}`, {} rules, {what})", f.display(), b.name, b.rule_count());
    }
    ok
}
