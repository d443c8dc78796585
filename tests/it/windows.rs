//! Maintenance windows (issue 12) on the embedded runner against the simulator: a target its
//! window does not cover right now has its cut-over put off, scheduled for the opening (the
//! rig compresses time a million-fold, so a day's wait takes a tenth of a second), and is
//! migrated then; a target no window covers is cut over at once.

use serde_json::json;
use vnet_migrate::pipeline::ledger::Ledger;
use vnet_migrate::policy::Policy;

use crate::support::{prod_and_dev, prod_window_in_five_days, report_of, Rig};

#[tokio::test]
async fn a_cut_over_outside_its_window_waits_for_the_opening_and_others_do_not() {
    let (fleet, prod, dev) = prod_and_dev();
    let rig = Rig::start(fleet).await;

    // Prod's window opens in at least four simulated days — at the rig's compression about
    // 0.35 s of real time, so a slow machine still reaches the cut-over before the window
    // opens (with "tomorrow" it could open within a few real milliseconds).
    let policy = Policy::from_json(
        &json!({"settleSeconds": 0, "windows": prod_window_in_five_days()}).to_string(),
    )
    .unwrap();
    let finished = rig
        .local_run(&policy, rig.dir.file("w.db"), 4)
        .await
        .unwrap();
    let report = report_of(finished.store.as_ref(), &finished.run).await;
    assert_eq!(crate::support::outcome(&report, &prod), "migrated");
    assert_eq!(crate::support::outcome(&report, &dev), "migrated");

    let waited = |log: &[vnet_migrate::pipeline::ledger::StepLogEntry]| {
        log.iter()
            .any(|e| e.detail().contains("outside its maintenance window"))
    };
    let prod_log = finished.store.step_log(&finished.run, &prod).await.unwrap();
    assert!(waited(&prod_log), "prod was cut over without waiting");
    let dev_log = finished.store.step_log(&finished.run, &dev).await.unwrap();
    assert!(!waited(&dev_log), "dev, covered by no window, waited");
}
