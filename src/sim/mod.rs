//! The ARM simulator: an in-memory Azure Resource Manager served over loopback.

pub mod fleet;
pub mod servicebus;

pub use fleet::Fleet;
