//! The migration: what a step message may name (`admission`), pure planning (`ipam`, `plan`), the reconciler the pipeline drives
//! (`context`: [`Migration`], its step context and error policy) with one reconcile function
//! per step (`discover`, `steps`, `subnet`, `cutover`, `rollback`), the network prepared ahead of a wave (`ahead`), the plan-wide decisions it shares
//! (`plan_cache`) and the subnets plans share (`sharing`), the checks after the cut-over (`health`) and of a wave after its bake (`gates`), the VNets a rollback's removal holds (`holds`), `snapshot` (export a fleet), the plan
//! file (`fleet_plan`: forecasts, fleet-wide prefix reservation, drift fingerprints) and
//! `local` (a whole migration on one machine).

pub(crate) mod admission;
mod ahead;
pub(crate) mod context;
mod cutover;
pub mod discover;
pub mod fleet_plan;
mod gates;
pub(crate) mod health;
mod holds;
pub(crate) mod ipam;
pub mod local;
pub mod plan;
pub(crate) mod plan_cache;
pub(crate) mod rollback;
pub(crate) mod sharing;
pub(crate) mod snapshot;
pub(crate) mod steps;
mod subnet;
mod window;

pub use context::{Migration, StepContext, StepError};
pub(crate) use gates::MigratedChecks;
pub use health::FrontEnd;
