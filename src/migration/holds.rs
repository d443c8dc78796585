//! Cut-overs and rollbacks' removals in progress per VNet, so a cut-over into a VNet a removal
//! holds waits *before* it removes its app's gateway connection rather than after.
//!
//! A rollback's `DELETE …/networkConfig/virtualNetwork` holds the app's VNet for 51–53 s (arm-vnet
//! reference §13, from the az CLI recordings), and ARM refuses other writes that touch the VNet
//! meanwhile (429 `RetryableErrorDueToAnotherOperation` / "Cannot acquire exclusive lock",
//! §13 and Azure/azure-rest-api-specs#11143). The rollback runs in its target's own session, out
//! of the VNet's serial chain of cut-overs, so without this a cut-over could remove its gateway
//! connection while the removal ran and keep its app offline for the rest of it: at 10,000
//! targets 43 migrated apps were offline about 60 s instead of about 10 s.
//!
//! The other way round, a removal waits for the cut-over in progress in its VNet (one at most:
//! cut-overs into a VNet run in its session, one at a time), so a cut-over that found the VNet
//! free cannot meet a removal that started after its check.
//!
//! Only this process's own steps are known here: in Azure, work run by another instance of the
//! function app is not seen, and a cut-over meets ARM's lock as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::azure::ResourceId;

/// How long a step waits for the other kind at most: a cut-over may wait for the join in
/// progress (7–10 s, once 59 s before ARM's 504 in the recordings) and then a removal (51–53 s);
/// past it the step goes on and meets ARM's lock, as it would without this (a call that hangs
/// in retries must not stop the VNet for good).
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// What a step does in a VNet that the other kind must not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// A cut-over: from reading the app's connections until its join ends.
    CutOver,
    /// A rollback's removal of regional integration.
    Removal,
}

/// Per VNet: cut-overs in progress, removals in progress, removals waiting to start.
const CUT_OVERS: usize = 0;
const REMOVALS: usize = 1;
const REMOVALS_WAITING: usize = 2;

#[derive(Debug, Clone, Default)]
pub(crate) struct VnetHolds {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Lower-cased VNet id → its counts (`CUT_OVERS`, `REMOVALS`, `REMOVALS_WAITING`).
    counts: Mutex<HashMap<String, [usize; 3]>>,
    released: Notify,
}

/// One of a VNet's counts, taken back when dropped (also when the step fails or is
/// cancelled); a step's work in progress is one.
#[must_use]
pub(crate) struct Hold {
    inner: Arc<Inner>,
    vnet: String,
    slot: usize,
}

impl Inner {
    /// Adds one to `slot` of `vnet` when `may` allows it given the counts (or `force`).
    fn take(
        self: &Arc<Self>,
        vnet: &str,
        slot: usize,
        force: bool,
        may: impl Fn(&[usize; 3]) -> bool,
    ) -> Option<Hold> {
        let mut all = self.counts.lock().expect("holds lock");
        let counts = all.entry(vnet.to_string()).or_default();
        if !(force || may(counts)) {
            return None;
        }
        counts[slot] += 1;
        Some(Hold {
            inner: self.clone(),
            vnet: vnet.to_string(),
            slot,
        })
    }
}

impl VnetHolds {
    /// Starts `work` in `vnet` once it may (or after `limit`), checked and counted under one
    /// lock so the two kinds cannot both start. A removal waits for the cut-overs in progress;
    /// a cut-over waits for the removals in progress *and* for those waiting, which a VNet's
    /// chain of cut-overs, starting the next as soon as one ends, would otherwise starve.
    pub(crate) async fn enter(&self, vnet: &ResourceId, work: Work, limit: Duration) -> Hold {
        let key = vnet.key();
        let deadline = tokio::time::Instant::now() + limit;
        let (slot, may): (usize, fn(&[usize; 3]) -> bool) = match work {
            Work::CutOver => (CUT_OVERS, |c| c[REMOVALS] == 0 && c[REMOVALS_WAITING] == 0),
            Work::Removal => (REMOVALS, |c| c[CUT_OVERS] == 0),
        };
        let _waiting = (work == Work::Removal)
            .then(|| self.inner.take(key, REMOVALS_WAITING, true, |_| true))
            .flatten();
        loop {
            // Registered before the check, so a release between the check and the wait wakes it.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let late = tokio::time::Instant::now() >= deadline;
            if let Some(hold) = self.inner.take(key, slot, late, may) {
                return hold;
            }
            // On timeout the next round counts it regardless.
            let _ = tokio::time::timeout_at(deadline, released).await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut all = self.inner.counts.lock().expect("holds lock");
        if let Some(counts) = all.get_mut(&self.vnet) {
            counts[self.slot] -= 1;
            if *counts == [0; 3] {
                all.remove(&self.vnet);
            }
        }
        drop(all);
        self.inner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use tokio::task::JoinHandle;

    use super::*;

    fn vnet(name: &str) -> ResourceId {
        ResourceId::parse(&format!(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/{name}"
        ))
        .unwrap()
    }

    /// How long `work` waits to enter `name` from now.
    async fn wait_to_enter(holds: &VnetHolds, name: &str, work: Work) -> (Hold, Duration) {
        let start = tokio::time::Instant::now();
        let hold = holds.enter(&vnet(name), work, LIMIT).await;
        (hold, start.elapsed())
    }

    /// `wait_to_enter` on a task of its own: how long it waited, once it entered.
    fn waiter(holds: &VnetHolds, name: &'static str, work: Work) -> JoinHandle<Duration> {
        let holds = holds.clone();
        tokio::spawn(async move { wait_to_enter(&holds, name, work).await.1 })
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_over_waits_for_a_removal_in_its_vnet_only() {
        let holds = VnetHolds::default();
        let (removal, _) = wait_to_enter(&holds, "Hub", Work::Removal).await;
        let (_, other_vnet) = wait_to_enter(&holds, "spoke", Work::CutOver).await;
        assert_eq!(other_vnet, Duration::ZERO);
        let waiter = waiter(&holds, "hub", Work::CutOver);
        tokio::time::sleep(Duration::from_secs(50)).await;
        drop(removal);
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_waits_for_the_cut_over_in_progress_and_cut_overs_do_not_wait_for_each_other()
    {
        let holds = VnetHolds::default();
        let (cut, _) = wait_to_enter(&holds, "hub", Work::CutOver).await;
        let (second, took) = wait_to_enter(&holds, "hub", Work::CutOver).await;
        assert_eq!(took, Duration::ZERO);
        drop(second);
        let waiter = waiter(&holds, "hub", Work::Removal);
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(cut);
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_removal_goes_before_the_next_cut_over_of_the_chain() {
        let holds = VnetHolds::default();
        let (cut, _) = wait_to_enter(&holds, "hub", Work::CutOver).await;
        let removal = {
            let holds = holds.clone();
            tokio::spawn(async move {
                let (hold, took) = wait_to_enter(&holds, "hub", Work::Removal).await;
                tokio::time::sleep(Duration::from_secs(50)).await;
                drop(hold);
                took
            })
        };
        let next = {
            let holds = holds.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                wait_to_enter(&holds, "hub", Work::CutOver).await.1
            })
        };
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(cut);
        assert_eq!(removal.await.unwrap(), Duration::from_secs(8));
        // Asked 1 s in; entered when the removal ended, 8 + 50 s in.
        assert_eq!(next.await.unwrap(), Duration::from_secs(57));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_never_ends_holds_the_other_kind_only_until_the_limit() {
        let holds = VnetHolds::default();
        let (_hung, _) = wait_to_enter(&holds, "hub", Work::Removal).await;
        let (_, took) = wait_to_enter(&holds, "hub", Work::CutOver).await;
        assert_eq!(took, LIMIT);
    }
}
