//! `snapshot`: export the fleet in scope as a fleet file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope};
use super::exit::Exit;
use crate::azure::ResourceId;
use crate::migration::snapshot;

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) scope: Scope,
    #[command(flatten)]
    pub(crate) connection: common::Connection,
    /// Where to write the fleet file.
    #[arg(long = "out-file", value_name = "FILE")]
    pub(crate) out: PathBuf,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let policy = common::load_policy(&args.scope)?;
    let apps = common::parse_apps(&args.scope.apps)?;
    let subs = common::subscriptions(&policy, &apps)?;
    let arm = common::arm_client(global, Vec::<ResourceId>::new())?;
    let fleet = snapshot::collect(&arm, &subs).await?;
    fleet
        .save(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote {} resources to {}",
        fleet.resources.len(),
        args.out.display()
    );
    Ok(Exit::Done.into())
}
