//! The migration: pure planning (`ipam`, `plan`), the step reconcilers (`discover`, `steps`,
//! `rollback`) with what they read from ARM (`context`) and check (`health`), plus `snapshot`
//! (export a fleet) and `invariants` (the safety properties a run must keep).

pub mod context;
pub mod discover;
pub mod health;
pub mod invariants;
pub mod ipam;
pub mod plan;
pub mod rollback;
pub mod snapshot;
pub mod steps;
