//! What `run` may do with a state file: resume its newest run (only with the contract it was
//! started with), report a finished one, or start a new one (`--new-run`). Pure: decided
//! from the state file's newest run and what the command line asked.

use crate::pipeline::contract::{ContractError, Requested, RunContract};
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
