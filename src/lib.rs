//! vnet-migrate: moves Azure App Service apps (and slots) from gateway-based VNet integration
//! to regional VNet integration, one idempotent step at a time.
//!
//! Map of the crate:
//! - `azure`: ARM resource ids (case-insensitive), serde models of the resources we touch, the
//!   ARM client (long-running operations, retries, throttling pacer, scope guard), credentials
//!   and the Service Bus REST client.
//! - `policy`: the rollout policy file (scope, subnet naming and size, routing, rollback).
//! - `migration`: planning (pure: sizing, address allocation, plan-wide decisions), the step
//!   reconcilers (discover … verify, rollback), health checks, snapshot and invariants.
//! - `pipeline`: the versioned step message (MessageId / SessionId), outcomes, the queue and
//!   ledger contracts, the embedded SQLite store, the engine that executes one step, the
//!   embedded runner and a whole local run.
//! - `functions`: the Azure Functions custom-handler protocol: decoding the host's invocation
//!   payloads (Service Bus, Event Grid, Timer, HTTP), classifying Event Grid events, encoding
//!   responses.
//! - `sim`: an in-memory ARM simulator served over loopback HTTP, with ARM's validations,
//!   LROs, throttling and faults, a deterministic fleet generator, and a Service Bus REST fake.
//! - `report`: the JSON report and summary tables.
//! - `cli`: one file per subcommand; `main.rs` only calls `cli::main`.

pub mod azure;
pub mod cli;
pub mod functions;
pub mod migration;
pub mod pipeline;
pub mod policy;
pub mod report;
pub mod sim;
