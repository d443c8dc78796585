//! The ARM simulator: an in-memory Azure Resource Manager served over loopback.

pub mod builder;
pub mod fleet;
pub mod generate;

pub use fleet::Fleet;
