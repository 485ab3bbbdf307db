//! The command line as a newcomer meets it, black-box (no broker): every subcommand, flag and
//! argument has help text; `run` and `check-config` agree on exit codes and print each config
//! problem as `file:line:column: field: reason`; the exit codes are the documented ones.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_resetguard");
const SECRET: &str = "cli-test-deployment-secret-8d2f6a1c93e7b054";

fn resetguard(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RESETGUARD_SECRET")
        .env_remove("RESETGUARD_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running resetguard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Subcommands listed in a help text's `Commands:` section (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Entries of `Arguments:` and `Options:` that have no text: neither after the flag on its line
/// (two spaces apart) nor on the next, further indented line (clap's layout for long texts).
fn undocumented(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut in_section = false;
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("Arguments:") || l.starts_with("Options:") {
            in_section = true;
            continue;
        }
        if !l.starts_with(' ') {
            in_section = false;
            continue;
        }
        let t = l.trim_start();
        let is_entry = indent(l) <= 6 && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['));
        if in_section && is_entry {
            let same_line = t.contains("  ");
            let next_line = lines.get(i + 1).is_some_and(|n| indent(n) > indent(l) + 2 && !n.trim().is_empty());
            if !same_line && !next_line {
                out.push(l.to_string());
            }
        }
    }
    out
}

#[test]
fn every_subcommand_flag_and_argument_has_help_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("-h");
        let o = resetguard(&args, dir.path());
        assert!(o.status.success(), "resetguard {} -h failed", path.join(" "));
        let help = text(&o.stdout);
        let missing = undocumented(&help);
        assert!(missing.is_empty(), "resetguard {}: flags without help text: {missing:#?}\n{help}", path.join(" "));
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            queue.push(p);
        }
        seen += 1;
    }
    // demo run replay check-config held(+3) breaker(+4) generate, and the root.
    assert_eq!(seen, 1 + 7 + 3 + 4, "help texts checked");
    let root = text(&resetguard(&["--help"], dir.path()).stdout);
    assert!(root.contains("Exit codes:") && root.contains("  2  invalid command line"), "{root}");
}

/// A config with three problems in known places, and its policy with one.
fn broken_config(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("policy.toml"), "version = \"v1\"\n\n[decision]\nthreshold = -1\n").unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let path = dir.join("resetguard.toml");
    std::fs::write(
        &path,
        "policy = \"policy.toml\"\n[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n[pipeline]\n  commit_interval = \"soon\"\n[admin]\nrelease_rate_per_minute = 1000000\n[secret]\nfile = \"secret\"\n",
    )
    .unwrap();
    path
}

#[test]
fn run_and_check_config_exit_2_and_point_at_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    broken_config(dir.path());
    let expected = [
        "policy.toml:4:1: policy.decision.threshold: must be a finite number greater than 0",
        "resetguard.toml:5:3: pipeline.commit_interval: must be a positive duration like \"100ms\" or \"10s\"",
        "resetguard.toml:7:1: admin.release_rate_per_minute: rate must be 1 to 600000 notices per minute",
    ];
    let check = resetguard(&["check-config", "resetguard.toml"], dir.path());
    assert_eq!(check.status.code(), Some(2), "{}", text(&check.stderr));
    let lines: Vec<String> =
        text(&check.stdout).lines().map(|l| l.replace(&format!("{}/", dir.path().display()), "")).collect();
    assert_eq!(lines, expected, "check-config output");

    let run = resetguard(&["run", "--config", "resetguard.toml"], dir.path());
    assert_eq!(run.status.code(), Some(2), "run exits as check-config does");
    let lines: Vec<String> = text(&run.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .map(|l| l.replace(&format!("{}/", dir.path().display()), ""))
        .collect();
    assert_eq!(lines, expected, "run's errors");

    // A policy file on its own, and a TOML syntax error.
    let policy = resetguard(&["check-config", "policy.toml"], dir.path());
    assert_eq!(policy.status.code(), Some(2));
    assert_eq!(
        text(&policy.stdout).trim(),
        "policy.toml:4:1: decision.threshold: must be a finite number greater than 0"
    );
    std::fs::write(dir.path().join("syntax.toml"), "policy = \"policy.toml\"\n[kafka\n").unwrap();
    let syntax = resetguard(&["check-config", "syntax.toml"], dir.path());
    assert_eq!(syntax.status.code(), Some(2));
    assert!(text(&syntax.stdout).starts_with("syntax.toml:2:7: (toml): "), "{}", text(&syntax.stdout));
    std::fs::write(dir.path().join("unknown.toml"), "policy = \"policy.toml\"\n[pipeline]\nhash_sed = 1\n").unwrap();
    let unknown = resetguard(&["check-config", "unknown.toml"], dir.path());
    assert!(
        text(&unknown.stdout).starts_with("unknown.toml:3:1: (toml): unknown field `hash_sed`"),
        "{}",
        text(&unknown.stdout)
    );
}

#[test]
fn a_valid_config_needs_the_secret_and_a_real_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), "version = \"v1\"\n").unwrap();
    let base = "policy = \"policy.toml\"\n[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n";
    std::fs::write(dir.path().join("a.toml"), base).unwrap();
    let o = resetguard(&["check-config", "a.toml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stdout).contains("a.toml: secret: the deployment secret is required"), "{}", text(&o.stdout));

    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("token"), "REPLACE-ME-placeholder-not-a-secret\n").unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        format!("{base}[admin]\ntoken_file = \"token\"\n[secret]\nfile = \"secret\"\n"),
    )
    .unwrap();
    let o = resetguard(&["check-config", "b.toml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stdout).contains("b.toml:5:1: admin.token_file: the admin token is a placeholder"),
        "{}",
        text(&o.stdout)
    );

    std::fs::write(dir.path().join("token"), "7e1f0c9a4b2d8e6f3a5c1b7d9e0f2a4c\n").unwrap();
    let o = resetguard(&["check-config", "b.toml"], dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert_eq!(text(&o.stdout).trim(), "b.toml: config is valid (policy v1, inputs [\"login-risk-events\"])");
}

#[test]
fn exit_codes_of_usage_errors_refused_requests_and_unreachable_services() {
    let dir = tempfile::tempdir().unwrap();
    // Usage error (clap).
    assert_eq!(resetguard(&["run", "--bogus"], dir.path()).status.code(), Some(2));
    // A request the rules refuse, before anything is sent.
    std::fs::write(dir.path().join("token"), "7e1f0c9a4b2d8e6f3a5c1b7d9e0f2a4c").unwrap();
    let bad = resetguard(
        &["breaker", "open", "global", "--ttl", "30d", "--actor", "al", "--reason", "x", "--token-file", "token"],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("ttl must be between 1s and 7 days"), "{}", text(&bad.stderr));
    let bad = resetguard(
        &["breaker", "clear", "global", "--actor", "al;ice", "--reason", "x", "--token-file", "token"],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("actor must be"), "{}", text(&bad.stderr));
    // Nobody listening: a failure at run time.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let down = resetguard(&["breaker", "status", "--url", &url, "--token-file", "token"], dir.path());
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down.stderr).contains("cannot reach the admin API"), "{}", text(&down.stderr));
}
