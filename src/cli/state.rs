//! What `run` may do with a state file: resume its newest run (only with the contract it was
//! started with), report a finished one, or start a new one (`--new-run`), decided (pure)
//! from the state file's newest run and what the command line asked; and the run an operator
//! command works on.

use std::path::Path;

use super::common::Global;
use crate::pipeline::contract::{ContractError, Requested, RunContract};
use crate::pipeline::local::{Start, StateFile};
use crate::pipeline::sqlite::RunState;
use crate::pipeline::RunId;

#[derive(Debug)]
pub(crate) enum Decision {
    /// Resume this unfinished run, with the contract it recorded.
    Resume { run: RunId, contract: RunContract },
    /// The newest run is finished and no new run was asked for.
    Finished { run: RunId },
    /// Start a new run; `previous` is the contract of the finished run before it.
    New { previous: Option<RunContract> },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("run {run} in {state} is not finished: resume it (leave out --new-run) before starting another")]
    Unfinished { state: String, run: String },
    #[error("{state} was written by an earlier version of vnet-migrate and records no contract for run {run}: finish it with that version, or pass another --state")]
    NoContract { state: String, run: String },
}

pub(crate) fn decide(
    newest: Option<RunState>,
    requested: &Requested,
    new_run: bool,
    state: &str,
) -> Result<Decision, StateError> {
    let Some(newest) = newest else {
        return Ok(Decision::New { previous: None });
    };
    let run = newest.record.run;
    let Some(contract) = newest.contract else {
        return Err(StateError::NoContract {
            state: state.to_string(),
            run: run.to_string(),
        });
    };
    contract.same_kind(requested.dry_run, state, run.as_str())?;
    match (newest.finished, new_run) {
        (false, true) => Err(StateError::Unfinished {
            state: state.to_string(),
            run: run.to_string(),
        }),
        (false, false) => {
            contract.admits(requested, state, run.as_str())?;
            Ok(Decision::Resume { run, contract })
        }
        (true, false) => Ok(Decision::Finished { run }),
        (true, true) => Ok(Decision::New {
            previous: Some(contract),
        }),
    }
}

/// Which state file and run an operator command (`retry`, `rollback`, `replay`, `rollout`
/// pause/resume/abort) works on, and how it reaches ARM.
#[derive(Debug, clap::Args)]
pub(crate) struct On {
    #[command(flatten)]
    pub(crate) connection: super::common::Connection,
    /// State file of the run.
    #[arg(long, default_value = "vnet-migrate.db")]
    pub(crate) state: std::path::PathBuf,
    /// Run id (default: the newest run).
    #[arg(long)]
    pub(crate) run: Option<String>,
}

/// The run an operator command (`retry`, `rollback`, `replay`) works on, in a state file
/// that exists, with the contract it recorded; the connection flags must agree with it.
pub(crate) struct Operated {
    pub(crate) state: StateFile,
    pub(crate) run: RunId,
    pub(crate) contract: RunContract,
}

pub(crate) fn operate(path: &Path, run: Option<&str>, global: &Global) -> anyhow::Result<Operated> {
    let shown = path.display().to_string();
    // An operator command never creates a state file, and checks its connection settings
    // before it changes one.
    anyhow::ensure!(
        path.exists(),
        "state file {shown} does not exist: pass the --state of a run"
    );
    super::common::arm_client(global, Vec::new())?;
    let state = StateFile::open(path)?;
    let wanted = run.map(|r| RunId(r.to_string()));
    let Some(found) = state.store().run_state(wanted.as_ref())? else {
        anyhow::bail!(match run {
            Some(r) => format!("no run {r} in {shown}"),
            None => format!("no run in {shown}"),
        });
    };
    let run = found.record.run;
    let Some(contract) = found.contract else {
        return Err(StateError::NoContract {
            state: shown,
            run: run.to_string(),
        }
        .into());
    };
    anyhow::ensure!(
        !contract.dry_run,
        "run {run} in {shown} is a dry run: there is nothing to operate on"
    );
    let requested = Requested {
        arm_endpoint: global.arm_endpoint.clone(),
        ..Requested::default()
    };
    contract.admits(&requested, &shown, run.as_str())?;
    Ok(Operated {
        state,
        run,
        contract,
    })
}

impl Operated {
    /// Drives the run until its queue is empty (the steps the command queued included).
    pub(crate) async fn drive(self, global: &Global) -> anyhow::Result<crate::report::Report> {
        let (policy, apps, applied) = super::run::recorded(&self.contract)?;
        super::run::execute(
            global,
            (self.state, Start::Resume(self.run)),
            policy,
            apps,
            applied,
            false,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::contract::hash;
    use crate::pipeline::ledger::RunRecord;

    fn state(finished: bool, dry_run: bool, contract: bool) -> RunState {
        RunState {
            record: RunRecord {
                run: RunId("r-1".into()),
                started_at: time::OffsetDateTime::UNIX_EPOCH,
                dry_run,
                origin: "test".into(),
            },
            contract: contract.then(|| RunContract {
                scope: "scope-a".into(),
                arm_endpoint: "http://127.0.0.1:1".into(),
                dry_run,
                policy: "{}".into(),
                policy_hash: hash(b"{}"),
                plan: None,
                simulated_speed: None,
            }),
            finished,
        }
    }

    fn asked(dry_run: bool) -> Requested {
        Requested {
            arm_endpoint: "http://127.0.0.1:1".into(),
            dry_run,
            ..Requested::default()
        }
    }

    #[test]
    fn each_state_and_request_has_one_answer() {
        assert!(matches!(
            decide(None, &asked(false), false, "s.db").unwrap(),
            Decision::New { previous: None }
        ));
        assert!(matches!(
            decide(
                Some(state(false, false, true)),
                &asked(false),
                false,
                "s.db"
            )
            .unwrap(),
            Decision::Resume { .. }
        ));
        assert!(matches!(
            decide(Some(state(true, false, true)), &asked(false), false, "s.db").unwrap(),
            Decision::Finished { .. }
        ));
        assert!(matches!(
            decide(Some(state(true, false, true)), &asked(false), true, "s.db").unwrap(),
            Decision::New { previous: Some(_) }
        ));
    }

    #[test]
    fn refusals() {
        let unfinished = decide(Some(state(false, false, true)), &asked(false), true, "s.db");
        assert!(matches!(unfinished, Err(StateError::Unfinished { .. })));
        // A dry run on a real run's state, finished or not, new or resumed.
        for (finished, new_run) in [(false, false), (true, false), (true, true)] {
            let r = decide(
                Some(state(finished, false, true)),
                &asked(true),
                new_run,
                "s.db",
            );
            assert!(
                matches!(
                    r,
                    Err(StateError::Contract(
                        ContractError::DryRunOnRealState { .. }
                    ))
                ),
                "{r:?}"
            );
        }
        let other_scope = Requested {
            scope: Some("scope-b".into()),
            ..asked(false)
        };
        let r = decide(Some(state(false, false, true)), &other_scope, false, "s.db");
        assert!(matches!(
            r,
            Err(StateError::Contract(ContractError::Scope { .. }))
        ));
        let legacy = decide(
            Some(state(false, false, false)),
            &asked(false),
            false,
            "s.db",
        );
        assert!(matches!(legacy, Err(StateError::NoContract { .. })));
    }
}
