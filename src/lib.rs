//! vnet-migrate: moves Azure App Service apps (and slots) from gateway-based VNet integration
//! to regional VNet integration, one idempotent step at a time.
//!
//! Map of the crate:
//! - `azure`: ARM resource ids (case-insensitive), serde models of the resources we touch, and
//!   the ARM client (long-running operations, retries, throttling pacer, scope guard).
//! - `migration`: pure planning decisions (`plan`, with `ipam` for subnet sizing and
//!   allocation) and the migration steps.
//! - `policy`: the rollout policy file (`rollout.json`) and its validation.
//! - `sim`: an in-memory ARM simulator served over loopback HTTP, with ARM's validations,
//!   LROs, throttling and faults, plus a deterministic fleet generator. Rehearsals, demos and
//!   tests run against it through the real HTTP client.
//! - `cli`: one file per subcommand; `main.rs` only parses arguments and dispatches.

pub mod azure;
pub mod migration;
pub mod policy;
pub mod sim;
