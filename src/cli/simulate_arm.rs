//! `simulate-arm`: the ARM simulator alone, for demos and for `run` against it over HTTP.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::common::Global;
use super::exit::Exit;
use crate::sim::{FaultProfile, Fleet, SimOptions, Simulator};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) source: super::common::FleetSource,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
    /// Time compression: divides latencies and delays, multiplies ARM's rate limits.
    #[arg(long, default_value_t = 1.0, value_parser = super::common::speed_arg)]
    pub(crate) speed: f64,
    /// Random faults on ARM requests: none, flaky or chaos.
    #[arg(long, default_value = "none")]
    pub(crate) faults: FaultProfile,
}

pub(crate) async fn run(_global: &Global, args: Args) -> Result<ExitCode> {
    let options = SimOptions {
        speed: args.speed,
        faults: args.faults,
        seed: args.source.seed,
        ..SimOptions::default()
    };
    // With neither, an empty ARM: clients create what they need (as the az CLI recordings do).
    let sim = match args.source.simulator(options.clone())? {
        Some(sim) => sim,
        None => Simulator::new(Fleet::default(), options),
    };
    crate::sim::run_simulate_arm(sim, args.port).await?;
    Ok(Exit::Done.into())
}
