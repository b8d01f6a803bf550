//! Rotation reports as a text table and as an HTML page with an inline SVG
//! chart of old-key vs successor traffic and the straggler table.

use std::fmt::Write;

use super::rotation::{human, RotationReport, Verdict};
use crate::schema::timestamp::format_rfc3339;

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// A plain-text table, one block per key.
pub fn table(reports: &[RotationReport]) -> String {
    if reports.is_empty() {
        return "no key is in rotation\n".into();
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<9} {:>10} {:>10} {:>10} {:>8} {:>20}  SUCCESSOR",
        "KEY", "VERDICT", "OLD 5m", "OLD 1h", "OLD TOTAL", "SHARE", "LAST OLD USE"
    );
    for r in reports {
        let _ = writeln!(
            s,
            "{:<24} {:<9} {:>10} {:>10} {:>10} {:>8} {:>20}  {}",
            r.key_id,
            match r.verdict {
                Verdict::Ready => "READY",
                Verdict::NotReady => "NOT_READY",
            },
            r.old_key.last_5m,
            r.old_key.last_1h,
            r.old_key.since_rotation,
            pct(r.old_key_share.since_rotation),
            r.last_old_key_use
                .map_or("-".into(), |t| format_rfc3339(t)[..19].to_string()),
            r.successor.as_deref().unwrap_or("-"),
        );
    }
    for r in reports {
        let _ = writeln!(s, "\n{} ({}): {}", r.key_id, r.state.as_str(), r.reason);
        if let Some(e) = &r.estimate {
            let _ = writeln!(
                s,
                "  estimated ready at {} ± {} (old-key share {:+.2}%/h over {} points)",
                format_rfc3339(e.ready_at),
                human(e.plus_minus_ms),
                e.share_slope_per_hour * 100.0,
                e.points
            );
        }
        if !r.stragglers.is_empty() {
            let _ = writeln!(
                s,
                "  {:<32} {:>10}  LAST SEEN",
                "STRAGGLING CLIENT", "REQUESTS"
            );
            for c in &r.stragglers {
                let _ = writeln!(
                    s,
                    "  {:<32} {:>10}  {}",
                    c.client,
                    c.count,
                    format_rfc3339(c.last_seen)
                );
            }
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// An inline SVG line chart of old vs successor requests per bucket.
fn chart(r: &RotationReport) -> String {
    let (w, h, pad) = (720.0, 220.0, 40.0);
    let pts = &r.series;
    let mut s = format!(
        r#"<svg class="chart" role="img" aria-label="requests on {k} and its successor" viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">"#,
        k = esc(&r.key_id)
    );
    let max = pts
        .iter()
        .map(|p| p.old.max(p.successor))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = pts.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |v: u32| h - pad - (h - 2.0 * pad) * v as f64 / max;
    let _ = write!(
        s,
        r##"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#999"/>"##,
        b = h - pad,
        r = w - pad
    );
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="11" fill="#555">{}</text>"##,
        pad + 4.0,
        pad - 6.0,
        max as u64
    );
    for (name, color, get) in [
        (
            "old key",
            "#c0392b",
            (|p: &super::rotation::Point| p.old) as fn(&super::rotation::Point) -> u32,
        ),
        ("successor", "#2471a3", |p: &super::rotation::Point| {
            p.successor
        }),
    ] {
        let d: Vec<String> = pts
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(get(p))))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="series" data-series="{name}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            d.join(" ")
        );
    }
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        let _ = write!(
            s,
            r##"<text x="{pad}" y="{}" font-size="11" fill="#555">{}</text><text x="{}" y="{}" font-size="11" fill="#555" text-anchor="end">{}</text>"##,
            h - pad + 16.0,
            &format_rfc3339(first.t)[..16],
            w - pad,
            h - pad + 16.0,
            &format_rfc3339(last.t)[..16]
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{}" y="8" width="10" height="3" fill="#c0392b"/><text x="{}" y="14" font-size="11">old key</text><rect x="{}" y="8" width="10" height="3" fill="#2471a3"/><text x="{}" y="14" font-size="11">successor</text></svg>"##,
        w - 190.0,
        w - 176.0,
        w - 110.0,
        w - 96.0
    );
    s
}

/// The rotation-readiness page.
pub fn html(reports: &[RotationReport]) -> String {
    let mut s = String::from(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>replayguard: key rotation readiness</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:60rem}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem}
.ready{color:#1e8449;font-weight:600} .not_ready{color:#c0392b;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4} td.n{text-align:right} .muted{color:#666;font-size:.9rem}
</style></head><body>
<h1>Key rotation readiness</h1>
"#,
    );
    if reports.is_empty() {
        s.push_str("<p id=\"empty\">No key is in rotation.</p>\n");
    }
    for r in reports {
        let cls = match r.verdict {
            Verdict::Ready => "ready",
            Verdict::NotReady => "not_ready",
        };
        let _ = write!(
            s,
            r#"<section class="report" data-key="{k}">
<h2>{k} <span class="{cls}">{v}</span></h2>
<p>{reason}</p>
<p class="muted">state {state} since {start}; successor {succ}; as of {asof}{grace}</p>
"#,
            k = esc(&r.key_id),
            v = if cls == "ready" { "READY" } else { "NOT READY" },
            reason = esc(&r.reason),
            state = r.state.as_str(),
            start = format_rfc3339(r.rotation_started_at),
            succ = esc(r.successor.as_deref().unwrap_or("none")),
            asof = format_rfc3339(r.as_of),
            grace = r
                .grace_until
                .map(|g| format!("; grace until {}", format_rfc3339(g)))
                .unwrap_or_default(),
        );
        if let Some(e) = &r.estimate {
            let _ = writeln!(
                s,
                "<p>Estimated ready at <b>{}</b> ± {} (old-key share {:+.2}% per hour, {} points).</p>",
                format_rfc3339(e.ready_at),
                human(e.plus_minus_ms),
                e.share_slope_per_hour * 100.0,
                e.points
            );
        }
        s.push_str(&chart(r));
        let _ = write!(
            s,
            r#"
<table class="counts"><tr><th></th><th>last 5 min</th><th>last hour</th><th>since rotation</th></tr>
<tr><th>old key</th><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>
<tr><th>successor</th><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>
<tr><th>old-key share</th><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr></table>
<p class="muted">{} distinct addresses and {} distinct client ids on the old key; {} tracked clients used it in the last hour.</p>
<table class="stragglers"><tr><th>straggling client</th><th>requests</th><th>last seen</th></tr>
"#,
            r.old_key.last_5m,
            r.old_key.last_1h,
            r.old_key.since_rotation,
            r.successor_key.last_5m,
            r.successor_key.last_1h,
            r.successor_key.since_rotation,
            pct(r.old_key_share.last_5m),
            pct(r.old_key_share.last_1h),
            pct(r.old_key_share.since_rotation),
            r.old_key_distinct_ips,
            r.old_key_distinct_client_ids,
            r.clients_last_hour,
        );
        for c in &r.stragglers {
            let _ = writeln!(
                s,
                r#"<tr class="straggler"><td>{}</td><td class="n">{}</td><td>{}</td></tr>"#,
                esc(&c.client),
                c.count,
                format_rfc3339(c.last_seen)
            );
        }
        s.push_str("</table></section>\n");
    }
    // lets a browser test see that layout happened: charts have a size, tables have rows
    s.push_str(
        r#"<script>
window.addEventListener('load', function () {
  var charts = document.querySelectorAll('svg.chart');
  var drawn = 0;
  charts.forEach(function (c) { var b = c.getBBox(); if (b.width > 0 && b.height > 0) drawn++; });
  document.body.setAttribute('data-charts-drawn', String(drawn));
  document.body.setAttribute('data-straggler-rows', String(document.querySelectorAll('tr.straggler').length));
});
</script>
</body></html>
"#,
    );
    s
}
