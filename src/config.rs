//! Service configuration (`resetguard.toml`): Kafka pass-through properties, topics, pipeline
//! timing, HTTP, and the policy file it points to. Parsed, then validated into [`Settings`].
//! Reads files (the config and the policy it names); no other IO.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::core::policy::{FieldError, Policy};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Path of the policy TOML, relative to this file. Required.
    pub policy: String,
    /// librdkafka properties passed through untouched to the consumer and the producer
    /// (`bootstrap.servers`, TLS, SASL, ...). A value of the form `env:NAME` is read from the
    /// environment variable NAME, so secrets stay out of the file.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    #[serde(default)]
    pub topics: TopicsFile,
    #[serde(default)]
    pub pipeline: PipelineFile,
    #[serde(default)]
    pub http: HttpFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub secret: SecretFile,
}

/// Where the deployment secret comes from. It keys `notice_id` (HMAC-SHA256, so an id cannot be
/// recomputed from a guessed account id) and the seed of the in-memory id hashes. Required: at
/// least 32 characters of real entropy (`openssl rand -hex 32`); the demo's public secret and
/// placeholders are refused. Keep it stable: another secret gives every incident another
/// `notice_id` (docs/runbook.md, "Rotating the deployment secret").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFile {
    /// File holding the secret (trailing whitespace ignored), relative to this config. Takes
    /// precedence over `env`.
    #[serde(default)]
    pub file: Option<String>,
    /// Environment variable holding the secret. Default `RESETGUARD_SECRET`.
    #[serde(default = "default_secret_env")]
    pub env: String,
}

fn default_secret_env() -> String {
    "RESETGUARD_SECRET".into()
}

impl Default for SecretFile {
    fn default() -> Self {
        SecretFile { file: None, env: default_secret_env() }
    }
}

/// Shortest admin token and deployment secret, in characters.
pub const TOKEN_MIN_CHARS: usize = 24;
pub const SECRET_MIN_CHARS: usize = 32;

/// Refuses a token or secret that is short, a known placeholder, a repeated pattern or low in
/// entropy (estimated as its length times the Shannon entropy of its own characters: at least 96
/// bits, which `openssl rand -hex 32` or `-base64 24` pass easily and `aaaa…` never does).
pub fn check_secret_strength(value: &str, min_chars: usize) -> Result<(), String> {
    let lower = value.to_ascii_lowercase();
    const PLACEHOLDERS: [&str; 8] =
        ["replace", "placeholder", "changeme", "change-me", "not-a-secret", "example", "secret123", "demo-secret"];
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
        return Err(format!("is a placeholder (contains {p:?}); generate one, e.g. `openssl rand -hex 32`"));
    }
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    if n < min_chars {
        return Err(format!("must be at least {min_chars} characters (has {n}); e.g. `openssl rand -hex 32`"));
    }
    // A short pattern repeated (`abcdabcd…`) has many characters but no more entropy than one copy.
    if let Some(p) = (1..=n / 2).find(|&p| chars.iter().skip(p).zip(&chars).all(|(a, b)| a == b)) {
        return Err(format!("is a pattern of {p} characters repeated; generate one, e.g. `openssl rand -hex 32`"));
    }
    let mut counts = std::collections::HashMap::new();
    for c in value.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let bits: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum::<f64>()
        * n as f64;
    if bits < 96.0 {
        return Err(format!("has too little entropy (about {bits:.0} bits, needs 96); e.g. `openssl rand -hex 32`"));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// File holding the admin API bearer token (trailing whitespace ignored). Takes precedence
    /// over `token_env`. Without a token every admin request is refused.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Environment variable holding the token. Default `RESETGUARD_ADMIN_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Serve the admin API on its own listener at this address (then `http.listen` serves only
    /// `/metrics`, `/healthz` and `/readyz`), e.g. `0.0.0.0:9443`. Default: unset, the admin API
    /// is served on `http.listen`.
    #[serde(default)]
    pub listen: Option<String>,
    /// PEM certificate chain (leaf first) of the admin listener, relative to this file. With
    /// `tls_key`, the admin listener speaks HTTPS only (TLS 1.2/1.3, rustls). Needs `listen`.
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`, relative to this file.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// Pace of releasing held notices. Default 600 per minute (the default global cap).
    #[serde(default = "default_release_rate")]
    pub release_rate_per_minute: u32,
    /// How often the `resetguard_held_pending` gauge is refreshed by reading the held and control
    /// topics. Default `1m`: a full read of both topics; held notices wait for people, so a
    /// minute-old figure is fresh enough.
    #[serde(default = "default_held_pending_refresh")]
    pub held_pending_refresh: String,
}

fn default_held_pending_refresh() -> String {
    "1m".into()
}

fn default_token_env() -> String {
    "RESETGUARD_ADMIN_TOKEN".into()
}
fn default_release_rate() -> u32 {
    600
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            listen: None,
            tls_cert: None,
            tls_key: None,
            token_file: None,
            token_env: default_token_env(),
            release_rate_per_minute: default_release_rate(),
            held_pending_refresh: default_held_pending_refresh(),
        }
    }
}

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Input topics of login-risk events. Default `["login-risk-events"]`.
    #[serde(default = "default_input")]
    pub input: Vec<String>,
    /// Reset notices for the mailer. Default `password-reset-notices`.
    #[serde(default = "default_notices")]
    pub notices: String,
    /// Decisions the breaker held. Default `password-reset-held`.
    #[serde(default = "default_held")]
    pub held: String,
    /// Rejected, late and duplicate inputs, original bytes. Default `resetguard-dlq`.
    #[serde(default = "default_dlq")]
    pub dlq: String,
    /// Would-be notices in shadow mode. Default `password-reset-notices-shadow`.
    #[serde(default = "default_shadow")]
    pub shadow: String,
    /// Compacted control topic: breaker overrides and held-notice actions (released, discarded),
    /// shared by every instance. Default `resetguard-control`.
    #[serde(default = "default_control")]
    pub control: String,
    /// Audit trail of every manual action (who, why, when, scope). Default `resetguard-audit`.
    #[serde(default = "default_audit")]
    pub audit: String,
    /// Compacted changelog of per-account state (see `docs/changelog.md`): one partition per
    /// input partition (of all input topics, in order). Default `resetguard-changelog`.
    #[serde(default = "default_changelog")]
    pub changelog: String,
    /// Create missing topics at startup. Default false: a missing input topic is a startup error.
    #[serde(default)]
    pub create: bool,
    /// Partitions of topics created at startup. Default 6.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics created at startup. Default 1 (set 3 in production).
    #[serde(default = "default_replication")]
    pub replication: i32,
}

fn default_input() -> Vec<String> {
    vec!["login-risk-events".into()]
}
fn default_notices() -> String {
    "password-reset-notices".into()
}
fn default_held() -> String {
    "password-reset-held".into()
}
fn default_dlq() -> String {
    "resetguard-dlq".into()
}
fn default_shadow() -> String {
    "password-reset-notices-shadow".into()
}
fn default_control() -> String {
    "resetguard-control".into()
}
fn default_audit() -> String {
    "resetguard-audit".into()
}
fn default_changelog() -> String {
    "resetguard-changelog".into()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}

impl Default for TopicsFile {
    fn default() -> Self {
        TopicsFile {
            input: default_input(),
            notices: default_notices(),
            held: default_held(),
            dlq: default_dlq(),
            shadow: default_shadow(),
            control: default_control(),
            audit: default_audit(),
            changelog: default_changelog(),
            create: false,
            partitions: default_partitions(),
            replication: default_replication(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Consumer group id. Default `resetguard`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Transactional id of this instance: unique per instance and stable across its restarts, so
    /// a restart fences its previous incarnation at once. With `static_membership` it is also the
    /// consumer's `group.instance.id`. Default `resetguard-<hostname>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Static group membership (`group.instance.id` = the transactional id): an instance that
    /// restarts within `session.timeout.ms` takes its partitions back without a rebalance of the
    /// others; one that stops for good hands them over only when that timeout expires. Turn it
    /// off where instance names change on every restart (nothing to gain, only the wait).
    /// Default `true`.
    #[serde(default = "default_true")]
    pub static_membership: bool,
    /// Keep per-account state in the compacted changelog topic (`topics.changelog`), written in
    /// the same transaction as the outputs: a restore reads it (in proportion to live accounts)
    /// instead of re-reading the input topic's lookback. `false`: restore from the input topic.
    /// Default `true`.
    #[serde(default = "default_true")]
    pub changelog: bool,
    /// Format of the changelog records written: `4` (many accounts' states per Kafka record,
    /// the names they refer to once per record; the default), `3` (many accounts per record,
    /// each with its names), `2` (one record per account, packed evidence ids) or `1` (one
    /// per account, ids as text), the older ones for a rolling upgrade from a version that
    /// reads only them (docs/changelog.md, "Upgrading"). All four are always read.
    #[serde(default = "default_changelog_record_version")]
    pub changelog_record_version: u8,
    /// Send the changelog records of a transaction early, once this many accounts have changed
    /// since the last send, or when the pipeline has nothing more fetched to decide (at most
    /// every 25 ms, or a quarter of a shorter commit interval), instead of all at its commit: a
    /// long transaction (a catch-up fills `max_batch`) then ships its state while it is still
    /// deciding, a steady one between bursts, and its commit waits only for the last part. An
    /// account changed again after an early send is written again (coalescing is per send, not
    /// per transaction). `0`: only at the commit. Default 2048.
    #[serde(default = "default_changelog_flush_accounts")]
    pub changelog_flush_accounts: usize,
    /// Commit each transaction on a thread of its own and go on deciding meanwhile, into the
    /// next transaction, which begins once that commit has ended (docs/design.md,
    /// "Exactly-once"). `false`: the loop waits for every commit. Default `true`.
    #[serde(default = "default_true")]
    pub commit_ahead: bool,
    /// How often outputs and offsets are committed in one transaction. Default `100ms`
    /// (Kafka Streams' exactly-once default).
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    /// On SIGTERM: time to finish the open transaction and leave the group. Default `10s`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    /// Most messages per transaction, bounding the work redone after an abort. Default 50000.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Threads judging account state side by side, each owning the accounts of the input
    /// partitions `p % shards`. Dedupe, watermarks and the breaker stay in input order on the
    /// pipeline thread, so outcomes are the same for any value (docs/design.md, "Shards").
    /// `1` (default): one thread, the reference. At most 64.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Warm standby: follow the changelog of every partition this instance does not own in
    /// memory, so a partition assigned to it restores from that copy plus the changelog written
    /// since, instead of the whole changelog (docs/changelog.md, "Warm standby"). Needs
    /// `changelog = true`. Default false.
    #[serde(default)]
    pub standby: bool,
    /// `/healthz` fails when the pipeline loop has not come round for this long (a wedged
    /// instance is restarted by its liveness probe). Waiting for an unreachable broker counts as
    /// coming round. Default `5m`: longer than the longest bounded wait inside the loop (a
    /// restore plan retries its offset lookups for up to 2 × transaction.timeout.ms + 30 s).
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: String,
    /// Replaced by `[secret]` (the seed of the id hashes is derived from the deployment secret);
    /// a config that still sets it is refused with a pointer to the migration.
    #[serde(default)]
    pub hash_seed: Option<String>,
}

fn default_group() -> String {
    "resetguard".into()
}
fn default_commit_interval() -> String {
    "100ms".into()
}
fn default_drain_timeout() -> String {
    "10s".into()
}
fn default_stall_timeout() -> String {
    "5m".into()
}
fn default_true() -> bool {
    true
}
fn default_changelog_record_version() -> u8 {
    crate::core::changelog::NAMED_BATCHES
}

fn default_changelog_flush_accounts() -> usize {
    2048
}

fn default_max_batch() -> usize {
    50_000
}

fn default_shards() -> usize {
    1
}

impl Default for PipelineFile {
    fn default() -> Self {
        PipelineFile {
            group_id: default_group(),
            transactional_id: None,
            static_membership: true,
            changelog: true,
            changelog_record_version: default_changelog_record_version(),
            changelog_flush_accounts: default_changelog_flush_accounts(),
            commit_ahead: true,
            commit_interval: default_commit_interval(),
            drain_timeout: default_drain_timeout(),
            max_batch: default_max_batch(),
            shards: default_shards(),
            standby: false,
            stall_timeout: default_stall_timeout(),
            hash_seed: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Default `0.0.0.0:9898`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "0.0.0.0:9898".into()
}

impl Default for HttpFile {
    fn default() -> Self {
        HttpFile { listen: default_listen() }
    }
}

/// Validated service settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Arc<Policy>,
    pub kafka: BTreeMap<String, String>,
    pub topics: TopicsFile,
    pub group_id: String,
    pub transactional_id: String,
    /// `group.instance.id` = `transactional_id` (see `[pipeline] static_membership`).
    pub static_membership: bool,
    /// Per-account state in the changelog topic (see `[pipeline] changelog`).
    pub changelog: bool,
    /// Version of the account records written (see `[pipeline] changelog_record_version`).
    pub changelog_record_version: u8,
    /// Changed accounts that trigger an early changelog send (see `[pipeline] changelog_flush_accounts`).
    pub changelog_flush_accounts: usize,
    /// Commit on a thread of its own while deciding goes on (see `[pipeline] commit_ahead`).
    pub commit_ahead: bool,
    pub commit_interval: Duration,
    pub drain_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_batch: usize,
    /// Account-state shards, each judged on its own thread (see `[pipeline] shards`).
    pub shards: usize,
    /// Follow the changelog of the partitions not owned, in memory (see `[pipeline] standby`).
    pub standby: bool,
    /// Derived from the deployment secret: the id-hash seed and the `notice_id` key.
    pub keys: crate::core::hash::Keys,
    pub http_listen: SocketAddr,
    /// The admin API's own listener (`None`: served on `http_listen`).
    pub admin_listen: Option<SocketAddr>,
    /// TLS identity of the admin listener (checked at load: the files parse into one).
    pub admin_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Bearer token of the admin API; `None` refuses every admin request.
    pub admin_token: Option<Secret>,
    pub release_rate_per_minute: u32,
    pub held_pending_refresh: Duration,
}

/// Invalid configuration: every problem, with field paths and, where the field is in a file,
/// the line and column.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {file}: {}", self.lines().join("; "))]
pub struct ConfigError {
    pub file: String,
    pub errors: Vec<FieldError>,
    /// Per error: where it is (file, line, column), when found.
    pub locations: Vec<Option<Location>>,
}

/// A position in a config or policy file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl ConfigError {
    /// One line per problem: `file:line:column: field.path: reason` (without the position when
    /// the field is not in the file, e.g. a required one that is missing).
    pub fn lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .zip(self.locations.iter().chain(std::iter::repeat(&None)))
            .map(|(e, at)| match at {
                Some(l) => format!("{}:{}:{}: {}: {}", l.file, l.line, l.column, shown_path(&e.path), e.reason),
                None => format!("{}: {}: {}", self.file, shown_path(&e.path), e.reason),
            })
            .collect()
    }
}

/// A TOML syntax error's path is its byte range (`(bytes a..b)`, located by [`locate`]); it is
/// shown as `(toml)` (`policy.(toml)` in the policy file).
pub fn shown_path(path: &str) -> String {
    match path.find("(bytes ") {
        Some(i) => format!("{}(toml)", &path[..i]),
        None => path.to_string(),
    }
}

/// Byte offset to 1-based line and column (in characters).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where a field path is in a TOML text: the line and column of its key, or of the deepest
/// enclosing key or table that is there (a missing required field points at its table). Paths
/// look like `pipeline.commit_interval`, `kafka."bootstrap.servers"`, `allow_list[2].account_id`,
/// or `(bytes a..b)` for a syntax error. `None` when nothing of the path is in the text.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    if let Some(range) = path.strip_prefix("(bytes ").and_then(|r| r.strip_suffix(')')) {
        let start = range.split("..").next()?.parse().ok()?;
        return Some(line_column(text, start));
    }
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut found: Option<std::ops::Range<usize>> = None;
    for (name, index) in segments(path) {
        let Some((key, value)) = item.as_table_like().and_then(|t| t.get_key_value(&name)) else { break };
        found = key.span().or_else(|| value.span()).or(found);
        item = value;
        if let Some(i) = index {
            let Some(elem) = item.get(i) else { break };
            found = elem.span().or(found);
            item = elem;
        }
    }
    found.map(|r| line_column(text, r.start))
}

/// `a."b.c"[2].d` → `[("a", None), ("b.c", Some(2)), ("d", None)]`.
fn segments(path: &str) -> Vec<(String, Option<usize>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = path.chars().peekable();
    let mut index: Option<usize> = None;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                out.push((std::mem::take(&mut cur), index.take()));
            }
            '[' if !quoted => {
                let mut digits = String::new();
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                    digits.push(d);
                }
                index = digits.parse().ok();
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push((cur, index));
    }
    out
}

impl ConfigError {
    /// A policy file's problems, located in its text.
    pub fn of_policy(file: &Path, text: &str, errors: Vec<FieldError>) -> ConfigError {
        let name = file.display().to_string();
        let locations = errors
            .iter()
            .map(|e| locate(text, &e.path).map(|(line, column)| Location { file: name.clone(), line, column }))
            .collect();
        ConfigError { file: name, errors, locations }
    }
}

/// A TOML error (syntax, unknown field, wrong type) as a field error whose path is its byte range.
pub fn toml_error(e: &toml::de::Error) -> FieldError {
    match e.span() {
        Some(span) => field(&format!("(bytes {}..{})", span.start, span.end), e.message()),
        None => field("(toml)", e.message()),
    }
}

fn field(path: &str, reason: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), reason: reason.into() }
}

/// Resolves `env:NAME` values from the environment.
fn resolve(path: &str, v: &str, errors: &mut Vec<FieldError>) -> String {
    match v.strip_prefix("env:") {
        Some(name) => std::env::var(name).unwrap_or_else(|_| {
            errors.push(field(path, format!("environment variable {name} is not set")));
            String::new()
        }),
        None => v.to_string(),
    }
}

impl Settings {
    /// Loads the config file and the policy it names; every problem is reported.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let file_name = path.display().to_string();
        let base = path.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file_name.clone(),
            errors: vec![field("(file)", e.to_string())],
            locations: vec![None],
        })?;
        let result =
            toml::from_str::<ConfigFile>(&text).map_err(|e| vec![toml_error(&e)]).and_then(|cfg| cfg.validate(base));
        result.map_err(|errors| {
            // Policy errors (`policy.…`) are located in the policy file, the others in this one.
            let policy_file = toml::from_str::<toml::Table>(&text)
                .ok()
                .and_then(|t| t.get("policy").and_then(|p| p.as_str()).map(|p| base.join(p)));
            let policy_text = policy_file.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
            let locations = errors
                .iter()
                .map(|e| match (e.path.strip_prefix("policy."), &policy_text, &policy_file) {
                    (Some(inner), Some(ptext), Some(pfile)) => locate(ptext, inner).map(|(line, column)| Location {
                        file: pfile.display().to_string(),
                        line,
                        column,
                    }),
                    _ => {
                        locate(&text, &e.path).map(|(line, column)| Location { file: file_name.clone(), line, column })
                    }
                })
                .collect();
            ConfigError { file: file_name.clone(), errors, locations }
        })
    }
}

impl ConfigFile {
    pub fn validate(self, base: &Path) -> Result<Settings, Vec<FieldError>> {
        let mut errors = Vec::new();
        let policy_path: PathBuf = base.join(&self.policy);
        let policy = match std::fs::read_to_string(&policy_path) {
            Ok(text) => match Policy::from_toml(&text) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.extend(e.errors.into_iter().map(|f| field(&format!("policy.{}", f.path), f.reason)));
                    None
                }
            },
            Err(e) => {
                errors.push(field("policy", format!("cannot read {}: {e}", policy_path.display())));
                None
            }
        };
        let mut kafka = BTreeMap::new();
        for (k, v) in &self.kafka {
            kafka.insert(k.clone(), resolve(&format!("kafka.{k}"), v, &mut errors));
        }
        if !kafka.contains_key("bootstrap.servers") {
            errors.push(field("kafka.\"bootstrap.servers\"", "is required"));
        }
        for managed in [
            "enable.auto.commit",
            "isolation.level",
            "transactional.id",
            "group.id",
            "group.instance.id",
            "enable.idempotence",
        ] {
            if kafka.contains_key(managed) {
                errors.push(field(
                    &format!("kafka.\"{managed}\""),
                    "is managed by resetguard for exactly-once; remove it",
                ));
            }
        }
        let t = &self.topics;
        if t.input.is_empty() {
            errors.push(field("topics.input", "needs at least one topic"));
        }
        let outs = [
            ("topics.notices", &t.notices),
            ("topics.held", &t.held),
            ("topics.dlq", &t.dlq),
            ("topics.shadow", &t.shadow),
            ("topics.control", &t.control),
            ("topics.audit", &t.audit),
        ];
        for (p, name) in outs {
            if name.is_empty() || name.len() > 249 {
                errors.push(field(p, "must be 1 to 249 characters"));
            }
            if t.input.contains(name) {
                errors.push(field(p, "must differ from the input topics"));
            }
        }
        if t.partitions < 1 {
            errors.push(field("topics.partitions", "must be at least 1"));
        }
        if t.replication < 1 {
            errors.push(field("topics.replication", "must be at least 1"));
        }
        let dur = |p: &str, v: &str, errors: &mut Vec<FieldError>| match humantime::parse_duration(v) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                errors.push(field(p, "must be a positive duration like \"100ms\" or \"10s\""));
                Duration::from_secs(1)
            }
        };
        let commit_interval = dur("pipeline.commit_interval", &self.pipeline.commit_interval, &mut errors);
        let drain_timeout = dur("pipeline.drain_timeout", &self.pipeline.drain_timeout, &mut errors);
        let stall_timeout = dur("pipeline.stall_timeout", &self.pipeline.stall_timeout, &mut errors);
        let held_pending_refresh = dur("admin.held_pending_refresh", &self.admin.held_pending_refresh, &mut errors);
        if !crate::core::changelog::WRITABLE_VERSIONS.contains(&self.pipeline.changelog_record_version) {
            errors.push(field(
                "pipeline.changelog_record_version",
                format!(
                    "must be one of {:?} (got {})",
                    crate::core::changelog::WRITABLE_VERSIONS,
                    self.pipeline.changelog_record_version
                ),
            ));
        }
        if self.pipeline.standby && !self.pipeline.changelog {
            errors.push(field("pipeline.standby", "follows the changelog: needs pipeline.changelog = true"));
        }
        if !(1..=64).contains(&self.pipeline.shards) {
            errors.push(field("pipeline.shards", "must be from 1 to 64"));
        }
        if self.pipeline.max_batch == 0 {
            errors.push(field("pipeline.max_batch", "must be at least 1"));
        }
        if self.pipeline.group_id.is_empty() {
            errors.push(field("pipeline.group_id", "must not be empty"));
        }
        let transactional_id = self.pipeline.transactional_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "local".into());
            format!("resetguard-{host}")
        });
        if self.pipeline.hash_seed.is_some() {
            errors.push(field(
                "pipeline.hash_seed",
                "is replaced by the [secret] section (the seed is derived from the deployment secret); remove it \
                 (docs/runbook.md, \"Rotating the deployment secret\")",
            ));
        }
        let secret = match &self.secret.file {
            Some(f) => match std::fs::read_to_string(base.join(f)) {
                Ok(t) => Some(t.trim_end().to_string()),
                Err(e) => {
                    errors.push(field("secret.file", format!("cannot read the secret file: {e}")));
                    None
                }
            },
            None => match std::env::var(&self.secret.env) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    errors.push(field(
                        "secret",
                        format!(
                            "the deployment secret is required: set secret.file or the environment variable {} \
                             (e.g. `openssl rand -hex 32`)",
                            self.secret.env
                        ),
                    ));
                    None
                }
            },
        };
        let keys = match secret {
            Some(v) => {
                let path = if self.secret.file.is_some() { "secret.file" } else { "secret.env" };
                if let Err(e) = check_secret_strength(&v, SECRET_MIN_CHARS) {
                    errors.push(field(path, format!("the deployment secret {e}")));
                }
                if v == crate::core::hash::DEMO_SECRET {
                    errors.push(field(path, "is the demo's public secret"));
                }
                crate::core::hash::Keys::from_secret(v.as_bytes())
            }
            None => crate::core::hash::Keys::demo(),
        };
        let http_listen = self.http.listen.parse().unwrap_or_else(|_| {
            errors.push(field("http.listen", "must be an address like 0.0.0.0:9898"));
            SocketAddr::from(([0, 0, 0, 0], 9898))
        });
        let admin_listen = self.admin.listen.as_deref().and_then(|a| match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(field("admin.listen", "must be an address like 0.0.0.0:9443"));
                None
            }
        });
        if admin_listen.is_some_and(|a| a == http_listen && a.port() != 0) {
            errors.push(field("admin.listen", "must differ from http.listen"));
        }
        let admin_tls = match (&self.admin.tls_cert, &self.admin.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                if self.admin.listen.is_none() {
                    errors.push(field("admin.tls_cert", "needs admin.listen (TLS is served on the admin listener)"));
                }
                match crate::http::tls::server_config(&base.join(cert), &base.join(key)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.push(field("admin.tls_cert", e));
                        None
                    }
                }
            }
            (Some(_), None) => {
                errors.push(field("admin.tls_key", "is required with admin.tls_cert"));
                None
            }
            (None, Some(_)) => {
                errors.push(field("admin.tls_cert", "is required with admin.tls_key"));
                None
            }
        };
        let admin_token = match &self.admin.token_file {
            Some(f) => match std::fs::read_to_string(base.join(f)) {
                Ok(t) => Some(t.trim_end().to_string()),
                Err(e) => {
                    errors.push(field("admin.token_file", format!("cannot read the token file: {e}")));
                    None
                }
            },
            None => std::env::var(&self.admin.token_env).ok(),
        }
        .filter(|t| !t.is_empty());
        if let Some(Err(e)) = admin_token.as_ref().map(|t| check_secret_strength(t, TOKEN_MIN_CHARS)) {
            let path = if self.admin.token_file.is_some() { "admin.token_file" } else { "admin.token_env" };
            errors.push(field(path, format!("the admin token {e}")));
        }
        if let Err(e) = crate::core::rules::check_release_rate(self.admin.release_rate_per_minute) {
            errors.push(field("admin.release_rate_per_minute", e));
        }
        match (policy, errors.is_empty()) {
            (Some(policy), true) => Ok(Settings {
                policy: Arc::new(policy),
                kafka,
                topics: self.topics,
                group_id: self.pipeline.group_id,
                transactional_id,
                static_membership: self.pipeline.static_membership,
                changelog: self.pipeline.changelog,
                changelog_record_version: self.pipeline.changelog_record_version,
                changelog_flush_accounts: self.pipeline.changelog_flush_accounts,
                commit_ahead: self.pipeline.commit_ahead,
                commit_interval,
                drain_timeout,
                stall_timeout,
                max_batch: self.pipeline.max_batch,
                shards: self.pipeline.shards,
                standby: self.pipeline.standby,
                keys,
                http_listen,
                admin_listen,
                admin_tls,
                admin_token: admin_token.map(Secret::new),
                release_rate_per_minute: self.admin.release_rate_per_minute,
                held_pending_refresh,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bootstrap_and_bad_durations_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), "version = \"v\"\n").unwrap();
        let cfg: ConfigFile = toml::from_str(
            "policy = \"p.toml\"\n[pipeline]\ncommit_interval = \"soon\"\nchangelog_record_version = 5\nshards = 0\nchangelog = false\nstandby = true\n[kafka]\n\"isolation.level\" = \"read_uncommitted\"\n",
        )
        .unwrap();
        let errs = cfg.validate(dir.path()).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"kafka.\"bootstrap.servers\""), "{paths:?}");
        assert!(paths.contains(&"pipeline.commit_interval"), "{paths:?}");
        assert!(paths.contains(&"pipeline.changelog_record_version"), "{paths:?}");
        let shards = errs.iter().find(|e| e.path == "pipeline.shards").expect("pipeline.shards named");
        assert!(shards.to_string().contains("must be from 1 to 64"), "{shards}");
        assert!(paths.contains(&"pipeline.standby"), "a standby without the changelog: {paths:?}");
        assert!(paths.contains(&"kafka.\"isolation.level\""), "{paths:?}");
    }

    #[test]
    fn policy_errors_are_prefixed_with_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), "version = \"v\"\n[decision]\nthreshold = 0\n").unwrap();
        let cfg: ConfigFile =
            toml::from_str("policy = \"p.toml\"\n[kafka]\n\"bootstrap.servers\" = \"x:1\"\n").unwrap();
        let errs = cfg.validate(dir.path()).unwrap_err();
        assert_eq!(errs[0].path, "policy.decision.threshold");
    }

    #[test]
    fn secrets_that_are_short_placeholders_or_low_entropy_are_refused() {
        assert!(check_secret_strength("REPLACE-ME-placeholder-not-a-secret", TOKEN_MIN_CHARS).is_err());
        assert!(check_secret_strength("local-dev-token-not-a-secret", TOKEN_MIN_CHARS).is_err());
        assert!(check_secret_strength("short-token", TOKEN_MIN_CHARS).is_err());
        assert!(check_secret_strength(&"a".repeat(64), TOKEN_MIN_CHARS).is_err());
        assert!(check_secret_strength(&"abcd".repeat(16), TOKEN_MIN_CHARS).is_err());
        assert!(check_secret_strength(crate::core::hash::DEMO_SECRET, SECRET_MIN_CHARS).is_err());
        // `openssl rand -hex 32` and -base64 24 shapes pass.
        assert!(check_secret_strength("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", 32).is_ok());
        assert!(check_secret_strength("q7Zl0X3c9GmU8yTbVn2JkR4w5sPe1DhA", 32).is_ok());
        assert!(check_secret_strength("fault-tests-admin-token-0123456789", TOKEN_MIN_CHARS).is_ok());
    }

    #[test]
    fn a_missing_secret_and_a_placeholder_token_fail_with_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), "version = \"v\"\n").unwrap();
        std::fs::write(dir.path().join("t"), "REPLACE-ME-placeholder-not-a-secret\n").unwrap();
        let cfg: ConfigFile = toml::from_str(
            "policy = \"p.toml\"\n[kafka]\n\"bootstrap.servers\" = \"x:1\"\n[admin]\ntoken_file = \"t\"\n[secret]\nenv = \"RESETGUARD_TEST_UNSET_SECRET_VAR\"\n",
        )
        .unwrap();
        let errs = cfg.validate(dir.path()).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["secret", "admin.token_file"], "{errs:?}");
        assert!(errs[0].reason.contains("RESETGUARD_TEST_UNSET_SECRET_VAR"), "{errs:?}");
        assert!(errs[1].reason.contains("placeholder"), "{errs:?}");
    }

    #[test]
    fn locate_finds_keys_tables_and_syntax_errors() {
        let text = "policy = \"p\"\n[kafka]\n\"bootstrap.servers\" = \"x\"\n\n[pipeline]\n  commit_interval = \"soon\"\n[[allow_list]]\na = 1\n[[allow_list]]\n b = 2\n";
        assert_eq!(locate(text, "pipeline.commit_interval"), Some((6, 3)));
        assert_eq!(locate(text, "kafka.\"bootstrap.servers\""), Some((3, 1)));
        // A missing key points at its table.
        assert_eq!(locate(text, "pipeline.max_batch"), Some((5, 2)));
        assert_eq!(locate(text, "allow_list[1].b"), Some((10, 2)));
        assert_eq!(locate(text, "(bytes 13..14)"), Some((2, 1)));
        assert_eq!(locate(text, "topics.input"), None);
        let e = ConfigError {
            file: "c.toml".into(),
            errors: vec![field("pipeline.commit_interval", "bad"), field("secret", "missing")],
            locations: vec![Some(Location { file: "c.toml".into(), line: 6, column: 3 }), None],
        };
        assert_eq!(e.lines(), ["c.toml:6:3: pipeline.commit_interval: bad", "c.toml: secret: missing"]);
    }
}
