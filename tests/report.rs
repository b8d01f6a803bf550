//! Rotation readiness from a scanned log: the CLI's table, JSON and HTML
//! forms, and the HTML page rendered by headless Chromium.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::*;

const MIN: i64 = 60_000;

fn event(id: usize, t: i64, key: &str, client: &str) -> String {
    format!(
        r#"{{"event_id":"r{id}","received_at":{t},"key_id":"{key}","nonce":"n{id}","client_ts":{t},"client_ip":"10.1.0.{}","method":"GET","path":"/api/v3/account","status":200,"client_id":"{client}"}}"#,
        client.len()
    )
}

/// Two rotations over three hours: `old-a` goes quiet after 30 minutes, a
/// laggard keeps using `old-b` to the end.
pub fn rotation_log(d: &Dir) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut lines = Vec::new();
    let mut id = 0;
    for m in 0..180 {
        let t = T0 + m * MIN;
        for (old, new) in [("old-a", "new-a"), ("old-b", "new-b")] {
            for i in 0..10 {
                id += 1;
                let on_old = if old == "old-a" {
                    m < 30 && i < 5
                } else {
                    i == 0
                };
                let client = if old == "old-b" && on_old {
                    "laggard"
                } else {
                    "fleet"
                };
                lines.push(event(
                    id,
                    t + i * 1000,
                    if on_old { old } else { new },
                    client,
                ));
            }
        }
    }
    let events = d.write("rotation.jsonl", &(lines.join("\n") + "\n"));
    let lc = format!(
        "{}\n{}\n",
        format_args!(
            r#"{{"key_id":"old-a","state":"rotating","at":{T0},"successor":"new-a","grace_until":{}}}"#,
            T0 + 24 * 60 * MIN
        ),
        format_args!(
            r#"{{"key_id":"old-b","state":"rotating","at":{T0},"successor":"new-b","grace_until":null}}"#
        ),
    );
    (events, d.write("lifecycle.jsonl", &lc))
}

fn scanned(d: &Dir) -> std::path::PathBuf {
    let (events, lc) = rotation_log(d);
    let state = d.path("state");
    scan_ok(
        &[
            ("--state-dir", &state),
            ("--lifecycle", &lc),
            ("--alerts", &d.path("alerts.jsonl")),
        ],
        &[&events],
    );
    state
}

#[test]
fn readiness_verdicts_counts_and_stragglers() {
    let d = Dir::new();
    let state = scanned(&d);
    let o = report_rotation(&state, "json");
    let reports: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reports.len(), 2);
    let a = &reports[0];
    assert_eq!(a["key_id"], "old-a");
    assert_eq!(a["verdict"], "READY");
    assert_eq!(a["old_key"]["since_rotation"], 30 * 5);
    assert_eq!(a["old_key"]["last_1h"], 0);
    assert_eq!(a["successor_key"]["since_rotation"], 180 * 10 - 30 * 5);
    assert_eq!(a["last_old_key_use"], "2026-11-28T00:29:04.000Z");
    let b = &reports[1];
    assert_eq!(b["key_id"], "old-b");
    assert_eq!(b["verdict"], "NOT_READY");
    assert_eq!(b["old_key"]["last_5m"], 5);
    assert_eq!(b["old_key"]["last_1h"], 60);
    assert_eq!(b["old_key"]["since_rotation"], 180);
    assert!((b["old_key_share"]["since_rotation"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!(b["stragglers"][0]["client"], "laggard");
    assert_eq!(b["stragglers"][0]["count"], 180);
    assert_eq!(b["estimate"], Value::Null, "a flat share gives no estimate");
    // one key, and the table
    let key_report = |key: &str| {
        run(
            &[
                "report",
                "rotation",
                "--state-dir",
                state.to_str().unwrap(),
                "--key",
                key,
            ],
            None,
        )
    };
    let o = key_report("old-b");
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("old-b") && table.contains("NOT_READY") && table.contains("laggard"),
        "{table}"
    );
    assert!(!table.contains("old-a"));
    let o = key_report("nope");
    assert_eq!(o.status.code(), Some(2));
    // per-key usage
    let o = run(
        &[
            "report",
            "usage",
            "--state-dir",
            state.to_str().unwrap(),
            "--key",
            "new-a",
        ],
        None,
    );
    assert!(o.status.success());
    let u: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(u["requests_total"], 180 * 10 - 30 * 5);
    assert_eq!(u["requests_last_5m"], 50);
}

/// Chromium from Debian (scripts/test.sh installs it).
fn chromium() -> &'static str {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c;
        }
    }
    panic!("headless Chromium is not installed: apt-get install chromium (scripts/test.sh does)");
}

/// Headless Chromium over a page: `--dump-dom` (the DOM after the page's
/// script ran) returned; a screenshot is kept in the test's artifacts
/// (`$CARGO_TARGET_TMPDIR/<name>.png`) for a person to look at.
fn browse(d: &Dir, name: &str, html: &[u8]) -> String {
    let page = d.path(&format!("{name}.html"));
    std::fs::write(&page, html).unwrap();
    let chrome = |mode: &[String]| {
        let profile = d.path(&format!("chromium-profile-{name}"));
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(mode)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium")
    };
    let out = chrome(&["--dump-dom".to_string()]);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let s = chrome(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1100,1600".to_string(),
    ]);
    assert!(
        s.status.success() && shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_html_page_renders_chart_and_table_in_a_browser() {
    let d = Dir::new();
    let state = scanned(&d);
    let o = report_rotation(&state, "html");
    let dom = browse(&d, "report-rotations", &o.stdout);
    // the overview: one row per key, what needs attention (not ready) first
    assert!(dom.contains(r#"data-overview-rows="2""#), "{dom}");
    let first_row = dom.find("overview-row").unwrap();
    let first_verdict = &dom[first_row..first_row + 400];
    assert!(first_verdict.contains("NOT READY"), "{first_verdict}");
    // axes say what they count
    assert!(dom.contains("requests per "), "{dom}");
    assert!(dom.contains("time (UTC)"), "{dom}");
    // the quiet-period line of the key still in use
    assert!(dom.contains(r#"class="quiet-period""#), "{dom}");
    // the page's script runs after layout: both charts have a size, the straggler table has rows
    assert!(dom.contains(r#"data-charts-drawn="2""#), "{dom}");
    assert!(
        dom.contains(r#"data-straggler-rows=""#) && !dom.contains(r#"data-straggler-rows="0""#),
        "{dom}"
    );
    assert!(dom.contains("NOT READY") && dom.contains("READY"));
    assert!(dom.contains("laggard"));
}

#[test]
fn report_usage_renders_html_in_a_browser() {
    let d = Dir::new();
    let state = scanned(&d);
    let text = String::from_utf8(report_rotation(&state, "json").stdout).unwrap();
    let reports: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let key = reports[0]["key_id"].as_str().unwrap().to_string();
    let usage = |extra: &[&str]| {
        let mut args = vec!["report", "usage", "--state-dir", state.to_str().unwrap()];
        args.extend(["--key", key.as_str()]);
        args.extend(extra);
        run_ok(&args, None)
    };
    let o = usage(&["--format", "html"]);
    assert!(o.stdout.starts_with(b"<!doctype html>"));
    let dom = browse(&d, "report-usage", &o.stdout);
    assert!(
        dom.contains(&format!("Usage of <span class=\"key\">{key}</span>")),
        "{dom}"
    );
    assert!(dom.contains(r#"class="bar""#), "{dom}");
    assert!(dom.contains("requests per minute"), "{dom}");
    assert!(dom.contains(r#"class="client""#), "{dom}");
    // JSON stays the default
    let json = usage(&[]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["key_id"], key.as_str());
}
