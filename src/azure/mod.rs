//! Everything that talks to (or describes) Azure: resource ids, ARM models, the ARM client.

pub mod arm;
pub mod credential;
pub mod models;
pub mod pacer;
pub mod permissions;
pub(crate) mod resource_id;
pub mod servicebus;

pub use resource_id::{ResourceId, ResourceIdError, ResourceKind};
