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
    /// a restart fences its previous incarnation at once. Default `resetguard-<hostname>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
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
    /// `/healthz` fails when the pipeline loop has not come round for this long (a wedged
    /// instance is restarted by its liveness probe). Waiting for an unreachable broker counts as
    /// coming round. Default `5m`: longer than the longest bounded wait inside the loop (a
    /// restore plan retries its offset lookups for up to 2 × transaction.timeout.ms + 30 s).
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: String,
    /// Seed of the id hashes, as 16 hex digits or `env:NAME`. Keep it stable for a deployment.
    /// Default: a fixed public seed (fine unless account ids are attacker-chosen).
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
fn default_max_batch() -> usize {
    50_000
}

impl Default for PipelineFile {
    fn default() -> Self {
        PipelineFile {
            group_id: default_group(),
            transactional_id: None,
            commit_interval: default_commit_interval(),
            drain_timeout: default_drain_timeout(),
            max_batch: default_max_batch(),
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
    pub commit_interval: Duration,
    pub drain_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_batch: usize,
    pub hash_seed: u64,
    pub http_listen: SocketAddr,
    /// Bearer token of the admin API; `None` refuses every admin request.
    pub admin_token: Option<Secret>,
    pub release_rate_per_minute: u32,
    pub held_pending_refresh: Duration,
}

/// Invalid configuration: every problem, with field paths.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {file}: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    pub file: String,
    pub errors: Vec<FieldError>,
}

/// The public default seed of id hashes.
pub const DEFAULT_SEED: u64 = 0x7265_7365_7467_7561;

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
        let fail = |errors| ConfigError { file: file_name.clone(), errors };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![field("(file)", e.to_string())]))?;
        let cfg: ConfigFile =
            toml::from_str(&text).map_err(|e| fail(vec![field("(toml)", e.message().to_string())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.validate(base).map_err(fail)
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
        for managed in ["enable.auto.commit", "isolation.level", "transactional.id", "group.id", "enable.idempotence"] {
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
        let hash_seed = match &self.pipeline.hash_seed {
            None => DEFAULT_SEED,
            Some(v) => {
                let v = resolve("pipeline.hash_seed", v, &mut errors);
                u64::from_str_radix(v.trim(), 16).unwrap_or_else(|_| {
                    errors.push(field("pipeline.hash_seed", "must be 1 to 16 hex digits"));
                    0
                })
            }
        };
        let http_listen = self.http.listen.parse().unwrap_or_else(|_| {
            errors.push(field("http.listen", "must be an address like 0.0.0.0:9898"));
            SocketAddr::from(([0, 0, 0, 0], 9898))
        });
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
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            errors.push(field("admin", "the admin token must be at least 16 characters"));
        }
        if self.admin.release_rate_per_minute == 0 {
            errors.push(field("admin.release_rate_per_minute", "must be at least 1"));
        }
        match (policy, errors.is_empty()) {
            (Some(policy), true) => Ok(Settings {
                policy: Arc::new(policy),
                kafka,
                topics: self.topics,
                group_id: self.pipeline.group_id,
                transactional_id,
                commit_interval,
                drain_timeout,
                stall_timeout,
                max_batch: self.pipeline.max_batch,
                hash_seed,
                http_listen,
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
            "policy = \"p.toml\"\n[pipeline]\ncommit_interval = \"soon\"\n[kafka]\n\"isolation.level\" = \"read_uncommitted\"\n",
        )
        .unwrap();
        let errs = cfg.validate(dir.path()).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"kafka.\"bootstrap.servers\""), "{paths:?}");
        assert!(paths.contains(&"pipeline.commit_interval"), "{paths:?}");
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
}
