//! The ledger in Azure Table Storage (`VNET_MIGRATE_LEDGER=https://{account}.table.core.windows.net`):
//! `client` speaks the Table service REST API, `ledger` implements the [`Ledger`] trait over it.
//!
//! [`Ledger`]: crate::pipeline::ledger::Ledger

mod client;
mod ledger;
mod rollout;

pub(crate) use client::{check_endpoint, STORAGE_SCOPE};
pub use client::{TableAuth, TableError};
pub use ledger::TableLedger;
