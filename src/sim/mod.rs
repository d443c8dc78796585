//! The ARM simulator: an in-memory Azure Resource Manager served over loopback.

pub mod fleet;

pub use fleet::Fleet;
