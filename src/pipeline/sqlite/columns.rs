//! Typed column conversions: how each value is stored in the state file. The on-disk forms
//! are the ones the store has always written, so existing state files keep working: ledger
//! times are RFC 3339 text, queue times are integer milliseconds since the Unix epoch, ids,
//! steps and outcomes are their text forms, and a gateway snapshot is JSON text. A queue
//! message's body and a step's detail are the exception: they are stored compressed (`Body`),
//! and those stored as JSON or deflated by earlier versions are read as they are.

use std::cell::RefCell;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress, Status};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::Row;
use time::format_description::well_known::Rfc3339 as Rfc3339Format;
use time::OffsetDateTime;

use crate::azure::ResourceId;
use crate::pipeline::ledger::LedgerError;
use crate::pipeline::message::{GatewaySnapshot, RunId, Step};
use crate::pipeline::outcome::Outcome;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn invalid(e: impl Into<BoxError>) -> FromSqlError {
    FromSqlError::Other(e.into())
}

fn unwritable(e: impl Into<BoxError>) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.into())
}

/// A ledger time (`runs`, `targets`, `step_log`): RFC 3339 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rfc3339(pub OffsetDateTime);

impl ToSql for Rfc3339 {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let text = self.0.format(&Rfc3339Format).map_err(unwritable)?;
        Ok(ToSqlOutput::from(text))
    }
}

impl FromSql for Rfc3339 {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        OffsetDateTime::parse(text, &Rfc3339Format)
            .map(Rfc3339)
            .map_err(|e| invalid(format!("bad timestamp {text:?}: {e}")))
    }
}

/// A queue message's body: the message's JSON (`StepMessage::encode`), stored as the byte
/// `LZ4` and the JSON compressed with LZ4 against `BODY_DICTIONARY` (its length first, four
/// bytes little-endian). Why: every step writes its next message's row when it is sent, again
/// when it is leased and frees it when settled, and the bytes of the row are most of what
/// those page writes carry; the JSON repeats field names and resource-id fragments that a
/// preset dictionary lets the compressor refer to, so a body shrinks to less than half (500
/// targets: 993 bytes of JSON on average, 419 stored), rows stop spilling into overflow
/// pages, and more of them share a page.
///
/// Files of format 1 hold bodies deflated against the same dictionary (`DEFLATED`); they are
/// still read. Deflate stored that body in 322 bytes, but its state is reset for every body (a
/// 128 KiB hash table cleared) and builds Huffman trees for a few hundred bytes: 14 µs to
/// compress a body and 9 µs a step's detail, against 1.5 and 0.8 µs with LZ4 (in a profile of
/// the engine alone, 500 targets, deflate was 7.5 % of its CPU).
///
/// A stored body starting with `{` is JSON an earlier version wrote, read as it is; one that
/// does not decompress is handed on as stored, so it fails to decode and is dead-lettered like
/// any undecodable body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Body(pub Vec<u8>);

/// The first byte of a body stored deflated (raw, RFC 1951) against `BODY_DICTIONARY`: files
/// of format 1.
const DEFLATED: u8 = 1;

/// The first byte of a body stored as LZ4 against `BODY_DICTIONARY`. A later dictionary or
/// encoding needs a byte of its own: stored bodies keep being read as they were written.
const LZ4: u8 = 2;

/// The largest body a stored length is believed for: a body is a few KiB at most (a Service
/// Bus message 256 KiB), and a damaged length must not make the reader allocate gigabytes.
const MAX_BODY: usize = 1 << 20;

/// What every step message is made of: its field names and values of their own (steps,
/// origins), and the fixed parts of the ARM resource ids it carries (nothing of a particular
/// fleet's naming). Deflate found a repeat more cheaply the nearer it was to the end, so the
/// most frequent fragments come last. Never to be changed (see `LZ4`): stored bodies are read
/// with it.
const BODY_DICTIONARY: &[u8] = concat!(
    "\"routing\":{\"allTraffic\":false,\"applicationTraffic\":true,",
    "\"imagePullTraffic\":false,\"contentShareTraffic\":false,",
    "\"backupRestoreTraffic\":false},\"reason\":\"replay\":\"transient\":",
    "\"waited\":\"ahead\":true,\"baseline\":{\"keyVaultReferences\":{\"Resolved\"},",
    "\"gateway\":{\"name\":\"vnetResourceId\":\"/subscriptions/\",\"dnsServers\":null,",
    "\"certThumbprint\":\"\",\"certBlob\":\"\",\"routes\":[]},\"notBefore\":\"",
    "\",\"trace\":\"\"},\"plan\":{\"vnet\":\"/subscriptions/",
    "/resourceGroups//providers/Microsoft.Network/virtualNetworks/",
    "\",\"subnet\":\"/subnets/\",\"prefix\":\"10.\",",
    "\"create\":false,\"requiredPrefixLength\":2},{\"v\":1,\"run\":\"r-20",
    "\",\"target\":\"/subscriptions//resourceGroups//providers/Microsoft.Web/sites//slots/",
    "\",\"step\":\"discover\",\"plan\",\"prepare-subnet\",\"disconnect\",\"configure\",",
    "\"verify\",\"rollback\",\"attempt\":0,\"dryRun\":false,\"origin\":\"rollout\",",
    "\"cli\",\"",
)
.as_bytes();

thread_local! {
    /// One inflate state per thread, reset for each body of a format-1 file: a state is tens of
    /// KiB, too much to allocate per message.
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

impl Body {
    /// The stored form of `json`; refused when larger than any body is read back (`MAX_BODY`).
    fn compress(json: &[u8]) -> rusqlite::Result<Vec<u8>> {
        if json.len() > MAX_BODY {
            return Err(unwritable(format!(
                "a body of {} bytes is larger than any message ({MAX_BODY} bytes)",
                json.len()
            )));
        }
        let mut out =
            Vec::with_capacity(1 + 4 + lz4_flex::block::get_maximum_output_size(json.len()));
        out.push(LZ4);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        let at = out.len();
        out.resize(out.capacity(), 0);
        let written =
            lz4_flex::block::compress_into_with_dict(json, &mut out[at..], BODY_DICTIONARY)
                .expect("room for the largest output");
        out.truncate(at + written);
        Ok(out)
    }

    /// The JSON of a stored body, `None` when it is not one of the forms written.
    fn decompress(stored: &[u8]) -> Option<Vec<u8>> {
        match stored.split_first()? {
            (&LZ4, packed) => {
                let (len, packed) = packed.split_first_chunk::<4>()?;
                let len = u32::from_le_bytes(*len) as usize;
                if len > MAX_BODY {
                    return None;
                }
                let json =
                    lz4_flex::block::decompress_with_dict(packed, len, BODY_DICTIONARY).ok()?;
                (json.len() == len).then_some(json)
            }
            (&DEFLATED, deflated) => Body::inflate(deflated).ok(),
            _ => None,
        }
    }

    fn inflate(stored: &[u8]) -> Result<Vec<u8>, BoxError> {
        INFLATE.with_borrow_mut(|d| {
            d.reset(false);
            d.set_dictionary(BODY_DICTIONARY)?;
            let mut out = Vec::with_capacity(stored.len() * 4);
            loop {
                let read = d.total_in() as usize;
                let before = out.len();
                match d.decompress_vec(&stored[read..], &mut out, FlushDecompress::Finish)? {
                    Status::StreamEnd => return Ok(out),
                    // Neither read nor wrote although room was left: the stream is cut short.
                    _ if d.total_in() as usize == read
                        && out.len() == before
                        && out.len() < out.capacity() =>
                    {
                        return Err("truncated deflate stream".into())
                    }
                    _ if out.len() > MAX_BODY => return Err("body too large".into()),
                    _ => out.reserve(stored.len() * 4),
                }
            }
        })
    }
}

impl ToSql for Body {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Body::compress(&self.0).map(ToSqlOutput::from)
    }
}

impl FromSql for Body {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let stored = value.as_bytes()?;
        Ok(Body(
            Body::decompress(stored).unwrap_or_else(|| stored.to_vec()),
        ))
    }
}

/// A step's detail (`step_log`), stored compressed as a body is (`Body`): it names resources
/// by their ARM ids, and the step log is most of what the state file holds and writes (10,000
/// targets: 184 bytes of text on average). Text an earlier version wrote is read as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Detail<'a>(pub std::borrow::Cow<'a, str>);

impl ToSql for Detail<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Body::compress(self.0.as_bytes()).map(ToSqlOutput::from)
    }
}

impl FromSql for Detail<'static> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = match value {
            ValueRef::Text(t) => t.to_vec(),
            ValueRef::Blob(stored) => Body::decompress(stored)
                .ok_or_else(|| invalid("a detail that does not decompress"))?,
            _ => return Err(FromSqlError::InvalidType),
        };
        String::from_utf8(text)
            .map(|t| Detail(t.into()))
            .map_err(invalid)
    }
}

/// A queue time (`visible_at`, `locked_until`): whole milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct UnixMs(pub(super) i64);

impl UnixMs {
    pub(super) fn at(t: OffsetDateTime) -> Self {
        UnixMs((t.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// `self` plus `d`, in whole milliseconds.
    pub(super) fn after(self, d: Duration) -> Self {
        UnixMs(self.0 + d.as_millis() as i64)
    }

    /// The time itself. Only for values read from the file, whose range `FromSql` checked.
    pub(super) fn datetime(self) -> OffsetDateTime {
        to_datetime(self.0).expect("checked when read")
    }
}

fn to_datetime(ms: i64) -> Result<OffsetDateTime, time::error::ComponentRange> {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
}

impl ToSql for UnixMs {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

impl FromSql for UnixMs {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let ms = value.as_i64()?;
        to_datetime(ms).map_err(invalid)?;
        Ok(UnixMs(ms))
    }
}

impl ToSql for RunId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RunId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        String::column_result(value).map(RunId)
    }
}

/// Stored as given (`ResourceId::as_str`); the lower-cased `key()` has its own columns.
impl ToSql for ResourceId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ResourceId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        ResourceId::parse(value.as_str()?).map_err(invalid)
    }
}

impl ToSql for Step {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Step {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(invalid)
    }
}

/// `kind` or `kind:reason`, as `Outcome`'s `Display` writes it.
impl ToSql for Outcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Outcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(invalid)
    }
}

/// JSON text.
impl ToSql for GatewaySnapshot {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let json = serde_json::to_string(self).map_err(unwritable)?;
        Ok(ToSqlOutput::from(json))
    }
}

impl FromSql for GatewaySnapshot {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?).map_err(invalid)
    }
}

/// Typed reads of one ledger row by column name. A column that does not convert becomes a
/// `LedgerError` naming the table, the row (by its key columns) and the column.
pub(super) struct LedgerRow<'a, 'r> {
    row: &'a Row<'r>,
    table: &'static str,
    key: &'static [&'static str],
}

impl<'a, 'r> LedgerRow<'a, 'r> {
    /// `key`: the selected columns that identify the row in error messages.
    pub(super) fn new(row: &'a Row<'r>, table: &'static str, key: &'static [&'static str]) -> Self {
        LedgerRow { row, table, key }
    }

    pub(super) fn get<T: FromSql>(&self, column: &str) -> Result<T, LedgerError> {
        self.row.get(column).map_err(|e| {
            // The readable part of rusqlite's error is the message; nothing else is kept.
            LedgerError::storage(
                format!(
                    "corrupt ledger: {} row ({}) column {column}: {}",
                    self.table,
                    self.label(),
                    cause(&e)
                ),
                None,
            )
        })
    }

    fn label(&self) -> String {
        let raw = |c: &str| match self.row.get_ref(c) {
            Ok(ValueRef::Text(t)) => format!("{:?}", String::from_utf8_lossy(t)),
            Ok(ValueRef::Integer(i)) => i.to_string(),
            Ok(ValueRef::Real(f)) => f.to_string(),
            Ok(ValueRef::Null) => "NULL".to_string(),
            Ok(ValueRef::Blob(b)) => format!("<{} byte blob>", b.len()),
            Err(_) => "?".to_string(),
        };
        self.key
            .iter()
            .map(|c| format!("{c}={}", raw(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What is wrong with the stored value, without rusqlite's column-index preamble.
fn cause(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, ty, source) => {
            format!("{source} (stored as {ty})")
        }
        rusqlite::Error::InvalidColumnType(_, _, ty) => format!("unexpected {ty} value"),
        rusqlite::Error::IntegralValueOutOfRange(_, v) => format!("integer {v} out of range"),
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use rusqlite::{params, Connection};
    use time::macros::datetime;

    use super::*;

    fn round_trip<T: ToSql + FromSql>(v: &T) -> (rusqlite::types::Value, T) {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row("SELECT ?1, ?1", params![v], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    }

    #[test]
    fn on_disk_forms_are_unchanged() {
        use rusqlite::types::Value;
        let t = datetime!(2026-11-23 10:20:30.456789 UTC);
        assert_eq!(
            round_trip(&Rfc3339(t)),
            (
                Value::Text("2026-11-23T10:20:30.456789Z".into()),
                Rfc3339(t)
            )
        );
        let ms = UnixMs::at(t);
        assert_eq!(round_trip(&ms), (Value::Integer(1_795_429_230_456), ms));
        assert_eq!(ms.datetime(), datetime!(2026-11-23 10:20:30.456 UTC));
        assert_eq!(
            ms.after(Duration::from_micros(60_000_999)),
            UnixMs(1_795_429_290_456)
        );
        let run = RunId("r-20261123-ab12".into());
        assert_eq!(round_trip(&run), (Value::Text(run.0.clone()), run));
        assert_eq!(
            round_trip(&Step::PrepareSubnet),
            (Value::Text("prepare-subnet".into()), Step::PrepareSubnet)
        );
        let o = Outcome::Blocked(crate::pipeline::reason::BlockedReason::ClassicVnet);
        assert_eq!(
            round_trip(&o),
            (Value::Text("blocked:classic-vnet".into()), o)
        );
        let id = "/subscriptions/S/resourceGroups/rg/providers/Microsoft.Web/sites/App";
        let (stored, back) = round_trip(&ResourceId::parse(id).unwrap());
        assert_eq!(stored, Value::Text(id.into()));
        assert_eq!(back.as_str(), id);
        let g: GatewaySnapshot = serde_json::from_value(serde_json::json!({
            "name": "gw", "vnetResourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v"
        }))
        .unwrap();
        let (stored, back) = round_trip(&g);
        assert_eq!(stored, Value::Text(serde_json::to_string(&g).unwrap()));
        assert_eq!(back, g);
    }

    #[test]
    fn malformed_values_do_not_convert() {
        let nonsense = ValueRef::Text(b"nonsense");
        assert!(Rfc3339::column_result(nonsense).is_err());
        assert!(Step::column_result(nonsense).is_err());
        assert!(Outcome::column_result(nonsense).is_err());
        assert!(ResourceId::column_result(nonsense).is_err());
        assert!(GatewaySnapshot::column_result(nonsense).is_err());
        assert!(UnixMs::column_result(nonsense).is_err());
        assert!(UnixMs::column_result(ValueRef::Integer(i64::MAX)).is_err());
        assert!(Step::column_result(ValueRef::Integer(1)).is_err());
    }

    /// A body as format 1 stored it: deflated against the dictionary.
    pub(in crate::pipeline::sqlite) fn deflated(json: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::default(), false);
        c.set_dictionary(BODY_DICTIONARY).unwrap();
        let mut out = vec![DEFLATED];
        out.reserve(json.len() + 64);
        assert_eq!(
            c.compress_vec(json, &mut out, FlushCompress::Finish)
                .unwrap(),
            Status::StreamEnd
        );
        out
    }

    /// A body is stored as LZ4, less than half of its JSON, and read back as the JSON; a body
    /// as earlier versions stored it (the JSON, or deflated) reads as it is, and one that does
    /// not decompress as stored.
    #[test]
    fn bodies_are_stored_compressed_and_older_ones_read_as_they_are() {
        use rusqlite::types::Value;
        let site = "/subscriptions/0b5c1e7e-3c59-4bb1-9f5e-2a0b7d6f0c11/resourceGroups/web-prod/providers/Microsoft.Web/sites/shop";
        let vnet = "/subscriptions/0b5c1e7e-3c59-4bb1-9f5e-2a0b7d6f0c11/resourceGroups/net-prod/providers/Microsoft.Network/virtualNetworks/core";
        let json = serde_json::json!({
            "v": 1, "run": "r-20261202-ab12", "target": site, "step": "disconnect",
            "attempt": 0, "dryRun": false, "origin": "rollout",
            "plan": {"vnet": vnet, "subnet": format!("{vnet}/subnets/apps"), "prefix": "10.1.4.0/26",
                     "create": true, "requiredPrefixLength": 27},
            "trace": "8e415345b58f4932815d98e6284b0973"
        })
        .to_string()
        .into_bytes();
        let (stored, back) = round_trip(&Body(json.clone()));
        let Value::Blob(stored) = stored else {
            panic!("stored as a blob")
        };
        assert_eq!(stored[0], LZ4);
        assert!(
            stored.len() * 2 <= json.len(),
            "{} of {}",
            stored.len(),
            json.len()
        );
        assert_eq!(back, Body(json.clone()));
        assert_eq!(
            Body::column_result(ValueRef::Blob(&json)).unwrap(),
            Body(json.clone())
        );
        assert_eq!(
            Body::column_result(ValueRef::Blob(&deflated(&json))).unwrap(),
            Body(json.clone())
        );
        for damaged in [&stored[..stored.len() / 2], &stored[..3]] {
            assert_eq!(
                Body::column_result(ValueRef::Blob(damaged)).unwrap(),
                Body(damaged.to_vec())
            );
        }
        // A length no body has is not believed (nothing of that size is allocated).
        let mut huge = stored.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Body::column_result(ValueRef::Blob(&huge)).unwrap(),
            Body(huge.clone())
        );
        assert_eq!(round_trip(&Body(Vec::new())).1, Body(Vec::new()));
        // Nothing is written that would not be read back.
        assert!(Body(vec![b' '; MAX_BODY + 1]).to_sql().is_err());
    }

    /// A step's detail likewise; one that does not decompress is an error, not text.
    #[test]
    fn details_are_stored_compressed_and_older_ones_read_as_they_are() {
        use rusqlite::types::Value;
        let text = "removed gateway-based connection vnet-hub; connected to /subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub/subnets/apps";
        let (stored, back) = round_trip(&Detail(text.into()));
        let Value::Blob(stored) = stored else {
            panic!("stored as a blob")
        };
        assert_eq!(stored[0], LZ4);
        assert!(stored.len() < text.len());
        assert_eq!(back, Detail(text.into()));
        fn read(v: ValueRef<'_>) -> FromSqlResult<String> {
            Detail::column_result(v).map(|d| d.0.into_owned())
        }
        assert_eq!(read(ValueRef::Text(text.as_bytes())).unwrap(), text);
        assert_eq!(
            read(ValueRef::Blob(&deflated(text.as_bytes()))).unwrap(),
            text
        );
        assert!(read(ValueRef::Blob(&stored[..stored.len() / 2])).is_err());
    }
}
