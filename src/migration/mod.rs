//! The migration engine's decisions and steps.

pub mod ipam;
pub mod plan;
