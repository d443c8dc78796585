//! The command line (DESIGN §8): one file per subcommand; `main.rs` only calls [`main`].

mod common;
mod package;
mod plan;
mod rehearse;
mod replay;
mod retry;
mod rollback;
mod run;
mod serve;
mod simulate_arm;
mod snapshot;
mod state;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use common::{Global, OutputFormat};

#[derive(Debug, Parser)]
#[command(
    name = "vnet-migrate",
    version,
    about = "Migrate Azure App Service apps from gateway-based to regional VNet integration"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the whole pipeline against the built-in ARM simulator (the default demo).
    Rehearse(rehearse::Args),
    /// Discover and plan, no writes: the per-target forecast.
    Plan(plan::Args),
    /// Migrate from this machine with the embedded durable queue (resumable).
    Run(run::Args),
    /// Counts per outcome and failures with reasons, from a state file.
    Status(status::Args),
    /// Start blocked, parked or rolled-back targets of a run again.
    Retry(retry::Args),
    /// Put one migrated app back on its saved gateway-based connection.
    Rollback(rollback::Args),
    /// Resend dead-lettered step messages with a fresh MessageId.
    Replay(replay::Args),
    /// Export the fleet in scope as a fleet file (to rehearse on a copy of your estate).
    Snapshot(snapshot::Args),
    /// Run the ARM simulator alone.
    SimulateArm(simulate_arm::Args),
    /// Assemble the deployable function app (folder and zip).
    Package(package::Args),
    /// The Azure Functions custom handler (settings from the environment).
    Serve(serve::Args),
}

/// Parses arguments, runs the command, maps the result to DESIGN §8's exit codes.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    common::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Rehearse(a) => rehearse::run(&cli.global, a).await,
            Command::Plan(a) => plan::run(&cli.global, a).await,
            Command::Run(a) => run::run(&cli.global, a).await,
            Command::Status(a) => status::run(&cli.global, a).await,
            Command::Retry(a) => retry::run(&cli.global, a).await,
            Command::Rollback(a) => rollback::run(&cli.global, a).await,
            Command::Replay(a) => replay::run(&cli.global, a).await,
            Command::Snapshot(a) => snapshot::run(&cli.global, a).await,
            Command::SimulateArm(a) => simulate_arm::run(&cli.global, a).await,
            Command::Package(a) => package::run(&cli.global, a).await,
            Command::Serve(a) => serve::run(&cli.global, a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, with the cause chain: what went wrong and what to do.
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", crate::error::Chain(e));
            // Parked targets return exit 1 as a report, not an error: errors are bad input.
            ExitCode::from(2)
        }
    }
}
