//! Operability of `resetguard run`, black-box: one in-process service on a real Apache Kafka broker
//! (shared by the tests of this file) gets a known mix of traffic (ordinary events, takeovers,
//! invalid events, duplicates and a spike from one source that trips its breaker cell), then:
//!
//! * `/healthz` answers 200 and `/readyz` turns 200 once partitions are assigned;
//! * the `/metrics` scrape passes `promtool check metrics` without a single lint message;
//! * the metric values agree with what the output topics hold, and no label carries an account id;
//! * every metric the Grafana dashboard and the alert rules use is in the scrape;
//! * a real Prometheus scrapes the service and answers the dashboard's questions.
//!
//! Needs `promtool` and `prometheus` (Debian's `prometheus` package, installed by `scripts/test`):
//! the tests fail, not skip, when they are missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::kafka::{block_on, produce_one_async, unique_name, KafkaBroker};
use common::service::Topics;
use resetguard::config::ConfigFile;
use resetguard::core::event::format_rfc3339_ms;
use resetguard::kafka::Status;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const DASHBOARD: &str = "deploy/grafana/dashboards/resetguard.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

/// The source that floods the pipeline; its breaker cell carries its name.
const SPIKE_SOURCE: &str = "buggy-model";
const ADMIN_TOKEN: &str = "operability-admin-token-6b1e94c2d7";
const SPIKE_EVENTS: usize = 200;
const ORDINARY: usize = 120;
const TAKEOVERS: usize = 8;
const DUPLICATES: usize = 5;

// ---------------------------------------------------------------------------------------------
// The shared service
// ---------------------------------------------------------------------------------------------

/// What the tests look at: the service's port, what the traffic was, what the output topics hold,
/// and a scrape taken once the metrics caught up with the committed outputs.
struct Service {
    port: u16,
    admin_port: u16,
    /// Every account id the traffic carried.
    accounts: BTreeSet<String>,
    inputs: usize,
    notices_in_topic: usize,
    held_in_topic: usize,
    dlq_in_topic: usize,
    /// `/healthz` status and body at the first answer.
    healthz: (u16, String),
    /// `/readyz` statuses in the order seen while waiting, repeats collapsed.
    readyz_seen: Vec<u16>,
    scrape: String,
    // Kept alive for the whole test binary (the broker is shared the same way); the process exit
    // ends the pipeline thread.
    _rt: tokio::runtime::Runtime,
    _token: CancellationToken,
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Result<Service, String>> = OnceLock::new();
    let r = SERVICE.get_or_init(|| {
        std::panic::catch_unwind(start_service).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match r {
        Ok(s) => s,
        Err(e) => panic!("starting the service and driving its traffic failed: {e}"),
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().unwrap().port()
}

fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ev(id: &str, account: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","source":"{source}","signal":"{signal}","risk":{risk}}}"#,
        format_rfc3339_ms(t_ms)
    )
    .into_bytes()
}

/// (key, payload) of the first round, and the account ids they carry. Account ids all start with
/// `acct-`, a string nothing else in a scrape contains.
fn traffic() -> (Vec<(String, Vec<u8>)>, BTreeSet<String>) {
    let t = now_ms() - 60_000;
    let mut v = Vec::new();
    let mut accounts = BTreeSet::new();
    for i in 0..ORDINARY {
        let a = format!("acct-ord-{i:04}");
        v.push((a.clone(), ev(&format!("ops-ord-e{i}"), &a, t + i as i64, "auth-service", "new_device", 0.3)));
        accounts.insert(a);
    }
    for k in 0..TAKEOVERS {
        let a = format!("acct-ato-{k:04}");
        v.push((
            a.clone(),
            ev(&format!("ops-ato-e{k}a"), &a, t + 1000 + k as i64, "auth-service", "credential_stuffing", 0.95),
        ));
        v.push((
            a.clone(),
            ev(&format!("ops-ato-e{k}b"), &a, t + 1500 + k as i64, "device-intel", "impossible_travel", 0.9),
        ));
        accounts.insert(a);
    }
    // Invalid events; the account ids of those that carry one are scanned for too.
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("acct-bad-0000", b"{\"event_id\":".to_vec()),
        ("acct-bad-0001", ev("ops-bad-risk", "acct-bad-0001", t, "auth-service", "new_device", 1.5)),
        ("acct-bad-0002", ev("ops-bad-signal", "acct-bad-0002", t, "auth-service", "telepathy", 0.5)),
        (
            "acct-bad-0003",
            br#"{"event_id":"ops-bad-missing","account_id":"acct-bad-0003","source":"auth-service","signal":"new_device","risk":0.1}"#.to_vec(),
        ),
        ("acct-bad-0004", vec![0xff, 0xfe, 0x00]),
    ];
    for (a, bytes) in bad {
        v.push((a.to_string(), bytes));
        accounts.insert(a.to_string());
    }
    for i in 0..SPIKE_EVENTS {
        let a = format!("acct-spike-{i:04}");
        v.push((
            a.clone(),
            ev(&format!("ops-spike-e{i}"), &a, t + 2000 + i as i64, SPIKE_SOURCE, "breached_password", 1.0),
        ));
        accounts.insert(a);
    }
    (v, accounts)
}

fn produce(broker: &KafkaBroker, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer = broker.producer();
    let pending: Vec<_> = records
        .iter()
        .map(|(k, p)| produce_one_async(&producer, topic, Some(k.as_bytes()), Some(&p[..]), &[]))
        .collect();
    for p in pending {
        block_on(p);
    }
}

fn start_service() -> Service {
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "ops");
    let port = free_port();
    let admin_port = free_port();
    let settings = {
        // The config is read once, here; nothing of it stays on disk.
        let dir = tempfile::tempdir().unwrap();
        let path = t.write_instance_config(
            broker,
            dir.path(),
            "resetguard.toml",
            &unique_name("ops-txn"),
            "",
            &format!("127.0.0.1:{port}"),
        );
        // The held-pending gauge is refreshed every second here (default: every minute), and the
        // admin API has a listener of its own.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        let text = format!(
            "{text}\n[admin]\nheld_pending_refresh = \"1s\"\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"admin.token\"\n"
        );
        toml::from_str::<ConfigFile>(&text).unwrap().validate(dir.path()).unwrap_or_else(|e| panic!("config: {e:?}"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let status = Arc::new(Status::default());
    let token = CancellationToken::new();
    let task = rt.spawn(resetguard::app::run(settings, prometheus::Registry::new(), status, token.clone()));
    let ended = |task: tokio::task::JoinHandle<_>| -> String { format!("the service ended: {:?}", rt.block_on(task)) };
    let http = http_client();
    let base = format!("http://127.0.0.1:{port}");

    // /healthz: the first answer (the server listens once the topics are checked).
    let deadline = Instant::now() + Duration::from_secs(30);
    let healthz = loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send() {
            break (r.status().as_u16(), r.text().unwrap_or_default());
        }
        if task.is_finished() {
            panic!("{}", ended(task));
        }
        assert!(Instant::now() < deadline, "no answer on {base}/healthz within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };

    // /readyz: 503 until partitions are assigned and restored, then 200.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut readyz_seen: Vec<u16> = Vec::new();
    loop {
        let code = http.get(format!("{base}/readyz")).send().expect("GET /readyz").status().as_u16();
        if readyz_seen.last() != Some(&code) {
            readyz_seen.push(code);
        }
        if code == 200 {
            break;
        }
        if task.is_finished() {
            panic!("{}", ended(task));
        }
        assert!(Instant::now() < deadline, "/readyz did not turn 200 within 60 s (seen: {readyz_seen:?})");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Traffic, then re-sends of ordinary events (same key, so same partition, after the original).
    let (first, accounts) = traffic();
    produce(broker, &t.input, &first);
    let dups: Vec<(String, Vec<u8>)> = first.iter().take(DUPLICATES).cloned().collect();
    produce(broker, &t.input, &dups);
    let inputs = first.len() + dups.len();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = broker.committed_offsets(&t.group, &t.input).iter().map(|(_, o)| o.unwrap_or(0)).sum();
        if done >= inputs as i64 {
            break;
        }
        if task.is_finished() {
            panic!("{}", ended(task));
        }
        assert!(Instant::now() < deadline, "only {done} of {inputs} input offsets committed within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = |topic: &str| broker.read_all_committed(topic, Duration::from_secs(30)).len();
    let (notices_in_topic, held_in_topic, dlq_in_topic) = (read(&t.notices), read(&t.held), read(&t.dlq));
    assert!(notices_in_topic > 0 && held_in_topic > 0 && dlq_in_topic > 0,
        "the traffic must produce notices, held records and DLQ records: {notices_in_topic}, {held_in_topic}, {dlq_in_topic}");

    // Counters are flushed every 100 ms and the consumer lag every 5 s: scrape until they caught
    // up with the committed outputs (no deadline assertion here; the tests judge the last scrape).
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let text = http.get(format!("{base}/metrics")).send().expect("GET /metrics").text().unwrap();
        let s = Scrape::parse(&text);
        let caught_up = s.sum("resetguard_notices_sent_total", &[]) == notices_in_topic as f64
            && s.sum("resetguard_dlq_records_total", &[]) == dlq_in_topic as f64
            && s.sum("resetguard_outcomes_total", &[]) == inputs as f64
            && s.sum("resetguard_breaker_trips_total", &[("cell", SPIKE_SOURCE)]) >= 1.0
            && s.sum("resetguard_held_pending", &[]) == held_in_topic as f64
            && s.has_samples("resetguard_consumer_lag_messages");
        if caught_up || Instant::now() >= deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "operability: {inputs} inputs -> {notices_in_topic} notices, {held_in_topic} held, {dlq_in_topic} DLQ records; /readyz seen {readyz_seen:?}"
    );
    Service {
        port,
        admin_port,
        accounts,
        inputs,
        notices_in_topic,
        held_in_topic,
        dlq_in_topic,
        healthz,
        readyz_seen,
        scrape,
        _rt: rt,
        _token: token,
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------------

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Scrape {
    /// Family name -> type, from `# TYPE` lines.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_sample(line).unwrap_or_else(|| panic!("unparsable sample line: {line:?}")));
        }
        Scrape { types, samples }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).fold(0.0, |acc, s| acc + s.value)
    }

    fn has_samples(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The family a sample name belongs to: `x_bucket`, `x_sum` and `x_count` of a histogram (or
    /// summary) `x` belong to `x`.
    fn family_of(&self, name: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                match self.types.get(base).map(String::as_str) {
                    Some("histogram") => return base.to_string(),
                    Some("summary") if suffix != "_bucket" => return base.to_string(),
                    _ => {}
                }
            }
        }
        name.to_string()
    }
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let consumed;
        loop {
            // label name
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            let (start, c) = *chars.peek()?;
            if c == '}' {
                consumed = start + 1;
                break;
            }
            let eq = body[start..].find('=')? + start;
            let key = body[start..eq].trim().to_string();
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
        rest = &body[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

/// Every `resetguard_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut from = 0;
    while let Some(i) = text[from..].find("resetguard_").map(|i| i + from) {
        let mut end = i + "resetguard_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        if (i == 0 || !ident(bytes[i - 1])) && end > i + "resetguard_".len() {
            out.insert(text[i..end].to_string());
        }
        from = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Dashboard and alert rules
// ---------------------------------------------------------------------------------------------

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every query of the dashboard: `expr` at any depth (panels, their targets, panels nested in
/// collapsed rows) and the template variables' queries.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        for q in [&var["definition"], &var["query"], &var["query"]["query"]] {
            if let Some(s) = q.as_str() {
                out.push(s.to_string());
            }
        }
    }
    out
}

/// The `expr:` values of a rules file, by a text scan: inline values, and block scalars (`|`,
/// `>`, with chomping indicators) up to the first line indented no deeper than the key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        let Some(rest) = trimmed.trim_start_matches("- ").strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut body = String::new();
            while i < lines.len() {
                let l = lines[i];
                let t = l.trim_start();
                if !t.is_empty() && l.len() - t.len() <= indent {
                    break;
                }
                body.push_str(l.trim());
                body.push('\n');
                i += 1;
            }
            out.push(body);
        } else {
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process killed on drop, with a watchdog that kills it if this test process dies first
/// (SIGKILL, abort): the watchdog blocks on a pipe only this process writes to.
struct ChildGuard {
    child: Child,
    watchdog: Child,
    watchdog_stdin: Option<ChildStdin>,
}

impl ChildGuard {
    fn spawn(mut cmd: Command) -> ChildGuard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let mut watchdog = Command::new("bash")
            .args([
                "-c",
                r#"read -r cmd || true; [ "$cmd" = nokill ] || kill -9 "$1" 2>/dev/null"#,
                "operability-watchdog",
            ])
            .arg(child.id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the watchdog (bash)");
        let watchdog_stdin = watchdog.stdin.take();
        ChildGuard { child, watchdog, watchdog_stdin }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Reaped: the watchdog must not kill a pid that may be recycled.
        if let Some(mut stdin) = self.watchdog_stdin.take() {
            let _ = stdin.write_all(b"nokill\n");
        }
        let _ = self.watchdog.wait();
    }
}

fn prom_query(http: &reqwest::blocking::Client, base: &str, query: &str) -> Vec<Value> {
    let r: Value = http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .and_then(|r| r.json())
        .unwrap_or_else(|e| panic!("Prometheus query {query:?}: {e}"));
    assert_eq!(r["status"], "success", "Prometheus query {query:?}: {r}");
    r["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn sample_value(v: &Value) -> f64 {
    v["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no value in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn healthz_is_ok_and_readyz_turns_ready_after_assignment() {
    let s = service();
    assert_eq!(s.healthz.0, 200, "/healthz: {:?}", s.healthz);
    assert_eq!(s.healthz.1.trim(), "ok");
    // Not ready (503) while waiting for partitions and restoring, then ready (200): nothing else,
    // and never back to 503 once ready (the poll stopped at the first 200).
    assert_eq!(s.readyz_seen.last(), Some(&200), "/readyz statuses seen: {:?}", s.readyz_seen);
    assert!(s.readyz_seen.iter().all(|c| *c == 200 || *c == 503), "/readyz statuses seen: {:?}", s.readyz_seen);
    let http = http_client();
    let base = format!("http://127.0.0.1:{}", s.port);
    assert_eq!(
        http.get(format!("{base}/readyz")).send().unwrap().status().as_u16(),
        200,
        "still ready after the traffic"
    );
    assert_eq!(http.get(format!("{base}/healthz")).send().unwrap().status().as_u16(), 200);
    assert_eq!(Scrape::parse(&s.scrape).sum("resetguard_ready", &[]), 1.0, "resetguard_ready agrees with /readyz");
}

#[test]
fn with_admin_listen_the_admin_api_is_served_apart_from_metrics() {
    let s = service();
    let http = http_client();
    let (main, admin) = (format!("http://127.0.0.1:{}", s.port), format!("http://127.0.0.1:{}", s.admin_port));
    let get = |url: String| http.get(url).bearer_auth(ADMIN_TOKEN).send().unwrap();
    // The main listener serves metrics and health only.
    assert_eq!(get(format!("{main}/admin/breaker")).status().as_u16(), 404);
    assert_eq!(get(format!("{main}/metrics")).status().as_u16(), 200);
    // The admin listener serves the admin API (with the token) and nothing else.
    let cells: serde_json::Value = get(format!("{admin}/admin/breaker")).json().unwrap();
    assert!(cells.as_array().unwrap().iter().any(|c| c["cell"] == SPIKE_SOURCE), "{cells}");
    assert_eq!(http.get(format!("{admin}/admin/breaker")).send().unwrap().status().as_u16(), 401);
    assert_eq!(get(format!("{admin}/metrics")).status().as_u16(), 404);
}

#[test]
fn scrape_passes_promtool_lint() {
    let s = service();
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL} is required (scripts/test installs Debian's prometheus package): {e}"));
    child.stdin.take().unwrap().write_all(s.scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n--- scrape ---\n{}",
        out.status,
        s.scrape
    );
}

#[test]
fn metric_values_match_the_outputs() {
    let s = service();
    let m = Scrape::parse(&s.scrape);
    let show = || format!("--- scrape ---\n{}", s.scrape);
    assert_eq!(
        m.sum("resetguard_notices_sent_total", &[]),
        s.notices_in_topic as f64,
        "notices_sent_total vs records on the notice topic\n{}",
        show()
    );
    assert!(s.notices_in_topic >= TAKEOVERS, "every takeover got its notice: {} notices", s.notices_in_topic);
    assert_eq!(m.sum("resetguard_outcomes_total", &[]), s.inputs as f64, "one outcome per input\n{}", show());
    assert_eq!(
        m.sum("resetguard_outcomes_total", &[("outcome", "held")]),
        s.held_in_topic as f64,
        "held outcomes vs records on the held topic\n{}",
        show()
    );
    assert_eq!(
        m.sum("resetguard_notices_held_total", &[]),
        s.held_in_topic as f64,
        "notices_held_total vs records on the held topic\n{}",
        show()
    );
    assert_eq!(
        m.sum("resetguard_notices_held_total", &[("cell", SPIKE_SOURCE)]),
        s.held_in_topic as f64,
        "every held notice is the spiking cell's\n{}",
        show()
    );
    assert_eq!(
        m.sum("resetguard_breaker_state", &[("cell", SPIKE_SOURCE), ("state", "open")]),
        1.0,
        "breaker_state{{cell={SPIKE_SOURCE},state=open}}\n{}",
        show()
    );
    assert_eq!(m.sum("resetguard_breaker_state", &[("cell", SPIKE_SOURCE)]), 1.0, "exactly one state per cell");
    assert_eq!(
        m.sum("resetguard_breaker_state", &[("cell", "global"), ("state", "closed")]),
        1.0,
        "the global cell keeps flowing"
    );
    assert!(
        m.sum("resetguard_breaker_trips_total", &[("cell", SPIKE_SOURCE)]) >= 1.0,
        "breaker_trips_total of the spiking cell\n{}",
        show()
    );
    let dlq = m.sum("resetguard_dlq_records_total", &[]);
    assert!(dlq > 0.0, "dlq_records_total\n{}", show());
    assert_eq!(dlq, s.dlq_in_topic as f64, "dlq_records_total vs records on the DLQ topic");
    assert_eq!(
        m.sum("resetguard_dlq_records_total", &[("reason", "duplicate")]),
        DUPLICATES as f64,
        "duplicates in the DLQ"
    );
    assert_eq!(m.sum("resetguard_events_duplicate_total", &[]), DUPLICATES as f64);
    assert_eq!(m.sum("resetguard_events_rejected_total", &[]), 5.0, "the five invalid events");
    assert!(m.sum("resetguard_events_consumed_total", &[("source", SPIKE_SOURCE)]) >= SPIKE_EVENTS as f64);
    assert_eq!(m.sum("resetguard_ready", &[]), 1.0);
    assert!(m.sum("resetguard_transactions_total", &[("result", "commit")]) >= 1.0);
    assert_eq!(m.sum("resetguard_transactions_total", &[("result", "abort")]), 0.0);
    assert!(m.has_samples("resetguard_consumer_lag_messages"), "consumer lag is reported\n{}", show());
    // Decisions per cell: a counter (notice + held) that agrees with the output topics.
    assert_eq!(
        m.sum("resetguard_decisions_total", &[]),
        (s.notices_in_topic + s.held_in_topic) as f64,
        "decisions_total vs notice and held records\n{}",
        show()
    );
    assert_eq!(
        m.sum("resetguard_decisions_total", &[("cell", SPIKE_SOURCE), ("outcome", "held")]),
        s.held_in_topic as f64,
        "held decisions of the spiking cell\n{}",
        show()
    );
    assert_eq!(
        m.sum("resetguard_decisions_total", &[("outcome", "notice")]),
        s.notices_in_topic as f64,
        "notice decisions\n{}",
        show()
    );
    // Held notices pending (nothing was released or discarded): all held records, by the cell
    // that held them.
    assert_eq!(m.sum("resetguard_held_pending", &[]), s.held_in_topic as f64, "held_pending\n{}", show());
    assert_eq!(
        m.sum("resetguard_held_pending", &[("cell", SPIKE_SOURCE)]),
        s.held_in_topic as f64,
        "held_pending of the spiking cell\n{}",
        show()
    );
    // Process metrics of the prometheus crate's `process` feature (CPU time counts whole seconds,
    // so it may still read 0 here).
    assert!(m.has_samples("process_cpu_seconds_total"), "process_cpu_seconds_total\n{}", show());
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_threads", "process_start_time_seconds"] {
        assert!(m.sum(name, &[]) > 0.0, "{name} is exported and positive\n{}", show());
    }
}

#[test]
fn no_label_value_carries_an_account_id() {
    let s = service();
    let m = Scrape::parse(&s.scrape);
    let in_text: Vec<&String> = s.accounts.iter().filter(|a| s.scrape.contains(a.as_str())).collect();
    assert!(in_text.is_empty(), "account ids in the scrape: {in_text:?}");
    let mut bad = BTreeSet::new();
    for sample in &m.samples {
        for (k, v) in &sample.labels {
            if v.contains("acct-") || s.accounts.iter().any(|a| v.contains(a.as_str())) {
                bad.insert(format!("{}{{{k}={v:?}}}", sample.name));
            }
        }
    }
    assert!(bad.is_empty(), "labels carrying account ids: {bad:?}");
    // Label sets are closed: the cells are the breaker's (`global`) and the traffic's sources.
    let cells: BTreeSet<&str> =
        m.matching("resetguard_breaker_state", &[]).filter_map(|s| s.labels.get("cell")).map(String::as_str).collect();
    let expected: BTreeSet<&str> = ["global", "auth-service", "device-intel", SPIKE_SOURCE].into_iter().collect();
    assert!(cells.is_subset(&expected) && cells.contains(SPIKE_SOURCE), "breaker cells: {cells:?}");
}

#[test]
fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let s = service();
    let m = Scrape::parse(&s.scrape);
    let dash: Value = serde_json::from_str(&repo_file(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let dash_queries = dashboard_queries(&dash);
    let alerts = repo_file(ALERTS);
    let alert_exprs = rule_exprs(&alerts);
    // The scans found what they should: a query per target, an expr per rule.
    let rules = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:"))
        .count();
    assert!(rules > 0 && alert_exprs.len() == rules, "{ALERTS}: {rules} rules but {} exprs scanned", alert_exprs.len());
    assert!(alert_exprs.iter().all(|e| !e.trim().is_empty()), "{ALERTS}: an empty expr was scanned: {alert_exprs:?}");
    let targets = {
        fn count(v: &Value) -> usize {
            match v {
                Value::Object(m) => {
                    m.get("targets").and_then(Value::as_array).map_or(0, Vec::len) + m.get("panels").map_or(0, count)
                }
                Value::Array(a) => a.iter().map(count).sum(),
                _ => 0,
            }
        }
        count(&dash["panels"])
    };
    assert!(
        targets > 0 && dash_queries.len() >= targets,
        "{DASHBOARD}: {targets} targets but {} queries",
        dash_queries.len()
    );

    let mut referenced: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for q in &dash_queries {
        for n in metric_names(q) {
            referenced.entry(n).or_default().insert(DASHBOARD);
        }
    }
    for e in &alert_exprs {
        for n in metric_names(e) {
            referenced.entry(n).or_default().insert(ALERTS);
        }
    }
    assert!(referenced.len() >= 10, "too few metric names found: {:?}", referenced.keys());

    let mut missing = Vec::new();
    for (name, files) in &referenced {
        let family = m.family_of(name);
        let problem = if !m.types.contains_key(&family) {
            Some(format!("no `# TYPE {family}` in the scrape: not registered, or a labelled family never set"))
        } else if !m.samples.iter().any(|s| m.family_of(&s.name) == family) {
            Some(format!("family {family} is registered but has no series (never set)"))
        } else if !m.has_samples(name) {
            Some(format!("no series named {name} (family {family} is a {})", m.types[&family]))
        } else {
            None
        };
        if let Some(p) = problem {
            missing.push(format!("{name} (used by {}): {p}", files.iter().copied().collect::<Vec<_>>().join(", ")));
        }
    }
    assert!(
        missing.is_empty(),
        "metrics used by the dashboard or the alerts but missing from the scrape:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn prometheus_scrapes_the_service_and_evaluates_the_rules() {
    let s = service();
    let expected_notices = Scrape::parse(&s.scrape).sum("resetguard_notices_sent_total", &[]);
    let dir = tempfile::tempdir().unwrap();
    let alerts_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(ALERTS);
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {alerts:?}\nscrape_configs:\n  - job_name: resetguard\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n",
            alerts = alerts_path.display().to_string(),
            port = s.port
        ),
    )
    .unwrap();
    let log_path = dir.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let web_port = free_port();
    let mut cmd = Command::new(PROMETHEUS);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} is required (scripts/test installs Debian's prometheus package)"
    );
    let mut prom = ChildGuard::spawn(cmd);
    let log_tail = || {
        let mut text = String::new();
        let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let http = http_client();
    let base = format!("http://127.0.0.1:{web_port}");

    // Until the first scrape of the service has landed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = prom.exited() {
            panic!("prometheus exited ({st}):\n{}", log_tail());
        }
        let ready = http.get(format!("{base}/-/ready")).send().is_ok_and(|r| r.status().is_success());
        if ready && !prom_query(&http, &base, "resetguard_breaker_state").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus has no resetguard_breaker_state after 30 s:\n{}", log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }

    let up = prom_query(&http, &base, r#"up{job="resetguard"}"#);
    assert!(up.len() == 1 && sample_value(&up[0]) == 1.0, "up: {up:?}");
    let open = prom_query(&http, &base, r#"resetguard_breaker_state{state="open"} == 1"#);
    let open_cells: Vec<&str> = open.iter().filter_map(|r| r["metric"]["cell"].as_str()).collect();
    assert_eq!(open_cells, [SPIKE_SOURCE], "open cells according to Prometheus: {open:?}");
    let sent = prom_query(&http, &base, "resetguard_notices_sent_total");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sample_value(&sent[0]), expected_notices, "notices_sent_total in Prometheus vs the scrape");

    // The alert rules load and evaluate without errors against the real series, and the open
    // cell puts ResetguardBreakerOpen in pending (its `for` is 1 minute) for exactly that cell.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (rules, alerts) = loop {
        let r: Value =
            http.get(format!("{base}/api/v1/rules")).send().and_then(|r| r.json()).expect("GET /api/v1/rules");
        let rules: Vec<Value> = r["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown");
        let alerts: Vec<Value> =
            rules.iter().flat_map(|r| r["alerts"].as_array().cloned().unwrap_or_default()).collect();
        let breaker_alert = alerts.iter().any(|a| a["labels"]["alertname"] == "ResetguardBreakerOpen");
        if (evaluated && breaker_alert) || Instant::now() >= deadline {
            break (rules, alerts);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let expected_rules = rule_exprs(&repo_file(ALERTS)).len();
    assert_eq!(rules.len(), expected_rules, "rules loaded by Prometheus: {rules:?}\n{}", log_tail());
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: health {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(unhealthy.is_empty(), "rules not evaluated cleanly: {unhealthy:?}");
    let breaker: Vec<(&str, &str)> = alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == "ResetguardBreakerOpen")
        .map(|a| (a["labels"]["cell"].as_str().unwrap_or(""), a["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(breaker.len(), 1, "ResetguardBreakerOpen alerts: {alerts:?}");
    assert_eq!(breaker[0].0, SPIKE_SOURCE, "ResetguardBreakerOpen alerts: {alerts:?}");
    assert!(matches!(breaker[0].1, "pending" | "firing"), "ResetguardBreakerOpen alerts: {alerts:?}");
    drop(prom);
}
