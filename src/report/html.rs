//! The HTML report (`--report FILE.html` on `rehearse`, `run` and `status`, DESIGN §8): one
//! self-contained page an operator can open or mail anywhere. It fetches nothing (inline CSS,
//! inline SVG charts, no script, no URL at all) and escapes every text it shows, since target
//! ids, reasons and ARM's words come from outside.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use super::charts::{self, kind_color, Bins, ChartError};
use super::remedy::{remedy_for, UNFINISHED};
use super::{Percentiles, Report, TargetReport};
use crate::azure::ResourceId;

/// The HTML report could not be made or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HtmlReportError {
    #[error("cannot render the HTML report")]
    Chart(#[from] ChartError),
    #[error("cannot write the HTML report {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Outcome kinds in the order the page lists them: done, then what needs someone.
const KINDS: [&str; 7] = [
    "migrated",
    "skipped",
    "blocked",
    "rolled-back",
    "parked",
    "cancelled",
    UNFINISHED,
];

/// Kinds whose targets need an operator, the most urgent first: a parked target may be on no
/// VNet at all.
const ATTENTION: [&str; 5] = ["parked", "rolled-back", "blocked", "cancelled", UNFINISHED];

/// Most bins of the downtime histogram.
const DOWNTIME_BINS: usize = 30;

/// Text made safe for HTML text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Which seconds the figures are in. Against Azure everything is wall time; in a rehearsal
/// the run's own clock (makespan, progress) is the compressed wall time, while downtimes are
/// reported in the simulated seconds they stand for (`Performance::simulated_speed`).
struct Clock(Option<f64>);

impl Clock {
    fn downtime_unit(&self) -> &'static str {
        if self.0.is_some() {
            "simulated seconds"
        } else {
            "seconds"
        }
    }

    fn run_axis(&self) -> String {
        match self.0 {
            Some(s) => format!("seconds since the run started (rehearsal wall clock at ×{s})"),
            None => "seconds since the run started".into(),
        }
    }

    /// A figure on the run's clock, with its simulated equivalent in a rehearsal.
    fn run_seconds(&self, s: f64) -> String {
        match self.0 {
            Some(speed) => format!(
                "{s:.1} s wall (×{speed} rehearsal: {:.0} simulated s)",
                s * speed
            ),
            None => format!("{s:.1} s"),
        }
    }
}

/// The outcome a target's row shows: `kind:reason` as the ledger writes it, the kind alone,
/// or where an unfinished target stands (`unfinished (at connect)`).
fn label(t: &TargetReport) -> String {
    match (&t.reason, t.outcome.as_str()) {
        (Some(r), UNFINISHED) => format!("{UNFINISHED} ({r})"),
        (Some(r), kind) => format!("{kind}:{r}"),
        (None, kind) => kind.to_string(),
    }
}

/// What to do about the target (`remedy_for` knows outcomes, not where a run stands).
fn remedy_of(t: &TargetReport) -> &'static str {
    if t.outcome == UNFINISHED {
        remedy_for(UNFINISHED)
    } else {
        remedy_for(&label(t))
    }
}

fn rank(kinds: &[&str], kind: &str) -> usize {
    kinds.iter().position(|k| *k == kind).unwrap_or(kinds.len())
}

/// The page.
pub(crate) fn render(report: &Report) -> Result<String, ChartError> {
    let clock = Clock(report.performance.simulated_speed);
    let mut h = String::with_capacity(64 * 1024 + report.targets.len() * 400);
    let title = format!("vnet-migrate report: run {}", report.run);
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>{CSS}</style></head><body>
<h1>{}</h1>
"#,
        escape(&title),
        escape(&title)
    );
    summary(&mut h, report, &clock);
    waves(&mut h, report, &clock);
    progress(&mut h, report, &clock)?;
    outcomes(&mut h, report)?;
    downtime(&mut h, report, &clock)?;
    subscriptions(&mut h, report, &clock);
    attention(&mut h, report);
    per_app(&mut h, report, &clock);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Renders the report into `path` through a temporary file beside it, renamed over it: a
/// reader never sees half a page, and a failed write leaves the previous report in place.
pub(crate) fn write(report: &Report, path: &Path) -> Result<(), HtmlReportError> {
    let page = render(report)?;
    let failed = |source| HtmlReportError::Write {
        path: path.display().to_string(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        failed(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(page.as_bytes())?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(e));
    }
    Ok(())
}

fn summary(h: &mut String, report: &Report, clock: &Clock) {
    let mut facts = vec![format!("{} targets", report.targets.len())];
    if report.dry_run {
        facts.push("dry run: nothing was written to Azure".into());
    }
    if let Some(s) = clock.0 {
        facts.push(format!(
            "rehearsal against the ARM simulator at ×{s} time compression"
        ));
    }
    let _ = writeln!(
        h,
        "<section id=\"summary\"><h2>Summary</h2><p class=\"facts\">{}</p><div class=\"cards\">",
        escape(&facts.join(" · "))
    );
    let mut kinds: Vec<(&String, &u64)> = report.summary.iter().collect();
    kinds.sort_by_key(|(k, _)| rank(&KINDS, k));
    for (kind, n) in kinds {
        let _ = writeln!(
            h,
            "<div class=\"card\" style=\"border-color:{}\"><div class=\"n\">{n}</div><div>{}</div></div>",
            css_color(kind),
            escape(kind)
        );
    }
    h.push_str("</div>\n<table class=\"kv\">\n");
    let p = &report.performance;
    // `status` reads the ledger only: the run's timing and ARM counts are not in it.
    if p.makespan_seconds > 0.0 {
        let bound = if p.lower_bound_seconds > 0.0 {
            clock.run_seconds(p.lower_bound_seconds)
        } else {
            "n/a (the requests fit in ARM's bursts)".into()
        };
        let rows = [
            ("Makespan", clock.run_seconds(p.makespan_seconds)),
            ("Lower bound", bound),
            (
                "Makespan / lower bound",
                if p.bound_ratio > 0.0 {
                    format!("{:.2}", p.bound_ratio)
                } else {
                    "n/a".into()
                },
            ),
            (
                "ARM write bound",
                if p.arm_write_bound_seconds > 0.0 {
                    clock.run_seconds(p.arm_write_bound_seconds)
                } else {
                    "0 (the writes fit in ARM's write burst)".into()
                },
            ),
            (
                "ARM requests",
                format!(
                    "{} ({} writes, {} throttled with 429)",
                    p.arm_requests, p.arm_writes, p.throttled429
                ),
            ),
            ("Steps per second", format!("{:.1}", p.steps_per_second)),
        ];
        for (k, v) in rows {
            let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
        }
    }
    let downtime = match &p.downtime_seconds {
        Some(d) => format!(
            "{} over {} target(s), in {}",
            percentiles_text(d),
            report
                .targets
                .iter()
                .filter(|t| t.downtime_seconds.is_some())
                .count(),
            clock.downtime_unit()
        ),
        None => "n/a (no target was cut over)".into(),
    };
    let _ = writeln!(
        h,
        "<tr><th>Downtime</th><td>{}</td></tr></table></section>",
        escape(&downtime)
    );
}

fn percentiles_text(d: &Percentiles) -> String {
    format!(
        "p50 {:.3}, p95 {:.3}, p99 {:.3}, max {:.3}",
        d.p50, d.p95, d.p99, d.max
    )
}

fn css_color(kind: &str) -> String {
    let c = kind_color(kind);
    format!("rgb({},{},{})", c.0, c.1, c.2)
}

fn progress(h: &mut String, report: &Report, clock: &Clock) -> Result<(), ChartError> {
    h.push_str("<section id=\"progress\"><h2>Progress over time</h2>\n");
    let finished: Vec<(&str, f64)> = report
        .targets
        .iter()
        .filter_map(|t| Some((t.outcome.as_str(), t.finished_seconds?)))
        .collect();
    if finished.is_empty() {
        h.push_str("<p>No target has reached an outcome yet.</p>");
    } else {
        h.push_str(&charts::progress(
            &finished,
            report.targets.len(),
            &clock.run_axis(),
        )?);
    }
    h.push_str("</section>\n");
    Ok(())
}

fn outcomes(h: &mut String, report: &Report) -> Result<(), ChartError> {
    h.push_str("<section id=\"outcomes\"><h2>Outcomes by reason</h2>\n");
    let mut bars: Vec<(&str, &str, u64)> = report
        .by_reason
        .iter()
        .map(|(o, n)| (o.as_str(), o.split(':').next().unwrap_or(o), *n))
        .collect();
    bars.sort_by(|a, b| {
        rank(&KINDS, a.1)
            .cmp(&rank(&KINDS, b.1))
            .then(b.2.cmp(&a.2))
            .then(a.0.cmp(b.0))
    });
    if bars.is_empty() {
        h.push_str("<p>The run has no targets.</p>");
    } else {
        h.push_str(&charts::outcomes(&bars)?);
    }
    h.push_str("</section>\n");
    Ok(())
}

fn downtime(h: &mut String, report: &Report, clock: &Clock) -> Result<(), ChartError> {
    let unit = clock.downtime_unit();
    let _ = writeln!(
        h,
        "<section id=\"downtime\"><h2>Downtime distribution</h2>\n<p>From the removal of each app's gateway-based connection until it was on a VNet again (its new subnet, or its gateway connection back in sync after a rollback), in {unit}.</p>"
    );
    let of_kind = |kind: Option<&str>| -> Vec<f64> {
        report
            .targets
            .iter()
            .filter(|t| kind.is_none_or(|k| t.outcome == k))
            .filter_map(|t| t.downtime_seconds)
            .collect()
    };
    let values = of_kind(None);
    match (
        Bins::of(&values, DOWNTIME_BINS),
        &report.performance.downtime_seconds,
    ) {
        (Some(bins), Some(d)) => {
            // Migrated apps and rolled-back ones (and any other kind that was cut over).
            let mut kinds: Vec<&str> = report
                .targets
                .iter()
                .filter(|t| t.downtime_seconds.is_some())
                .map(|t| t.outcome.as_str())
                .collect();
            kinds.sort_by_key(|k| rank(&KINDS, k));
            kinds.dedup();
            let stacks: Vec<(&str, Vec<u64>)> = kinds
                .into_iter()
                .map(|k| (k, bins.count(&of_kind(Some(k)))))
                .collect();
            let marks = [("p50", d.p50), ("p95", d.p95), ("p99", d.p99)];
            h.push_str(&charts::downtime(&bins, &stacks, &marks, unit)?);
            let _ = writeln!(
                h,
                "<table class=\"kv\"><tr><th>Targets cut over</th><td>{}</td></tr><tr><th>Percentiles ({unit})</th><td>{}</td></tr></table>",
                values.len(),
                percentiles_text(d)
            );
        }
        _ => h.push_str("<p>No target was cut over: there is no downtime to show.</p>\n"),
    }
    h.push_str("</section>\n");
    Ok(())
}

fn subscriptions(h: &mut String, report: &Report, clock: &Clock) {
    #[derive(Default)]
    struct Roll<'a> {
        kinds: BTreeMap<&'a str, u64>,
        downtimes: Vec<f64>,
        total: u64,
    }
    let mut subs: BTreeMap<String, Roll> = BTreeMap::new();
    for t in &report.targets {
        let sub = ResourceId::parse(&t.id)
            .map(|id| id.subscription().to_ascii_lowercase())
            .unwrap_or_else(|_| "(not an ARM id)".into());
        let r = subs.entry(sub).or_default();
        *r.kinds.entry(t.outcome.as_str()).or_default() += 1;
        r.downtimes.extend(t.downtime_seconds);
        r.total += 1;
    }
    let mut kinds: Vec<&str> = report.summary.keys().map(String::as_str).collect();
    kinds.sort_by_key(|k| rank(&KINDS, k));
    let unit = clock.downtime_unit();
    h.push_str("<section id=\"subscriptions\"><h2>Per subscription</h2>\n<table><thead><tr><th>Subscription</th><th>targets</th>");
    for k in &kinds {
        let _ = write!(h, "<th>{}</th>", escape(k));
    }
    let _ = writeln!(
        h,
        "<th>downtime p50 ({unit})</th><th>downtime max ({unit})</th></tr></thead><tbody>"
    );
    for (sub, r) in &subs {
        let _ = write!(
            h,
            "<tr><td class=\"id sub\">{}</td><td>{}</td>",
            escape(sub),
            r.total
        );
        for k in &kinds {
            let _ = write!(h, "<td>{}</td>", r.kinds.get(k).copied().unwrap_or(0));
        }
        let (p50, max) = match Percentiles::of(r.downtimes.iter().copied()) {
            Some(p) => (format!("{:.3}", p.p50), format!("{:.3}", p.max)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(h, "<td>{p50}</td><td>{max}</td></tr>");
    }
    h.push_str("</tbody></table></section>\n");
}

/// The rollout's waves (DESIGN §8): per wave its targets and their outcomes, when it started
/// and ended, each check of its gate; and what the rollout waits for.
fn waves(h: &mut String, report: &Report, clock: &Clock) {
    if report.waves.is_empty() {
        return;
    }
    h.push_str("<section id=\"waves\"><h2>Waves</h2>\n");
    if let Some(w) = report.waiting.as_ref().or(report.stopped.as_ref()) {
        let _ = writeln!(h, "<p class=\"waiting\">The rollout: {}</p>", with_code(w));
    }
    h.push_str("<table><thead><tr><th>Wave</th><th>Targets</th><th>Outcomes</th><th>Started</th><th>Ended</th><th>Gate</th></tr></thead><tbody>\n");
    let when = |s: Option<f64>| s.map_or_else(|| "—".to_string(), |s| clock.run_seconds(s));
    for w in &report.waves {
        let outcomes = w
            .outcomes
            .iter()
            .map(|(k, n)| format!("{n} {}", escape(k)))
            .collect::<Vec<_>>()
            .join(", ");
        let gate = match &w.gate {
            None => "not judged".to_string(),
            Some(g) => {
                let checks: String = g
                    .checks
                    .iter()
                    .map(|c| {
                        format!(
                            "<li class=\"{}\">{}: {}</li>",
                            if c.passed { "passed" } else { "failed" },
                            c.kind.as_str(),
                            escape(&c.detail)
                        )
                    })
                    .collect();
                format!(
                    "{}<ul>{checks}</ul>",
                    if g.passed {
                        "passed"
                    } else {
                        "<strong>tripped</strong>"
                    }
                )
            }
        };
        let ids: String = report
            .targets
            .iter()
            .filter(|t| t.wave == Some(w.index))
            .map(|t| format!("<li>{} ({})</li>", escape(&t.id), escape(&t.outcome)))
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><details><summary>{}</summary><ul class=\"id\">{ids}</ul></details></td><td>{outcomes}</td><td>{}</td><td>{}</td><td>{gate}</td></tr>",
            w.index,
            w.size,
            when(w.started_seconds),
            when(w.ended_seconds),
        );
    }
    h.push_str("</tbody></table></section>\n");
}

fn attention(h: &mut String, report: &Report) {
    let mut rows: Vec<(&TargetReport, String)> = report
        .targets
        .iter()
        .filter(|t| ATTENTION.contains(&t.outcome.as_str()))
        .map(|t| (t, label(t)))
        .collect();
    rows.sort_by(|(a, la), (b, lb)| {
        rank(&ATTENTION, &a.outcome)
            .cmp(&rank(&ATTENTION, &b.outcome))
            .then(la.cmp(lb))
            .then(a.id.cmp(&b.id))
    });
    let _ = writeln!(
        h,
        "<section id=\"attention\"><h2>Blocked, parked and rolled-back targets: what to do</h2>"
    );
    if rows.is_empty() {
        h.push_str("<p>None: no target needs an operator.</p></section>\n");
        return;
    }
    h.push_str("<table><thead><tr><th>Target</th><th>Outcome</th><th>What to do</th></tr></thead><tbody>\n");
    for (t, l) in rows {
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td class=\"id target\">{}</td><td class=\"outcome\">{}</td><td>{}</td></tr>",
            escape(&t.outcome),
            escape(&t.id),
            escape(&l),
            with_code(remedy_of(t))
        );
    }
    h.push_str("</tbody></table></section>\n");
}

/// A remedy as HTML: escaped, its `command` spans set as code.
fn with_code(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| match i % 2 {
            1 => format!("<code>{part}</code>"),
            _ => part.to_string(),
        })
        .collect()
}

fn per_app(h: &mut String, report: &Report, clock: &Clock) {
    let unit = clock.downtime_unit();
    let _ = writeln!(
        h,
        "<section id=\"apps\"><h2>Per app</h2>\n<table><thead><tr><th>Target</th><th>Outcome</th><th>Subnet</th><th>Prefix</th><th>Steps</th><th>Attempts</th><th>Duration (wall s)</th><th>Downtime ({unit})</th></tr></thead><tbody>"
    );
    let prefix = |v: &Option<String>| escape(v.as_deref().unwrap_or("-"));
    // A subnet is shown as `vnet/subnet`; its whole id is the cell's tooltip.
    let subnet = |v: &Option<String>| match v.as_deref().map(|s| (s, ResourceId::parse(s))) {
        Some((s, Ok(id))) => format!(
            "<span title=\"{}\">{}/{}</span>",
            escape(s),
            escape(id.vnet().as_ref().map_or("?", |v| v.name())),
            escape(id.name())
        ),
        Some((s, Err(_))) => escape(s),
        None => "-".into(),
    };
    for t in &report.targets {
        let downtime = t
            .downtime_seconds
            .map_or_else(|| "-".into(), |d| format!("{d:.3}"));
        let _ = writeln!(
            h,
            "<tr><td class=\"id target\">{}</td><td class=\"outcome\"><span class=\"dot\" style=\"background:{}\"></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{downtime}</td></tr>",
            escape(&t.id),
            css_color(&t.outcome),
            escape(&label(t)),
            subnet(&t.subnet),
            prefix(&t.prefix),
            t.steps,
            t.attempts,
            t.duration_seconds
        );
    }
    h.push_str("</tbody></table></section>\n");
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.facts{color:#555}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border-left:6px solid #888;background:#f6f6f6;padding:8px 14px;min-width:90px}.card .n{font-size:24px;font-weight:600}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}
thead th{background:#f0f0f0;position:sticky;top:0}table.kv{width:auto}table.kv th{font-weight:600;padding-right:24px}
td.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}td.outcome{white-space:nowrap}td.target{width:44%}td.sub{white-space:nowrap}
tr.parked td.outcome{color:#b00;font-weight:600}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;background:#f2f2f2;padding:0 3px}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}
svg{max-width:100%;height:auto;display:block;margin:8px 0}
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Performance;

    fn target(
        name: &str,
        outcome: &str,
        reason: Option<&str>,
        downtime: Option<f64>,
    ) -> TargetReport {
        TargetReport {
            id: format!(
                "/subscriptions/sub-{}/resourceGroups/rg/providers/Microsoft.Web/sites/{name}",
                name.len() % 2
            ),
            outcome: outcome.into(),
            reason: reason.map(Into::into),
            subnet: None,
            prefix: None,
            steps: 6,
            attempts: 1,
            duration_seconds: 12.0,
            downtime_seconds: downtime,
            finished_seconds: Some(3.0),
            wave: None,
        }
    }

    fn report(targets: Vec<TargetReport>, speed: Option<f64>) -> Report {
        let mut summary = BTreeMap::new();
        let mut by_reason = BTreeMap::new();
        for t in &targets {
            *summary.entry(t.outcome.clone()).or_insert(0) += 1;
            // As `Report::new` counts them: an unfinished target by its kind alone.
            let key = match t.outcome.as_str() {
                UNFINISHED => UNFINISHED.to_string(),
                _ => label(t),
            };
            *by_reason.entry(key).or_insert(0) += 1;
        }
        let downtime_seconds = Percentiles::of(targets.iter().filter_map(|t| t.downtime_seconds));
        Report {
            run: "r-<1>".into(),
            dry_run: false,
            targets,
            summary,
            by_reason,
            waves: Vec::new(),
            stopped: None,
            waiting: None,
            performance: Performance {
                makespan_seconds: 10.0,
                downtime_seconds,
                simulated_speed: speed,
                ..Performance::default()
            },
        }
    }

    #[test]
    fn waves_show_their_targets_outcomes_times_gate_checks_and_the_wait() {
        use crate::pipeline::rollout::{Gate, GateCheck, GateKind};
        let mut a = target("a", "migrated", None, Some(1.0));
        a.wave = Some(0);
        let mut r = report(vec![a], None);
        assert!(
            !render(&r).unwrap().contains("id=\"waves\""),
            "no waves, no section"
        );
        r.waves = vec![
            super::super::WaveReport {
                index: 0,
                size: 1,
                started_seconds: Some(0.0),
                ended_seconds: Some(2.5),
                outcomes: BTreeMap::from([("migrated".to_string(), 1)]),
                gate: Some(Gate::of(vec![
                    GateCheck::failure_rate(0, 1, 0.1),
                    GateCheck {
                        kind: GateKind::KeyVaultReferences,
                        passed: false,
                        detail: "a: Key Vault references no longer resolve: <Db> is VaultNotFound"
                            .into(),
                    },
                ])),
            },
            super::super::WaveReport {
                index: 1,
                size: 3,
                started_seconds: None,
                ended_seconds: None,
                outcomes: BTreeMap::from([("unfinished".to_string(), 3)]),
                gate: None,
            },
        ];
        r.waiting = Some("held by the gate of wave 0: …; `rollout resume` goes on".into());
        let page = render(&r).unwrap();
        for want in [
            "<section id=\"waves\">",
            "The rollout: held by the gate of wave 0: …; <code>rollout resume</code> goes on",
            "<li>/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Web/sites/a (migrated)</li>",
            "<td>1 migrated</td><td>0.0 s</td><td>2.5 s</td>",
            "<strong>tripped</strong>",
            "<li class=\"passed\">failure rate: 0 of 1 target(s)",
            "<li class=\"failed\">Key Vault references: a: Key Vault references no longer resolve: &lt;Db&gt; is VaultNotFound</li>",
            "<td>3 unfinished</td><td>—</td><td>—</td><td>not judged</td>",
        ] {
            assert!(page.contains(want), "{want} not in the page");
        }
    }

    #[test]
    fn remedies_set_commands_as_code() {
        assert_eq!(
            with_code("run `plan --out-file` <then> `run --plan`."),
            "run <code>plan --out-file</code> &lt;then&gt; <code>run --plan</code>."
        );
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn page_escapes_outside_text_says_its_units_and_tells_what_to_do() {
        let r = report(
            vec![
                target("a", "migrated", None, Some(0.4)),
                target(
                    "bb",
                    "rolled-back",
                    Some("connect-rejected:<script>"),
                    Some(1.2),
                ),
                target("c", "blocked", Some("plan-subnet-limit"), None),
                target("dd", "parked", Some("gateway-missing"), None),
                target("e", UNFINISHED, Some("at connect"), None),
            ],
            Some(20.0),
        );
        let page = render(&r).unwrap();
        assert!(
            !page.contains("<script>"),
            "an outside text was not escaped"
        );
        assert!(page.contains("rolled-back:connect-rejected:&lt;script&gt;"));
        assert!(page.contains("run r-&lt;1&gt;"));
        assert!(!page.contains("http:") && !page.contains("https:"));
        for id in ["chart-progress", "chart-outcomes", "chart-downtime"] {
            assert!(page.contains(&format!("<svg id=\"{id}\"")), "{id}");
        }
        // Rehearsal: downtimes in simulated seconds, the run's clock in wall seconds.
        assert!(page.contains("Downtime (simulated seconds)"));
        assert!(page.contains("10.0 s wall (×20 rehearsal: 200 simulated s)"));
        // The parked target comes first, each with its remedy; migrated ones are not listed.
        let attention =
            &page[page.find("id=\"attention\"").unwrap()..page.find("id=\"apps\"").unwrap()];
        let first = attention.find("parked:gateway-missing").unwrap();
        assert!(first < attention.find("blocked:plan-subnet-limit").unwrap());
        assert!(attention.contains(&with_code(remedy_for("parked:gateway-missing"))));
        assert!(attention.contains(&with_code(remedy_for(UNFINISHED))));
        assert!(attention.contains("<code>retry --app ID</code>"));
        assert!(attention.contains(">unfinished (at connect)<"));
        assert!(!attention.contains("sites/a<"));
        // Two subscriptions, each with its own row.
        assert!(page.contains(">sub-0<") && page.contains(">sub-1<"));
    }

    #[test]
    fn against_azure_seconds_are_wall_seconds_and_empty_parts_say_so() {
        let page = render(&report(
            vec![target("c", "blocked", Some("drifted"), None)],
            None,
        ))
        .unwrap();
        assert!(page.contains("Downtime (seconds)"));
        assert!(!page.contains("simulated"));
        assert!(page.contains("No target was cut over"));
        assert!(!page.contains("chart-downtime"));
        let none = render(&report(vec![], None)).unwrap();
        assert!(none.contains("The run has no targets."));
        assert!(none.contains("No target has reached an outcome yet."));
    }

    #[test]
    fn write_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("vnet-migrate-html-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("r.html");
        std::fs::write(&path, "old").unwrap();
        write(
            &report(vec![target("a", "migrated", None, Some(1.0))], None),
            &path,
        )
        .unwrap();
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        // Nothing but the report is left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let missing = dir.join("no-such-dir").join("r.html");
        let err = write(&report(vec![], None), &missing).unwrap_err();
        assert!(matches!(err, HtmlReportError::Write { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
