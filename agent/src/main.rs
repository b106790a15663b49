//! `hostwatch-agent`: parses arguments, sets up logging, loads the configuration and runs the
//! agent until SIGTERM or SIGINT. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hostwatch_agent::AgentError;
use hostwatch_agent::config::{AgentConfig, DEFAULT_PATH};
use hostwatch_agent::shared::logging::{self, LogFormat};
use hostwatch_agent::shared::signals;
use hostwatch_agent::{cloud, collect, snapshot};

/// The hostwatch host agent: reports processes and listening sockets to a hostwatch collector.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file [default: /etc/hostwatch/agent.toml, if it exists].
    #[arg(long, env = "HOSTWATCH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "HOSTWATCH_LOG_FORMAT", value_enum, default_value_t, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print one snapshot of this host, exactly as it would be sent, and send nothing.
    Snapshot {
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Before baking an image: remove this agent's identity (node key, host id, generated
    /// machine id) and its spooled reports, keeping the file manifest, so that every instance
    /// booted from the image enrolls as itself. Run with the agent stopped.
    ResetIdentity,
    /// Whether the agent is configured to run, for systemd's ExecCondition: exit 0 when the
    /// configuration loads, names a collector, and the agent can enroll (an enroll secret, or a
    /// node key already in state_dir); 1 when no collector is named yet (an image built with
    /// the package installed: the unit is skipped, not failed); 255 when the configuration is
    /// broken (the unit fails and the reason is in the journal).
    Check,
    /// Last in an image build, after `reset-identity`: record every watched file (hashed) as the
    /// image's golden manifest. An instance booted from the image reports each file that differs
    /// from it as file_changed with origin `bake`, once, at its first start.
    Bake,
    /// Can this agent do its job here? Checks the configuration, the collector (reachable, TLS
    /// verified), enrollment, privileges, the exec and socket sources, inotify limits and the
    /// cloud's metadata, each with a verdict and the fix. Changes nothing. Exits 0 when nothing
    /// failed (warnings allowed), 1 otherwise.
    Doctor,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Json,
}

/// Exit code for a configuration the agent refuses (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// `check`: no collector named yet. ExecCondition skips the unit for 1 to 254.
const CHECK_NOT_CONFIGURED: u8 = 1;
/// `check`: the configuration cannot work. ExecCondition fails the unit for 255.
const CHECK_BROKEN: u8 = 255;

fn main() -> ExitCode {
    // The eBPF loader's helper process, before anything else is set up (see its module).
    if let Some(code) = collect::sockets::loader::helper_main() {
        return code;
    }
    let cli = Cli::parse();
    let _log = logging::init(cli.log_format);
    let checking = matches!(cli.command, Some(Command::Check));
    let loaded = match load_config(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) if matches!(cli.command, Some(Command::Doctor)) => {
            println!("FAIL  configuration  {e:#}");
            println!("      fix: correct the configuration file or the HOSTWATCH_* variable named above");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("hostwatch-agent: {e:#}");
            return ExitCode::from(if checking { CHECK_BROKEN } else { EXIT_CONFIG });
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(loaded.config),
        Command::Snapshot { output: Output::Json } => print_snapshot(&loaded.config),
        Command::ResetIdentity => reset_identity(&loaded.config),
        Command::Check => return check(&loaded.config),
        Command::Bake => bake(&loaded.config),
        Command::Doctor => return doctor(&loaded.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostwatch-agent: {e:#}");
            // Missing settings are configuration: restarting (systemd) cannot help.
            let config = matches!(
                e.downcast_ref::<AgentError>(),
                Some(
                    AgentError::NoServer
                        | AgentError::NoEnrollSecret
                        | AgentError::Client(hostwatch_agent::transport::TransportError::Tls { .. })
                )
            );
            ExitCode::from(if config { EXIT_CONFIG } else { 1 })
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<hostwatch_agent::config::Loaded> {
    let default = std::path::Path::new(DEFAULT_PATH);
    let path = match path {
        Some(p) => Some(p),
        None if default.exists() => Some(default),
        None => None,
    };
    Ok(AgentConfig::load(path, hostwatch_agent::shared::config::env::process_env())?)
}

fn run(config: AgentConfig) -> anyhow::Result<()> {
    // One thread: the agent waits most of the time, and scans run on the blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let shutdown = signals::cancel_on_signal().context("cannot watch for SIGTERM and SIGINT")?;
        hostwatch_agent::run(config, shutdown).await.context("agent failed")
    })
}

fn check(config: &AgentConfig) -> ExitCode {
    let Some(server) = &config.server else {
        println!(
            "not configured: no collector named (set `server` or HOSTWATCH_SERVER); the agent is not started"
        );
        return ExitCode::from(CHECK_NOT_CONFIGURED);
    };
    if let Err(e) = hostwatch_agent::transport::CollectorClient::new(server.clone(), &config.tls) {
        eprintln!("hostwatch-agent: {e}");
        return ExitCode::from(CHECK_BROKEN);
    }
    let enrolled = config.state_dir.join(hostwatch_agent::identity::NODE_KEY).exists();
    if config.enroll_secret.is_none() && !enrolled {
        eprintln!("hostwatch-agent: {}", AgentError::NoEnrollSecret);
        return ExitCode::from(CHECK_BROKEN);
    }
    println!("ready: reports to {server}");
    ExitCode::SUCCESS
}

fn doctor(config: &AgentConfig) -> ExitCode {
    use hostwatch_agent::doctor::{self, Verdict};
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostwatch-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut checks = vec![doctor::Check {
        name: "configuration",
        verdict: Verdict::Ok,
        detail: "loads".to_owned(),
        fix: None,
    }];
    checks.extend(rt.block_on(doctor::run(config)));
    for c in &checks {
        println!("{:<5} {:<14} {}", c.verdict.as_str(), c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("      fix: {fix}");
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    if failed == 0 {
        println!("the agent can do its job here ({warned} warning(s))");
        ExitCode::SUCCESS
    } else {
        println!("the agent cannot do its job here: {failed} check(s) failed");
        ExitCode::FAILURE
    }
}

fn bake(config: &AgentConfig) -> anyhow::Result<()> {
    let state = hostwatch_agent::identity::StateDir::open(&config.state_dir)?;
    let root = collect::HostRoot::new(&config.host_root);
    let machine_id = collect::host::read(&root).machine_id.unwrap_or_default();
    let baked = hostwatch_agent::files::bake::bake(&config.files, state.path(), &machine_id)?;
    println!(
        "golden manifest: {} paths, {} MiB hashed in {:.1} s, written to {}",
        baked.entries,
        baked.hashed_bytes >> 20,
        baked.took.as_secs_f64(),
        baked.manifest_path.display()
    );
    for m in &baked.missing {
        println!("not present (recorded as absent): {}", m.display());
    }
    if baked.unreadable > 0 {
        println!("unreadable: {} paths (their content is not in the manifest)", baked.unreadable);
    }
    Ok(())
}

fn reset_identity(config: &AgentConfig) -> anyhow::Result<()> {
    let state = hostwatch_agent::identity::StateDir::open(&config.state_dir)?;
    let removed = state.reset()?;
    if removed.is_empty() {
        println!("no identity in {}: nothing to reset", config.state_dir.display());
    }
    for p in &removed {
        println!("removed {}", p.display());
    }
    Ok(())
}

fn print_snapshot(config: &AgentConfig) -> anyhow::Result<()> {
    let root = collect::HostRoot::new(&config.host_root);
    let cloud = cloud_facts(config, &root)?;
    let obs = snapshot::Observer::new(root, collect::sockets::Reader::SockDiag, config.redactor.clone())
        .with_packages(config.files.databases())
        .observe();
    let machine_id = obs.host.machine_id.clone().unwrap_or_else(|| "unknown".to_owned());
    let now = time::OffsetDateTime::now_utc();
    let report = hostwatch_proto::v1::Report {
        session: 0,
        seq: 0,
        sent_at: now,
        host: obs.host_facts(&machine_id, &config.tags, cloud.as_ref()),
        agent: snapshot::agent_status(config.interval, now, obs.coverage, None),
        snapshot: Some(obs.snapshot),
        delta: None,
        lost: 0,
        goodbye: None,
    };
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, &report)
        .map_err(std::io::Error::from)
        .and_then(|()| std::io::Write::write_all(&mut out, b"\n"));
    match written {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the snapshot"),
    }
}

/// The cloud's word on this instance, waited for as long as the agent waits before its first
/// report; a failure is a warning, not an error: the snapshot is still worth printing.
fn cloud_facts(
    config: &AgentConfig,
    root: &collect::HostRoot,
) -> anyhow::Result<Option<hostwatch_proto::v1::CloudFacts>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    // The timer must be made inside the runtime.
    let detected = rt.block_on(async {
        tokio::time::timeout(cloud::START_WAIT, cloud::detect(&config.cloud, &root.sys)).await
    });
    Ok(match detected {
        Ok(cloud::Detection::Found(i)) => Some(i.facts),
        Ok(cloud::Detection::NotCloud) => None,
        Ok(cloud::Detection::Failed(why)) => {
            tracing::warn!(problem = %why, "cannot read the cloud's instance metadata");
            None
        }
        Err(_) => {
            tracing::warn!(
                waited = %humantime::format_duration(cloud::START_WAIT),
                "the cloud's metadata service did not answer in time"
            );
            None
        }
    })
}
