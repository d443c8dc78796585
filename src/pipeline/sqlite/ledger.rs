//! The ledger half of the store: runs, one row per target per run, and the step log.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql};
use time::OffsetDateTime;

use super::columns::{Detail, LedgerRow, Rfc3339, UnixMs};
use super::gateway_log::Saved;
use super::{lstorage, SqliteStore};
use crate::azure::ResourceId;
use crate::pipeline::ledger::{
    Cutover, Ledger, LedgerError, Released, RunRecord, StepLogEntry, StepRecord, TargetRecord,
};
use crate::pipeline::message::{GatewaySnapshot, RunId};
use crate::pipeline::queue::Outgoing;
use crate::pipeline::rollout::{Control, Gate, WaveView};

/// Columns of `targets` added after the first state files were written, with their types.
const ADDED_TARGET_COLUMNS: [(&str, &str); 5] = [
    ("disconnected_at", "TEXT"),
    ("connected_at", "TEXT"),
    ("retries", "INTEGER NOT NULL DEFAULT 0"),
    // The rollout wave the target belongs to (a slot goes with its site); NULL in runs
    // written before rollouts.
    ("wave", "INTEGER"),
    // When the target's next step is due, if put off (`TargetRecord::next_at`).
    ("next_at", "TEXT"),
];

/// Adds the columns an older state file's `targets` table lacks, so files written by earlier
/// versions still open.
pub(super) fn add_target_columns(conn: &Connection) -> rusqlite::Result<()> {
    add_columns(conn, "targets", &ADDED_TARGET_COLUMNS)
}

/// What a state file written by an earlier version has that the current shape moved or
/// dropped: the gateway snapshots kept in `targets` move to `gateways`, and the step log's copy
/// of the target's id goes (it is the one in `targets`).
pub(super) fn drop_moved_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name=?2",
            params![table, column],
            |r| r.get::<_, bool>(0),
        )
    };
    if has("targets", "gateway")? {
        conn.execute_batch(
            "INSERT OR IGNORE INTO gateways (run, target_key, gateway, saved_at)
               SELECT run, target_key, gateway, 0 FROM targets WHERE gateway IS NOT NULL;
             ALTER TABLE targets DROP COLUMN gateway;",
        )?;
    }
    if has("step_log", "target")? {
        conn.execute_batch("ALTER TABLE step_log DROP COLUMN target")?;
    }
    Ok(())
}

/// Saves a target's gateway snapshot unless the one saved is newer or the same (an unchanged
/// snapshot writes nothing: every step after a cut-over carries it).
fn put_gateway(
    tx: &Connection,
    run: &RunId,
    target: &ResourceId,
    gateway: &GatewaySnapshot,
    saved_at: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO gateways (run, target_key, gateway, saved_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(run, target_key) DO UPDATE SET gateway=excluded.gateway, saved_at=excluded.saved_at
           WHERE excluded.saved_at >= gateways.saved_at AND excluded.gateway IS NOT gateways.gateway",
    )?
    .execute(params![run, target.key_digest(), gateway, saved_at])?;
    Ok(())
}

/// `put_gateway` for a snapshot saved before a cut-over or folded from the gateway log, with
/// the target's row if the run has none yet (the snapshot is read with the row).
fn put_saved(tx: &Connection, saved: &Saved) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO targets (run, target_key, target, started_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
    )?
    .execute(params![
        saved.run,
        saved.target.key_digest(),
        saved.target,
        Rfc3339(UnixMs(saved.saved_at).datetime())
    ])?;
    put_gateway(
        tx,
        &saved.run,
        &saved.target,
        &saved.gateway,
        saved.saved_at,
    )
}

/// Adds the `columns` (name, type) `table` lacks (SQLite has no `ADD COLUMN IF NOT EXISTS`).
pub(super) fn add_columns(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let have = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (name, ty) in columns {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// `Ledger::add_target` for every target of a new run, in one transaction: a fleet is
    /// registered with one commit, not one per target (10,000 targets: seconds before the
    /// first step).
    pub(crate) fn add_targets(
        &self,
        run: &RunId,
        targets: &[ResourceId],
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        self.transaction(lstorage, |tx| {
            let mut add = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO targets (run, target_key, target, current_step, started_at, updated_at) VALUES (?1, ?2, ?3, 'discover', ?4, ?4)",
                )
                .map_err(lstorage)?;
            for t in targets {
                add.execute(params![run, t.key_digest(), t, Rfc3339(at)])
                    .map_err(lstorage)?;
            }
            Ok(())
        })
    }
}

/// Appends a step to the step log and updates its target's row, inside the caller's
/// transaction (the queue settles a delivery and records its step in one).
pub(super) fn record_tx(tx: &Connection, r: &StepRecord) -> Result<(), LedgerError> {
    let at = Rfc3339(r.at);
    let key = r.target.key_digest();
    tx.prepare_cached(
        "INSERT INTO step_log (run, target_key, step, attempt, message_id, detail, at, duration_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
    )
    .and_then(|mut s| {
        s.execute(params![r.run, key, r.step, r.attempt, r.message_id, Detail(r.detail.as_str().into()), at, r.duration_ms as i64])
    })
    .map_err(lstorage)?;
    // A target's outcome is final (only an operator reopens it, `reopen_target`): a step
    // recorded after it is a late duplicate (a redelivery, or a step recorded after the one it
    // sent ended the target), logged and counted but never undoing the end.
    let ended = tx
        .prepare_cached(
            "UPDATE targets SET steps=steps+1, attempts=MAX(attempts, ?3) WHERE run=?1 AND target_key=?2 AND outcome IS NOT NULL",
        )
        .and_then(|mut s| s.execute(params![r.run, key, r.attempt]))
        .map_err(lstorage)?;
    if ended > 0 {
        return Ok(());
    }
    let reason = r.outcome.as_ref().and_then(|o| o.reason());
    let finished = r.outcome.as_ref().map(|_| at);
    // The first disconnect time recorded is kept (a redelivery only observes the connection
    // gone, later), the last connect time wins (a rollback after a connect ends the downtime).
    // A target first seen here is a slot found by its site's discover: it joins the site's wave.
    let site = r.target.site().map(|s| s.key_digest());
    tx.prepare_cached(
        "INSERT INTO targets (run, target_key, target, outcome, current_step, steps, attempts, reason, subnet, prefix, started_at, updated_at, finished_at, disconnected_at, connected_at, wave, next_at)
         VALUES (?1,?2,?3,?4,?5,1,?6,?7,?8,?9,?10,?10,?11,?12,?13,(SELECT wave FROM targets WHERE run=?1 AND target_key=?14),?15)
         ON CONFLICT(run, target_key) DO UPDATE SET
           outcome=excluded.outcome, current_step=excluded.current_step, steps=targets.steps+1,
           attempts=MAX(targets.attempts, excluded.attempts), reason=COALESCE(excluded.reason, targets.reason),
           subnet=COALESCE(excluded.subnet, targets.subnet), prefix=COALESCE(excluded.prefix, targets.prefix),
           updated_at=excluded.updated_at, finished_at=excluded.finished_at,
           disconnected_at=COALESCE(targets.disconnected_at, excluded.disconnected_at),
           connected_at=COALESCE(excluded.connected_at, targets.connected_at), next_at=excluded.next_at",
    )
    .and_then(|mut s| s.execute(params![
            r.run,
            key,
            r.target,
            r.outcome,
            r.next,
            r.attempt,
            reason,
            r.subnet,
            r.prefix,
            at,
            finished,
            r.cutover.disconnected_at.map(Rfc3339),
            r.cutover.connected_at.map(Rfc3339),
            site,
            r.next_at.map(Rfc3339)
        ]))
    .map_err(lstorage)?;
    // After the early return above: a late duplicate changes nothing of an ended target.
    if let Some(gateway) = &r.gateway {
        put_gateway(tx, &r.run, &r.target, gateway, UnixMs::at(r.at).0).map_err(lstorage)?;
    }
    Ok(())
}

/// A target's row; `target_from_row` reads it with the `gateway` column after it.
const TARGET_COLUMNS: &str = "run, target_key, target, outcome, current_step, steps, attempts, reason, subnet, prefix, started_at, updated_at, finished_at, disconnected_at, connected_at, wave, next_at";

/// Whether target records are read with their gateway snapshots.
#[derive(Clone, Copy)]
enum Snapshots {
    /// Joined from `gateways` (`run` and `target_key` name the joined columns).
    With,
    /// Left out: a report reads none of them (10,000 targets: 6,900 of ~640 bytes of JSON).
    Without,
}

fn target_from_row(row: &Row<'_>) -> Result<TargetRecord, LedgerError> {
    let col = LedgerRow::new(row, "targets", &["run", "target_key"]);
    Ok(TargetRecord {
        run: col.get("run")?,
        target: col.get("target")?,
        outcome: col.get("outcome")?,
        current_step: col.get("current_step")?,
        steps: col.get("steps")?,
        attempts: col.get("attempts")?,
        reason: col.get("reason")?,
        subnet: col.get("subnet")?,
        prefix: col.get("prefix")?,
        gateway: col.get("gateway")?,
        started_at: col.get::<Rfc3339>("started_at")?.0,
        updated_at: col.get::<Rfc3339>("updated_at")?.0,
        finished_at: col.get::<Option<Rfc3339>>("finished_at")?.map(|t| t.0),
        cutover: Cutover {
            disconnected_at: col.get::<Option<Rfc3339>>("disconnected_at")?.map(|t| t.0),
            connected_at: col.get::<Option<Rfc3339>>("connected_at")?.map(|t| t.0),
        },
        wave: col.get("wave")?,
        next_at: col.get::<Option<Rfc3339>>("next_at")?.map(|t| t.0),
    })
}

impl SqliteStore {
    /// Commits the records of the gateway log (`gateway_log`) and empties it.
    pub(super) fn fold_gateways(&self) -> Result<(), LedgerError> {
        let unreadable = |e| LedgerError::storage("cannot read the gateway log", Some(Box::new(e)));
        self.gateways.fold(unreadable, |records| {
            self.transaction(lstorage, |tx| {
                records.try_for_each(|saved| {
                    put_saved(tx, &saved.map_err(unreadable)?).map_err(lstorage)
                })
            })
        })
    }

    /// The run's target records without their gateway snapshots: what a report reads. Boxed:
    /// 10,000 records in one vector took a fresh 6 MB block at the end of a rehearsal, where
    /// boxes fit into the memory the run had freed.
    #[expect(
        clippy::vec_box,
        reason = "each record in a block of its own, on purpose"
    )]
    pub(crate) fn target_outcomes(
        &self,
        run: &RunId,
    ) -> Result<Vec<Box<TargetRecord>>, LedgerError> {
        let mut out = Vec::new();
        self.each_target(Snapshots::Without, "run=?1", &[run], |t| {
            out.push(Box::new(t))
        })?;
        Ok(out)
    }

    fn query_targets(
        &self,
        where_: &str,
        args: &[&dyn ToSql],
    ) -> Result<Vec<TargetRecord>, LedgerError> {
        let mut out = Vec::new();
        self.each_target(Snapshots::With, where_, args, |t| out.push(t))?;
        Ok(out)
    }

    /// Calls `f` with each target record `where_` selects, in id order.
    fn each_target(
        &self,
        snapshots: Snapshots,
        where_: &str,
        args: &[&dyn ToSql],
        mut f: impl FnMut(TargetRecord),
    ) -> Result<(), LedgerError> {
        let from = match snapshots {
            Snapshots::With => "gateway FROM targets LEFT JOIN gateways USING (run, target_key)",
            Snapshots::Without => "NULL AS gateway FROM targets",
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TARGET_COLUMNS}, {from} WHERE {where_} ORDER BY lower(target)"
            ))
            .map_err(lstorage)?;
        let mut rows = stmt.query(args).map_err(lstorage)?;
        while let Some(row) = rows.next().map_err(lstorage)? {
            f(target_from_row(row)?);
        }
        Ok(())
    }
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn start_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        self.transaction(lstorage, |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO runs (run, started_at, dry_run, origin) VALUES (?1, ?2, ?3, ?4)",
                params![run.run, Rfc3339(run.started_at), run.dry_run, run.origin],
            )
            .map_err(lstorage)
        })?;
        Ok(())
    }

    async fn runs(&self) -> Result<Vec<RunRecord>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT run, started_at, dry_run, origin FROM runs ORDER BY started_at")
            .map_err(lstorage)?;
        let mut rows = stmt.query([]).map_err(lstorage)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(lstorage)? {
            let col = LedgerRow::new(row, "runs", &["run"]);
            out.push(RunRecord {
                run: col.get("run")?,
                started_at: col.get::<Rfc3339>("started_at")?.0,
                dry_run: col.get("dry_run")?,
                origin: col.get("origin")?,
            });
        }
        Ok(out)
    }

    async fn add_target(
        &self,
        run: &RunId,
        target: &ResourceId,
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        self.add_targets(run, std::slice::from_ref(target), at)
    }

    async fn record(&self, step: &StepRecord) -> Result<(), LedgerError> {
        self.transaction(lstorage, |tx| record_tx(tx, step))
    }

    async fn save_gateway(
        &self,
        run: &RunId,
        target: &ResourceId,
        gateway: &GatewaySnapshot,
    ) -> Result<(), LedgerError> {
        // The cut-over deletes the gateway connection once this returns, and only this
        // snapshot can restore it: logged before it returns, committed with the batch
        // (`gateway_log`).
        let saved = Saved {
            run: run.clone(),
            target: target.clone(),
            saved_at: UnixMs::at(OffsetDateTime::now_utc()).0,
            gateway: gateway.clone(),
        };
        self.gateways.append(&saved).map_err(|e| {
            LedgerError::storage("cannot append to the gateway log", Some(Box::new(e)))
        })?;
        // The message that asked for the cut-over must be in the file too: when it was queued
        // in the open batch, a crash would lose it and the settles before it, and the target's
        // earlier step, done again, would find the connection gone with no cut-over of its own
        // to explain it. Then the batch is committed with the snapshot.
        let fresh: bool = self
            .conn()
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM temp.fresh WHERE target_key=?1)")
            .and_then(|mut s| s.query_row(params![target.key_digest()], |r| r.get(0)))
            .map_err(lstorage)?;
        let put = |tx: &Connection| put_saved(tx, &saved).map_err(lstorage);
        if fresh {
            self.transaction(lstorage, put)
        } else {
            self.batched(lstorage, put)
        }
    }

    async fn target(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Option<TargetRecord>, LedgerError> {
        Ok(self
            .query_targets("run=?1 AND target_key=?2", &[run, &target.key_digest()])?
            .pop())
    }

    async fn targets(&self, run: &RunId) -> Result<Vec<TargetRecord>, LedgerError> {
        self.query_targets("run=?1", &[run])
    }

    async fn step_log(
        &self,
        run: &RunId,
        target: &ResourceId,
    ) -> Result<Vec<StepLogEntry>, LedgerError> {
        // The target's id as the run wrote it, whatever the case of `target`.
        let target = match self
            .query_targets("run=?1 AND target_key=?2", &[run, &target.key_digest()])?
            .pop()
        {
            Some(t) => t.target,
            None => target.clone(),
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, step, attempt, message_id, detail, at, duration_ms FROM step_log WHERE run=?1 AND target_key=?2 ORDER BY id")
            .map_err(lstorage)?;
        let mut rows = stmt
            .query(params![run, target.key_digest()])
            .map_err(lstorage)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(lstorage)? {
            let col = LedgerRow::new(row, "step_log", &["id"]);
            out.push(StepLogEntry {
                run: run.clone(),
                target: target.clone(),
                step: col.get("step")?,
                attempt: col.get("attempt")?,
                message_id: col.get("message_id")?,
                detail: col.get::<Detail>("detail")?.0.into_owned(),
                at: col.get::<Rfc3339>("at")?.0,
                duration_ms: col.get::<i64>("duration_ms")? as u64,
            });
        }
        Ok(out)
    }

    async fn recorded(
        &self,
        run: &RunId,
        target: &ResourceId,
        message_id: &str,
    ) -> Result<bool, LedgerError> {
        // `record_tx` logs a step and applies it to the row in one transaction.
        self.conn()
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM step_log WHERE run=?1 AND target_key=?2 AND message_id=?3)",
                params![run, target.key_digest(), message_id],
                |r| r.get(0),
            )
            .map_err(lstorage)
    }

    async fn active_run_for(&self, target: &ResourceId) -> Result<Option<RunId>, LedgerError> {
        self.conn()
            .query_row(
                "SELECT run FROM targets WHERE target_key=?1 AND outcome IS NULL ORDER BY started_at DESC LIMIT 1",
                params![target.key_digest()],
                |r| r.get(0),
            )
            .optional()
            .map_err(lstorage)
    }

    // The rollout's records are in `rollout.rs`.

    async fn add_waves(
        &self,
        run: &RunId,
        waves: &[Vec<ResourceId>],
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        SqliteStore::add_waves(self, run, waves, at)
    }

    async fn waves(&self, run: &RunId) -> Result<Vec<WaveView>, LedgerError> {
        SqliteStore::waves(self, run)
    }

    async fn wave_sites(&self, run: &RunId, index: u32) -> Result<Vec<ResourceId>, LedgerError> {
        SqliteStore::wave_sites(self, run, index)
    }

    async fn record_gate(&self, run: &RunId, index: u32, gate: &Gate) -> Result<(), LedgerError> {
        SqliteStore::record_gate(self, run, index, gate)
    }

    async fn release_wave(
        &self,
        run: &RunId,
        index: u32,
        gate: &Gate,
        first: &[Outgoing],
        now: OffsetDateTime,
    ) -> Result<Released, LedgerError> {
        SqliteStore::release_wave(self, run, index, gate, first, now)
    }

    async fn approve(&self, run: &RunId, index: u32) -> Result<(), LedgerError> {
        SqliteStore::approve(self, run, index)
    }

    async fn control(&self, run: &RunId) -> Result<Control, LedgerError> {
        SqliteStore::control(self, run)
    }

    async fn set_control(&self, run: &RunId, control: Control) -> Result<Control, LedgerError> {
        SqliteStore::set_control(self, run, control)
    }

    async fn abort(&self, run: &RunId, now: OffsetDateTime) -> Result<usize, LedgerError> {
        SqliteStore::abort(self, run, now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{msg, now, store};
    use super::*;
    use crate::pipeline::message::Step;
    use crate::pipeline::reason::{HealthFailure, RollbackReason};
    use crate::pipeline::Outcome;

    /// A step's record keeps the snapshot its message carries, unless the target had ended:
    /// a late duplicate changes nothing of it.
    #[tokio::test]
    async fn a_late_record_leaves_an_ended_targets_gateway_alone() {
        let (_d, s) = store();
        let m = msg("a", Step::Verify);
        s.add_target(&m.run, &m.target, now()).await.unwrap();
        let vnet = ResourceId::parse(
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v",
        )
        .unwrap();
        let gateway = |name: &str| GatewaySnapshot {
            name: name.into(),
            vnet_resource_id: vnet.clone(),
            dns_servers: None,
            cert_thumbprint: None,
            cert_blob: None,
            routes: None,
        };
        let mut rec = super::super::test_support::discovered(&m);
        rec.gateway = Some(gateway("first"));
        rec.outcome = Some(Outcome::Migrated);
        s.record(&rec).await.unwrap();
        rec.gateway = Some(gateway("late"));
        rec.at += time::Duration::seconds(1);
        s.record(&rec).await.unwrap();
        let t = s.target(&m.run, &m.target).await.unwrap().unwrap();
        assert_eq!(t.gateway.as_ref().unwrap().name, "first");
        assert_eq!(t.steps, 2);
        // What a report reads: the same record without its snapshot.
        let outcomes = s.target_outcomes(&m.run).unwrap();
        let without = TargetRecord { gateway: None, ..t };
        assert_eq!(outcomes.len(), 1);
        assert_eq!(*outcomes[0], without);
    }

    #[tokio::test]
    async fn a_run_registers_its_targets_in_one_go_and_once() {
        let (_d, s) = store();
        let run = RunId("r-1".into());
        let targets: Vec<ResourceId> = ["a", "b", "c"]
            .iter()
            .map(|a| msg(a, Step::Discover).target)
            .collect();
        s.add_targets(&run, &targets, now()).unwrap();
        s.add_targets(&run, &targets[..1], now()).unwrap();
        let rows = s.targets(&run).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows
            .iter()
            .all(|t| t.current_step == Some(Step::Discover) && t.steps == 0));
    }

    #[tokio::test]
    async fn reads_rows_as_earlier_versions_wrote_them() {
        let (d, s) = store();
        let site = "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Web/sites/App";
        let key = site.to_ascii_lowercase();
        let vnet =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v";
        s.conn()
            .execute_batch(&format!(
                "INSERT INTO runs VALUES ('r-7', '2026-11-23T10:20:30.123456789Z', 0, 'run');
                 INSERT INTO targets (run, target_key, target, outcome, current_step, steps, attempts,
                   reason, subnet, prefix, started_at, updated_at, finished_at) VALUES ('r-7', '{key}', '{site}', 'rolled-back:not-connected', NULL, 5, 1,
                   'not-connected', '{vnet}/subnets/apps', '10.0.1.0/26',
                   '2026-11-23T10:20:30Z', '2026-11-23T10:21:00.5Z', '2026-11-23T10:21:00.5Z');
                 INSERT INTO gateways VALUES ('r-7', '{key}', '{{\"name\":\"gw\",\"vnetResourceId\":\"{vnet}\"}}', 0);
                 INSERT INTO step_log (run, target_key, step, attempt, message_id, detail, at, duration_ms)
                   VALUES ('r-7', '{key}', 'prepare-subnet', 1, 'm', 'd', '2026-11-23T10:20:31Z', 12);
                 PRAGMA user_version=0;"
            ))
            .unwrap();
        // Keyed by the id itself, as files before version 1: opened again, keyed by its digest.
        drop(s);
        let s = SqliteStore::open(&d.path().join("state.db")).unwrap();
        let runs = s.runs().await.unwrap();
        assert_eq!(runs[0].started_at.nanosecond(), 123_456_789);
        let run = RunId("r-7".into());
        let t = &s.targets(&run).await.unwrap()[0];
        assert_eq!(t.target.as_str(), site);
        assert_eq!(
            t.outcome,
            Some(Outcome::RolledBack(RollbackReason::Unhealthy(
                HealthFailure::NotConnected
            )))
        );
        assert_eq!((t.steps, t.attempts), (5, 1));
        assert_eq!(t.gateway.as_ref().unwrap().name, "gw");
        assert_eq!(
            t.finished_at,
            Some(time::macros::datetime!(2026-11-23 10:21:00.5 UTC))
        );
        // Asked for in another case, it names the target as written.
        let lower = ResourceId::parse(&key).unwrap();
        let log = s.step_log(&run, &lower).await.unwrap();
        assert_eq!((log[0].step, log[0].duration_ms), (Step::PrepareSubnet, 12));
        assert_eq!(
            (log[0].target.as_str(), log[0].detail.as_str()),
            (site, "d")
        );
    }

    #[tokio::test]
    async fn a_state_file_from_before_the_cutover_columns_opens_and_reads() {
        let dir = super::super::test_support::Dir::new();
        let path = dir.path().join("old.db");
        let site = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a";
        let key = site.to_ascii_lowercase();
        let vnet =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v";
        {
            // The `targets` table as earlier versions created it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!(
                "CREATE TABLE targets (
                   run TEXT NOT NULL, target_key TEXT NOT NULL, target TEXT NOT NULL,
                   outcome TEXT, current_step TEXT, steps INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
                   reason TEXT, subnet TEXT, prefix TEXT, gateway TEXT,
                   started_at TEXT NOT NULL, updated_at TEXT NOT NULL, finished_at TEXT,
                   PRIMARY KEY (run, target_key));
                 INSERT INTO targets (run, target_key, target, current_step, gateway, started_at, updated_at)
                   VALUES ('r-1', '{key}', '{site}', 'connect', '{{\"name\":\"gw\",\"vnetResourceId\":\"{vnet}\"}}',
                     '2026-11-23T10:20:30Z', '2026-11-23T10:20:30Z');
                 CREATE TABLE step_log (
                   id INTEGER PRIMARY KEY, run TEXT NOT NULL, target_key TEXT NOT NULL, target TEXT NOT NULL,
                   step TEXT NOT NULL, attempt INTEGER NOT NULL, message_id TEXT NOT NULL, detail TEXT NOT NULL,
                   at TEXT NOT NULL, duration_ms INTEGER NOT NULL);
                 INSERT INTO step_log (run, target_key, target, step, attempt, message_id, detail, at, duration_ms)
                   VALUES ('r-1', '{key}', '{site}', 'discover', 0, 'm', 'gateway-based', '2026-11-23T10:20:31Z', 4);"
            ))
            .unwrap();
        }
        for _ in 0..2 {
            // Opened twice: the columns are added once, the gateway snapshot moved once.
            let s = SqliteStore::open(&path).unwrap();
            let t = &s.targets(&RunId("r-1".into())).await.unwrap()[0];
            assert_eq!(t.current_step, Some(Step::Connect));
            assert_eq!(t.cutover, Cutover::default());
            assert_eq!(t.gateway.as_ref().unwrap().name, "gw");
            let log = s.step_log(&t.run, &t.target).await.unwrap();
            assert_eq!(log[0].detail, "gateway-based");
        }
    }

    #[tokio::test]
    async fn a_malformed_column_names_its_table_row_and_column() {
        let (_d, s) = store();
        let m = msg("a", Step::Discover);
        s.add_target(&m.run, &m.target, now()).await.unwrap();
        s.conn()
            .execute("UPDATE targets SET outcome='exploded'", [])
            .unwrap();
        let err = s.targets(&m.run).await.unwrap_err().to_string();
        assert!(
            err.contains("targets row (run=\"r-1\", target_key="),
            "{err}"
        );
        assert!(err.contains("column outcome"), "{err}");
        s.conn()
            .execute(
                "UPDATE targets SET outcome=NULL, started_at='yesterday'",
                [],
            )
            .unwrap();
        let err = s.target(&m.run, &m.target).await.unwrap_err().to_string();
        assert!(err.contains("column started_at"), "{err}");
        assert!(err.contains("\"yesterday\""), "{err}");
    }
}
