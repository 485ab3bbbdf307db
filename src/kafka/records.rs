//! Translates core outcomes into output records (topic, key, payload, headers). Pure.

use rdkafka::message::{Header, OwnedHeaders};

use crate::config::TopicsFile;
use crate::core::outcome::Outcome;
use crate::core::policy::Mode;

/// Where an input message came from, for DLQ headers.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// One record to produce.
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub key: Vec<u8>,
    pub payload: std::borrow::Cow<'a, [u8]>,
    pub headers: OwnedHeaders,
}

fn h(headers: OwnedHeaders, key: &str, value: &str) -> OwnedHeaders {
    headers.insert(Header { key, value: Some(value.as_bytes()) })
}

/// Bytes a DLQ record needs beyond its key and payload (headers, record and batch framing),
/// with room to spare: the rejection detail is the longest header and stays under 300 bytes.
pub const DLQ_RECORD_OVERHEAD: usize = 1024;

/// The record an outcome produces, if any (no-action outcomes produce none). A DLQ record whose
/// original payload is longer than `dlq_payload_max` carries only its first `dlq_payload_max`
/// bytes, with the headers `truncated: true` and `original_bytes` (the input's coordinates in
/// the headers find the whole of it while the input topic retains it).
pub fn record_for<'a>(
    outcome: &Outcome,
    origin: &Origin<'a>,
    topics: &'a TopicsFile,
    mode: Mode,
    dlq_payload_max: usize,
) -> Option<OutRecord<'a>> {
    match outcome {
        Outcome::NoAction(_) => None,
        Outcome::Notice(d) => {
            let topic = if mode == Mode::Shadow { topics.shadow.as_str() } else { topics.notices.as_str() };
            let mut headers = h(OwnedHeaders::new_with_capacity(4), "notice_id", &d.notice_id);
            headers = h(headers, "schema", crate::core::outcome::NOTICE_SCHEMA);
            headers = h(headers, "policy_version", &d.explanation.policy_version);
            headers = h(headers, "mode", d.mode);
            Some(OutRecord { topic, key: d.account_id.as_bytes().to_vec(), payload: d.notice_json().into(), headers })
        }
        Outcome::Held(d, info) => {
            let mut headers = h(OwnedHeaders::new_with_capacity(4), "notice_id", &d.notice_id);
            headers = h(headers, "schema", crate::core::outcome::HELD_SCHEMA);
            headers = h(headers, "held_reason", info.reason.as_str());
            headers = h(headers, "cell", &info.cell);
            Some(OutRecord {
                topic: topics.held.as_str(),
                key: d.account_id.as_bytes().to_vec(),
                payload: d.held_json(info).into(),
                headers,
            })
        }
        Outcome::Rejected(_) | Outcome::Late { .. } | Outcome::Duplicate => {
            let (reason, detail) = match outcome {
                Outcome::Rejected(r) => (r.reason.as_str().to_string(), r.detail.clone()),
                Outcome::Late { event_ms, watermark_ms } => (
                    "behind_watermark".to_string(),
                    format!("event time {event_ms} ms is behind the partition watermark {watermark_ms} ms"),
                ),
                _ => ("event_id_seen".to_string(), "event_id was seen within the dedupe horizon".to_string()),
            };
            let mut headers = h(OwnedHeaders::new_with_capacity(8), "outcome", outcome.kind().as_str());
            headers = h(headers, "reason", &reason);
            headers = h(headers, "detail", &detail);
            headers = h(headers, "source_topic", origin.topic);
            headers = h(headers, "source_partition", &origin.partition.to_string());
            headers = h(headers, "source_offset", &origin.offset.to_string());
            let mut payload = origin.payload;
            if payload.len() > dlq_payload_max {
                headers = h(headers, "truncated", "true");
                headers = h(headers, "original_bytes", &payload.len().to_string());
                payload = &payload[..dlq_payload_max];
            }
            Some(OutRecord {
                topic: topics.dlq.as_str(),
                key: origin.key.map(<[u8]>::to_vec).unwrap_or_default(),
                payload: std::borrow::Cow::Borrowed(payload),
                headers,
            })
        }
    }
}
