//! The `resetguard` binary: parses the command line, loads and validates configuration, installs
//! logging, and hands over to the library (`app::run`, `replay::replay`, `demo::run`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use resetguard::config::{ConfigError, Settings};
use resetguard::core::event::parse_rfc3339_ms;
use resetguard::core::hash::Keys;
use resetguard::core::Policy;

/// The exit codes, shown at the end of `--help` and in the README.
const EXIT_CODES: &str = "Exit codes:
  0  success (check-config: the file is valid)
  1  a failure at run time: Kafka or the admin API unreachable or refusing, a fatal pipeline error,
     a wrong admin token
  2  invalid command line, configuration or request: every problem is printed, with
     file:line:column where it has a place in a file";

/// mimalloc instead of glibc malloc: ~25% faster per event at 1 M tracked accounts (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "resetguard",
    version,
    about = "Decides password resets from login-risk events, behind a mass-reset circuit breaker.",
    after_help = EXIT_CODES
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
        /// Service config (resetguard.toml; it names the policy file). Validated first: an invalid
        /// one exits 2 with every problem listed.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Backtest a policy over a file of events (JSON lines, optionally gzip; `-` for stdin).
    Replay {
        /// Policy file (TOML) to backtest.
        #[arg(long)]
        policy: PathBuf,
        /// Events, one JSON object per line, optionally gzip (detected); `-` reads stdin.
        #[arg(long)]
        input: PathBuf,
        /// Output directory (created): notices.jsonl, held.jsonl, rejected.jsonl, report.json,
        /// timeline.svg.
        #[arg(long)]
        out: PathBuf,
        /// Wall-clock time for the future-timestamp check (RFC 3339). Default: now.
        #[arg(long)]
        now: Option<String>,
        /// File holding the deployment secret, for the same notice_ids as the service (default:
        /// the RESETGUARD_SECRET environment variable, else the demo's public secret, with a note).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Print progress every N lines (0: never).
        #[arg(long, default_value_t = 1_000_000)]
        progress_every: u64,
    },
    /// Validate a policy file or a service config; prints every problem as
    /// file:line:column: field.path: reason. Exits 0 when valid, 2 when not (as `run` does).
    CheckConfig {
        /// A policy file (it has `version = ...`) or a service config (it names its policy).
        file: PathBuf,
    },
    /// Work through held notices after an incident: list, release (paced, exactly once) or discard.
    Held {
        #[command(subcommand)]
        action: HeldAction,
    },
    /// Breaker overrides through a running instance's admin API: status, open, close, clear.
    /// Overrides go to the control topic and apply on every instance of the fleet.
    Breaker {
        #[command(subcommand)]
        action: BreakerCommand,
    },
    /// Publish simulated login-risk events to a Kafka topic (for docker-compose and load tests).
    Generate {
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "localhost:9092")]
        bootstrap: String,
        /// Topic to publish to.
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

/// Which instance's admin API, and how to authenticate.
#[derive(clap::Args, Clone)]
struct Endpoint {
    /// Base URL of one instance's admin API: http://HOST:9898 (http.listen), or
    /// https://HOST:PORT when admin.listen and admin.tls_cert are set.
    #[arg(long, env = "RESETGUARD_URL", default_value = "http://localhost:9898")]
    url: String,
    /// File holding the admin token (keeps it out of the command line). Default: the
    /// RESETGUARD_ADMIN_TOKEN environment variable.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM certificate of the CA that signed the admin listener's certificate (https URLs).
    #[arg(long, env = "RESETGUARD_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BreakerCommand {
    /// State of every breaker cell of the instance (JSON).
    Status {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Force a cell open: its decisions are held whatever the traffic, until the ttl runs out.
    Open {
        /// Breaker cell: `global` or an upstream source's name.
        cell: String,
        /// How long the override lasts, 1s to 7 days (e.g. 30m, 4h).
        #[arg(long)]
        ttl: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Force a cell closed: spikes are ignored (the rate caps still apply) until the ttl runs out.
    Close {
        /// Breaker cell: `global` or an upstream source's name.
        cell: String,
        /// How long the override lasts, 1s to 7 days (e.g. 15m).
        #[arg(long)]
        ttl: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// End a cell's override: a forced-open cell probes (half-open), a forced-closed one closes.
    Clear {
        /// Breaker cell: `global` or an upstream source's name.
        cell: String,
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// Calls the admin API: GET without a body, POST with `body`. Prints the JSON answer.
fn breaker_command(cmd: BreakerCommand) -> anyhow::Result<ExitCode> {
    use resetguard::core::rules;
    let (endpoint, path, body) = match cmd {
        BreakerCommand::Status { endpoint } => (endpoint, "/admin/breaker".to_string(), None),
        BreakerCommand::Open { cell, ttl, who, endpoint } => {
            let body = serde_json::json!({ "ttl": ttl, "actor": who.actor, "reason": who.reason });
            (endpoint, format!("/admin/breaker/{}/open", path_segment(&cell)), Some((body, Some(ttl))))
        }
        BreakerCommand::Close { cell, ttl, who, endpoint } => {
            let body = serde_json::json!({ "ttl": ttl, "actor": who.actor, "reason": who.reason });
            (endpoint, format!("/admin/breaker/{}/close", path_segment(&cell)), Some((body, Some(ttl))))
        }
        BreakerCommand::Clear { cell, who, endpoint } => {
            let body = serde_json::json!({ "actor": who.actor, "reason": who.reason });
            (endpoint, format!("/admin/breaker/{}/clear", path_segment(&cell)), Some((body, None)))
        }
    };
    // The same rules as the service, before anything is sent.
    if let Some((body, ttl)) = &body {
        let check = rules::check_actor_reason(
            body["actor"].as_str().unwrap_or_default(),
            body["reason"].as_str().unwrap_or_default(),
        )
        .and_then(|()| ttl.as_deref().map_or(Ok(()), |t| rules::parse_ttl(t).map(|_| ())));
        if let Err(e) = check {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let token = match &endpoint.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the admin token from {}", f.display()))?
            .trim_end()
            .to_string(),
        None => std::env::var("RESETGUARD_ADMIN_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        eprintln!("error: no admin token: pass --token-file or set RESETGUARD_ADMIN_TOKEN");
        return Ok(ExitCode::from(2));
    }
    let mut client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &endpoint.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        client = client.add_root_certificate(cert);
    }
    let client = client.build().context("building the HTTP client")?;
    let url = format!("{}{path}", endpoint.url.trim_end_matches('/'));
    let request = match &body {
        None => client.get(&url),
        Some((b, _)) => client.post(&url).json(b),
    };
    let response = match request.bearer_auth(token).send() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach the admin API at {url}: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let status = response.status();
    let text = response.text().unwrap_or_default();
    let shown = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    match status.as_u16() {
        200 => {
            println!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
        400 => {
            eprintln!("error: refused: {shown}");
            Ok(ExitCode::from(2))
        }
        401 => {
            eprintln!("error: unauthorized: the admin token is wrong or missing on the instance");
            Ok(ExitCode::from(1))
        }
        code => {
            eprintln!("error: HTTP {code} from {url}: {shown}");
            Ok(ExitCode::from(1))
        }
    }
}

/// A cell name as one URL path segment (cell names are source names: percent-encode the rest).
fn path_segment(cell: &str) -> String {
    cell.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints every problem of an invalid config, one per line (`file:line:column: path: reason`).
fn print_config_error(e: &ConfigError, to_stdout: bool) {
    for line in e.lines() {
        if to_stdout {
            println!("{line}");
        } else {
            eprintln!("error: {line}");
        }
    }
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
    let settings = match Settings::load(&select.config) {
        Ok(s) => s,
        Err(e) => {
            print_config_error(&e, false);
            return Ok(ExitCode::from(2));
        }
    };
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
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    print_config_error(&e, false);
                    return Ok(ExitCode::from(2));
                }
            };
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
        Command::Replay { policy, input, out, now, secret_file, progress_every } => {
            let text = std::fs::read_to_string(&policy).with_context(|| format!("reading {}", policy.display()))?;
            let policy = match Policy::from_toml(&text) {
                Ok(p) => p,
                Err(e) => {
                    print_config_error(&ConfigError::of_policy(&policy, &text, e.errors), false);
                    return Ok(ExitCode::from(2));
                }
            };
            let now_ms = match now {
                Some(s) => parse_rfc3339_ms(&s).context("--now must be an RFC 3339 timestamp")?,
                None => chrono::Utc::now().timestamp_millis(),
            };
            let secret = match &secret_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the secret from {}", f.display()))?
                        .trim_end()
                        .to_string(),
                ),
                None => std::env::var("RESETGUARD_SECRET").ok().filter(|s| !s.is_empty()),
            };
            let keys = match secret {
                Some(s) => Keys::from_secret(s.as_bytes()),
                None => {
                    eprintln!("note: no --secret-file or RESETGUARD_SECRET: notice_ids use the demo's public secret and differ from the service's");
                    Keys::demo()
                }
            };
            let args = resetguard::replay::ReplayArgs { input, out: out.clone(), now_ms, keys, progress_every };
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
                    .map_err(|e| ConfigError::of_policy(&file, &text, e.errors))
            } else {
                Settings::load(&file)
                    .map(|s| format!("config is valid (policy {}, inputs {:?})", s.policy.version, s.topics.input))
            };
            match result {
                Ok(msg) => {
                    println!("{}: {msg}", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    print_config_error(&e, true);
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Demo { flood, listen } => {
            let rt = runtime()?;
            rt.block_on(resetguard::demo::run(flood, listen.parse().context("--listen must be HOST:PORT")?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Held { action } => held_command(action),
        Command::Breaker { action } => breaker_command(action),
        Command::Generate { bootstrap, topic, rate, count } => {
            let rt = runtime()?;
            rt.block_on(resetguard::demo::generate(&bootstrap, &topic, rate, count))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
