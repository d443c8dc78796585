//! How a command prints its document, as the az CLI does: `-o table` (for people, the
//! command's own layout), `-o json` (the JSON document and nothing else on stdout) or `-o tsv`
//! (values only, tab-separated, for shell scripts); `--query` applies a JMESPath expression to
//! the JSON document first.

use std::io::Write;

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Tsv,
}

/// Prints `doc` as `format` asks, after `query`; `table` is the command's own layout, used
/// for `-o table` without a query.
pub(crate) fn print(
    format: OutputFormat,
    query: Option<&str>,
    doc: &impl Serialize,
    table: impl FnOnce() -> String,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    render(format, query, doc, table, &mut out)?;
    out.flush()?;
    Ok(())
}

fn render(
    format: OutputFormat,
    query: Option<&str>,
    doc: &impl Serialize,
    table: impl FnOnce() -> String,
    out: &mut impl Write,
) -> Result<()> {
    let text = match (format, query) {
        (OutputFormat::Table, None) => table(),
        // Written as it is serialised: a 10,000-target report as a `Value` and then as text
        // took ~20 MB at the end of a rehearsal.
        (OutputFormat::Json, None) => {
            serde_json::to_writer_pretty(&mut *out, doc).context("the document")?;
            "\n".to_string()
        }
        _ => {
            let mut value = serde_json::to_value(doc).context("the document")?;
            if let Some(q) = query {
                value = apply(q, &value)?;
            }
            match format {
                OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&value)?),
                OutputFormat::Tsv => tsv(&value),
                OutputFormat::Table => aligned(&value),
            }
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The JMESPath expression `query` applied to `value`.
fn apply(query: &str, value: &Value) -> Result<Value> {
    let expr = jmespath::compile(query).map_err(|e| {
        let e = e.to_string().replace('\n', " ");
        anyhow::anyhow!("--query {query:?} is not a JMESPath expression: {e}")
    })?;
    let found = expr.search(value).map_err(|e| {
        let e = e.to_string().replace('\n', " ");
        anyhow::anyhow!("--query {query:?} failed: {e}")
    })?;
    Ok(serde_json::to_value(&*found)?)
}

/// A scalar as tsv prints it: strings without quotes, null as nothing.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.replace(['\t', '\n'], " ")),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// One row: an object's scalar fields, an array's scalar items, or the scalar itself
/// (nested objects and arrays are left out, as az does).
fn row(v: &Value) -> Vec<String> {
    match v {
        Value::Object(m) => m.values().filter_map(scalar).collect(),
        Value::Array(a) => a.iter().filter_map(scalar).collect(),
        _ => scalar(v).into_iter().collect(),
    }
}

/// Rows of a document: a list is a row per item, anything else one row.
fn rows(v: &Value) -> Vec<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(row).collect(),
        _ => vec![row(v)],
    }
}

fn tsv(v: &Value) -> String {
    rows(v)
        .iter()
        .map(|r| format!("{}\n", r.join("\t")))
        .collect()
}

/// `-o table` of a query's result: the rows in aligned columns, headed by the keys when the
/// items are objects.
fn aligned(v: &Value) -> String {
    let first = match v {
        Value::Array(items) => items.first(),
        other => Some(other),
    };
    let mut all = Vec::new();
    if let Some(Value::Object(m)) = first {
        all.push(
            m.iter()
                .filter(|(_, x)| scalar(x).is_some())
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>(),
        );
    }
    all.extend(rows(v));
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            all.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &all {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(
        format: OutputFormat,
        query: Option<&str>,
        doc: &Value,
        table: impl FnOnce() -> String,
    ) -> Result<String> {
        let mut out = Vec::new();
        super::render(format, query, doc, table, &mut out)?;
        Ok(String::from_utf8(out).expect("UTF-8"))
    }

    fn doc() -> Value {
        json!({"run": "r-1", "dryRun": false, "targets": [
            {"id": "a", "outcome": "migrated", "reason": null},
            {"id": "b", "outcome": "blocked", "reason": "classic-vnet"}
        ]})
    }

    #[test]
    fn json_tsv_and_table_after_a_query() {
        let d = doc();
        let own = || "own layout\n".to_string();
        assert_eq!(
            render(OutputFormat::Table, None, &d, own).unwrap(),
            "own layout\n"
        );
        let q = Some("targets[].[id, outcome, reason]");
        assert_eq!(
            render(OutputFormat::Tsv, q, &d, own).unwrap(),
            "a\tmigrated\t\nb\tblocked\tclassic-vnet\n"
        );
        let j = render(
            OutputFormat::Json,
            Some("targets[?outcome=='blocked'].id"),
            &d,
            own,
        )
        .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&j).unwrap(), json!(["b"]));
        let t = render(OutputFormat::Table, Some("targets"), &d, own).unwrap();
        assert_eq!(
            t,
            "id  outcome   reason\na   migrated\nb   blocked   classic-vnet\n"
        );
        // Without a query, json is the document as it is.
        let j = render(OutputFormat::Json, None, &d, own).unwrap();
        assert_eq!(
            j,
            format!("{}\n", serde_json::to_string_pretty(&d).unwrap())
        );
        // Without a query, tsv prints the document's own scalars (az's rule).
        assert_eq!(
            render(OutputFormat::Tsv, None, &d, own).unwrap(),
            "r-1\tfalse\n"
        );
    }

    #[test]
    fn a_bad_query_is_one_line() {
        let e = render(OutputFormat::Json, Some("targets[?"), &doc(), String::new)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a JMESPath expression") && !e.contains('\n'),
            "{e}"
        );
    }
}
