//! Prometheus metrics of resetguard, registered into a caller-provided registry (no IO, no globals).
//!
//! Call sites say what happened (`metrics.notice_sent()`), never a metric name. Label values come
//! from closed sets only: outcome kinds, reject reasons, breaker cells (bounded by
//! `breaker.max_cells`), partitions. Never an account id, e-mail or IP.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric resetguard exports. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    pub events_consumed: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub events_late: IntCounter,
    pub events_duplicate: IntCounter,
    pub outcomes: IntCounterVec,
    pub notices_sent: IntCounter,
    pub notices_would_send: IntCounter,
    pub notices_held: IntCounterVec,
    pub held_released: IntCounter,
    pub held_discarded: IntCounter,
    pub held_pending: IntGaugeVec,
    pub decisions: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_trips: IntCounterVec,
    pub budget_remaining: IntGauge,
    pub cap_factor: Gauge,
    pub cell_decision_rate: GaugeVec,
    pub cell_baseline: GaugeVec,
    pub tracked_accounts: IntGauge,
    pub state_bytes: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub event_to_decision: Histogram,
    pub event_to_notice: Histogram,
    pub transactions: IntCounterVec,
    pub transaction_commit_seconds: Histogram,
    pub watermark_lag_seconds: Gauge,
    pub ready: IntGauge,
    pub build_info: IntGaugeVec,
    pub input_gap_records: IntCounterVec,
    pub input_offset_resets: IntCounterVec,
    pub dlq_truncated: IntCounter,
    pub rebalances: IntCounter,
    pub restores: IntCounter,
    pub partition_restores: IntCounterVec,
    pub restore_records: IntCounterVec,
    pub standby_records: IntGauge,
    pub standby_invalid_records: IntCounter,
    pub changelog_restore_seconds: HistogramVec,
    pub changelog_records: IntCounterVec,
    pub changelog_account_states: IntCounter,
    pub changelog_bytes: IntCounter,
    pub producer_renewals: IntCounter,
    pub consumer_renewals: IntCounter,
}

/// Latency buckets for event-time to decision/notice, from 5 ms to 10 min: events can legitimately
/// arrive minutes after they happened (allowed lateness is 2 min by default).
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Transaction commit and restore latency buckets, 1 ms to 60 s.
const COMMIT_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0];

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            events_consumed: IntCounterVec::new(
                Opts::new("resetguard_events_consumed_total", "Input events consumed, by breaker cell of their source (`_invalid`: no readable source)."),
                &["source"],
            )?,
            events_rejected: IntCounterVec::new(
                Opts::new("resetguard_events_rejected_total", "Input events rejected as invalid, by reason."),
                &["reason"],
            )?,
            events_late: IntCounter::new("resetguard_events_late_total", "Input events behind the watermark.")?,
            events_duplicate: IntCounter::new(
                "resetguard_events_duplicate_total",
                "Input events whose event_id was already seen within the dedupe horizon.",
            )?,
            outcomes: IntCounterVec::new(
                Opts::new("resetguard_outcomes_total", "Recorded outcome of every input event: exactly one per event."),
                &["outcome", "reason"],
            )?,
            notices_sent: IntCounter::new("resetguard_notices_sent_total", "Reset notices produced for the mailer.")?,
            notices_would_send: IntCounter::new(
                "resetguard_notices_would_send_total",
                "Reset notices that shadow mode would have sent (produced to the shadow topic).",
            )?,
            notices_held: IntCounterVec::new(
                Opts::new("resetguard_notices_held_total", "Decisions the breaker refused and held, by cell and reason."),
                &["cell", "reason"],
            )?,
            held_released: IntCounter::new("resetguard_held_released_total", "Held notices released by an operator.")?,
            held_discarded: IntCounter::new("resetguard_held_discarded_total", "Held notices discarded by an operator.")?,
            held_pending: IntGaugeVec::new(
                Opts::new(
                    "resetguard_held_pending",
                    "Held notices waiting for a release or discard, by the cell that held them, fleet-wide (read from the held and control topics every admin.held_pending_refresh; every instance reports the same figure).",
                ),
                &["cell"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new(
                    "resetguard_decisions_total",
                    "Reset decisions, by breaker cell of the source and by what became of them (notice: sent or would-send in shadow mode; held).",
                ),
                &["cell", "outcome"],
            )?,
            dlq_records: IntCounterVec::new(
                Opts::new("resetguard_dlq_records_total", "Records written to the dead-letter topic, by reason."),
                &["reason"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new("resetguard_breaker_state", "Breaker state per cell: 1 for the current state, 0 for the others."),
                &["cell", "state"],
            )?,
            breaker_trips: IntCounterVec::new(
                Opts::new("resetguard_breaker_trips_total", "Breaker trips, by cell and cause."),
                &["cell", "cause"],
            )?,
            budget_remaining: IntGauge::new(
                "resetguard_breaker_budget_remaining",
                "Notices the global rate limit would still let through right now.",
            )?,
            cap_factor: Gauge::new(
                "resetguard_breaker_cap_ratio",
                "Fraction of the configured caps this instance applies: its share of the partitions times the policy-change ramp.",
            )?,
            cell_decision_rate: GaugeVec::new(
                Opts::new("resetguard_cell_decisions_per_minute", "Decisions in the current minute, per breaker cell."),
                &["cell"],
            )?,
            cell_baseline: GaugeVec::new(
                Opts::new(
                    "resetguard_cell_baseline_decisions_per_minute",
                    "Learned baseline (EWMA) of decisions per minute, per breaker cell.",
                ),
                &["cell"],
            )?,
            tracked_accounts: IntGauge::new("resetguard_tracked_accounts", "Accounts with live window state.")?,
            state_bytes: IntGauge::new("resetguard_state_bytes", "Estimated bytes of per-account and dedupe state.")?,
            consumer_lag: IntGaugeVec::new(
                Opts::new("resetguard_consumer_lag_messages", "Messages between the consumed position and the end of each input partition."),
                &["topic", "partition"],
            )?,
            event_to_decision: Histogram::with_opts(
                HistogramOpts::new("resetguard_event_to_decision_seconds", "Time from event time to the decision.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            event_to_notice: Histogram::with_opts(
                HistogramOpts::new(
                    "resetguard_event_to_notice_seconds",
                    "Time from event time of the triggering event to the commit of its notice.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            transactions: IntCounterVec::new(
                Opts::new("resetguard_transactions_total", "Kafka transactions ended, by result: commit, abort, or redo (aborted after the group refused its offsets in a rebalance, and sent again)."),
                &["result"],
            )?,
            transaction_commit_seconds: Histogram::with_opts(
                HistogramOpts::new("resetguard_transaction_commit_seconds", "Latency of committing a Kafka transaction.")
                    .buckets(COMMIT_BUCKETS.to_vec()),
            )?,
            watermark_lag_seconds: Gauge::new(
                "resetguard_watermark_lag_seconds",
                "Wall-clock time minus the lowest partition watermark (includes the allowed lateness).",
            )?,
            ready: IntGauge::new("resetguard_ready", "1 when partitions are assigned and state is restored.")?,
            build_info: IntGaugeVec::new(
                Opts::new("resetguard_build_info", "Build and policy information (value is always 1)."),
                &["version", "policy_version", "mode"],
            )?,
            input_gap_records: IntCounterVec::new(
                Opts::new(
                    "resetguard_input_gap_records_total",
                    "Input records deleted by retention before they were processed (the committed offset was below the first retained one); they got no outcome.",
                ),
                &["topic"],
            )?,
            input_offset_resets: IntCounterVec::new(
                Opts::new(
                    "resetguard_input_offset_resets_total",
                    "Times a committed offset was beyond the end of its partition (topic recreated or truncated) and the partition was processed from its start.",
                ),
                &["topic"],
            )?,
            dlq_truncated: IntCounter::new(
                "resetguard_dlq_truncated_total",
                "DLQ records written with only the first bytes of their input, because the whole did not fit the DLQ topic.",
            )?,
            rebalances: IntCounter::new("resetguard_rebalances_total", "Consumer group rebalances this instance took part in.")?,
            producer_renewals: IntCounter::new(
                "resetguard_producer_renewals_total",
                "Transactional producers replaced: after every aborted transaction (a new producer epoch fences records of the aborted one still in flight) and after a fatal error (a transaction expired by the coordinator).",
            )?,
            consumer_renewals: IntCounter::new(
                "resetguard_consumer_renewals_total",
                "Kafka consumers replaced after a fatal error (the group fenced this static member, e.g. after a broker outage longer than the session timeout); the assignment is restored.",
            )?,
            restores: IntCounter::new(
                "resetguard_restores_total",
                "State restores (after an assignment or an aborted transaction).",
            )?,
            partition_restores: IntCounterVec::new(
                Opts::new(
                    "resetguard_partition_restores_total",
                    "Restores of one input partition's state, by where it came from (changelog, or input: re-reading the input topic, once, when no changelog exists yet) and why (assignment: the partition came to this instance; abort: an aborted transaction rolled the state back).",
                ),
                &["partition", "source", "cause"],
            )?,
            restore_records: IntCounterVec::new(
                Opts::new(
                    "resetguard_restore_records_total",
                    "Records read to restore state, by source (changelog; input; standby: accounts and cooldowns taken over from the warm standby's decoded copy).",
                ),
                &["source"],
            )?,
            changelog_restore_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "resetguard_changelog_restore_seconds",
                    "Time to read partitions' state back (one observation per restore of one or more partitions), by source: changelog (read from Kafka) or standby (the warm standby's copy, plus the changelog written since).",
                )
                .buckets(COMMIT_BUCKETS.to_vec()),
                &["source"],
            )?,
            standby_records: IntGauge::new(
                "resetguard_standby_records",
                "Accounts the warm standby holds decoded in memory, over the partitions this instance does not own (pipeline.standby).",
            )?,
            standby_invalid_records: IntCounter::new(
                "resetguard_standby_invalid_records_total",
                "Changelog records the warm standby could not decode and skipped, as a restore skips them (restore_records_total{source=\"changelog_invalid\"}).",
            )?,
            changelog_records: IntCounterVec::new(
                Opts::new(
                    "resetguard_changelog_records_total",
                    "Records written to the changelog, by kind (batch: many accounts' states; account: one account's state, record formats 1 and 2; tombstone; watermark); committed with the outputs.",
                ),
                &["kind"],
            )?,
            changelog_account_states: IntCounter::new(
                "resetguard_changelog_account_states_total",
                "Account states written to the changelog (an account's whole state, or that it is gone), in batch records or in records of their own.",
            )?,
            changelog_bytes: IntCounter::new(
                "resetguard_changelog_bytes_total",
                "Bytes of key and value written to the changelog (before compression).",
            )?,
        };
        registry.register(Box::new(m.events_consumed.clone()))?;
        registry.register(Box::new(m.events_rejected.clone()))?;
        registry.register(Box::new(m.events_late.clone()))?;
        registry.register(Box::new(m.events_duplicate.clone()))?;
        registry.register(Box::new(m.outcomes.clone()))?;
        registry.register(Box::new(m.notices_sent.clone()))?;
        registry.register(Box::new(m.notices_would_send.clone()))?;
        registry.register(Box::new(m.notices_held.clone()))?;
        registry.register(Box::new(m.held_released.clone()))?;
        registry.register(Box::new(m.held_discarded.clone()))?;
        registry.register(Box::new(m.held_pending.clone()))?;
        registry.register(Box::new(m.decisions.clone()))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... of this
        // process (Linux), in the caller's registry like everything else.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        registry.register(Box::new(m.dlq_records.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.breaker_trips.clone()))?;
        registry.register(Box::new(m.budget_remaining.clone()))?;
        registry.register(Box::new(m.cap_factor.clone()))?;
        registry.register(Box::new(m.cell_decision_rate.clone()))?;
        registry.register(Box::new(m.cell_baseline.clone()))?;
        registry.register(Box::new(m.tracked_accounts.clone()))?;
        registry.register(Box::new(m.state_bytes.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.event_to_decision.clone()))?;
        registry.register(Box::new(m.event_to_notice.clone()))?;
        registry.register(Box::new(m.transactions.clone()))?;
        registry.register(Box::new(m.transaction_commit_seconds.clone()))?;
        registry.register(Box::new(m.watermark_lag_seconds.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.build_info.clone()))?;
        registry.register(Box::new(m.input_gap_records.clone()))?;
        registry.register(Box::new(m.partition_restores.clone()))?;
        registry.register(Box::new(m.restore_records.clone()))?;
        registry.register(Box::new(m.standby_records.clone()))?;
        registry.register(Box::new(m.standby_invalid_records.clone()))?;
        registry.register(Box::new(m.changelog_restore_seconds.clone()))?;
        registry.register(Box::new(m.changelog_records.clone()))?;
        registry.register(Box::new(m.changelog_account_states.clone()))?;
        registry.register(Box::new(m.changelog_bytes.clone()))?;
        registry.register(Box::new(m.input_offset_resets.clone()))?;
        registry.register(Box::new(m.dlq_truncated.clone()))?;
        registry.register(Box::new(m.rebalances.clone()))?;
        registry.register(Box::new(m.restores.clone()))?;
        registry.register(Box::new(m.producer_renewals.clone()))?;
        registry.register(Box::new(m.consumer_renewals.clone()))?;
        // Closed label sets start at 0, so dashboards and alerts see every series from the first
        // scrape (a rate over a missing series is no data, not zero).
        for result in ["commit", "abort", "redo"] {
            m.transactions.with_label_values(&[result]);
        }
        for r in crate::core::event::RejectReason::ALL {
            m.events_rejected.with_label_values(&[r.as_str()]);
            m.dlq_records.with_label_values(&[r.as_str()]);
            m.outcomes.with_label_values(&["rejected", r.as_str()]);
        }
        for kind in ["late", "duplicate"] {
            m.dlq_records.with_label_values(&[kind]);
            m.outcomes.with_label_values(&[kind, ""]);
        }
        for why in ["below_threshold", "cooldown", "allow_listed"] {
            m.outcomes.with_label_values(&["no_action", why]);
        }
        m.outcomes.with_label_values(&["notice", ""]);

        Ok(m)
    }
}
