//! docs/runbook.md is real, black-box: every command of its `sh` blocks is extracted and
//!
//! * `resetguard` and `curl` commands (and the shell set-up lines around them) run, in the
//!   runbook's order, in one shell against a live `resetguard run` on a real Apache Kafka broker,
//!   with the service's config in the working directory, after a spike has left held notices;
//! * Kubernetes, Kafka CLI and Docker commands (no cluster here) are checked for a known tool,
//!   subcommand and flags, and every `resetguard` subcommand path also parses with `--help`.
//!
//! The outcomes are then checked against the topics: the held notices listed, released once (the
//! second release finds them released), nothing discarded outside the time range, one audit
//! record per breaker action taken through the runbook.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{unique_name, KafkaBroker};
use common::service::{mixed_inputs, produce, spawn_service, wait_committed, Topics};
use serde_json::Value;

const RUNBOOK: &str = "docs/runbook.md";
const TOKEN: &str = "runbook-test-admin-token-4c7e19a2b8";
const CELL: &str = "buggy-model";
const ACTOR: &str = "runbook-test";

/// One command of the runbook: its text (continuation lines joined) and where it starts.
#[derive(Debug, Clone)]
struct RunbookCommand {
    line: usize,
    text: String,
}

/// Every command in the `sh` blocks: continuation lines (`\` at the end) joined, comments and
/// blank lines left out.
fn commands(md: &str) -> Vec<RunbookCommand> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending: Option<RunbookCommand> = None;
    for (i, line) in md.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (trimmed, false),
        };
        match pending.as_mut() {
            Some(p) => {
                p.text.push(' ');
                p.text.push_str(body);
            }
            None if body.is_empty() || body.starts_with('#') => continue,
            None => pending = Some(RunbookCommand { line: i + 1, text: body.to_string() }),
        }
        if !continues {
            out.extend(pending.take());
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq, Clone, Copy, PartialOrd, Ord)]
enum Kind {
    /// Shell set-up: export, umask, test, printf.
    Setup,
    Resetguard,
    Curl,
    /// Needs a cluster: checked, not run.
    External,
}

fn kind(cmd: &str) -> Kind {
    match cmd.split_whitespace().next().unwrap_or("") {
        "export" | "umask" | "test" | "printf" => Kind::Setup,
        "resetguard" => Kind::Resetguard,
        "curl" => Kind::Curl,
        _ => Kind::External,
    }
}

/// An external command uses a tool, subcommand and flags this test knows to exist.
fn check_external(cmd: &str) -> Result<(), String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let flags = |allowed: &[&str]| -> Result<(), String> {
        for w in words.iter().filter(|w| w.starts_with("--")) {
            let name = w.split('=').next().unwrap_or(w);
            if !allowed.contains(&name) {
                return Err(format!("unknown flag {name}"));
            }
        }
        Ok(())
    };
    match words.first().copied() {
        Some("kubectl") => {
            // kubectl -n resetguard VERB ...
            let verb = words.iter().skip(1).filter(|w| !w.starts_with('-')).nth(1).copied().unwrap_or("");
            let verbs = ["get", "port-forward", "exec", "logs", "describe", "delete", "rollout", "scale", "top"];
            if words.get(1) != Some(&"-n") || words.get(2) != Some(&"resetguard") {
                return Err("kubectl commands name the namespace first: -n resetguard".into());
            }
            if !verbs.contains(&verb) {
                return Err(format!("unknown kubectl verb {verb:?}"));
            }
            Ok(())
        }
        Some("kafka-consumer-groups.sh") => flags(&["--bootstrap-server", "--describe", "--group"]),
        Some("kafka-get-offsets.sh") => flags(&["--bootstrap-server", "--topic"]),
        Some("kafka-console-consumer.sh") => flags(&[
            "--bootstrap-server",
            "--topic",
            "--from-beginning",
            "--isolation-level",
            "--property",
            "--max-messages",
        ]),
        Some("docker") => {
            let compose = std::fs::read_to_string("deploy/docker-compose.yml").map_err(|e| e.to_string())?;
            if words.get(1..4) != Some(&["compose", "-f", "deploy/docker-compose.yml"][..]) {
                return Err("docker commands use: docker compose -f deploy/docker-compose.yml".into());
            }
            match words.get(4..).unwrap_or(&[]) {
                [verb, service, ..] if ["logs", "exec"].contains(verb) => compose
                    .contains(&format!("\n  {service}:"))
                    .then_some(())
                    .ok_or(format!("no compose service {service}")),
                ["ps"] => Ok(()),
                other => Err(format!("unknown compose use {other:?}")),
            }
        }
        other => Err(format!("unknown tool {other:?}")),
    }
}

/// The `resetguard` subcommand path of a command (`["held", "list"]`), for a `--help` check.
fn subcommand_path(cmd: &str) -> Vec<String> {
    cmd.split_whitespace()
        .skip(1)
        .take_while(|w| !w.starts_with('-') && !w.starts_with('"') && !w.contains('.'))
        .take(2)
        .map(str::to_string)
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `cmds` in one bash, in order, with `env`, in `dir`: (exit code, stdout, stderr) each.
fn run_in_one_shell(cmds: &[&RunbookCommand], dir: &Path, env: &[(&str, String)]) -> Vec<(i32, String, String)> {
    let out = dir.join("runbook-out");
    std::fs::create_dir_all(&out).unwrap();
    let mut script = String::from("set +e\n");
    for (i, c) in cmds.iter().enumerate() {
        script.push_str(&format!(
            "{{ {}\n}} >'{o}/{i}.out' 2>'{o}/{i}.err' </dev/null\necho $? >'{o}/{i}.rc'\n",
            c.text,
            o = out.display()
        ));
    }
    let status = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &script])
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .expect("running bash");
    assert!(status.success(), "the runbook shell ended with {status}");
    (0..cmds.len())
        .map(|i| {
            let read = |ext: &str| std::fs::read_to_string(out.join(format!("{i}.{ext}"))).unwrap_or_default();
            (read("rc").trim().parse().unwrap_or(-1), read("out"), read("err"))
        })
        .collect()
}

#[test]
fn every_runbook_command_runs_against_a_live_service_or_names_a_known_tool() {
    let md = std::fs::read_to_string(RUNBOOK).unwrap();
    let all = commands(&md);
    let count = |k: Kind| all.iter().filter(|c| kind(&c.text) == k).count();
    assert!(count(Kind::Resetguard) >= 8, "resetguard commands in the runbook: {all:#?}");
    assert!(count(Kind::Curl) >= 7, "curl commands in the runbook: {all:#?}");

    // External commands: known tool, subcommand and flags.
    for c in all.iter().filter(|c| kind(&c.text) == Kind::External) {
        if let Err(e) = check_external(&c.text) {
            panic!("{RUNBOOK}:{}: {e}: {}", c.line, c.text);
        }
    }
    // Every resetguard subcommand path parses.
    let bin = env!("CARGO_BIN_EXE_resetguard");
    for c in all.iter().filter(|c| kind(&c.text) == Kind::Resetguard) {
        let path = subcommand_path(&c.text);
        let o = Command::new(bin).args(&path).arg("--help").output().unwrap();
        assert!(o.status.success(), "{RUNBOOK}:{}: `resetguard {} --help` failed", c.line, path.join(" "));
    }

    // A live service with held notices of the spiking cell.
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "runbook");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let port = free_port();
    let cfg = t.write_instance_config(
        broker,
        dir.path(),
        "resetguard.toml",
        &unique_name("rb-txn"),
        "",
        &format!("127.0.0.1:{port}"),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("[admin]\n", "[admin]\nrelease_rate_per_minute = 60000\n")).unwrap();
    let mut service = spawn_service(&cfg, &dir.path().join("service.log"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while http.get(format!("{base}/readyz")).send().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(service.try_wait().unwrap().is_none(), "the service ended: {}", log(dir.path()));
        assert!(Instant::now() < deadline, "/readyz not 200 within 90 s: {}", log(dir.path()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let inputs = mixed_inputs(200);
    produce(broker, &t.input, &inputs);
    wait_committed(broker, &t, inputs.len() as i64, Duration::from_secs(90));
    let held = broker.read_all_committed(&t.held, Duration::from_secs(30));
    let notices_before = broker.read_all_committed(&t.notices, Duration::from_secs(30)).len();
    assert!(!held.is_empty(), "the spike left no held notices");
    assert!(
        held.iter().all(|r| r.header("cell").flatten() == Some(CELL.as_bytes())),
        "every held notice is the spiking cell's"
    );

    // The runbook, in order, in one shell.
    let runnable: Vec<&RunbookCommand> = all.iter().filter(|c| kind(&c.text) != Kind::External).collect();
    let home = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(bin).parent().unwrap().display().to_string();
    let env = [
        ("PATH", format!("{bin_dir}:/usr/local/bin:/usr/bin:/bin")),
        ("HOME", home.path().display().to_string()),
        ("USER", ACTOR.to_string()),
        ("RG", base.clone()),
        ("CELL", CELL.to_string()),
        ("REASON", "INC-0001: runbook test".to_string()),
        ("RESETGUARD_ADMIN_TOKEN", TOKEN.to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let results = run_in_one_shell(&runnable, dir.path(), &env);
    let _ = service.kill();
    let _ = service.wait();

    let mut json_of: Vec<(String, Value)> = Vec::new();
    for (c, (rc, out, err)) in runnable.iter().zip(&results) {
        assert_eq!(*rc, 0, "{RUNBOOK}:{}: `{}` exited {rc}\nstdout: {out}\nstderr: {err}", c.line, c.text);
        if matches!(kind(&c.text), Kind::Curl | Kind::Resetguard) && !c.text.contains("check-config") {
            let v: Value = serde_json::from_str(out)
                .unwrap_or_else(|e| panic!("{RUNBOOK}:{}: `{}` printed no JSON ({e}): {out}", c.line, c.text));
            json_of.push((c.text.clone(), v));
        }
        if c.text.contains("check-config") {
            assert!(out.contains("config is valid"), "check-config: {out}");
        }
    }
    let answers = |pred: &dyn Fn(&str) -> bool| -> Vec<&Value> {
        json_of.iter().filter(|(c, _)| pred(c)).map(|(_, v)| v).collect()
    };
    // Breaker actions: applied, and one audit record each.
    let breaker_actions = answers(&|c: &str| {
        c.contains("/admin/breaker/") || (c.starts_with("resetguard breaker") && !c.contains(" status"))
    });
    assert_eq!(breaker_actions.len(), 6, "open, close and clear, through the CLI and curl");
    // Each answer is the cell's transition: open, close, clear through the CLI, then through curl.
    let expected = [
        ("manual_open", "forced_open"),
        ("manual_close", "forced_closed"),
        ("manual_clear", "closed"),
        ("manual_open", "forced_open"),
        ("manual_close", "forced_closed"),
        ("manual_clear", "closed"),
    ];
    for (v, (cause, to)) in breaker_actions.iter().zip(expected) {
        assert_eq!(
            (v["cell"].as_str(), v["cause"].as_str(), v["to"].as_str()),
            (Some(CELL), Some(cause), Some(to)),
            "{v}"
        );
        assert_eq!(v["actor"], ACTOR, "{v}");
    }
    let status = answers(&|c: &str| c.starts_with("resetguard breaker status"));
    assert!(
        status[0].as_array().is_some_and(|cells| cells.iter().any(|c| c["cell"] == CELL)),
        "breaker status lists the cell: {}",
        status[0]
    );
    // Held: listed, released once, already released the second time, nothing discarded.
    let h = held.len() as u64;
    let lists = answers(&|c: &str| c.contains("/admin/held?") || c.starts_with("resetguard held list"));
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[0]["pending"], h, "first list: {}", lists[0]);
    assert_eq!(lists[1]["pending"], 0, "after the release: {}", lists[1]);
    assert_eq!(lists[1]["released"], h, "after the release: {}", lists[1]);
    let releases = answers(&|c: &str| c.contains("/admin/held/release") || c.starts_with("resetguard held release"));
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0]["sent"], h, "first release: {}", releases[0]);
    assert_eq!(releases[1]["sent"], 0, "second release: {}", releases[1]);
    assert_eq!(releases[1]["already_released"], h, "second release: {}", releases[1]);
    let discards = answers(&|c: &str| c.contains("/admin/held/discard") || c.starts_with("resetguard held discard"));
    assert_eq!(discards.len(), 2);
    for d in discards {
        assert_eq!(d["discarded"], 0, "discard outside the time range: {d}");
    }
    let notices = broker.read_all_committed(&t.notices, Duration::from_secs(30)).len();
    assert_eq!(notices, notices_before + held.len(), "each held notice released exactly once");

    // The audit topic has the runbook's actions, with its actor and reason.
    let audit = broker.read_all_committed(&format!("{}-audit", t.shadow), Duration::from_secs(30));
    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    for r in &audit {
        let v: Value = serde_json::from_str(r.payload_str().unwrap_or("null")).unwrap_or(Value::Null);
        if v["actor"] == ACTOR {
            assert_eq!(v["reason"], "INC-0001: runbook test");
            *actions.entry(v["action"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
    }
    for a in ["breaker_open", "breaker_close", "breaker_clear"] {
        assert_eq!(actions.get(a), Some(&2), "audit records of {a}: {actions:?}");
    }
    assert!(actions.keys().any(|k| k.contains("releas")), "a release is audited: {actions:?}");
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("service.log")).unwrap_or_default()
}

#[test]
fn commands_are_extracted_with_their_continuations() {
    let md = "text\n```sh\n# a comment\ncurl -fsS \\\n  -d x \"$RG/a\"\n\nresetguard held list\n```\n```text\nnot a command\n```\n";
    let c = commands(md);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].text, "curl -fsS -d x \"$RG/a\"");
    assert_eq!(c[0].line, 4);
    assert_eq!(c[1].text, "resetguard held list");
    assert_eq!(subcommand_path(&c[1].text), ["held", "list"]);
    assert_eq!(subcommand_path("resetguard check-config resetguard.toml"), ["check-config"]);
    assert_eq!(kind("kubectl -n resetguard get pods"), Kind::External);
    assert!(check_external("kubectl -n resetguard get pods").is_ok());
    assert!(check_external("kubectl get pods").is_err());
    assert!(check_external("kafka-get-offsets.sh --bootstrap-server b --topic t --bogus").is_err());
    assert!(check_external("frobnicate --now").is_err());
}
