//! The gateway log: how a cut-over's gateway snapshot becomes durable before the DELETE
//! without committing the store's batch.
//!
//! Why: the snapshot is the only copy of the connection once the DELETE returns, so it must
//! survive a crash from then on. Committing the batch for it (a durable unit) made every
//! cut-over end a batch: at 2,000 targets 1,695 commits for 8,857 steps, each writing again
//! the pages every batch touches (the step log's and the queue's last pages, the b-trees'
//! upper levels). Instead the snapshot goes into the batch like a settle, and a record of it
//! is appended to this file beside the state file (`<state file>-gateways`) before
//! `save_gateway` returns: one `write` of a few hundred bytes. At the next open (after a
//! crash: the batch may be lost, this record is not) and at a clean close, the store folds the
//! records into the ledger in one committed transaction and empties the file. One cut-over
//! still commits the batch: one whose own message was queued in it (`save_gateway` says why).
//!
//! Durability is the state file's own: its WAL commits are not synced either
//! (`synchronous=NORMAL`), so both survive the process being killed, and either may lose its
//! last writes when the machine loses power.
//!
//! Processes sharing the state file share the log: an append and a fold each hold the file's
//! exclusive lock, and a fold commits every record it read before it empties the file, so one
//! process folding never loses another's record. Each record starts with a newline, so one
//! torn by a crash mid-write is ended by the next and skipped when read (its DELETE never
//! followed: the append had not returned).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::azure::ResourceId;
use crate::pipeline::message::{GatewaySnapshot, RunId};

/// One saved snapshot, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Saved {
    pub(super) run: RunId,
    pub(super) target: ResourceId,
    /// When it was saved (Unix milliseconds): the newest snapshot of a target wins.
    pub(super) saved_at: i64,
    pub(super) gateway: GatewaySnapshot,
}

pub(super) struct GatewayLog {
    path: PathBuf,
    /// Opened for appending at the first record (an open that never saves creates no file).
    file: Mutex<Option<File>>,
}

impl GatewayLog {
    /// The log of the state file at `db`.
    pub(super) fn beside(db: &Path) -> Self {
        let mut path = db.as_os_str().to_owned();
        path.push("-gateways");
        GatewayLog {
            path: PathBuf::from(path),
            file: Mutex::new(None),
        }
    }

    /// Appends `saved`; once this returns, the record survives a crash of this process.
    pub(super) fn append(&self, saved: &Saved) -> io::Result<()> {
        let mut record = b"\n".to_vec();
        serde_json::to_writer(&mut record, saved)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        f.lock()?;
        let written = f.write_all(&record);
        f.unlock()?;
        written
    }

    /// Hands the records in the log to `commit`, oldest first, read one at a time (a run's
    /// log holds a record per cut-over), and empties the log once `commit` succeeded (it must
    /// have made them durable). Nothing is written when there is no log or it is empty.
    pub(super) fn fold<E>(
        &self,
        io_err: impl Fn(io::Error) -> E,
        commit: impl FnOnce(&mut Records<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let file = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        file.lock().map_err(&io_err)?;
        let folded = (|| {
            if file.metadata().map_err(&io_err)?.len() == 0 {
                return Ok(());
            }
            commit(&mut Records {
                reader: BufReader::new(&file),
                line: Vec::new(),
            })?;
            file.set_len(0).map_err(&io_err)
        })();
        file.unlock().map_err(&io_err)?;
        folded
    }
}

/// The whole records of a log, oldest first (a torn one is skipped), or the error that
/// stopped the reading.
pub(super) struct Records<'a> {
    reader: BufReader<&'a File>,
    line: Vec<u8>,
}

impl Iterator for Records<'_> {
    type Item = io::Result<Saved>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(_) => {
                    let record = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
                    if let Ok(saved) = serde_json::from_slice(record) {
                        return Some(Ok(saved));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sqlite::test_support::Dir;

    fn saved(target: &str, at: i64) -> Saved {
        Saved {
            run: RunId("r-1".into()),
            target: ResourceId::parse(&format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/{target}"
            ))
            .unwrap(),
            saved_at: at,
            gateway: GatewaySnapshot {
                name: "gw".into(),
                vnet_resource_id: ResourceId::parse(
                    "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v",
                )
                .unwrap(),
                dns_servers: None,
                cert_thumbprint: Some("ab".into()),
                cert_blob: None,
                routes: None,
            },
        }
    }

    fn folded(log: &GatewayLog) -> Vec<Saved> {
        let mut out = Vec::new();
        log.fold(
            |e| e,
            |records| {
                out = records.collect::<io::Result<_>>()?;
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn records_are_folded_in_order_once_and_a_torn_one_is_skipped() {
        let dir = Dir::new();
        let db = dir.path().join("state.db");
        let log = GatewayLog::beside(&db);
        // No log yet: folding creates none.
        assert!(folded(&log).is_empty());
        assert!(!dir.path().join("state.db-gateways").exists());
        log.append(&saved("a", 1)).unwrap();
        // A record torn by a crash mid-write, then one appended by the next process.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("state.db-gateways"))
            .unwrap()
            .write_all(b"\n{\"run\":\"r-1\",\"tar")
            .unwrap();
        GatewayLog::beside(&db).append(&saved("b", 2)).unwrap();
        let records = folded(&log);
        assert_eq!(records, vec![saved("a", 1), saved("b", 2)]);
        // Emptied once committed: a second fold finds nothing, and appending goes on.
        assert!(folded(&log).is_empty());
        log.append(&saved("c", 3)).unwrap();
        assert_eq!(folded(&log), vec![saved("c", 3)]);
    }

    #[test]
    fn a_failed_commit_keeps_the_records() {
        let dir = Dir::new();
        let log = GatewayLog::beside(&dir.path().join("state.db"));
        log.append(&saved("a", 1)).unwrap();
        let failed: Result<(), String> = log.fold(|e| e.to_string(), |_| Err("disk full".into()));
        assert_eq!(failed.unwrap_err(), "disk full");
        assert_eq!(folded(&log), vec![saved("a", 1)]);
    }
}
