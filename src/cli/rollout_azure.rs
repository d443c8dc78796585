//! `rollout start|status|pause|resume|promote|abort --ledger URL` (issue 13): the rollout in
//! Azure, on the function app's Table ledger and steps queue, driven by the same controller
//! as on a state file (`pipeline::controller`). `start` records the run and its waves in the
//! ledger and sends the first wave to the steps queue; the function app's `rollout-tick`
//! judges each wave's gate after its bake and releases the next waves. `pause`, `resume`,
//! `promote` and `abort` change what the tick reads (`abort` also cancels the untouched
//! targets); `status` prints the document of `status -o json`, the same JSON the `status`
//! function returns, judging what the rollout waits for with the function app's policy
//! (`VNET_MIGRATE_POLICY`, as for `serve`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use time::OffsetDateTime;

use super::common::{self, Global};
use super::state::On;
use super::{run, status};
use crate::azure::credential::CredentialKind;
use crate::migration::discover::candidates_in_scope;
use crate::pipeline::controller::{promote, Controller};
use crate::pipeline::ledger::{Ledger, RunRecord};
use crate::pipeline::rollout::{Control, RolloutConfig};
use crate::pipeline::RunId;
use crate::policy::Policy;
use crate::report::status::Around;

/// Where the rollout lives in Azure: the settings of `serve` (DESIGN §7).
#[derive(Debug, ClapArgs)]
pub(crate) struct Backend {
    /// Drive the rollout in Azure on this ledger: the function app's `VNET_MIGRATE_LEDGER`
    /// (`https://{account}.table.core.windows.net`; an emulator on loopback takes its key
    /// from `VNET_MIGRATE_LEDGER_KEY`) instead of a state file.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) ledger: Option<String>,
    /// Service Bus namespace of the steps queue (`{name}.servicebus.windows.net`), for
    /// `start`; `VNET_MIGRATE_SERVICEBUS_ENDPOINT` overrides it and `VNET_MIGRATE_STEPS_QUEUE`
    /// names the queue, as for `serve`.
    #[arg(
        long,
        global = true,
        env = "ServiceBusConnection__fullyQualifiedNamespace",
        value_name = "NAMESPACE"
    )]
    pub(crate) servicebus: Option<String>,
}

/// The Azure back end, opened.
pub(crate) struct Azure {
    ledger: Arc<dyn Ledger>,
    servicebus: Option<String>,
    kind: CredentialKind,
}

impl Azure {
    /// The ledger at `backend.ledger` with the credential `global` names; None without
    /// `--ledger` (the rollout is on a state file).
    pub(crate) async fn open(global: &Global, backend: Backend) -> Result<Option<Azure>> {
        let Some(url) = backend.ledger else {
            return Ok(None);
        };
        let kind: CredentialKind = global.credential.parse().context("--credential")?;
        let ledger = super::serve::open_ledger(&url, kind)
            .await
            .context("--ledger")?;
        Ok(Some(Azure {
            ledger,
            servicebus: backend.servicebus,
            kind,
        }))
    }

    /// `--run`, or the newest run in the ledger.
    async fn run(&self, wanted: Option<&str>) -> Result<RunRecord> {
        let runs = self.ledger.runs().await?;
        let found = match wanted {
            Some(w) => runs.into_iter().find(|r| r.run.as_str() == w),
            None => runs.into_iter().max_by_key(|r| r.started_at),
        };
        found.with_context(|| match wanted {
            Some(w) => format!("no run {w} in the ledger"),
            None => "no run in the ledger".into(),
        })
    }

    pub(crate) async fn start(&self, global: &Global, args: run::Args) -> Result<ExitCode> {
        anyhow::ensure!(
            args.plan.is_none() && args.report.is_none(),
            "--plan and --report are for a rollout on a state file; in Azure the function app runs the steps (`rollout status --report` writes the report)"
        );
        let sender = super::serve::steps_queue(self.kind, self.servicebus.as_deref())?;
        let policy = common::load_policy(&args.scope)?;
        let apps = common::parse_apps(&args.scope.apps)?;
        let subscriptions = common::subscriptions(&policy, &apps)?;
        let arm = common::arm_client(global, common::write_scope(&subscriptions)?)?;
        let sites = candidates_in_scope(&arm, &subscriptions, &policy, &apps)
            .await
            .context("listing the apps in scope")?;
        let now = OffsetDateTime::now_utc();
        let record = RunRecord {
            run: RunId::new(now),
            started_at: now,
            dry_run: args.dry_run,
            origin: "vnet-migrate rollout start (Azure)".into(),
        };
        let config =
            RolloutConfig::of(&policy, 1.0, RolloutConfig::default().tick).in_azure(&policy);
        let targets = sites.len();
        let waves = Controller::new(&*self.ledger, &sender, &config)
            .start(&record, sites)
            .await?;
        let doc = serde_json::json!({ "run": record.run, "targets": targets, "waves": waves });
        common::emit(global, &doc, || {
            format!(
                "run {} started in Azure: {targets} target(s) in {waves} wave(s); the first wave is on the steps queue, `rollout-tick` releases the others\n",
                record.run
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }

    pub(crate) async fn status(&self, global: &Global, args: status::Args) -> Result<ExitCode> {
        anyhow::ensure!(
            args.app.is_none() && !args.watch,
            "--app and --watch are for a state file; in Azure, `status` shows the run"
        );
        let run = self.run(args.run.as_deref()).await?;
        status::print_status(
            global,
            &*self.ledger,
            &run,
            Around::AZURE,
            &function_app_config(global)?,
            false,
            args.report.as_deref(),
        )
        .await
    }

    /// Approves the wave the rollout waits for approval at: the function app's next
    /// `rollout-tick` releases it.
    pub(crate) async fn promote(&self, global: &Global, on: On) -> Result<ExitCode> {
        let run = self.run(on.run.as_deref()).await?.run;
        let config = function_app_config(global)?;
        let index = super::rollout::promoted(
            &run,
            promote(&*self.ledger, &run, &config, OffsetDateTime::now_utc()).await?,
        )?;
        eprintln!(
            "rollout of run {run} promoted: the function app's next `rollout-tick` releases wave {index}"
        );
        Ok(ExitCode::SUCCESS)
    }

    pub(crate) async fn control(&self, on: On, control: Control) -> Result<ExitCode> {
        let run = self.run(on.run.as_deref()).await?.run;
        let now = self.ledger.set_control(&run, control).await?;
        anyhow::ensure!(
            now == control,
            "the rollout of run {run} was aborted: it cannot be {}",
            if control == Control::Paused {
                "paused"
            } else {
                "resumed"
            }
        );
        eprintln!(
            "rollout of run {run} {}: the function app's next `rollout-tick` acts on it",
            if control == Control::Paused {
                "paused"
            } else {
                "resumed"
            }
        );
        Ok(ExitCode::SUCCESS)
    }

    pub(crate) async fn abort(&self, on: On) -> Result<ExitCode> {
        let run = self.run(on.run.as_deref()).await?.run;
        let cancelled = self.ledger.abort(&run, OffsetDateTime::now_utc()).await?;
        eprintln!("rollout of run {run} aborted: {cancelled} untouched target(s) cancelled; started ones reach their outcome");
        Ok(ExitCode::SUCCESS)
    }
}

/// The rollout settings `rollout-tick` judges with: the policy the function app reads (the
/// setting of `serve`), the bake in the time of `--arm-speed`.
fn function_app_config(global: &Global) -> Result<RolloutConfig> {
    let path = super::serve::policy_path();
    let policy =
        Policy::load_or_default(&path).with_context(|| format!("policy {}", path.display()))?;
    Ok(RolloutConfig::of(
        &policy,
        global.arm_speed,
        RolloutConfig::default().tick,
    ))
}
