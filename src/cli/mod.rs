//! The command line (DESIGN §8): one file per subcommand; `main.rs` only calls [`main`].

mod common;
mod exit;
mod output;
mod package;
mod plan;
mod rehearse;
mod replay;
mod retry;
mod rollback;
mod rollout;
mod rollout_azure;
mod run;
mod serve;
mod simulate_arm;
mod snapshot;
mod state;
mod status;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use exit::{Exit, Interrupted};

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
    /// Drive a rollout in waves on a state file, or in Azure with `--ledger`: start, status,
    /// pause, resume, abort.
    Rollout(rollout::Args),
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

impl Command {
    /// The ARM connection flags of a command that talks to ARM (the others take none).
    fn connection(&self) -> Option<&common::Connection> {
        match self {
            Command::Plan(a) => Some(&a.connection),
            Command::Run(a) => Some(&a.connection),
            Command::Rollout(a) => a.connection(),
            Command::Retry(a) => Some(&a.on.connection),
            Command::Rollback(a) => Some(&a.on.connection),
            Command::Replay(a) => Some(&a.on.connection),
            Command::Snapshot(a) => Some(&a.connection),
            Command::Serve(a) => Some(&a.connection),
            Command::Rehearse(_)
            | Command::Status(_)
            | Command::SimulateArm(_)
            | Command::Package(_) => None,
        }
    }

    /// The servers, which answer requests other processes send at their own pace, run on a
    /// worker per core. A command runs on one thread: its work is waiting on ARM (and, in a
    /// rehearsal, the simulator in the same process answering), and handing each wake-up
    /// between two workers cost a third of its CPU (`rehearse --seed 7 --speed 50`, this
    /// project's 2-core machine: 1.63 -> 1.11 ms per step at 10,000 targets, 1.45–1.73 ->
    /// 1.12 at 500; the same outcomes, makespan and peak RSS no worse).
    fn runtime(&self) -> tokio::runtime::Builder {
        match self {
            Command::Serve(_) | Command::SimulateArm(_) => {
                tokio::runtime::Builder::new_multi_thread()
            }
            _ => tokio::runtime::Builder::new_current_thread(),
        }
    }
}

/// Parses arguments, runs the command, maps the result to the exit codes (`exit.rs`).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return exit::clap_error(&e),
    };
    common::init_tracing(&cli.global);
    let rt = match cli.command.runtime().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::BadInput.into();
        }
    };
    let global = cli.global.connected(cli.command.connection());
    let result = rt.block_on(async move {
        let cli = Cli { global, ..cli };
        match cli.command {
            Command::Rehearse(a) => interruptible(rehearse::run(&cli.global, a)).await,
            Command::Plan(a) => interruptible(plan::run(&cli.global, a)).await,
            Command::Run(a) => interruptible(run::run(&cli.global, a)).await,
            Command::Rollout(a) => interruptible(rollout::run(&cli.global, a)).await,
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
            let exit = Exit::of_error(&e);
            let cause: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}{}", crate::error::Chain(cause), exit.hint());
            exit.into()
        }
    }
}

/// A command that holds a state file, stopped cleanly by Ctrl-C: its future is dropped, and
/// with it the guards that remove the lock file and any temporary state.
async fn interruptible(work: impl Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::select! {
        // In this order: the handler is installed (on its first poll) before the command
        // starts, so a Ctrl-C never meets the default handler that would kill the process
        // with its files in place. When no handler can be installed, the command runs as is.
        biased;
        Ok(()) = tokio::signal::ctrl_c() => Err(Interrupted.into()),
        result = work => result,
    }
}
