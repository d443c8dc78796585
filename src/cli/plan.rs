//! `plan`: discover and plan the fleet in scope without writing anything to Azure. Prints the
//! forecast; with `--out-file`, writes the plan file `run --plan` applies exactly (DESIGN §8:
//! plan → review → apply).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;

use super::common::{self, Global, Scope, TempState};
use super::run::migrate;
use crate::azure::ResourceId;
use crate::migration::fleet_plan::{self, Forecasts, PlanFile, PlanInputs};
use crate::migration::local::{self, Scope as LocalScope};
use crate::migration::FrontEnd;
use crate::pipeline::local::{Start, StateFile};

#[derive(Debug, ClapArgs)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) scope: Scope,
    #[command(flatten)]
    pub(crate) connection: common::Connection,
    /// Write the plan file here (review it, then `run --plan FILE`).
    #[arg(long)]
    pub(crate) out_file: Option<PathBuf>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let policy = common::load_policy(&args.scope)?;
    let apps = common::parse_apps(&args.scope.apps)?;
    let subs = common::subscriptions(&policy, &apps)?;
    // A plan never writes to Azure: an empty write scope makes the ARM client refuse any write.
    let arm = common::arm_client(global, Vec::<ResourceId>::new())?;
    let contract = local::contract(&policy, &apps, &global.arm_endpoint, true, None);
    let scope_text = contract.scope.clone();
    let forecasts = Arc::new(Forecasts::default());
    let state = TempState::new("plan");
    let scope = LocalScope {
        arm,
        policy: Arc::new(policy.clone()),
        subscriptions: subs,
        apps,
        time_scale: 1.0,
        applied: None,
        forecasts: Some(forecasts.clone()),
        // A dry run verifies nothing and releases no wave past a gate: nothing is probed.
        front_end: FrontEnd::Https,
    };
    let file = StateFile::open(state.path())?;
    let report = migrate(global, scope, (file, Start::New(contract)), true).await?;
    let outcomes = report
        .targets
        .iter()
        .map(|t| {
            let label = match &t.reason {
                Some(r) => format!("{}:{r}", t.outcome),
                None => t.outcome.clone(),
            };
            Ok((ResourceId::parse(&t.id)?, label))
        })
        .collect::<Result<Vec<_>, crate::azure::resource_id::ResourceIdError>>()?;
    let plan = fleet_plan::build(PlanInputs {
        arm_endpoint: &global.arm_endpoint,
        scope: scope_text,
        policy: &policy,
        outcomes,
        forecasts: &forecasts,
    });
    match &args.out_file {
        Some(path) => {
            let json = serde_json::to_string_pretty(&plan)?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write the plan file {}", path.display()))?;
            common::emit(global, &plan.totals, || {
                format!(
                    "{}plan saved to {}: review it, then `vnet-migrate run --plan {}`\n",
                    summary(&plan),
                    path.display(),
                    path.display()
                )
            })?;
        }
        None => common::emit(global, &plan, || {
            format!("{}{}", forecast_table(&plan), summary(&plan))
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per target: forecast, subnet and prefix, number of writes.
fn forecast_table(plan: &PlanFile) -> String {
    let mut s = format!(
        "{:<34} {:<28} {:<20} {:>6}  target\n",
        "forecast", "subnet", "prefix", "writes"
    );
    for t in &plan.targets {
        s.push_str(&format!(
            "{:<34} {:<28} {:<20} {:>6}  {}\n",
            t.forecast,
            t.subnet.as_ref().map_or("-", |s| s.name()),
            t.prefix.map_or("-".to_string(), |p| p.to_string()),
            t.writes.len(),
            t.id
        ));
    }
    s
}

/// Totals per subscription: targets per forecast and writes per kind.
fn summary(plan: &PlanFile) -> String {
    let mut s = String::new();
    for (sub, forecasts) in &plan.totals.targets {
        let targets: Vec<String> = forecasts.iter().map(|(f, n)| format!("{n} {f}")).collect();
        s.push_str(&format!("subscription {sub}: {}\n", targets.join(", ")));
        if let Some(writes) = plan.totals.writes.get(sub) {
            let w: Vec<String> = writes.iter().map(|(k, n)| format!("{n} {k}")).collect();
            s.push_str(&format!("  writes: {}\n", w.join(", ")));
        }
    }
    let new: Vec<String> = plan
        .subnets
        .iter()
        .filter(|x| x.create)
        .map(|x| format!("{} {}", x.id.name(), x.prefix))
        .collect();
    s.push_str(&format!(
        "{} new subnet(s){}{}\nfingerprint {}\n",
        new.len(),
        if new.is_empty() { "" } else { ": " },
        new.join(", "),
        plan.fingerprint
    ));
    s
}
