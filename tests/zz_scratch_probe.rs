use std::sync::Arc;
use resetguard::core::{Engine, Policy, TimeMode};
use resetguard::core::event::format_rfc3339_ms;
const T0: i64 = 1_780_000_000_000;
fn ev(id: &str, acct: &str, t_ms: i64, source: &str, signal: &str, risk: f64) -> Vec<u8> {
    format!(r#"{{"event_id":"{id}","account_id":"{acct}","occurred_at":"{}","source":"{source}","signal":"{signal}","risk":{risk}}}"#, format_rfc3339_ms(t_ms)).into_bytes()
}
#[test]
fn array() {
    let mut e = Engine::new(Arc::new(Policy::default_with_version("v")), 1, TimeMode::EventTime);
    let b = br#"["e1","acct","2026-05-28T20:26:40Z","src","breached_password",1.0]"#;
    println!("{:?}", e.process(b, 0, T0 + 1000).outcome);
}
#[test]
fn lateness_beyond_window() {
    let p = Policy::from_toml("version=\"v\"\n[window]\nlength=\"5m\"\nallowed_lateness=\"10m\"\n").unwrap();
    let mut e = Engine::new(Arc::new(p), 1, TimeMode::EventTime);
    println!("{:?}", e.process(&ev("b", "x", T0 + 600_000, "s", "credential_stuffing", 1.0), 0, T0 + 3_600_000).outcome);
    println!("{:?}", e.process(&ev("a", "x", T0, "s", "impossible_travel", 1.0), 0, T0 + 3_600_000).outcome);
}
#[test]
fn ancient() {
    let mut e = Engine::new(Arc::new(Policy::default_with_version("v")), 1, TimeMode::EventTime);
    let b = br#"{"event_id":"z","account_id":"acct","occurred_at":"0001-01-01T00:00:00Z","source":"src","signal":"new_device","risk":0.1}"#;
    println!("{:?}", e.process(b, 0, T0).outcome);
    e.tick(T0);
    println!("{:?}", e.process(&ev("a", "x", T0, "s", "new_device", 0.1), 0, T0).outcome);
    e.tick(T0);
    println!("survived");
}
