//! Reads the fleet's control topic (no group: every instance reads all of it) and applies
//! breaker overrides and allow-list changes to the engine: to the end at startup, then what
//! arrived, on each tick. Does IO (a Kafka consumer).

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Settings;
use crate::core::Engine;

use super::client::{reader_config, Reader, ReaderContext};
use super::control::{parse, Control};
use super::pipeline::PipelineError;
use super::txn::FENCE_MARK;

/// How long startup waits to read the control topic to its end.
const STARTUP_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ControlReader {
    consumer: Reader,
    /// This instance's transactional id: its own records were applied when they were made.
    instance: String,
}

impl ControlReader {
    /// A reader of the whole control topic, positioned at its beginning.
    pub fn new(s: &Settings) -> Result<ControlReader, PipelineError> {
        let mut cfg = reader_config(s, "control");
        cfg.set("enable.partition.eof", "false");
        let c: Reader = cfg
            .create_with_context(ReaderContext)
            .map_err(|e| PipelineError::Startup(format!("cannot create the control reader: {e}")))?;
        // Waits for a control topic another instance has just created, like every startup lookup.
        let ids = super::topics::partition_ids(c.client(), &s.topics.control, super::topics::SHOW_WAIT)
            .map_err(|e| PipelineError::Startup(format!("cannot read metadata of {}: {e}", s.topics.control)))?;
        let mut tpl = TopicPartitionList::new();
        for p in ids {
            let _ = tpl.add_partition_offset(&s.topics.control, p, Offset::Beginning);
        }
        c.assign(&tpl).map_err(|e| PipelineError::Startup(format!("cannot assign the control topic: {e}")))?;
        Ok(ControlReader { consumer: c, instance: s.transactional_id.clone() })
    }

    /// Applies every control record up to the end of the topic. Returns the number applied and
    /// the policy version the fleet last recorded.
    pub fn read_to_end(&self, engine: &mut Engine, now_ms: i64) -> (usize, Option<String>) {
        let mut ends: HashMap<i32, i64> = HashMap::new();
        if let Ok(a) = self.consumer.assignment() {
            for e in a.elements() {
                if let Ok((_, high)) = self.consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                {
                    ends.insert(e.partition(), high);
                }
            }
        }
        let deadline = Instant::now() + STARTUP_READ_TIMEOUT;
        let mut applied = 0;
        let mut policy = None;
        loop {
            let reached = ends.is_empty()
                || self.consumer.position().is_ok_and(|pos| {
                    pos.elements().iter().all(|e| match (e.offset(), ends.get(&e.partition())) {
                        (Offset::Offset(o), Some(&h)) => o >= h,
                        (_, Some(&h)) => h == 0,
                        _ => true,
                    })
                });
            if reached || Instant::now() > deadline {
                break;
            }
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                applied += self.apply(&m, engine, now_ms, true, &mut policy);
            }
        }
        (applied, policy)
    }

    /// Applies the control records of other instances that arrived since the last call.
    pub fn read_new(&self, engine: &mut Engine, now_ms: i64) -> usize {
        let mut applied = 0;
        let mut policy = None;
        while let Some(Ok(m)) = self.consumer.poll(Duration::ZERO) {
            applied += self.apply(&m, engine, now_ms, false, &mut policy);
        }
        applied
    }

    fn apply(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        engine: &mut Engine,
        now: i64,
        all: bool,
        policy: &mut Option<String>,
    ) -> usize {
        if m.key() == Some(FENCE_MARK.as_bytes()) {
            // Aborted at once; only a broker without transactions (the demo's mock) shows it.
            return 0;
        }
        match parse(m.key().unwrap_or(&[]), m.payload()) {
            Some(Control::Override(o)) if all || o.instance != self.instance => {
                let b = engine.breaker_mut();
                let r = if o.until_ms <= o.at_ms {
                    b.clear_override(&o.cell, &o.actor, &o.reason, now).map(|_| ())
                } else {
                    b.apply_override(&o.cell, o.open, o.until_ms, &o.actor, &o.reason, now)
                };
                if let Err(e) = r {
                    warn!(offset = m.offset(), error = %e, "Control record not applied.");
                }
                1
            }
            Some(Control::Allow(a)) if all || a.instance != self.instance => {
                match a.expires_ms {
                    Some(until) => engine.allow_account(&a.account_id, until),
                    None => {
                        engine.disallow_account(&a.account_id);
                    }
                }
                1
            }
            Some(Control::Trip(t)) if all || t.instance != self.instance => {
                if engine.breaker_mut().fleet_trip(&t.cell, t.at_ms, now) {
                    info!(cell = %t.cell, cause = %t.cause, "Breaker cell opened: tripped elsewhere in the fleet.");
                }
                1
            }
            Some(Control::PolicyVersion(v)) => {
                *policy = Some(v.version);
                0
            }
            Some(_) => 0,
            None => {
                warn!(offset = m.offset(), "Malformed control record skipped.");
                0
            }
        }
    }
}
