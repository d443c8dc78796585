//! The durable step pipeline, a runtime that knows nothing of the domain: the wire vocabulary
//! (the step message, outcomes and their reasons), the [`Reconciler`] seam the domain
//! implements, the queue and ledger contracts with their embedded SQLite implementation, the ledger in Table Storage, the
//! engine that executes one step, the embedded runner, and a whole local run.

pub mod contract;
pub mod controller;
pub mod dead_letters;
pub mod engine;
pub mod ledger;
pub mod local;
pub mod message;
pub(crate) mod outcome;
pub mod queue;
pub mod reason;
pub(crate) mod reconciler;
pub mod rollout;
pub mod runner;
pub(crate) mod servicebus;
pub mod sqlite;
pub mod table;

pub use message::{RunId, Step, StepMessage};
pub use outcome::Outcome;
pub use reconciler::{Reconciler, StepResult, Transition};
