//! The incident console (`/console`) in a real browser: headless Chromium (Debian's package),
//! driven over WebDriver by Debian's chromedriver, against a live `resetguard run` on the real
//! Apache Kafka broker the tests start.
//!
//! An operator signs in (a wrong token is refused), sees a cell trip after a spike, selects the
//! 100 notices held after the trip, previews and releases them at a pace, stops the release
//! part-way, releases the rest, discards what the spike itself held, forces a cell open and
//! clears it, and sees the audit trail. Then
//! the notices topic (read_committed) holds each of the 100 released notice ids exactly once, the
//! audit topic names each once, no account id was on the page, and the service log holds no
//! token. A full-page screenshot goes to `target/test-output/console.png`.
#![allow(clippy::unwrap_used)] // a test fails loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::kafka::{unique_name, KafkaBroker, Record};
use common::service::{ev, input, now_ms, produce, signal, spawn_service, wait_committed, Expect, Input, Topics};
use common::webdriver::{base64_decode, ensure_browser, Browser};
use resetguard::core::event::format_rfc3339_ms;

const TOKEN: &str = "console-e2e-admin-token-0123456789";
const ACTOR: &str = "ana@sec";
const SOURCE: &str = "buggy-model";
/// Decisions of the spike that trips the cell (spike floor 10).
const SPIKE: usize = 40;
/// Decisions after the trip: all held, then released from the console.
const AFTER: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(90);
const POLICY: &str = "[breaker]\nspike_floor = 10\nopen_duration = \"30m\"\n";

/// The service process; SIGKILLed if the test fails before it is stopped.
struct Service(Option<Child>);

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spike(tag: &str, n: usize) -> Vec<Input> {
    let t = now_ms();
    (0..n)
        .map(|i| {
            let (a, id) = (format!("{tag}-acct-{i}"), format!("{tag}-e{i}"));
            input(&a, ev(&id, &a, t + i as i64, SOURCE, "breached_password", 1.0), Expect::Decision, Some(&id))
        })
        .collect()
}

fn header(r: &Record, name: &str) -> Option<String> {
    r.header(name).flatten().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn json(r: &Record) -> serde_json::Value {
    serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()
}

fn output_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-output")
}

/// The console's cell rows: cell → (state attribute, state badge text, cause text).
fn cell_rows(b: &Browser) -> BTreeMap<String, (String, String, String)> {
    let v = b.script(
        "return [...document.querySelectorAll('#cells tr[data-cell]')].map(r => \
         [r.dataset.cell, r.dataset.state, r.children[1].innerText.trim(), r.children[2].innerText.trim()]);",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap().to_string();
            (s(0), (s(1), s(2), s(3)))
        })
        .collect()
}

/// The entry of the page's action log that contains `needle`.
fn action_with(b: &Browser, needle: &str) -> Result<String, String> {
    let v = b.script("return [...document.querySelectorAll('#action-log li')].map(li => li.innerText);");
    let entries: Vec<String> = v.as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    entries.iter().find(|e| e.contains(needle)).cloned().ok_or_else(|| format!("{entries:?}"))
}

/// Opens the confirm dialog's form: waits for the preview to contain `preview`, fills actor and
/// reason, confirms. Returns the preview text.
fn confirm(b: &Browser, preview: &str, reason: &str) -> String {
    confirm_with_picture(b, preview, reason, None)
}

/// [`confirm`], with a screenshot of the dialog once its preview is there.
fn confirm_with_picture(b: &Browser, preview: &str, reason: &str, picture: Option<&Path>) -> String {
    let text = b.wait_for(&format!("a preview saying {preview:?}"), TIMEOUT, |b| {
        let t = b.text("#dialog-preview");
        if t.contains(preview) {
            Ok(t)
        } else {
            Err(t)
        }
    });
    assert_eq!(
        b.script("return document.getElementById('dialog-confirm').disabled;"),
        serde_json::json!(true),
        "no confirm without actor and reason"
    );
    b.type_into("#actor", ACTOR);
    b.type_into("#reason", reason);
    if let Some(p) = picture {
        b.screenshot(p);
    }
    b.click("#dialog-confirm");
    b.wait_for("the dialog to close", TIMEOUT, |b| {
        let hidden = b.script("return document.getElementById('dialog').classList.contains('hidden');");
        if hidden == serde_json::json!(true) {
            Ok(())
        } else {
            Err(b.text("#dialog-error"))
        }
    });
    text
}

#[test]
fn the_incident_console_shows_a_tripped_cell_and_releases_held_notices_exactly_once() {
    ensure_browser();
    let broker = KafkaBroker::shared();
    let t = Topics::create(broker, "console");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = t.write_instance_config(
        broker,
        dir.path(),
        "resetguard.toml",
        &unique_name("console-txn"),
        POLICY,
        &format!("127.0.0.1:{port}"),
    );
    let service_log = dir.path().join("service.log");
    let mut service = Service(Some(spawn_service(&config, &service_log)));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while http.get(format!("{base}/readyz")).send().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(
            service.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the service exited:\n{}",
            std::fs::read_to_string(&service_log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "the service did not get ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = output_dir();
    std::fs::create_dir_all(&out).unwrap();
    let b = Browser::start(1400, 1800, &out.join("chromedriver.log"));

    // Sign in: the page itself is public and empty; a wrong token is refused.
    b.goto(&format!("{base}/console"));
    assert_eq!(b.text("h1"), "resetguard incident console");
    b.type_into("#token", "wrong-token-of-decent-length");
    b.click("#login");
    let refused = b.wait_for("the wrong token to be refused", TIMEOUT, |b| {
        let t = b.text("#login-error");
        if t.contains("refused") {
            Ok(t)
        } else {
            Err(t)
        }
    });
    assert_eq!(refused, "The token was refused.");
    b.type_into("#token", TOKEN);
    b.click("#login");
    b.wait_for("the global cell in the console", TIMEOUT, |b| {
        let rows = cell_rows(b);
        match rows.get("global") {
            Some((state, badge, _)) if state == "closed" && badge == "closed" => Ok(()),
            _ => Err(format!("{rows:?}")),
        }
    });
    assert!(!b.current_url().contains(TOKEN), "the token is never in the URL");
    assert_eq!(
        b.script("return document.getElementById('token').value;"),
        serde_json::json!(""),
        "the token field is emptied"
    );

    // A spike from one source trips its cell.
    let first = spike("spike", SPIKE);
    produce(broker, &t.input, &first);
    wait_committed(broker, &t, SPIKE as i64, TIMEOUT);
    let escaped = broker.read_all_committed(&t.notices, TIMEOUT).len();
    let held_first = broker.read_all_committed(&t.held, TIMEOUT).len();
    assert_eq!(escaped + held_first, SPIKE, "each decision sent or held");
    // The floor is 10 a minute: at most 20 escape when the spike straddles a minute.
    assert!(held_first > 0 && escaped <= 20, "the cell trips at its spike floor: {escaped} sent, {held_first} held");
    let rows = b.wait_for("the tripped cell in the console", TIMEOUT, |b| {
        let rows = cell_rows(b);
        match rows.get(SOURCE) {
            Some((state, _, _)) if state == "open" => Ok(rows),
            _ => Err(format!("{rows:?}")),
        }
    });
    let (_, badge, cause) = &rows[SOURCE];
    assert_eq!((badge.as_str(), cause.as_str()), ("open", "spike"), "state and cause on the page");
    assert_eq!(rows["global"].0, "closed", "a source's spike does not trip the global cell");

    // After the trip: every decision of the cell is held.
    let cut_ms = now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let second = spike("late", AFTER);
    produce(broker, &t.input, &second);
    wait_committed(broker, &t, (SPIKE + AFTER) as i64, TIMEOUT);
    let held_all = broker.read_all_committed(&t.held, TIMEOUT);
    assert_eq!(held_all.len(), held_first + AFTER);
    let after: BTreeSet<String> = held_all
        .iter()
        .map(json)
        .filter(|v| {
            resetguard::core::event::parse_rfc3339_ms(v["held"]["held_at"].as_str().unwrap()).unwrap() >= cut_ms
        })
        .map(|v| {
            assert_eq!(v["held"]["reason"], "breaker_open");
            v["notice_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(after.len(), AFTER, "the {AFTER} decisions after the trip are held");
    b.wait_for("the held queue on the page", TIMEOUT, |b| {
        let pending = b.script("return document.getElementById('held-summary').dataset.pending || '';");
        if pending == serde_json::json!((held_first + AFTER).to_string()) {
            Ok(())
        } else {
            Err(format!("{pending}"))
        }
    });
    let groups = b.text("#held-groups");
    assert!(groups.contains(SOURCE) && groups.contains("breaker open"), "grouped by cell and reason: {groups}");

    // Release the 100 at a slow pace, with a preview and an explicit confirm...
    b.type_into("#sel-cell", SOURCE);
    b.type_into("#sel-from", &format_rfc3339_ms(cut_ms));
    b.type_into("#sel-rate", "60");
    b.click("#preview-release");
    let preview = confirm_with_picture(
        &b,
        "100 pending held notices match",
        "INC-4711: model fixed, releasing",
        Some(&out.join("console-release-preview.png")),
    );
    assert!(preview.contains("at 60/min: about 2 min"), "the preview says the pace: {preview}");
    // ...then stop it part-way.
    b.wait_for("the running release", TIMEOUT, |b| {
        let n = b.script("return document.querySelectorAll('#releases li[data-release] button').length;");
        if n == serde_json::json!(1) {
            Ok(())
        } else {
            Err(b.text("#releases"))
        }
    });
    b.wait_for("a few released notices on the topic", TIMEOUT, |_| {
        let n = broker.read_all_committed(&t.notices, TIMEOUT).len();
        if n >= escaped + 3 {
            Ok(())
        } else {
            Err(format!("{n} notices"))
        }
    });
    b.click("#releases li[data-release] button");
    confirm(&b, "It commits what it has sent and stops", "INC-4711: pausing to check the mailer");
    let stopped = b.wait_for("the stopped release", TIMEOUT, |b| action_with(b, "(stopped)"));
    let sent_first: usize = stopped.split("sent ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(sent_first > 0 && sent_first < AFTER, "stopped part-way: {stopped}");
    assert!(stopped.contains(&format!("remaining {}", AFTER - sent_first)), "{stopped}");

    // Release the rest, fast: each notice still goes once.
    b.type_into("#sel-rate", "6000");
    b.click("#preview-release");
    let rest = AFTER - sent_first;
    confirm(&b, &format!("{rest} pending held notices match"), "INC-4711: mailer fine, releasing the rest");
    let done = b.wait_for("the second release", TIMEOUT, |b| action_with(b, "(done)"));
    assert!(done.contains(&format!("sent {rest}, already released {sent_first}")), "{done}");

    // Discard what the spike itself held (held before the cut): never sent.
    b.type_into("#sel-from", "");
    b.type_into("#sel-to", &format_rfc3339_ms(cut_ms));
    b.click("#preview-discard");
    let p = confirm(
        &b,
        &format!("{held_first} pending held notices match"),
        "INC-4711: the spike's first minute was bogus",
    );
    assert!(p.contains("DISCARDED: never sent"), "{p}");
    let discarded = b.wait_for("the discard", TIMEOUT, |b| action_with(b, "discard of"));
    assert!(discarded.contains(&format!("discarded {held_first}, already released 0")), "{discarded}");
    b.wait_for("an empty held queue", TIMEOUT, |b| {
        let t = b.text("#held-summary");
        if t == format!("0 pending · {AFTER} released · {held_first} discarded") {
            Ok(())
        } else {
            Err(t)
        }
    });

    // Force a cell open for a TTL, then clear the override.
    b.type_into("#other-cell", "auth-service");
    b.click("#other-open");
    b.type_into("#ttl", "10m");
    let p = confirm(&b, "OPEN for 10m", "INC-4712: auth-service anomaly under review");
    assert!(p.contains("every decision of this cell is held"), "{p}");
    b.wait_for("the forced-open cell", TIMEOUT, |b| {
        let rows = cell_rows(b);
        match rows.get("auth-service") {
            Some((state, badge, cause))
                if state == "forced_open" && badge == "forced open" && cause == "manual open" =>
            {
                Ok(())
            }
            _ => Err(format!("{rows:?}")),
        }
    });
    b.click("#cells tr[data-cell='auth-service'] button[data-action='clear']");
    confirm(&b, "End the override on cell \"auth-service\"", "INC-4712: resolved");
    b.wait_for("the cleared cell", TIMEOUT, |b| {
        let rows = cell_rows(b);
        match rows.get("auth-service") {
            Some((state, _, cause)) if state == "half_open" && cause == "manual clear" => Ok(()),
            _ => Err(format!("{rows:?}")),
        }
    });

    // The audit trail on the page: both releases (100 notices in all) and both overrides.
    let audit = b.wait_for("the audit trail", TIMEOUT, |b| {
        let v = b.script(
            "return [...document.querySelectorAll('#audit tr[data-action]')].map(r => \
             [r.dataset.action, r.children[1].innerText, r.children[4].innerText]);",
        );
        let rows: Vec<(String, String, usize)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().into(),
                    r[1].as_str().unwrap().into(),
                    r[2].as_str().unwrap().parse().unwrap_or(0),
                )
            })
            .collect();
        let released: usize = rows.iter().filter(|r| r.0 == "release").map(|r| r.2).sum();
        let has = |a: &str| rows.iter().any(|r| r.0 == a && r.1 == ACTOR);
        let discarded: usize = rows.iter().filter(|r| r.0 == "discard").map(|r| r.2).sum();
        if released == AFTER && discarded == held_first && has("breaker_open") && has("breaker_clear") {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    assert!(audit.iter().all(|r| r.1 == ACTOR), "{audit:?}");
    // Last notices: counts and notice ids, no account ids.
    b.wait_for("the released notices in the last notices", TIMEOUT, |b| {
        let t = b.text("#notices-summary");
        if t.contains("25 released from the held queue") {
            Ok(())
        } else {
            Err(t)
        }
    });
    let page = b.script("return document.body.innerText;").as_str().unwrap().to_string();
    assert!(!page.contains("-acct-"), "no account id on the page by default");
    let shown = b.text("#notices");
    assert_eq!(shown.matches("rn_").count(), 25, "notice ids shown: {shown}");
    // The picture: held per minute and the tripped cell's band.
    let bars = b.script(
        "return [document.querySelectorAll('#chart rect.bar-held').length, \
         document.querySelectorAll('#chart rect.band[data-cell=\"buggy-model\"]').length];",
    );
    assert!(bars[0].as_u64().unwrap() >= 1 && bars[1].as_u64().unwrap() >= 1, "chart: {bars}");
    b.screenshot(&out.join("console.png"));

    // Kafka: each released notice exactly once (read_committed), the audit topic names each once.
    let notices = broker.read_all_committed(&t.notices, TIMEOUT);
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    for r in &notices {
        let id = header(r, "notice_id").expect("notice_id header");
        assert_eq!(json(r)["notice_id"], id.as_str());
        *ids.entry(id.clone()).or_default() += 1;
        if let Some(by) = header(r, "released_by") {
            assert_eq!(by, ACTOR);
            released.insert(id);
        }
    }
    assert!(ids.values().all(|n| *n == 1), "a notice id twice on the notices topic");
    assert_eq!(notices.len(), escaped + AFTER, "the escaped notices and the {AFTER} released ones");
    assert_eq!(released.len(), AFTER);
    assert!(released == after, "exactly the notices held after the trip were released");
    let mut audited: BTreeMap<String, usize> = BTreeMap::new();
    let mut actions: Vec<String> = Vec::new();
    for r in broker.read_all_committed(&format!("{}-audit", t.shadow), TIMEOUT) {
        let v = json(&r);
        assert_eq!(v["actor"], ACTOR);
        actions.push(v["action"].as_str().unwrap().to_string());
        for id in v["notice_ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
            *audited.entry(id.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let held_ids: BTreeSet<String> =
        held_all.iter().map(|r| json(r)["notice_id"].as_str().unwrap().to_string()).collect();
    assert!(audited.values().all(|n| *n == 1), "an id audited twice");
    assert!(
        audited.keys().cloned().collect::<BTreeSet<_>>() == held_ids,
        "every held notice released or discarded, audited once"
    );
    assert!(actions.contains(&"breaker_open".to_string()) && actions.contains(&"breaker_clear".to_string()));

    drop(b);
    let mut child = service.0.take().unwrap();
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&service_log).unwrap_or_default();
    assert!(status.success(), "the service stops cleanly on SIGTERM: {status}\n{log}");
    assert!(!log.contains(TOKEN), "the token is never logged");
    assert!(!log.contains("-acct-"), "no account id in the log");
    eprintln!(
        "console: {escaped} escaped, {held_first} held by the spike, {AFTER} released ({sent_first} before the stop); screenshot {}",
        out.join("console.png").display()
    );
}

#[test]
fn base64_decodes_what_webdriver_screenshots_are_sent_as() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aGk="), b"hi");
}
