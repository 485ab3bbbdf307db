//! A real single-node Apache Kafka broker (KRaft, combined broker+controller) on loopback,
//! for integration tests.
//!
//! ```ignore
//! mod common;
//! use common::kafka::KafkaBroker;
//!
//! let broker = KafkaBroker::start();          // own broker, killed on drop
//! broker.create_topic("in", 2);
//! broker.produce("in", &[("k1", "v1")]);
//! let recs = broker.read_all_committed("in", Duration::from_secs(30));
//! ```
//!
//! * Jars come from `.cache/kafka/libs`, fetched on demand by `scripts/kafka-jars` (Maven; the
//!   script is idempotent and takes a file lock, so parallel test binaries don't clash).
//! * Each broker lives in its own temp dir (config, data, `broker.log`) and listens on fresh
//!   loopback ports.
//! * `Drop` SIGKILLs the JVM and reaps it. Independently, a tiny watchdog process kills the JVM
//!   and removes the temp dir as soon as the test process goes away (panic=abort, SIGKILL, or the
//!   process exiting with a broker still in a `static`), so no broker outlives its test binary.
//! * Start cost (~1 s on an idle 2-core box): the storage format runs once per jar set (a
//!   formatted template dir is copied per broker), and the JVM loads classes from an AppCDS
//!   archive that the first dropped broker records (see [`cds_plan`]). Both live next to the jars.
//! * Fault injection (dedicated brokers only, see [`KafkaBroker::start_dedicated`]):
//!   [`KafkaBroker::kill`] (SIGKILL + reap), [`KafkaBroker::restart`] (a new JVM on the same data
//!   dir, ports and `server.properties`), [`KafkaBroker::freeze`] / [`KafkaBroker::thaw`]
//!   (SIGSTOP / SIGCONT). The watchdog kills whatever JVM the pid file `jvm.pid` names, so it
//!   follows restarts.
//! * Retention checks, segment deletion and the abort of timed-out transactions run every ~1 s
//!   (see [`server_properties`]), so fault recipes that wait for them stay short.
//! * Needs `java` (17+) on PATH or `$JAVA_HOME`, `bash`, and `mvn` only when the jars are not
//!   cached. Env: `KAFKA_CACHE_DIR` (jar cache, default `<repo>/.cache/kafka`),
//!   `KAFKA_TEST_CDS=0` (no class-data-sharing archive).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long `start()` waits for the broker to answer metadata requests.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout for single client round trips made by the helpers (admin ops, metadata, init txns).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Fixed KRaft cluster id (base64 of 16 bytes). Every broker has its own data dir, so sharing
/// the id between brokers is harmless, and it saves a JVM launch for `random-uuid`.
const CLUSTER_ID: &str = "q1Sh-9_ISia_zwGINzRvyQ";
const NODE_ID: u32 = 1;
/// Attempts when the broker dies at startup because a port picked by us was taken meanwhile.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 80;

/// Tuned to start fast (C1 only, serial GC); `RG_BROKER_JVM_FLAGS` adds flags after these.
const JVM_FLAGS: &[&str] = &[
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
];

const LOG4J2_CONFIG: &str = "\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
# one INFO line that marks the end of startup
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
";

/// [`LOG4J2_CONFIG`] plus the lines of `RG_BROKER_LOG4J_EXTRA` (`;` separates lines), for a
/// bench that wants more of the broker's log, e.g. the request log:
/// `RG_BROKER_LOG4J_EXTRA="logger.req.name = kafka.request.logger;logger.req.level = DEBUG"`.
fn log4j_config() -> String {
    let extra = std::env::var("RG_BROKER_LOG4J_EXTRA").unwrap_or_default();
    format!("{LOG4J2_CONFIG}{}\n", extra.replace(';', "\n"))
}

/// Watchdog: `$1` = pid file naming the JVM, `$2` = dir to delete. Blocks until its stdin (a pipe
/// whose only writer is the test process) reaches EOF, i.e. until `Drop` or the death of the test
/// process, then SIGKILLs the pid in the file (if any) and deletes the dir.
/// The pid file only ever names a JVM the test process has not reaped: [`KafkaBroker::kill`]
/// empties it before reaping, [`KafkaBroker::restart`] writes the new pid right after the spawn,
/// and `Drop` reaps only after this watchdog has exited; so the pid cannot have been recycled for
/// another process when the kill runs.
/// `Drop` writes `nokill` first when it has already stopped and reaped the JVM itself.
const WATCHDOG_SCRIPT: &str = r#"read -r cmd || true; if [ "$cmd" != nokill ]; then p=$(cat -- "$1" 2>/dev/null); [ -n "$p" ] && kill -9 "$p" 2>/dev/null; fi; rm -rf -- "$2""#;
/// Name of the pid file (in the broker dir) the watchdog reads.
const PID_FILE: &str = "jvm.pid";

/// One record as read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// Key as UTF-8 (panics if it is not UTF-8).
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().map(|k| std::str::from_utf8(k).expect("record key is not UTF-8"))
    }

    /// Payload as UTF-8 (panics if it is not UTF-8).
    pub fn payload_str(&self) -> Option<&str> {
        self.payload.as_deref().map(|p| std::str::from_utf8(p).expect("record payload is not UTF-8"))
    }

    /// Value of the first header named `name` (`Some(None)` for a null-valued header).
    pub fn header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_deref())
    }
}

/// Isolation level used by the read helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

impl Isolation {
    fn as_config(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// A running single-node Kafka broker. See the module docs.
pub struct KafkaBroker {
    /// `127.0.0.1:<port>` of the PLAINTEXT listener.
    pub bootstrap: String,
    /// Wall time `start()` needed (jar check, log-dir layout, JVM start, first metadata answer).
    pub startup_time: Duration,
    java: Child,
    watchdog: Child,
    watchdog_stdin: Option<ChildStdin>,
    log_path: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// `(tmp, final)` when this JVM records the class-data-sharing archive at exit.
    cds_dump: Option<(PathBuf, PathBuf)>,
    /// The jar dir this broker runs from (for [`Self::restart`]).
    libs: PathBuf,
    /// Whether the JVM is running, SIGSTOPped, or killed and reaped.
    jvm: JvmState,
}

/// What the fault controls did to the broker's JVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JvmState {
    Running,
    Frozen,
    Killed,
}

impl KafkaBroker {
    /// Starts a fresh broker; panics (with the tail of the broker log) if it cannot.
    pub fn start() -> KafkaBroker {
        match Self::try_start() {
            Ok(broker) => broker,
            Err(e) => panic!("failed to start the Kafka test broker: {e}"),
        }
    }

    /// A broker shared by all tests of the current test binary, started on first use. Use
    /// distinct topic/group/transactional ids per test (see [`unique_name`]). It is never
    /// dropped; the watchdog kills it and removes its files when the test process exits.
    pub fn shared() -> &'static KafkaBroker {
        static SHARED: OnceLock<KafkaBroker> = OnceLock::new();
        // Never dropped, so it could not write a CDS archive: don't let it record one.
        SHARED.get_or_init(|| match Self::try_start_with(false) {
            Ok(broker) => broker,
            Err(e) => panic!("failed to start the shared Kafka test broker: {e}"),
        })
    }

    /// A broker of its own for a fault test (kill, restart, freeze): like [`Self::start`], but it
    /// never records the class-data-sharing archive (a killed JVM could not write it). Never use
    /// the fault controls on [`Self::shared`].
    pub fn start_dedicated() -> KafkaBroker {
        Self::try_start_with(false).unwrap_or_else(|e| panic!("failed to start a dedicated Kafka test broker: {e}"))
    }

    /// Like [`KafkaBroker::start`], but returns the error instead of panicking.
    pub fn try_start() -> Result<KafkaBroker, String> {
        Self::try_start_with(true)
    }

    /// A broker for the benches: like [`Self::start`], but with Kafka's own segment size (1 GiB)
    /// instead of the tests' 1 MiB. The tests' small segments let the retention recipes delete
    /// data within seconds; under a bench's load they roll a segment of every busy partition
    /// every second or two, and those rolls showed in the commit latency's tail (p99 event ->
    /// notice 145 ms against 90-123 ms with Kafka's default; BENCHMARKS.md).
    pub fn start_for_bench() -> KafkaBroker {
        Self::try_start_segments(true, KAFKA_SEGMENT_BYTES)
            .unwrap_or_else(|e| panic!("failed to start the Kafka bench broker: {e}"))
    }

    fn try_start_with(may_record_cds: bool) -> Result<KafkaBroker, String> {
        Self::try_start_segments(may_record_cds, TEST_SEGMENT_BYTES)
    }

    fn try_start_segments(may_record_cds: bool, segment_bytes: u64) -> Result<KafkaBroker, String> {
        let began = Instant::now();
        let libs = kafka_libs()?;
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(&libs, began, may_record_cds, None, segment_bytes) {
                Ok(broker) => return Ok(broker),
                Err(StartError { msg, port_clash }) => {
                    last_err = msg;
                    if !port_clash || attempt == START_ATTEMPTS {
                        break;
                    }
                    eprintln!("kafka test broker: port clash on attempt {attempt}, retrying");
                }
            }
        }
        Err(last_err)
    }

    /// A dedicated broker with, next to its PLAINTEXT listener (`bootstrap`, for the tests' own
    /// clients), a SASL_SSL listener (SCRAM-SHA-512, user created at format time) and an SSL
    /// listener that requires a client certificate (mTLS), with a test CA, broker and client
    /// certificates generated here (openssl, PKCS12 stores for the broker).
    pub fn start_secured() -> (KafkaBroker, SecureListeners) {
        let began = Instant::now();
        let libs = kafka_libs().unwrap_or_else(|e| panic!("{e}"));
        let certs = tempfile::Builder::new().prefix("resetguard-kafka-tls-").tempdir().unwrap();
        let mut last_err = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let (sasl_port, mtls_port) = free_port_pair().unwrap_or_else(|e| panic!("{e}"));
            let secure = SecureListeners::generate(certs.path(), sasl_port, mtls_port);
            match Self::start_once(&libs, began, false, Some(&secure), TEST_SEGMENT_BYTES) {
                Ok(broker) => {
                    let mut secure = secure;
                    secure.certs = Some(certs);
                    return (broker, secure);
                }
                Err(StartError { msg, port_clash }) => {
                    last_err = msg;
                    if !port_clash || attempt == START_ATTEMPTS {
                        break;
                    }
                }
            }
        }
        panic!("failed to start the secured Kafka test broker: {last_err}");
    }

    fn start_once(
        libs: &Path,
        began: Instant,
        may_record_cds: bool,
        secure: Option<&SecureListeners>,
        segment_bytes: u64,
    ) -> Result<KafkaBroker, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("resetguard-kafka-")
            .tempdir()
            .map_err(|e| StartError::plain(format!("creating temp dir: {e}")))?;
        let (port, controller_port) = free_port_pair().map_err(StartError::plain)?;
        let bootstrap = format!("127.0.0.1:{port}");
        let props_path = dir.path().join("server.properties");
        let log4j_path = dir.path().join("log4j2.properties");
        let log_path = dir.path().join("broker.log");
        let data_dir = dir.path().join("data");
        let write =
            |p: &Path, s: &str| fs::write(p, s).map_err(|e| StartError::plain(format!("writing {}: {e}", p.display())));
        let mut props = server_properties(port, controller_port, &data_dir, segment_bytes);
        if let Some(sec) = secure {
            props = sec.server_properties(&props, port, controller_port);
        }
        write(&props_path, &props)?;
        write(&log4j_path, &log4j_config())?;

        // 1. Lay out the formatted KRaft log dir (static single-voter quorum). Formatting is a
        //    JVM launch of its own; its output does not depend on ports or paths, so it runs
        //    once per jar set and each broker gets a copy. A secured broker is formatted for
        //    itself: its SCRAM credentials are part of the formatted metadata.
        match secure {
            None => {
                let template = formatted_template(libs).map_err(StartError::plain)?;
                copy_dir(&template, &data_dir)
                    .map_err(|e| StartError::plain(format!("copying formatted log dir: {e}")))?;
            }
            Some(sec) => {
                let out = jvm_command(libs, &log4j_path, dir.path(), &[], "kafka.tools.StorageTool")
                    .args(["format", "--cluster-id", CLUSTER_ID, "--config"])
                    .arg(&props_path)
                    .args(["--add-scram", &sec.scram_credential()])
                    .output()
                    .map_err(|e| StartError::plain(format!("running java ({}): {e}", java_bin())))?;
                if !out.status.success() {
                    return Err(StartError::plain(format!(
                        "kafka-storage format --add-scram failed ({}):\n{}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
        }

        // 2. Start the broker, output to broker.log.
        let log = fs::File::create(&log_path)
            .map_err(|e| StartError::plain(format!("creating {}: {e}", log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| StartError::plain(format!("dup log fd: {e}")))?;
        let (cds_flags, cds_dump) = cds_plan(libs, may_record_cds);
        let java = jvm_command(libs, &log4j_path, dir.path(), &cds_flags, "kafka.Kafka")
            .arg(&props_path)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| StartError::plain(format!("spawning java ({}): {e}", java_bin())))?;
        let java_pid = java.id();
        let mut java = KillOnDrop(Some(java));
        let pid_file = dir.path().join(PID_FILE);
        write_pid_file(&pid_file, Some(java_pid)).map_err(StartError::plain)?;

        // 3. Watchdog that kills the JVM when the test process goes away.
        let mut watchdog = Command::new("bash")
            .args(["-c", WATCHDOG_SCRIPT, "kafka-test-watchdog"])
            .arg(&pid_file)
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| StartError::plain(format!("spawning watchdog (bash): {e}")))?;
        let watchdog_stdin = watchdog.stdin.take();

        let mut broker = KafkaBroker {
            bootstrap,
            startup_time: Duration::ZERO,
            java: java.0.take().expect("java child present"),
            watchdog,
            watchdog_stdin,
            log_path,
            dir: Some(dir),
            cds_dump,
            libs: libs.to_path_buf(),
            jvm: JvmState::Running,
        };

        // 4. Wait until it answers metadata requests.
        if let Err(msg) = broker.wait_ready(START_TIMEOUT) {
            let tail = broker.log_tail(LOG_TAIL_LINES);
            let port_clash = tail.contains("Address already in use");
            if broker.cds_dump.take().is_some() {
                CDS_DUMP_CLAIMED.store(false, Ordering::SeqCst);
            }
            // `broker` is dropped here: JVM killed, temp dir removed.
            return Err(StartError { msg: format!("{msg}\n--- tail of broker.log ---\n{tail}"), port_clash });
        }
        broker.startup_time = began.elapsed();
        eprintln!(
            "kafka test broker ready on {} in {:.2?} (dir {})",
            broker.bootstrap,
            broker.startup_time,
            broker.dir().display()
        );
        Ok(broker)
    }

    /// SIGTERM (controlled shutdown) and wait for the JVM to exit; `true` once reaped.
    fn stop_gracefully(&mut self, timeout: Duration) -> bool {
        let pid = self.java.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            return false;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.java.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return false,
            }
        }
        false
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let probe: BaseConsumer = self
            .base_config()
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "250")
            .create()
            .map_err(|e| format!("creating metadata probe client: {e}"))?;
        let mut last: String;
        loop {
            if let Some(status) = self.java.try_wait().map_err(|e| format!("try_wait: {e}"))? {
                return Err(format!("broker JVM exited during startup ({status})"));
            }
            match probe.fetch_metadata(None, Duration::from_millis(500)) {
                Ok(md) if md.brokers().iter().any(|b| b.id() == NODE_ID as i32) => return Ok(()),
                Ok(_) => last = "metadata answered without brokers".into(),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "broker did not answer metadata on {} within {timeout:?} (last: {last})",
                    self.bootstrap
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ---- fault controls (dedicated brokers only) ----------------------------------------------

    /// What the fault controls last did to the JVM.
    pub fn jvm_state(&self) -> JvmState {
        self.jvm
    }

    /// OS pid of the current broker JVM.
    pub fn pid(&self) -> u32 {
        self.java.id()
    }

    /// SIGKILLs the broker JVM and reaps it (no controlled shutdown: the data dir is left as a
    /// crash leaves it). The dir, ports and config stay for [`Self::restart`].
    pub fn kill(&mut self) {
        if self.jvm == JvmState::Killed {
            return;
        }
        self.give_up_cds_recording();
        // Empty the pid file first: once reaped, the pid may be recycled (see WATCHDOG_SCRIPT).
        if let Err(e) = write_pid_file(&self.dir().join(PID_FILE), None) {
            panic!("kill: {e}");
        }
        let _ = self.java.kill(); // SIGKILL; also ends a SIGSTOPped JVM
        let status = self.java.wait().unwrap_or_else(|e| panic!("reaping the killed broker JVM: {e}"));
        self.jvm = JvmState::Killed;
        eprintln!("kafka test broker {}: JVM killed ({status})", self.bootstrap);
    }

    /// Starts a new broker JVM on the same data dir, ports and `server.properties` (killing the
    /// running one first if there is one), and waits until it answers metadata again (log
    /// recovery after a kill included). Its output is appended to the same `broker.log`.
    /// Panics with the log tail if it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let began = Instant::now();
        let mut last = String::new();
        // The ports were the old JVM's; a port another process grabbed meanwhile is retried for a
        // while (nothing else on this machine should want them).
        for attempt in 1..=10 {
            match self.spawn_again() {
                Ok(()) => {}
                Err(e) => panic!("restarting the Kafka test broker: {e}"),
            }
            match self.wait_ready(START_TIMEOUT) {
                Ok(()) => {
                    eprintln!(
                        "kafka test broker {} restarted in {:.2?} (attempt {attempt})",
                        self.bootstrap,
                        began.elapsed()
                    );
                    return;
                }
                Err(msg) => {
                    let tail = self.log_tail(LOG_TAIL_LINES);
                    last = format!("{msg}\n--- tail of broker.log ---\n{tail}");
                    let clash = tail.contains("Address already in use");
                    self.kill();
                    if !clash {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        panic!("the Kafka test broker did not come back after a restart: {last}");
    }

    fn spawn_again(&mut self) -> Result<(), String> {
        let dir = self.dir().to_path_buf();
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log_path)
            .map_err(|e| format!("opening {}: {e}", self.log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
        let (cds_flags, _) = cds_plan(&self.libs, false);
        let java = jvm_command(&self.libs, &dir.join("log4j2.properties"), &dir, &cds_flags, "kafka.Kafka")
            .arg(dir.join("server.properties"))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| format!("spawning java ({}): {e}", java_bin()))?;
        let pid = java.id();
        self.java = java;
        self.jvm = JvmState::Running;
        write_pid_file(&dir.join(PID_FILE), Some(pid))
    }

    /// SIGSTOPs the broker JVM: connections stay open, nothing answers (a long GC pause, a
    /// frozen VM). [`Self::thaw`] resumes it; `Drop` kills it frozen or not.
    pub fn freeze(&mut self) {
        assert_eq!(self.jvm, JvmState::Running, "freeze: the broker JVM is not running");
        self.give_up_cds_recording();
        send_signal(self.java.id(), "-STOP");
        self.jvm = JvmState::Frozen;
    }

    /// SIGCONTs a frozen broker JVM.
    pub fn thaw(&mut self) {
        assert_eq!(self.jvm, JvmState::Frozen, "thaw: the broker JVM is not frozen");
        send_signal(self.java.id(), "-CONT");
        self.jvm = JvmState::Running;
    }

    /// A JVM that is killed or frozen cannot record the CDS archive at a graceful exit.
    fn give_up_cds_recording(&mut self) {
        if let Some((tmp, _)) = self.cds_dump.take() {
            let _ = fs::remove_file(&tmp);
            CDS_DUMP_CLAIMED.store(false, Ordering::SeqCst);
        }
    }

    /// Temp dir holding `server.properties`, `broker.log` and `data/`.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("broker dir present").path()
    }

    /// Path of the broker's stdout/stderr log (WARN level).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Last `lines` lines of the broker log.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }

    // ---- client configs -------------------------------------------------------------------

    /// `bootstrap.servers` plus quiet, fast-failing defaults; base for any client.
    pub fn base_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap)
            .set("broker.address.family", "v4")
            .set("socket.connection.setup.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "1000");
        cfg
    }

    /// Consumer config: given group, `isolation.level=read_committed`, no auto-commit,
    /// `auto.offset.reset=earliest`, short session (6 s) / heartbeat (500 ms).
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut cfg = self.base_config();
        cfg.set("group.id", group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("fetch.wait.max.ms", "50");
        cfg
    }

    /// Idempotent producer config (`acks=all`, `linger.ms=0`).
    pub fn producer_config(&self) -> ClientConfig {
        let mut cfg = self.base_config();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000");
        cfg
    }

    /// Transactional producer config for `transactional_id` (not yet initialised).
    pub fn transactional_producer_config(&self, transactional_id: &str) -> ClientConfig {
        let mut cfg = self.producer_config();
        cfg.set("transactional.id", transactional_id).set("transaction.timeout.ms", "30000");
        cfg
    }

    // ---- clients ---------------------------------------------------------------------------

    /// A read_committed `BaseConsumer` in `group_id` (see [`Self::consumer_config`]).
    pub fn read_committed_consumer(&self, group_id: &str) -> BaseConsumer {
        let c: BaseConsumer = self.consumer_config(group_id).create().expect("creating read_committed consumer");
        warm_up(c.client());
        c
    }

    /// An idempotent `FutureProducer` (its own thread polls; usable with or without tokio).
    pub fn producer(&self) -> FutureProducer {
        let p: FutureProducer = self.producer_config().create().expect("creating producer");
        warm_up(p.client());
        p
    }

    /// A `FutureProducer` with `transactional.id`, after `init_transactions` (blocking call).
    pub fn transactional_producer(&self, transactional_id: &str) -> FutureProducer {
        let p: FutureProducer =
            self.transactional_producer_config(transactional_id).create().expect("creating transactional producer");
        warm_up(p.client());
        p.init_transactions(OP_TIMEOUT).unwrap_or_else(|e| panic!("init_transactions({transactional_id}): {e}"));
        p
    }

    // ---- admin -----------------------------------------------------------------------------

    /// Creates a topic (replication factor 1) and waits until every partition has a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with_config(name, partitions, &[]);
    }

    /// Like [`Self::create_topic`], with topic configs (e.g. `("cleanup.policy", "compact")`).
    pub fn create_topic_with_config(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.base_config().create().expect("creating admin client");
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in config {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT)).request_timeout(Some(OP_TIMEOUT));
        let results =
            block_on(admin.create_topics([&topic], &opts)).unwrap_or_else(|e| panic!("create_topics({name}): {e}"));
        for r in results {
            if let Err((t, code)) = r {
                panic!("creating topic {t}: {code:?}");
            }
        }
        // Make sure clients created right after this see the topic with leaders.
        let deadline = Instant::now() + OP_TIMEOUT;
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("metadata for {name}: {e}"));
            let ready = md.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none())
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "topic {name} has no leaders after {OP_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of partitions of `topic` (panics if it does not exist).
    pub fn partition_count(&self, topic: &str) -> i32 {
        let c: BaseConsumer = self.base_config().create().expect("creating metadata client");
        partitions_of(&c, topic).len() as i32
    }

    /// `(partition, low watermark, high watermark)` of every partition of `topic`, in partition
    /// order (the low watermark moves up when retention deletes segments).
    pub fn watermarks_of(&self, topic: &str) -> Vec<(i32, i64, i64)> {
        let c: BaseConsumer = self.base_config().create().expect("creating watermark client");
        partitions_of(&c, topic)
            .into_iter()
            .map(|p| {
                let (low, high) = watermarks(&c, topic, p);
                (p, low, high)
            })
            .collect()
    }

    /// Committed offsets of `group` for every partition of `topic`, in partition order
    /// (`None` = nothing committed). Uses require-stable semantics (waits out pending
    /// transactional offset commits).
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
        let c = self.read_committed_consumer(group);
        let mut tpl = TopicPartitionList::new();
        for p in partitions_of(&c, topic) {
            tpl.add_partition(topic, p);
        }
        // Right after a group appears the coordinator may still be loading it (NotCoordinator,
        // CoordinatorLoadInProgress): retry those for a while.
        let deadline = Instant::now() + OP_TIMEOUT;
        let got = loop {
            match c.committed_offsets(tpl.clone(), OP_TIMEOUT) {
                Ok(got) => break got,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("committed offsets of {group} on {topic}: {e}"),
            }
        };
        let mut out: Vec<(i32, Option<i64>)> = got
            .elements_for_topic(topic)
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }

    // ---- produce ---------------------------------------------------------------------------

    /// Produces `(key, payload)` pairs (non-transactionally, in order, keyed partitioning) and
    /// waits for every delivery.
    pub fn produce(&self, topic: &str, records: &[(&str, &str)]) {
        let producer = self.producer();
        let pending: Vec<_> = records
            .iter()
            .map(|(k, v)| produce_one_async(&producer, topic, Some(k.as_bytes()), Some(v.as_bytes()), &[]))
            .collect();
        for delivery in pending {
            block_on(delivery);
        }
    }

    /// Produces one record with headers (non-transactionally) and waits for the delivery.
    /// Returns `(partition, offset)`.
    pub fn produce_with_headers(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> (i32, i64) {
        produce_one(&self.producer(), topic, key, payload, headers)
    }

    // ---- read ------------------------------------------------------------------------------

    /// Reads every record a read_committed consumer can see in `topic`, once the topic is
    /// quiescent: it first waits until no transaction is pending on any partition (last stable
    /// offset == high watermark, so commit/abort markers written asynchronously after
    /// `commit_transaction` returns are in place), then reads from the beginning to the end.
    /// Panics after `timeout`, e.g. when a transaction stays open.
    /// Records are ordered by (partition, offset).
    pub fn read_all_committed(&self, topic: &str, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        self.wait_stable(topic, deadline);
        self.read_until_eof(topic, Isolation::ReadCommitted, deadline)
    }

    /// Reads `topic` from the beginning up to its current end under `isolation`, without
    /// waiting for pending transactions (read_committed stops at the last stable offset).
    pub fn read_to_end(&self, topic: &str, isolation: Isolation, timeout: Duration) -> Vec<Record> {
        self.read_until_eof(topic, isolation, Instant::now() + timeout)
    }

    fn wait_stable(&self, topic: &str, deadline: Instant) {
        let committed = self.assign_reader(Isolation::ReadCommitted);
        let uncommitted = self.assign_reader(Isolation::ReadUncommitted);
        let partitions = partitions_of(&committed, topic);
        // High watermarks at the start; markers of transactions ended since then only move the
        // LSO further, so reaching these marks means "everything finished by now is visible".
        let hwm: Vec<i64> = partitions.iter().map(|&p| watermarks(&uncommitted, topic, p).1).collect();
        loop {
            let mut pending = Vec::new();
            for (&p, &h) in partitions.iter().zip(&hwm) {
                let lso = watermarks(&committed, topic, p).1;
                if lso < h {
                    pending.push(format!("partition {p}: LSO {lso} < HWM {h}"));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{topic} still has an open transaction: {}", pending.join(", "));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assign_reader(&self, isolation: Isolation) -> BaseConsumer {
        // librdkafka refuses assign() without a group.id; this group never joins or commits.
        self.base_config()
            .set("group.id", unique_name("resetguard-test-reader"))
            .set("isolation.level", isolation.as_config())
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("creating reader consumer")
    }

    fn read_until_eof(&self, topic: &str, isolation: Isolation, deadline: Instant) -> Vec<Record> {
        let consumer = self.assign_reader(isolation);
        let partitions = partitions_of(&consumer, topic);
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("adding partition to assignment");
        }
        consumer.assign(&tpl).expect("assigning partitions");
        let mut at_end: BTreeSet<i32> = BTreeSet::new();
        let mut out = Vec::new();
        while at_end.len() < partitions.len() {
            assert!(
                Instant::now() < deadline,
                "reading {topic} ({isolation:?}): end not reached in time; at end: {at_end:?} \
                 of {partitions:?}, {} records so far",
                out.len()
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    let headers = m
                        .headers()
                        .map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
                        .unwrap_or_default();
                    out.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kafka test broker {} log tail ---\n{}", self.bootstrap, self.log_tail(LOG_TAIL_LINES));
            // Diagnosis: keep a copy of the broker's dir (data, logs) of a failed test, e.g. for
            // kafka.tools.DumpLogSegments.
            if let (Some(keep), Some(dir)) = (std::env::var_os("RG_KEEP_BROKER_DIR"), self.dir.as_ref()) {
                let to = Path::new(&keep).join(format!("broker-{}", std::process::id()));
                let _ = fs::create_dir_all(&to);
                let ok = Command::new("cp").arg("-a").arg(dir.path()).arg(&to).status();
                eprintln!("--- kafka test broker dir kept in {} ({ok:?}) ---", to.display());
            }
        }
        // The one broker recording the CDS archive must exit normally for the JVM to write it.
        let mut reaped = false;
        if let Some((tmp, fin)) = self.cds_dump.take() {
            if !std::thread::panicking() && self.jvm == JvmState::Running {
                reaped = self.stop_gracefully(Duration::from_secs(30));
                if reaped && tmp.is_file() {
                    let _ = fs::rename(&tmp, &fin);
                }
            }
            let _ = fs::remove_file(&tmp);
            CDS_DUMP_CLAIMED.store(false, Ordering::SeqCst);
        }
        // Closing the pipe makes the watchdog SIGKILL the JVM (unless told `nokill`) and remove
        // the temp dir; wait for it before reaping the JVM ourselves (see WATCHDOG_SCRIPT).
        if let Some(mut stdin) = self.watchdog_stdin.take() {
            if reaped {
                let _ = stdin.write_all(b"nokill\n");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = self.watchdog.try_wait() {
            if Instant::now() >= deadline {
                let _ = self.watchdog.kill();
                let _ = self.watchdog.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.java.kill();
        let _ = self.java.wait();
        drop(self.dir.take());
    }
}

struct StartError {
    msg: String,
    port_clash: bool,
}

impl StartError {
    fn plain(msg: String) -> Self {
        StartError { msg, port_clash: false }
    }
}

/// Writes the pid file the watchdog reads (`None`: empty, nothing to kill), atomically.
fn write_pid_file(path: &Path, pid: Option<u32>) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let text = pid.map(|p| p.to_string()).unwrap_or_default();
    fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path)).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// Kills and reaps a child unless disarmed (for early-return paths in `start_once`).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A name unique within this machine run: `<prefix>-<pid>-<counter>`, for topics, groups and
/// transactional ids on a shared broker.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Sends one record through `producer` and waits for the delivery report; returns
/// `(partition, offset)`. Works inside or outside a tokio runtime (blocks the thread).
pub fn produce_one(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> (i32, i64) {
    block_on(produce_one_async(producer, topic, key, payload, headers))
}

/// Enqueues one record and returns a future for its delivery, without needing a tokio runtime
/// (for batching several sends before awaiting, e.g. inside a transaction).
pub fn produce_one_async(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> impl Future<Output = (i32, i64)> + 'static {
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(p) = payload {
        rec = rec.payload(p);
    }
    if !headers.is_empty() {
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            hs = hs.insert(Header { key: k, value: Some(*v) });
        }
        rec = rec.headers(hs);
    }
    let topic = topic.to_string();
    let fut = producer.send_result(rec).map_err(|(e, _)| e);
    async move {
        let fut = fut.unwrap_or_else(|e| panic!("enqueueing record for {topic}: {e}"));
        match fut.await {
            Ok(Ok(d)) => (d.partition, d.offset),
            Ok(Err((e, _))) => panic!("delivering record to {topic}: {e}"),
            Err(_) => panic!("delivery report for {topic} dropped (producer closed?)"),
        }
    }
}

/// Minimal executor for the executor-agnostic rdkafka futures (admin ops, delivery reports);
/// avoids nesting a tokio runtime when called from a `#[tokio::test]`.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Set while one broker of this process records the CDS archive.
static CDS_DUMP_CLAIMED: AtomicBool = AtomicBool::new(false);

/// Class-data sharing for the broker JVM: loading Kafka's (and Scala's) classes from a
/// dynamic AppCDS archive cuts JVM start by roughly a third. The archive is recorded by the
/// first broker that finds none (`-XX:ArchiveClassesAtExit`, written when that broker is
/// dropped, which then takes a graceful ~3 s shutdown instead of a SIGKILL) and kept next to
/// the jars, keyed by the java binary. Returns the JVM flags and, when recording, the
/// `(tmp, final)` archive paths. `KAFKA_TEST_CDS=0` turns this off. The JVM validates the
/// archive (JDK build, classpath) and silently runs without it if it does not match.
fn cds_plan(libs: &Path, may_record: bool) -> (Vec<String>, Option<(PathBuf, PathBuf)>) {
    if std::env::var("KAFKA_TEST_CDS").is_ok_and(|v| v == "0") {
        return (Vec::new(), None);
    }
    let Ok(libs) = fs::canonicalize(libs) else {
        return (Vec::new(), None);
    };
    let fin = libs.join(format!(".broker-cds-{:016x}.jsa", java_identity()));
    if fin.is_file() {
        return (vec![format!("-XX:SharedArchiveFile={}", fin.display())], None);
    }
    if !may_record || CDS_DUMP_CLAIMED.swap(true, Ordering::SeqCst) {
        return (Vec::new(), None);
    }
    let tmp = libs.join(format!(".broker-cds.jsa.tmp-{}", std::process::id()));
    (vec![format!("-XX:ArchiveClassesAtExit={}", tmp.display())], Some((tmp, fin)))
}

/// Hash of the resolved java binary's path, size and mtime (a JDK update changes it).
fn java_identity() -> u64 {
    let bin = java_bin();
    let path = if bin.contains('/') {
        Some(PathBuf::from(&bin))
    } else {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(&bin)).find(|p| p.is_file()))
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(p) = path.and_then(|p| fs::canonicalize(p).ok()) {
        p.hash(&mut h);
        if let Ok(md) = fs::metadata(&p) {
            md.len().hash(&mut h);
            md.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// `java <flags> <extra_flags> -cp '<libs>/*' <main>` run in `workdir`, stdin closed.
fn jvm_command(libs: &Path, log4j_config: &Path, workdir: &Path, extra_flags: &[String], main: &str) -> Command {
    let mut cmd = Command::new(java_bin());
    cmd.args(JVM_FLAGS);
    if let Ok(flags) = std::env::var("RG_BROKER_JVM_FLAGS") {
        // Later flags win: e.g. "-Xmx2g -XX:TieredStopAtLevel=4 -XX:-UseSerialGC -XX:+UseG1GC" runs the broker
        // with the full JIT and the default collector for a benchmark (the defaults start fast).
        cmd.args(flags.split_whitespace());
    }
    cmd.args(extra_flags)
        .arg(format!("-Dlog4j2.configurationFile={}", log4j_config.display()))
        .arg(format!("-Dkafka.logs.dir={}", workdir.join("logs").display()))
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .arg(main)
        .current_dir(workdir)
        .stdin(Stdio::null());
    cmd
}

/// A log dir formatted by `kafka-storage format` (cluster [`CLUSTER_ID`], node [`NODE_ID`]),
/// made once per jar set and kept next to the jars (`<libs>/.kraft-format-template`).
/// With a static `controller.quorum.voters` the formatted files (meta.properties, bootstrap
/// checkpoint with feature levels) hold no port or path, so copies serve any broker.
fn formatted_template(libs: &Path) -> Result<PathBuf, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let libs = fs::canonicalize(libs).map_err(|e| format!("{}: {e}", libs.display()))?;
            let template = libs.join(".kraft-format-template");
            if template.join("meta.properties").is_file() {
                return Ok(template);
            }
            // Format into a private dir, then publish it with an atomic rename; a concurrent
            // test binary doing the same either wins (we drop ours) or loses.
            let work = tempfile::Builder::new()
                .prefix(".kraft-format-tmp-")
                .tempdir_in(&libs)
                .map_err(|e| format!("temp dir in {}: {e}", libs.display()))?;
            let data = work.path().join("data");
            let props = work.path().join("server.properties");
            let log4j = work.path().join("log4j2.properties");
            fs::write(&props, server_properties(9092, 9093, &data, TEST_SEGMENT_BYTES))
                .and_then(|()| fs::write(&log4j, LOG4J2_CONFIG))
                .map_err(|e| format!("writing format config: {e}"))?;
            let out = jvm_command(&libs, &log4j, work.path(), &[], "kafka.tools.StorageTool")
                .args(["format", "--cluster-id", CLUSTER_ID, "--config"])
                .arg(&props)
                .output()
                .map_err(|e| format!("running java ({}): {e}", java_bin()))?;
            if !out.status.success() || !data.join("meta.properties").is_file() {
                return Err(format!(
                    "kafka-storage format failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            if fs::rename(&data, &template).is_err() && !template.join("meta.properties").is_file() {
                return Err(format!("could not publish {}", template.display()));
            }
            Ok(template)
        })
        .clone()
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Blocks until the client has learned the broker from a metadata response.
///
/// librdkafka (2.12) replaces its `bootstrap` broker handle with the learned one after the
/// first metadata response; a FindCoordinator/InitProducerId request already in flight on the
/// bootstrap handle then fails with `_DESTROY_BROKER` and is only retried ~1-3 s later. Doing
/// one metadata round trip first avoids that stall (seen as a 3 s first group join).
pub fn warm_up<C: ClientContext>(client: &Client<C>) {
    client.fetch_metadata(None, OP_TIMEOUT).unwrap_or_else(|e| panic!("warm-up metadata request: {e}"));
}

fn partitions_of<C: Consumer>(c: &C, topic: &str) -> Vec<i32> {
    let md = c.fetch_metadata(Some(topic), OP_TIMEOUT).unwrap_or_else(|e| panic!("metadata for {topic}: {e}"));
    let t =
        md.topics().iter().find(|t| t.name() == topic).unwrap_or_else(|| panic!("topic {topic} missing from metadata"));
    if let Some(err) = t.error() {
        panic!("topic {topic}: {err:?}");
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    ps
}

fn watermarks(c: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    c.fetch_watermarks(topic, partition, OP_TIMEOUT)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
}

fn java_bin() -> String {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if Path::new(&home).join("bin/java").is_file() => {
            Path::new(&home).join("bin/java").display().to_string()
        }
        _ => "java".to_string(),
    }
}

/// The secured listeners of [`KafkaBroker::start_secured`] and the files a client needs.
pub struct SecureListeners {
    /// `127.0.0.1:<port>` of the SASL_SSL (SCRAM-SHA-512) listener.
    pub sasl_ssl: String,
    /// `127.0.0.1:<port>` of the SSL listener that requires a client certificate.
    pub mtls: String,
    pub scram_user: String,
    pub scram_password: String,
    /// PEM: the test CA, and the client's certificate and key (signed by the CA).
    pub ca_pem: PathBuf,
    pub client_cert_pem: PathBuf,
    pub client_key_pem: PathBuf,
    broker_p12: PathBuf,
    trust_p12: PathBuf,
    certs: Option<tempfile::TempDir>,
}

const STORE_PASSWORD: &str = "test-store-password";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl SecureListeners {
    /// A test CA, a broker certificate for 127.0.0.1/localhost and a client certificate, in `dir`.
    fn generate(dir: &Path, sasl_port: u16, mtls_port: u16) -> SecureListeners {
        if !dir.join("ca.pem").exists() {
            openssl(
                dir,
                &[
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
                    "/CN=resetguard-test-ca",
                ],
            );
            fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
            for name in ["broker", "client"] {
                openssl(
                    dir,
                    &[
                        "req",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                        "-subj",
                        &format!("/CN=resetguard-test-{name}"),
                    ],
                );
                openssl(
                    dir,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{name}.csr"),
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                        "-out",
                        &format!("{name}.pem"),
                        "-days",
                        "2",
                        "-extfile",
                        "san.ext",
                    ],
                );
            }
            let pass = format!("pass:{STORE_PASSWORD}");
            openssl(
                dir,
                &[
                    "pkcs12",
                    "-export",
                    "-in",
                    "broker.pem",
                    "-inkey",
                    "broker.key",
                    "-certfile",
                    "ca.pem",
                    "-name",
                    "broker",
                    "-out",
                    "broker.p12",
                    "-passout",
                    &pass,
                ],
            );
            let out = Command::new("keytool")
                .args([
                    "-importcert",
                    "-noprompt",
                    "-storetype",
                    "PKCS12",
                    "-keystore",
                    "trust.p12",
                    "-storepass",
                    STORE_PASSWORD,
                    "-alias",
                    "ca",
                    "-file",
                    "ca.pem",
                ])
                .current_dir(dir)
                .output()
                .expect("running keytool");
            assert!(out.status.success(), "keytool: {}", String::from_utf8_lossy(&out.stderr));
        }
        SecureListeners {
            sasl_ssl: format!("127.0.0.1:{sasl_port}"),
            mtls: format!("127.0.0.1:{mtls_port}"),
            scram_user: "resetguard".into(),
            scram_password: "scram-test-password-5e8a1f".into(),
            ca_pem: dir.join("ca.pem"),
            client_cert_pem: dir.join("client.pem"),
            client_key_pem: dir.join("client.key"),
            broker_p12: dir.join("broker.p12"),
            trust_p12: dir.join("trust.p12"),
            certs: None,
        }
    }

    fn scram_credential(&self) -> String {
        format!("SCRAM-SHA-512=[name={},password={}]", self.scram_user, self.scram_password)
    }

    /// `base` (the PLAINTEXT broker's properties) with the secured listeners added.
    fn server_properties(&self, base: &str, port: u16, controller_port: u16) -> String {
        let mut s: String = base
            .lines()
            .filter(|l| {
                !l.starts_with("listeners=")
                    && !l.starts_with("advertised.listeners=")
                    && !l.starts_with("listener.security.protocol.map=")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let props = [
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},SASL_SSL://{},SSL://{}",
                    self.sasl_ssl, self.mtls
                ),
            ),
            (
                "advertised.listeners",
                format!("PLAINTEXT://127.0.0.1:{port},SASL_SSL://{},SSL://{}", self.sasl_ssl, self.mtls),
            ),
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL".into(),
            ),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512".into()),
            (
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
            ("ssl.keystore.type", "PKCS12".into()),
            ("ssl.keystore.location", self.broker_p12.display().to_string()),
            ("ssl.keystore.password", STORE_PASSWORD.into()),
            ("ssl.key.password", STORE_PASSWORD.into()),
            ("ssl.truststore.type", "PKCS12".into()),
            ("ssl.truststore.location", self.trust_p12.display().to_string()),
            ("ssl.truststore.password", STORE_PASSWORD.into()),
            ("listener.name.ssl.ssl.client.auth", "required".into()),
        ];
        for (k, v) in props {
            let _ = writeln!(s, "{k}={v}");
        }
        s
    }
}

/// Two distinct free loopback ports (bound together, then released).
fn free_port_pair() -> Result<(u16, u16), String> {
    let a = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    let b = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    let pa = a.local_addr().map_err(|e| e.to_string())?.port();
    let pb = b.local_addr().map_err(|e| e.to_string())?.port();
    Ok((pa, pb))
}

/// The jar directory (`.cache/kafka/libs`, resolved), fetched by `scripts/kafka-jars` if
/// needed; the script runs once per process (a no-op taking ~10 ms when the jars are cached).
fn kafka_libs() -> Result<PathBuf, String> {
    static LIBS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LIBS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-jars");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Resolve the `libs` symlink once, so jars, format template and CDS archive used by
        // this process all come from the same jar set even if it is re-fetched meanwhile.
        let listed = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let libs = fs::canonicalize(&listed).map_err(|e| format!("{}: {e}", listed.display()))?;
        let has_kafka = fs::read_dir(&libs)
            .map_err(|e| format!("reading {}: {e}", libs.display()))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"));
        if !has_kafka {
            return Err(format!("no kafka_2.13-*.jar in {}", libs.display()));
        }
        Ok(libs)
    })
    .clone()
}

/// The tests' broker-wide segment size: small, so retention deletes data within seconds.
const TEST_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Kafka's default `log.segment.bytes`, for the benches ([`KafkaBroker::start_for_bench`]).
const KAFKA_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

fn server_properties(port: u16, controller_port: u16, data_dir: &Path, segment_bytes: u64) -> String {
    let props: BTreeMap<&str, String> = [
        ("process.roles", "broker,controller".to_string()),
        ("node.id", NODE_ID.to_string()),
        // Static single-voter quorum: formatted without --standalone and independent of ports.
        ("controller.quorum.voters", format!("{NODE_ID}@127.0.0.1:{controller_port}")),
        ("listeners", format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}")),
        ("advertised.listeners", format!("PLAINTEXT://127.0.0.1:{port}")),
        ("controller.listener.names", "CONTROLLER".into()),
        ("inter.broker.listener.name", "PLAINTEXT".into()),
        ("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into()),
        ("log.dirs", data_dir.display().to_string()),
        ("num.partitions", "1".into()),
        ("default.replication.factor", "1".into()),
        ("min.insync.replicas", "1".into()),
        ("auto.create.topics.enable", "false".into()),
        ("offsets.topic.replication.factor", "1".into()),
        ("offsets.topic.num.partitions", "1".into()),
        ("transaction.state.log.replication.factor", "1".into()),
        ("transaction.state.log.min.isr", "1".into()),
        ("transaction.state.log.num.partitions", "1".into()),
        ("share.coordinator.state.topic.replication.factor", "1".into()),
        ("share.coordinator.state.topic.min.isr", "1".into()),
        ("group.initial.rebalance.delay.ms", "0".into()),
        // Abort transactions that exceeded transaction.timeout.ms within ~1 s, not 10 s.
        ("transaction.abort.timed.out.transaction.cleanup.interval.ms", "1000".into()),
        // Fault recipes: retention runs every second from one second after startup (defaults
        // 5 min and 30 s), and deleted segments go at once (default 60 s), so a topic with a
        // short retention.ms loses its old segments within seconds.
        ("log.retention.check.interval.ms", "1000".into()),
        ("log.initial.task.delay.ms", "1000".into()),
        ("log.segment.delete.delay.ms", "100".into()),
        ("log.segment.bytes", segment_bytes.to_string()),
        ("num.network.threads", "2".into()),
        ("num.io.threads", "2".into()),
        ("background.threads", "2".into()),
        ("num.recovery.threads.per.data.dir", "1".into()),
        ("log.cleaner.threads", "1".into()),
        // Room for the keys of a 16 MiB changelog segment of compressed records (a pass of the
        // cleaner must hold one whole segment's keys; Kafka's default is 128 MiB).
        ("log.cleaner.dedupe.buffer.size", (32 * 1024 * 1024).to_string()),
    ]
    .into_iter()
    .collect();
    let mut s = String::from("# generated by tests/common/kafka.rs\n");
    for (k, v) in props {
        let _ = writeln!(s, "{k}={v}");
    }
    s
}
