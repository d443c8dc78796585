//! vnet-migrate: moves Azure App Service apps (and slots) from gateway-based VNet integration
//! to regional VNet integration, one idempotent step at a time.
//!
//! Map of the crate:
//! - `azure`: ARM resource ids (case-insensitive), serde models of the resources we touch, the
//!   ARM client (long-running operations, retries, throttling pacer, scope guard), credentials
//!   and the Service Bus REST client.
//! - `policy`: the rollout policy file (scope, subnet naming and size, routing, rollback).
//! - `error`: showing an error and its causes on one line.
//! - `timer`: waits kept to the duration asked for (tokio's end up to 2 ms late, which a
//!   rehearsal's compressed time multiplies).
//! - `fleet`: the fleet file (ARM resources as ARM returns them), written by `snapshot` and
//!   read by the simulator.
//! - `pipeline`: the runtime, which knows nothing of the domain: the versioned step message
//!   (MessageId / SessionId), outcomes and their reasons, the `Reconciler` seam, the queue and
//!   ledger contracts, the embedded SQLite store, the engine that executes one step, the
//!   embedded runner, the rollout's waves and decisions and the one controller that carries
//!   them out (the same for the embedded runner and the Functions host) and a whole local run.
//! - `migration`: the domain, as the pipeline's reconciler: planning (pure: sizing, address
//!   allocation, plan-wide decisions), one reconcile function per step (discover … verify,
//!   rollback), its error policy, health checks, the checks of a wave's gate after its bake
//!   (Key Vault references, probe) and snapshot.
//! - `functions`: the Azure Functions custom-handler protocol: decoding the host's invocation
//!   payloads (Service Bus, Event Grid, Timer, HTTP), classifying Event Grid events, encoding
//!   responses.
//! - `sim`: an in-memory ARM simulator served over loopback HTTP, with ARM's validations,
//!   LROs, throttling and faults, a deterministic fleet generator, a Service Bus REST fake, and
//!   a launcher for the Azurite storage emulator (the Table ledger's tests).
//! - `rehearsal`: what judges and measures a rehearsal: the safety invariants and the figures
//!   taken from the simulator.
//! - `report`: the JSON report, the status document (the same from a state file and from the
//!   ledger in Azure), the HTML report and summary tables.
//! - `cli`: one file per subcommand, `common` (shared flags and the checks of every value a
//!   user types) and `exit` (the exit codes, decided in one place); `main.rs` only calls
//!   `cli::main`.

pub mod azure;
pub mod cli;
pub mod error;
pub mod fleet;
pub mod functions;
pub mod migration;
pub mod pipeline;
pub mod policy;
pub mod rehearsal;
pub mod report;
pub mod sim;
mod timer;
