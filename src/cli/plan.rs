//! `plan`: discover and plan the fleet in scope without writing anything to Azure.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope, TempState};
use super::run::migrate;
use crate::azure::ResourceId;
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
    let state = TempState::new("plan");
    let report = migrate(
        global,
        arm,
        policy,
        subs,
        apps,
        state.path().to_path_buf(),
        true,
        1.0,
    )
    .await?;
    common::finish(global, &report, Report::target_table)
}
