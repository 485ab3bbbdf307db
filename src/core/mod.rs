//! The pure decision core: events and time in, outcomes out. No IO: nothing here imports tokio,
//! rdkafka, prometheus or an HTTP crate, and no function reads a clock.
//!
//! - [`event`]: the input contract, decode and validate
//! - [`policy`]: the policy file and its validation
//! - [`dedupe`], [`accounts`]: recent event ids; per-account windows and expiry
//! - [`breaker`]: rate caps, spike detection, cells and overrides
//! - [`outcome`]: outcomes, decisions, `notice_id`
//! - [`engine`]: composes the above, one outcome per event
//! - [`changelog`]: the binary record of one account's state on the changelog topic
//! - [`rules`]: the one set of rules for operator input (actor, reason, ttl, release pace)

pub mod accounts;
pub mod breaker;
pub mod changelog;
pub mod dedupe;
pub mod engine;
pub mod event;
pub mod evidence;
pub mod hash;
pub mod outcome;
pub mod policy;
pub mod rules;

pub use engine::{Engine, Processed, TimeMode};
pub use outcome::{Outcome, OutcomeKind};
pub use policy::Policy;
