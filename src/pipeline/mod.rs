//! The durable step pipeline: the wire message, outcomes, the queue and ledger contracts and
//! their embedded SQLite implementation.

pub mod ledger;
pub mod message;
pub mod outcome;
pub mod queue;
pub mod sqlite;

pub use message::{RunId, Step, StepMessage};
pub use outcome::Outcome;
