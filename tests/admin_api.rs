//! The admin API refuses everything without the right bearer token, uniformly and without state
//! changes; with the token, commands reach the pipeline. No broker needed: the pipeline end of
//! the command channel is played by the test.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use resetguard::config::Secret;
use resetguard::http::admin::{AdminState, MAX_BODY};
use resetguard::kafka::pipeline::{AdminCommand, BreakerAction};
use resetguard::kafka::Status;

const TOKEN: &str = "correct-horse-battery-staple-42";

struct Server {
    base: String,
    commands: mpsc::Receiver<AdminCommand>,
    _rt: tokio::runtime::Runtime,
}

fn server(token: Option<&str>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (tx, rx) = mpsc::channel();
    let secret = token.map(|t| Secret::new(t.to_string()));
    let state = AdminState::new(secret.as_ref(), tx, Arc::new(Status::default()), None);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = resetguard::http::router(prometheus::Registry::new(), Arc::new(Status::default()), state);
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { base: format!("http://{addr}"), commands: rx, _rt: rt }
}

fn bad_authorizations() -> Vec<Option<String>> {
    vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("bearer {TOKEN}")),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer  {TOKEN}")),
        // (A trailing space is not a wrong token: HTTP strips whitespace around header values.)
        Some(format!("Bearer {TOKEN}\u{a0}")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", TOKEN.to_uppercase())),
        Some(format!("Bearer {}", "a".repeat(8000))),
        Some("Bearer wrong-token-of-decent-length".into()),
        Some(format!("Token {TOKEN}")),
    ]
}

fn requests(client: &reqwest::blocking::Client, base: &str) -> Vec<reqwest::blocking::RequestBuilder> {
    let open = serde_json::json!({"ttl": "30m", "actor": "mallory", "reason": "x"});
    let allow = serde_json::json!({"account_id": "victim", "expires_at": "2030-01-01T00:00:00Z", "actor": "mallory", "reason": "x"});
    vec![
        client.get(format!("{base}/admin/breaker")),
        client.post(format!("{base}/admin/breaker/global/open")).json(&open),
        client.post(format!("{base}/admin/breaker/risk-model-v7/close")).json(&open),
        client.post(format!("{base}/admin/breaker/global/clear")).json(&open),
        client.post(format!("{base}/admin/allow-list")).json(&allow),
        client.delete(format!("{base}/admin/allow-list")).json(&allow),
        client.post(format!("{base}/admin/held/release")).json(&open),
        client.post(format!("{base}/admin/breaker/global/open")).body("{not json"),
        // The incident console's endpoints.
        client.get(format!("{base}/admin/held/groups")),
        client.get(format!("{base}/admin/audit?limit=5&accounts=true")),
        client.get(format!("{base}/admin/notices/recent?accounts=true")),
        client.get(format!("{base}/admin/timeline")),
        client.get(format!("{base}/admin/held/releases")),
        client.post(format!("{base}/admin/held/stop")).json(&open),
    ]
}

#[test]
fn a_thousand_requests_without_the_right_token_get_a_bare_401_and_change_nothing() {
    let s = server(Some(TOKEN));
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let auths = bad_authorizations();
    let mut sent = 0;
    let mut statuses = std::collections::BTreeMap::new();
    while sent < 1000 {
        for (i, auth) in auths.iter().enumerate() {
            let reqs = requests(&client, &s.base);
            let n = reqs.len();
            let mut req = reqs.into_iter().nth((sent + i) % n).unwrap();
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let resp =
                req.send().unwrap_or_else(|e| panic!("request {sent} (auth #{i}, route #{}): {e}", (sent + i) % n));
            *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
            let body = resp.text().unwrap();
            assert!(body.is_empty(), "a 401 says nothing: {body:?}");
            sent += 1;
            if sent == 1000 {
                break;
            }
        }
    }
    assert_eq!(statuses, [(401u16, 1000usize)].into_iter().collect());
    assert!(s.commands.try_recv().is_err(), "no command reached the pipeline");
}

#[test]
fn without_a_configured_token_everything_is_refused() {
    let s = server(None);
    let client = reqwest::blocking::Client::new();
    for req in requests(&client, &s.base) {
        let resp = req.header("Authorization", format!("Bearer {TOKEN}")).send().unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }
    assert!(s.commands.try_recv().is_err());
}

#[test]
fn with_the_token_a_breaker_override_reaches_the_pipeline_and_oversize_bodies_are_refused() {
    let s = server(Some(TOKEN));
    let base = s.base.clone();
    let caller = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let resp = client
            .post(format!("{base}/admin/breaker/risk-model-v7/open"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .json(&serde_json::json!({"ttl": "30m", "actor": "alice-sre", "reason": "incident 42"}))
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap();
        let big = client
            .post(format!("{base}/admin/breaker/global/open"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(format!("{{\"ttl\":\"1m\",\"actor\":\"a\",\"reason\":\"{}\"}}", "x".repeat(MAX_BODY)))
            .send()
            .unwrap()
            .status()
            .as_u16();
        let no_reason = client
            .post(format!("{base}/admin/breaker/global/open"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .json(&serde_json::json!({"ttl": "30m", "actor": "alice-sre", "reason": " "}))
            .send()
            .unwrap()
            .status()
            .as_u16();
        (status, body, big, no_reason)
    });
    // Play the pipeline: answer the one command that must arrive.
    let cmd = s.commands.recv_timeout(Duration::from_secs(10)).expect("a command");
    match cmd {
        AdminCommand::Breaker { cell, action, actor, reason, reply } => {
            assert_eq!(cell, "risk-model-v7");
            assert_eq!(action, BreakerAction::Open { ttl: Duration::from_secs(1800) });
            assert_eq!((actor.as_str(), reason.as_str()), ("alice-sre", "incident 42"));
            reply.send(Ok(serde_json::json!({"to": "forced_open"}))).unwrap();
        }
        AdminCommand::Allow { .. } | AdminCommand::State { .. } => panic!("unexpected command"),
    }
    let (status, body, big, no_reason) = caller.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["to"], "forced_open");
    assert_eq!(big, 413, "bodies over {MAX_BODY} bytes are refused");
    assert_eq!(no_reason, 400, "every manual action needs a reason");
    assert!(s.commands.try_recv().is_err(), "refused requests send no command");
}

#[test]
fn healthz_fails_once_the_pipeline_loop_stops_coming_round() {
    use std::sync::atomic::Ordering;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let status = Arc::new(Status::default());
    let (tx, _rx) = mpsc::channel();
    let state = AdminState::new(None, tx, status.clone(), None);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = resetguard::http::router(prometheus::Registry::new(), status.clone(), state);
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let get = || reqwest::blocking::get(format!("http://{addr}/healthz")).unwrap();
    // Before the loop starts (topic setup, control topic read) the process is alive.
    assert_eq!(get().status(), 200);
    status.stall_timeout_ms.store(60_000, Ordering::SeqCst);
    status.beat();
    assert_eq!(get().status(), 200, "the loop came round just now");
    let now = status.heartbeat_ms.load(Ordering::SeqCst);
    status.heartbeat_ms.store(now - 61_000, Ordering::SeqCst);
    let stalled = get();
    assert_eq!(stalled.status(), 503);
    assert!(stalled.text().unwrap().contains("has not come round for 61 s"));
    status.beat();
    assert_eq!(get().status(), 200, "alive again once the loop comes round");
}

#[test]
fn the_console_page_is_served_without_data_and_with_strict_headers() {
    let s = server(Some(TOKEN));
    let client = reqwest::blocking::Client::new();
    let page = client.get(format!("{}/console", s.base)).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().unwrap();
    assert!(html.contains(r#"<input id="token" type="password""#), "a login form with a password field");
    assert!(html.contains(r#"<script src="/console/console.js" defer></script>"#));
    assert!(!html.contains("<script>"), "no inline script (the CSP forbids it)");
    for (path, kind) in [("/console/console.js", "text/javascript"), ("/console/console.css", "text/css")] {
        let r = client.get(format!("{}{path}", s.base)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert!(r.text().unwrap().len() > 1000, "{path} has content");
    }
    let js = client.get(format!("{}/console/console.js", s.base)).send().unwrap().text().unwrap();
    assert!(!js.contains("localStorage") && !js.contains("sessionStorage") && !js.contains("document.cookie"));
    assert!(!js.contains("innerHTML"), "data is inserted as text, never as HTML");
    assert!(s.commands.try_recv().is_err(), "loading the page sends nothing to the pipeline");
}

#[test]
fn with_the_token_the_console_endpoints_answer_without_touching_the_pipeline() {
    let s = server(Some(TOKEN));
    let client = reqwest::blocking::Client::new();
    let get = |path: &str| -> (u16, serde_json::Value) {
        let r =
            client.get(format!("{}{path}", s.base)).header("Authorization", format!("Bearer {TOKEN}")).send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(serde_json::Value::Null))
    };
    let (status, timeline) = get("/admin/timeline");
    assert_eq!(status, 200);
    assert!(timeline["now_ms"].as_i64().unwrap() > 0);
    assert_eq!(timeline["minutes"], serde_json::json!([]), "no sampler in this server: no minutes");
    assert_eq!(get("/admin/held/releases"), (200, serde_json::json!([])));
    // Without Kafka settings the held views are unavailable, not an error page with details.
    assert_eq!(get("/admin/held/groups").0, 503);
    assert_eq!(get("/admin/audit").0, 503);
    assert_eq!(get("/admin/notices/recent").0, 503);
    let stop = |body: serde_json::Value| {
        let r = client
            .post(format!("{}/admin/held/stop", s.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap_or_default())
    };
    assert_eq!(
        stop(serde_json::json!({"actor": "ana", "reason": "mailer struggling"})),
        (200, serde_json::json!({"stopped": []}))
    );
    assert_eq!(stop(serde_json::json!({"actor": "ana", "reason": " "})).0, 400, "a stop needs a reason");
    assert!(s.commands.try_recv().is_err());
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, in `dir` (openssl).
fn tls_files(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=admin-test-ca",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "admin.key",
        "-out",
        "admin.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "admin.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "admin.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[test]
fn the_admin_api_on_its_own_tls_listener_answers_https_only_and_the_cli_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    tls_files(dir.path());
    let tls =
        resetguard::http::tls::server_config(&dir.path().join("admin.pem"), &dir.path().join("admin.key")).unwrap();
    // A key that does not parse is a sentence naming the file.
    std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
    let err =
        resetguard::http::tls::server_config(&dir.path().join("admin.pem"), &dir.path().join("bad.key")).unwrap_err();
    assert!(err.contains("bad.key"), "{err}");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (tx, _rx) = mpsc::channel();
    let secret = Secret::new(TOKEN.to_string());
    let state = AdminState::new(Some(&secret), tx, Arc::new(Status::default()), None);
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _h) = rt
        .block_on(resetguard::http::serve_router(
            "127.0.0.1:0".parse().unwrap(),
            resetguard::http::admin::router(state),
            Some(tls),
            stop.clone(),
        ))
        .unwrap();

    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let https = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = https.get(format!("https://{addr}/admin/breaker")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<serde_json::Value>().unwrap(), serde_json::json!([]));
    let r =
        https.get(format!("https://{addr}/admin/breaker")).bearer_auth("wrong-token-of-decent-length").send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Only the admin API is served there, and only over TLS.
    assert_eq!(https.get(format!("https://{addr}/metrics")).send().unwrap().status().as_u16(), 401);
    assert_eq!(https.get(format!("https://{addr}/metrics")).bearer_auth(TOKEN).send().unwrap().status().as_u16(), 404);
    let plain = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    assert!(plain.get(format!("http://{addr}/admin/breaker")).bearer_auth(TOKEN).send().is_err(), "plain HTTP refused");

    // The CLI: with the CA it gets the cells (none here); without it, the certificate is not trusted.
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cli = |with_ca: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_resetguard"));
        c.args(["breaker", "status", "--url", &format!("https://{addr}"), "--token-file"])
            .arg(dir.path().join("token"));
        if with_ca {
            c.arg("--ca-file").arg(dir.path().join("ca.pem"));
        }
        c.env_remove("RESETGUARD_CA_FILE").output().unwrap()
    };
    let ok = cli(true);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "[]");
    let untrusted = cli(false);
    assert_eq!(untrusted.status.code(), Some(1), "{}", String::from_utf8_lossy(&untrusted.stderr));
    stop.cancel();
}
