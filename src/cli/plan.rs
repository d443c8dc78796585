//! `plan`: discover and plan the fleet in scope without writing anything to Azure.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope};
use super::run::migrate;
use crate::azure::ResourceId;
use crate::migration::local;
use crate::pipeline::local::{Start, StateFile};
use crate::report::Report;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) scope: Scope,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let policy = common::load_policy(global, &args.scope)?;
    let apps = common::parse_apps(&args.scope.apps)?;
    let subs = common::subscriptions(&policy, &apps)?;
    // A dry run never writes; an empty write scope makes the ARM client refuse any write anyway.
    let arm = common::arm_client(global, Vec::<ResourceId>::new())?;
    let state = std::env::temp_dir().join(format!("vnet-migrate-plan-{}.db", uuid::Uuid::new_v4()));
    let contract = local::contract(&policy, &apps, &global.arm_endpoint, true, None);
    let report = match StateFile::open(&state) {
        Ok(file) => {
            migrate(
                global,
                arm,
                policy,
                subs,
                apps,
                (file, Start::New(contract)),
                true,
                1.0,
            )
            .await
        }
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(format!("{}.lock", state.display()));
    common::finish(global, &report?, Report::target_table)
}
