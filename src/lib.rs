//! vnet-migrate: moves Azure App Service apps (and slots) from gateway-based VNet integration
//! to regional VNet integration, one idempotent step at a time.
//!
//! Map of the crate:
//! - `azure`: ARM resource ids (case-insensitive), serde models of the resources we touch, and
//!   the ARM client (long-running operations, retries, throttling pacer, scope guard).
//! - `sim`: an in-memory ARM simulator served over loopback HTTP, with ARM's validations,
//!   LROs, throttling and faults, plus a deterministic fleet generator. Rehearsals, demos and
//!   tests run against it through the real HTTP client.
//! - `pipeline`: the versioned step message (MessageId / SessionId), outcomes, the queue and
//!   ledger contracts, and the embedded SQLite store (queue + ledger in one durable file).
//! - `functions`: the Azure Functions custom-handler protocol: decoding the host's invocation
//!   payloads (Service Bus, Event Grid, Timer, HTTP), classifying Event Grid events, encoding
//!   responses.
//! - `cli`: one file per subcommand; `main.rs` only parses arguments and dispatches.

pub mod azure;
pub mod functions;
pub mod pipeline;
pub mod sim;
