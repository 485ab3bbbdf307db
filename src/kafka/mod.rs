//! Kafka IO adapters: client configuration, topic setup, translating outcomes into records, and
//! the exactly-once consume → decide → produce loop. Makes no decisions (the core does).

pub mod client;
pub mod control;
pub mod pipeline;
pub mod records;
pub mod topics;

pub use pipeline::{run_pipeline, PipelineError, Status};
