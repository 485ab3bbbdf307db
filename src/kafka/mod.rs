//! Kafka IO adapters: client configuration, topic setup, translating outcomes into records, and
//! the exactly-once consume → decide → produce loop. Makes no decisions (the core does).

pub mod admin;
pub mod changelog;
pub mod client;
pub mod control;
pub mod control_reader;
pub mod pipeline;
pub mod records;
pub mod restore;
pub mod standby;
pub mod topics;
pub mod txn;

pub use pipeline::{run_pipeline, PipelineError, Status};
