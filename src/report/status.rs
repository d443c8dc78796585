//! The status document of a run (`status -o json`, `rollout status`, and the `status`
//! function in Azure, which return the same JSON): the report of its targets and waves with
//! their gate checks, what an unfinished rollout waits for (no performance figures: status
//! measures none), plus what the back end says around it.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Performance, Report};
use crate::pipeline::controller::standing;
use crate::pipeline::ledger::{Ledger, LedgerError, RunRecord, TargetRecord};
use crate::pipeline::rollout::RolloutConfig;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunStatus {
    #[serde(flatten)]
    pub(crate) report: Report,
    pub(crate) finished: bool,
    /// A process works on the run: the runner holding the state file; in Azure, the function
    /// app while the run is unfinished.
    pub(crate) runner_active: bool,
    /// Dead-lettered step messages; null in Azure, where the ledger does not know them
    /// (`replay --dlq --dry-run` lists them).
    pub(crate) dead_letters: Option<usize>,
}

/// What the back end knows besides the ledger.
pub(crate) struct Around {
    /// None: finished when every target has its outcome (Azure).
    pub(crate) finished: Option<bool>,
    /// None: active while unfinished (Azure).
    pub(crate) runner_active: Option<bool>,
    pub(crate) dead_letters: Option<usize>,
    pub(crate) simulated_speed: Option<f64>,
}

impl Around {
    /// In Azure: the function app works on every run until each target has its outcome.
    pub(crate) const AZURE: Around = Around {
        finished: None,
        runner_active: None,
        dead_letters: None,
        simulated_speed: None,
    };
}

/// Unfinished targets whose next step is due more than a few minutes from `now` (a
/// maintenance window, not the settle time or a backoff): how many, and when the first and
/// the last go on.
fn put_off(records: &[TargetRecord], now: OffsetDateTime) -> Option<String> {
    let later: Vec<OffsetDateTime> = records
        .iter()
        .filter(|t| t.outcome.is_none())
        .filter_map(|t| t.next_at)
        .filter(|at| *at > now + time::Duration::minutes(5))
        .collect();
    let (first, last) = (later.iter().min()?, later.iter().max()?);
    let at = |t: &OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
    Some(format!(
        "{} target(s) put off (outside their maintenance window; `status --app ID` says why): the first goes on at {}, the last at {}",
        later.len(),
        at(first),
        at(last)
    ))
}

/// The status of `run` from `ledger`, and the target records it was built from; what the
/// rollout waits for is judged with `config`, the settings its controller runs with.
pub(crate) async fn run_status(
    ledger: &dyn Ledger,
    run: &RunRecord,
    around: Around,
    config: &RolloutConfig,
) -> Result<(RunStatus, Vec<TargetRecord>), LedgerError> {
    let records = ledger.targets(&run.run).await?;
    let now = OffsetDateTime::now_utc();
    let (waves, _, decision) = standing(ledger, &run.run, config, now).await?;
    let perf = Performance {
        simulated_speed: around.simulated_speed,
        ..Default::default()
    };
    let mut report =
        Report::new(run.run.as_str(), run.dry_run, &records, perf).with_waves(&records, &waves);
    let finished = around
        .finished
        .unwrap_or_else(|| records.iter().all(|t| t.outcome.is_some()));
    if !finished {
        report.waiting = Some(match put_off(&records, now) {
            Some(later) => format!("{decision}; {later}"),
            None => decision.to_string(),
        });
    }
    let status = RunStatus {
        report,
        finished,
        runner_active: around.runner_active.unwrap_or(!finished),
        dead_letters: around.dead_letters,
    };
    Ok((status, records))
}
