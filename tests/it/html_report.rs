//! `--report FILE.html`: the page `rehearse`, `run` and `status` write is one self-contained
//! file (nothing to fetch), its charts are in the DOM headless Chromium renders, and each app
//! that was cut over shows its downtime in the per-app table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use vnet_migrate::rehearsal::invariants;
use vnet_migrate::sim::Fleet;

use crate::cli::POLICY;
use crate::support::{bin, get_json, json_stdout, spawn_simulator, ChildGuard, TempDir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHARTS: [&str; 3] = ["chart-progress", "chart-outcomes", "chart-downtime"];

/// Debian's Chromium, installed here when missing and this process may (root, as on CI); any
/// other case fails, saying how to install it: this test never skips.
fn chromium() -> &'static Path {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        if Path::new(CHROMIUM).exists() {
            return;
        }
        let uid = Command::new("id").arg("-u").output().expect("id runs");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "{CHROMIUM} is missing and only root can install it: run `apt-get install -y chromium` (as .ci/run does)"
        );
        for args in [
            &["update", "-q"][..],
            &["install", "-y", "-q", "--no-install-recommends", "chromium"][..],
        ] {
            let st = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .status()
                .expect("apt-get runs");
            assert!(st.success(), "apt-get {args:?} failed: cannot install chromium");
        }
        assert!(Path::new(CHROMIUM).exists(), "apt-get installed no {CHROMIUM}");
    });
    Path::new(CHROMIUM)
}

/// Headless Chromium on a local file, with everything that would reach out switched off;
/// killed if it takes over two minutes. Returns its stdout.
fn headless(profile: &Path, page: &Path, what: &[&str]) -> String {
    let url = format!("file://{}", page.display());
    let mut child = ChildGuard(
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(what)
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "chromium did not finish {what:?} in two minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium {what:?}: {status}");
    reader.join().unwrap()
}

/// Nothing in the page fetches anything: no URL, no external reference of any kind.
fn assert_self_contained(page: &str) {
    for needle in [
        "http://", "https://", "src=", "href=", "url(", "@import", "<script", "<link", "<iframe",
        "<img",
    ] {
        assert!(!page.contains(needle), "the page holds {needle:?}");
    }
}

/// The part of the page from `<section id="{id}"` to its end.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}"));
    let len = page[start..].find("</section>").expect("section closes");
    &page[start..start + len]
}

/// Every target with a downtime in the JSON report shows that figure in its per-app row.
fn assert_downtime_per_app(page: &str, report: &Value) -> usize {
    let apps = section(page, "apps");
    let mut shown = 0;
    for t in report["targets"].as_array().unwrap() {
        let id = t["id"].as_str().unwrap();
        let row = apps
            .split("<tr>")
            .find(|r| r.contains(&format!(">{id}</td>")))
            .unwrap_or_else(|| panic!("no per-app row for {id}"));
        let row = &row[..row.find("</tr>").expect("row closes") + "</tr>".len()];
        let cell = match t["downtimeSeconds"].as_f64() {
            Some(d) => {
                shown += 1;
                format!("<td>{d:.3}</td></tr>")
            }
            None => "<td>-</td></tr>".to_string(),
        };
        assert!(row.ends_with(&cell), "{id}: {row}");
    }
    shown
}

#[test]
fn rehearse_report_is_self_contained_and_its_charts_render_in_chromium() {
    let dir = TempDir::new();
    let html = dir.file("r.html");
    let state = dir.file("r.db");
    let out = bin(&[
        "rehearse",
        "--generate",
        "60",
        "--seed",
        "4",
        "--state",
        state.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
        "--output",
        "json",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "rehearse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_stdout(&out);
    // Seed 4 ends targets in several ways, rolled back and blocked among them.
    let summary = &report["summary"];
    for kind in ["migrated", "rolled-back", "blocked"] {
        assert!(
            summary[kind].as_u64().unwrap_or(0) > 0,
            "no {kind}: {summary}"
        );
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(&page);
    // Written through a temporary file that is renamed: none is left behind.
    for e in std::fs::read_dir(&dir.0).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            !name.to_string_lossy().ends_with(".tmp"),
            "{name:?} left behind"
        );
    }

    let dom = headless(&dir.file("profile"), &html, &["--dump-dom"]);
    assert!(
        dom.contains("</html>"),
        "chromium dumped no page: {dom:.200}"
    );
    for id in CHARTS {
        let chart = dom
            .find(&format!("<svg id=\"{id}\""))
            .map(|at| &dom[at..at + dom[at..].find("</svg>").expect("svg closes")])
            .unwrap_or_else(|| panic!("chart {id} is not in the rendered DOM"));
        assert!(
            chart.contains(&format!("<title id=\"{id}-title\">")),
            "{id}"
        );
        // Drawn, not an empty frame: axes and labels as SVG text, shapes as rects/paths.
        assert!(chart.matches("<text").count() >= 5, "{id} has no labels");
        assert!(
            chart.contains("<rect")
                && (chart.contains("<polyline")
                    || chart.contains("<path")
                    || chart.contains("<line")),
            "{id} draws nothing"
        );
    }
    let outcomes = &dom[dom.find("<svg id=\"chart-outcomes\"").unwrap()..];
    for reason in report["byReason"].as_object().unwrap().keys() {
        assert!(
            outcomes.contains(&format!(">\n{reason}\n</text>")),
            "no bar for {reason}"
        );
    }
    // A rehearsal says its downtimes are simulated seconds.
    assert!(section(&dom, "downtime").contains("in simulated seconds"));
    assert!(dom.contains("<th>Downtime (simulated seconds)</th>"));
    let shown = assert_downtime_per_app(&dom, &report);
    let cut_over = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "migrated" || t["outcome"] == "rolled-back")
        .count();
    assert_eq!(
        shown, cut_over,
        "every migrated or rolled-back app has a downtime"
    );
    // Each rolled-back and blocked target is listed with what to do about it.
    let attention = section(&dom, "attention");
    for t in report["targets"].as_array().unwrap() {
        if matches!(t["outcome"].as_str(), Some("rolled-back" | "blocked")) {
            let label = format!(
                "{}:{}",
                t["outcome"].as_str().unwrap(),
                t["reason"].as_str().unwrap()
            );
            let row = attention
                .split("<tr")
                .find(|r| r.contains(&format!(">{}</td>", t["id"].as_str().unwrap())))
                .unwrap_or_else(|| panic!("{} is not in the table of what to do", t["id"]));
            assert!(row.contains(&format!(">{label}</td>")), "{row}");
            let remedy = row.rsplit("<td>").next().unwrap();
            assert!(remedy.len() > 60, "no remedy: {row}");
        }
    }

    // `status --report` on the same state file: the ledger's view, charts included.
    let status_html = dir.file("status.html");
    let out = bin(&[
        "status",
        "--state",
        state.to_str().unwrap(),
        "--report",
        status_html.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status_page = std::fs::read_to_string(&status_html).unwrap();
    assert_self_contained(&status_page);
    for id in CHARTS {
        assert!(
            status_page.contains(&format!("<svg id=\"{id}\"")),
            "status: no {id}"
        );
    }
    assert!(status_page.contains(&format!("run {}", report["run"].as_str().unwrap())));

    // A screenshot renders too (a person looks at the same page).
    let png = dir.file("r.png");
    headless(
        &dir.file("profile"),
        &html,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2400",
        ],
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 50_000,
        "{} bytes",
        bytes.len()
    );
}

#[test]
fn run_report_against_arm_is_in_wall_seconds() {
    let dir = TempDir::new();
    let (sim, url) = spawn_simulator(&["--generate", "16", "--seed", "4", "--speed", "50"]);
    let fleet: Fleet = serde_json::from_value(get_json(&format!("{url}/_sim/state"))).unwrap();
    let html = dir.file("run.html");
    let state = dir.file("run.db");
    let policy = dir.file("p.json");
    std::fs::write(&policy, POLICY).unwrap();
    let mut args = vec![
        "run".to_string(),
        "--arm-endpoint".into(),
        url.clone(),
        "--arm-speed".into(),
        "50".into(),
        "--credential".into(),
        "static".into(),
        "--state".into(),
        state.to_str().unwrap().into(),
        "--report".into(),
        html.to_str().unwrap().into(),
        "--policy".into(),
        policy.to_str().unwrap().into(),
        "--output".into(),
        "json".into(),
    ];
    for s in invariants::subscriptions(&fleet) {
        args.extend(["--subscription".to_string(), s]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bin(&args)
        .env("VNET_MIGRATE_STATIC_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sim);
    let report = json_stdout(&out);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_self_contained(&page);
    // Against ARM (here a simulator behind a loopback endpoint) nothing is simulated time.
    assert!(
        !page.contains("simulated"),
        "a run's figures are wall seconds"
    );
    assert!(page.contains("<th>Downtime (seconds)</th>"));
    assert!(
        page.contains("<svg id=\"chart-progress\"") && page.contains("<svg id=\"chart-outcomes\"")
    );
    assert!(
        report["summary"]["migrated"].as_u64().unwrap_or(0) > 0,
        "{}",
        report["summary"]
    );
    assert!(page.contains("<svg id=\"chart-downtime\""));
    assert!(assert_downtime_per_app(&page, &report) > 0);
}
