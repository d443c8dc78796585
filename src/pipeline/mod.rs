//! The durable step pipeline: the wire message, outcomes, the queue and ledger contracts,
//! their embedded SQLite implementation, the engine that executes one step, the embedded
//! runner, and a whole local run.

pub mod engine;
pub mod ledger;
pub mod local;
pub mod message;
pub mod outcome;
pub mod queue;
pub mod runner;
pub mod servicebus;
pub mod sqlite;

pub use message::{RunId, Step, StepMessage};
pub use outcome::Outcome;
