//! A small W3C WebDriver client for browser tests: starts Debian's `chromedriver` (headless
//! Chromium) on a free loopback port in its own process group, speaks the protocol over HTTP with
//! the blocking reqwest client, and on drop ends the session and the whole process group, so no
//! browser process outlives the test. `scripts/browser-deps` installs the two packages.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test helper: fails the test loudly
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Runs `scripts/browser-deps` (idempotent: installs chromium and chromium-driver from Debian's
/// packages only when missing) and panics with its output when that fails.
pub fn ensure_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/browser-deps")).output().expect("running scripts/browser-deps");
    assert!(
        out.status.success(),
        "scripts/browser-deps failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width` × `height` window.
    pub fn start(width: u32, height: u32, log: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(log).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            // Its own process group: the drop ends chromedriver and every browser process with it.
            .process_group(0)
            .spawn()
            .expect("starting chromedriver (scripts/browser-deps installs it)");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser { driver, base, session: String::new(), http, _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = b.http.get(format!("{}/status", b.base)).send().ok().and_then(|r| r.json::<Value>().ok());
            if ready.as_ref().is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(b.driver.try_wait().unwrap().is_none(), "chromedriver exited at start");
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", b._profile.path().display()),
                ]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req.send().unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("WebDriver {method} {path}: {status} {v}"));
        }
        Ok(v["value"].clone())
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.call("GET", &self.s("/url"), None).as_str().unwrap_or_default().to_string()
    }

    /// The element matching a CSS selector (panics when there is none).
    pub fn find(&self, css: &str) -> Element {
        let v = self.call("POST", &self.s("/element"), Some(json!({"using": "css selector", "value": css})));
        Element(v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_string())
    }

    /// Clicks the element matching `css`; found again if the page re-rendered it in between.
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let e = self.find(css);
            match self.try_call("POST", &self.s(&format!("/element/{}/click", e.0)), None) {
                Ok(_) => return,
                Err(err) if err.contains("stale element reference") => continue,
                Err(err) => panic!("{err}"),
            }
        }
        panic!("{css} was re-rendered under every click");
    }

    /// Replaces the value of an input.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &self.s(&format!("/element/{}/clear", e.0)), None);
        self.call("POST", &self.s(&format!("/element/{}/value", e.0)), Some(json!({ "text": text })));
    }

    /// The rendered text of an element.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &self.s(&format!("/element/{}/text", e.0)), None).as_str().unwrap_or_default().to_string()
    }

    /// Runs a script in the page (`return ...;`) and gives back its result.
    pub fn script(&self, script: &str) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({ "script": script, "args": [] })))
    }

    /// Polls `f` every 200 ms until it gives `Some`, or panics after `timeout` naming `what` and
    /// the last thing seen (a progress deadline, not a timing assertion).
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Browser) -> Result<T, String>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match f(self) {
                Ok(v) => return v,
                Err(seen) => assert!(Instant::now() < deadline, "waited {timeout:?} for {what}; last seen: {seen}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the whole page: the window is made as tall as the page first.
    pub fn screenshot(&self, path: &Path) {
        let h = self.script("return Math.ceil(document.documentElement.scrollHeight);").as_u64().unwrap_or(2000);
        let w = self.script("return window.outerWidth;").as_u64().unwrap_or(1400);
        self.call("POST", &self.s("/window/rect"), Some(json!({"width": w, "height": h.clamp(600, 8000) + 20})));
        self.script("window.scrollTo(0, 0); return true;");
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(b64.as_str().expect("base64 PNG"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        }
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.driver.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (a browser process that ignored TERM).
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (RFC 4648, with padding), as WebDriver returns screenshots.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
