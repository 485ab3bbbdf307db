//! The `resetguard` binary: parses the command line, loads and validates configuration, installs
//! logging, and hands over to the library (`app::run`, `replay::replay`, `demo::run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use resetguard::config::{Settings, DEFAULT_SEED};
use resetguard::core::event::parse_rfc3339_ms;
use resetguard::core::Policy;

/// mimalloc instead of glibc malloc: ~25% faster per event at 1 M tracked accounts (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "resetguard",
    version,
    about = "Decides password resets from login-risk events, behind a mass-reset circuit breaker."
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "RESETGUARD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Zero-setup demo: embedded broker, simulated traffic with a buggy model, live breaker view.
    Demo {
        /// Accounts the buggy model flags at once.
        #[arg(long, default_value_t = 20_000)]
        flood: usize,
        /// Address of /metrics while the demo runs.
        #[arg(long, default_value = "127.0.0.1:9898")]
        listen: String,
    },
    /// Run the service against Kafka.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Backtest a policy over a file of events (JSON lines, optionally gzip; `-` for stdin).
    Replay {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Wall-clock time for the future-timestamp check (RFC 3339). Default: now.
        #[arg(long)]
        now: Option<String>,
        /// Seed of the id hashes (16 hex digits), as in the service config.
        #[arg(long)]
        seed: Option<String>,
        /// Print progress every N lines (0: never).
        #[arg(long, default_value_t = 1_000_000)]
        progress_every: u64,
    },
    /// Validate a policy file or a service config; prints every problem with its field path.
    CheckConfig { file: PathBuf },
    /// Work through held notices after an incident: list, release (paced, exactly once) or discard.
    Held {
        #[command(subcommand)]
        action: HeldAction,
    },
    /// Publish simulated login-risk events to a Kafka topic (for docker-compose and load tests).
    Generate {
        #[arg(long, default_value = "localhost:9092")]
        bootstrap: String,
        #[arg(long, default_value = "login-risk-events")]
        topic: String,
        /// Events per second (0: as fast as possible).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Stop after this many events (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

/// Which held notices an action applies to. Release and discard need a criterion or `--all`.
#[derive(clap::Args, Clone)]
struct HeldSelect {
    /// Service config (the same one the service runs with: topics and transactional id).
    #[arg(long, short)]
    config: PathBuf,
    /// Breaker cell (the source's cell, or the cell that held it, e.g. `global`).
    #[arg(long)]
    cell: Option<String>,
    /// Upstream source of the triggering event.
    #[arg(long)]
    source: Option<String>,
    /// Held at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Held before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Every pending held notice.
    #[arg(long)]
    all: bool,
}

#[derive(clap::Args, Clone)]
struct Who {
    /// Who takes the action (recorded in the audit topic).
    #[arg(long)]
    actor: String,
    /// Why (recorded in the audit topic).
    #[arg(long)]
    reason: String,
}

#[derive(Subcommand)]
enum HeldAction {
    /// List pending held notices (no account ids are printed).
    List {
        #[command(flatten)]
        select: HeldSelect,
    },
    /// Release matching held notices to the notice topic, paced, each exactly once.
    Release {
        #[command(flatten)]
        select: HeldSelect,
        #[command(flatten)]
        who: Who,
        /// Notices per minute (default: the config's admin.release_rate_per_minute).
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Discard matching held notices (recorded; nothing is sent).
    Discard {
        #[command(flatten)]
        select: HeldSelect,
        #[command(flatten)]
        who: Who,
    },
}

fn selector(s: &HeldSelect) -> anyhow::Result<resetguard::held::Selector> {
    let time = |v: &Option<String>, name: &str| -> anyhow::Result<Option<i64>> {
        v.as_deref()
            .map(|t| parse_rfc3339_ms(t).with_context(|| format!("--{name} must be an RFC 3339 timestamp")))
            .transpose()
    };
    Ok(resetguard::held::Selector {
        cell: s.cell.clone(),
        source: s.source.clone(),
        from_ms: time(&s.from, "from")?,
        to_ms: time(&s.to, "to")?,
        all: s.all,
    })
}

fn held_command(action: HeldAction) -> anyhow::Result<ExitCode> {
    use resetguard::held::{self, HeldError};
    type Job = Box<dyn FnOnce(&Settings, &held::Selector) -> Result<serde_json::Value, HeldError>>;
    let (select, run): (HeldSelect, Job) = match action {
        HeldAction::List { select } => {
            (select, Box::new(|s, sel| held::list(s, sel).map(|l| serde_json::to_value(l).unwrap_or_default())))
        }
        HeldAction::Release { select, who, rate } => (
            select,
            Box::new(move |s, sel| {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let flag = stop.clone();
                let _ = std::thread::spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        rt.block_on(async {
                            let t = CancellationToken::new();
                            signals(t.clone()).await;
                        });
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                });
                let rate = rate.unwrap_or(s.release_rate_per_minute);
                held::release(s, sel, &who.actor, &who.reason, rate, &stop)
                    .map(|r| serde_json::to_value(r).unwrap_or_default())
            }),
        ),
        HeldAction::Discard { select, who } => (
            select,
            Box::new(move |s, sel| {
                held::discard(s, sel, &who.actor, &who.reason).map(|r| serde_json::to_value(r).unwrap_or_default())
            }),
        ),
    };
    let settings = Settings::load(&select.config)?;
    let sel = selector(&select)?;
    match run(&settings, &sel) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(HeldError::Invalid(m)) => {
            eprintln!("error: {m}");
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match real_main(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Cancels the token on SIGTERM or SIGINT.
async fn signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

fn real_main(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let settings = Settings::load(&config)?;
            let rt = runtime()?;
            rt.block_on(async {
                let token = CancellationToken::new();
                tokio::spawn(signals(token.clone()));
                let registry = prometheus::Registry::new();
                let status = Arc::new(resetguard::kafka::Status::default());
                match resetguard::app::run(settings, registry, status, token).await {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(e) => {
                        tracing::error!(error = %e, "resetguard stopped.");
                        Ok(ExitCode::from(1))
                    }
                }
            })
        }
        Command::Replay { policy, input, out, now, seed, progress_every } => {
            let text = std::fs::read_to_string(&policy).with_context(|| format!("reading {}", policy.display()))?;
            let policy = Policy::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", policy.display()))?;
            let now_ms = match now {
                Some(s) => parse_rfc3339_ms(&s).context("--now must be an RFC 3339 timestamp")?,
                None => chrono::Utc::now().timestamp_millis(),
            };
            let seed = match seed {
                Some(s) => u64::from_str_radix(&s, 16).context("--seed must be hex")?,
                None => DEFAULT_SEED,
            };
            let args = resetguard::replay::ReplayArgs { input, out: out.clone(), now_ms, seed, progress_every };
            let report = resetguard::replay::replay(Arc::new(policy), &args)?;
            print!("{}", report.summary());
            println!("wrote {}/{{notices,held,rejected}}.jsonl, report.json, timeline.svg", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let is_policy = toml::from_str::<toml::Table>(&text).map(|t| t.contains_key("version")).unwrap_or(false);
            let result = if is_policy {
                Policy::from_toml(&text)
                    .map(|p| {
                        format!("policy {} is valid ({} signals, mode {})", p.version, p.signals.len(), p.mode.as_str())
                    })
                    .map_err(|e| e.errors)
            } else {
                Settings::load(&file)
                    .map(|s| format!("config is valid (policy {}, inputs {:?})", s.policy.version, s.topics.input))
                    .map_err(|e| e.errors)
            };
            match result {
                Ok(msg) => {
                    println!("{}: {msg}", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in errors {
                        println!("{}: {}: {}", file.display(), e.path, e.reason);
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Demo { flood, listen } => {
            let rt = runtime()?;
            rt.block_on(resetguard::demo::run(flood, listen.parse().context("--listen must be HOST:PORT")?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Held { action } => held_command(action),
        Command::Generate { bootstrap, topic, rate, count } => {
            let rt = runtime()?;
            rt.block_on(resetguard::demo::generate(&bootstrap, &topic, rate, count))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
