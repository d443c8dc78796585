//! `simulate-arm`: the ARM simulator alone, for demos and for `run` against it over HTTP.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::common::Global;
use crate::sim::{generate, FaultProfile, Fleet, SimOptions};

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[arg(long, conflicts_with = "generate")]
    pub fleet: Option<PathBuf>,
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    #[arg(long, default_value = "none")]
    pub faults: FaultProfile,
}

pub async fn run(_global: &Global, args: Args) -> Result<ExitCode> {
    anyhow::ensure!(
        args.speed > 0.0 && args.speed.is_finite(),
        "--speed must be a positive number, got {}",
        args.speed
    );
    let fleet = match (&args.fleet, args.generate) {
        (Some(path), _) => Fleet::load(path)?,
        (None, Some(n)) => generate::generate(n, args.seed),
        (None, None) => Fleet::default(),
    };
    let options = SimOptions {
        speed: args.speed,
        faults: args.faults,
        seed: args.seed,
        ..SimOptions::default()
    };
    crate::sim::run_simulate_arm(fleet, options, args.port).await?;
    Ok(ExitCode::SUCCESS)
}
