//! Rotation reports as a text table and as an HTML page (an overview of
//! every key by what needs attention, then per key an inline SVG chart of
//! old-key vs successor traffic and the straggler table); a key's usage as
//! an HTML page.

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

/// A table row of one client: name, requests, last seen.
fn client_row(s: &mut String, class: &str, c: &super::rotation::Straggler) {
    let _ = writeln!(
        s,
        r#"<tr class="{class}"><td>{}</td><td class="n">{}</td><td>{}</td></tr>"#,
        esc(&c.client),
        c.count,
        format_rfc3339(c.last_seen)
    );
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// An inline SVG line chart of old vs successor requests per bucket, on a
/// time axis: the still-open last bucket is drawn dashed (its count is not
/// final), and vertical lines mark where the quiet period after the last
/// old-key use ends and the estimated ready time.
fn chart(r: &RotationReport) -> String {
    let (w, h, pad_l, pad_r, pad_t, pad_b) = (720.0, 250.0, 56.0, 24.0, 28.0, 44.0);
    let pts = &r.series;
    let mut s = format!(
        r#"<svg class="chart" role="img" aria-label="requests on {k} and its successor" viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">"#,
        k = esc(&r.key_id)
    );
    let width = r.series_bucket_ms.max(1);
    let unit = if width >= 3_600_000 { "hour" } else { "minute" };
    let max = pts
        .iter()
        .map(|p| p.old.max(p.successor))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    // the time axis: the buckets, and the marks when they lie ahead
    let marks: Vec<(&str, &str, i64)> = [
        ("quiet-period", "quiet period ends", r.quiet_until()),
        (
            "eta",
            "estimated ready",
            r.estimate.as_ref().map(|e| e.ready_at),
        ),
    ]
    .into_iter()
    .filter_map(|(c, l, t)| t.map(|t| (c, l, t)))
    .collect();
    let t0 = pts.first().map_or(r.rotation_started_at, |p| p.t);
    let t1 = pts
        .last()
        .map_or(r.as_of, |p| p.t)
        .max(marks.iter().map(|m| m.2).max().unwrap_or(i64::MIN))
        .max(t0 + width);
    let (x0, x1, yb) = (pad_l, w - pad_r, h - pad_b);
    let x = |t: i64| x0 + (x1 - x0) * (t - t0) as f64 / (t1 - t0) as f64;
    let y = |v: u32| yb - (yb - pad_t) * v as f64 / max;
    let _ = write!(
        s,
        r##"<line x1="{x0}" y1="{yb}" x2="{x1}" y2="{yb}" stroke="#999"/><line x1="{x0}" y1="{pad_t}" x2="{x0}" y2="{yb}" stroke="#999"/>"##,
    );
    // y axis: 0 and the maximum, and what is counted
    let _ = write!(
        s,
        r##"<text x="{lx}" y="{ty}" font-size="11" fill="#555" text-anchor="end">{max}</text><text x="{lx}" y="{yb}" font-size="11" fill="#555" text-anchor="end">0</text><text class="axis-label" x="12" y="{my}" font-size="11" fill="#555" transform="rotate(-90 12 {my})" text-anchor="middle">requests per {unit}</text>"##,
        lx = x0 - 6.0,
        ty = pad_t + 4.0,
        max = max as u64,
        my = (pad_t + yb) / 2.0,
    );
    let open = r.last_bucket_open();
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
        let xy: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(get(p))))
            .collect();
        // complete buckets solid; the open one joins them dashed
        let closed = if open { xy.len() - 1 } else { xy.len() };
        let _ = write!(
            s,
            r#"<polyline class="series" data-series="{name}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            xy[..closed].join(" ")
        );
        if open && xy.len() >= 2 {
            let _ = write!(
                s,
                r#"<polyline class="open-bucket" data-series="{name}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="4 3" points="{} {}"/>"#,
                xy[xy.len() - 2],
                xy[xy.len() - 1]
            );
        }
    }
    for (class, label, t) in &marks {
        let mx = x(*t);
        let _ = write!(
            s,
            r##"<line class="{class}" x1="{mx:.1}" y1="{pad_t}" x2="{mx:.1}" y2="{yb}" stroke="#1e8449" stroke-dasharray="2 3"/><text x="{tx:.1}" y="{ly}" font-size="10" fill="#1e8449" text-anchor="end">{label}</text>"##,
            tx = mx - 3.0,
            ly = pad_t + 12.0 + if *class == "eta" { 12.0 } else { 0.0 },
        );
    }
    // x axis: first and last time, and the unit
    let _ = write!(
        s,
        r##"<text x="{x0}" y="{ty}" font-size="11" fill="#555">{a}</text><text x="{x1}" y="{ty}" font-size="11" fill="#555" text-anchor="end">{b}</text><text class="axis-label" x="{mx}" y="{ly}" font-size="11" fill="#555" text-anchor="middle">time (UTC), one point per {unit}{note}</text>"##,
        ty = yb + 16.0,
        a = &format_rfc3339(t0)[..16],
        b = &format_rfc3339(t1)[..16],
        mx = (x0 + x1) / 2.0,
        ly = yb + 32.0,
        note = if open {
            "; dashed: the current one, still open"
        } else {
            ""
        },
    );
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

/// How much a report needs attention, most first: not ready before ready;
/// then the larger old-key share of the last hour, the more stragglers, the
/// more recent old-key use; then by key.
fn attention(a: &RotationReport, b: &RotationReport) -> std::cmp::Ordering {
    let rank = |r: &RotationReport| match r.verdict {
        Verdict::NotReady => 0,
        Verdict::Ready => 1,
    };
    rank(a)
        .cmp(&rank(b))
        .then_with(|| {
            let s = |r: &RotationReport| r.old_key_share.last_1h.unwrap_or(-1.0);
            s(b).total_cmp(&s(a))
        })
        .then_with(|| b.stragglers.len().cmp(&a.stragglers.len()))
        .then_with(|| b.last_old_key_use.cmp(&a.last_old_key_use))
        .then_with(|| a.key_id.cmp(&b.key_id))
}

/// The overview table at the top of the page: one row per key, sorted by
/// [`attention`], each linking to its section.
fn overview(reports: &[RotationReport]) -> String {
    let mut sorted: Vec<&RotationReport> = reports.iter().collect();
    sorted.sort_by(|a, b| attention(a, b));
    let mut s = String::from(
        r#"<table class="overview"><tr><th>key</th><th>state</th><th>verdict</th><th>old-key share, last hour</th><th>stragglers</th><th>last old-key use</th><th>estimated ready</th></tr>
"#,
    );
    for r in sorted {
        let (cls, v) = match r.verdict {
            Verdict::Ready => ("ready", "READY"),
            Verdict::NotReady => ("not_ready", "NOT READY"),
        };
        let _ = writeln!(
            s,
            r##"<tr class="overview-row" data-key="{k}"><td><a href="#key-{k}">{k}</a></td><td>{state}</td><td class="{cls}">{v}</td><td class="n">{share}</td><td class="n">{strag}</td><td>{last}</td><td>{eta}</td></tr>"##,
            k = esc(&r.key_id),
            state = r.state.as_str(),
            share = pct(r.old_key_share.last_1h),
            strag = r.stragglers.len(),
            last = r
                .last_old_key_use
                .map_or("never".into(), |t| format_rfc3339(t)[..16].to_string()),
            eta = match (&r.estimate, r.verdict) {
                (_, Verdict::Ready) => "now".to_string(),
                (Some(e), _) => format!(
                    "{} ± {}",
                    &format_rfc3339(e.ready_at)[..16],
                    human(e.plus_minus_ms)
                ),
                (None, _) => r.quiet_until().map_or("-".into(), |t| format!(
                    "not before {}",
                    &format_rfc3339(t)[..16]
                )),
            },
        );
    }
    s.push_str("</table>\n");
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
table.overview td{white-space:nowrap}
</style></head><body>
<h1>Key rotation readiness</h1>
"#,
    );
    if reports.is_empty() {
        s.push_str("<p id=\"empty\">No key is in rotation.</p>\n");
    } else {
        s.push_str(&overview(reports));
    }
    let mut sorted: Vec<&RotationReport> = reports.iter().collect();
    sorted.sort_by(|a, b| attention(a, b));
    for r in sorted {
        let cls = match r.verdict {
            Verdict::Ready => "ready",
            Verdict::NotReady => "not_ready",
        };
        let _ = write!(
            s,
            r#"<section class="report" id="key-{k}" data-key="{k}">
<h2>{k} <span class="{cls}">{v}</span></h2>
<p>{reason}</p>
<p class="muted">state {state} since {start}; successor {succ}; as of {asof}{grace}; quiet period {quiet}</p>
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
            quiet = human(r.quiet_period_ms),
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
            client_row(&mut s, "straggler", c);
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
  document.body.setAttribute('data-overview-rows', String(document.querySelectorAll('tr.overview-row').length));
});
</script>
</body></html>
"#,
    );
    s
}

/// A key's usage as an HTML page (`report usage --format html`): the
/// counts, status classes, distinct clients, rate baseline, the requests
/// per minute of the last hour as bars, and the heaviest clients.
pub fn usage_html(u: &super::UsageView) -> String {
    let mut s = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>replayguard: usage of {k}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:60rem}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:2rem}}
table{{border-collapse:collapse;margin:.5rem 0}} td,th{{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}}
th{{background:#f4f4f4}} td.n{{text-align:right}} .muted{{color:#666;font-size:.9rem}}
</style></head><body>
<h1>Usage of <span class="key">{k}</span></h1>
<p class="muted">first seen {first}; last seen {last}</p>
<table class="usage"><tr><th></th><th>last 5 min</th><th>last hour</th><th>last 24 h</th><th>total</th></tr>
<tr><th>requests</th><td class="n">{m5}</td><td class="n">{h1}</td><td class="n">{d1}</td><td class="n">{total}</td></tr></table>
<p>{ips} distinct client addresses, {ids} distinct client ids (HyperLogLog estimates); baseline {mean} ± {std} requests per minute.</p>
"#,
        k = esc(&u.key_id),
        first = format_rfc3339(u.first_seen),
        last = format_rfc3339(u.last_seen),
        m5 = u.requests_last_5m,
        h1 = u.requests_last_1h,
        d1 = u.requests_last_24h,
        total = u.requests_total,
        ips = u.distinct_ips,
        ids = u.distinct_client_ids,
        mean = u.baseline_per_minute,
        std = u.baseline_std,
    );
    s.push_str("<table class=\"status\"><tr><th>status class</th><th>requests</th></tr>\n");
    for (class, n) in &u.status {
        let _ = writeln!(s, r#"<tr><td>{class}</td><td class="n">{n}</td></tr>"#);
    }
    s.push_str("</table>\n<h2>Requests per minute, the key's last 60 minutes of use</h2>\n");
    // bars on a time axis, one per minute bucket
    let (w, h, pad_l, pad_b, pad_t) = (720.0, 200.0, 56.0, 36.0, 16.0);
    let max = u.per_minute.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let n = u.per_minute.len().max(1) as f64;
    let bw = (w - pad_l - 16.0) / n;
    let _ = write!(
        s,
        r##"<svg class="chart" role="img" aria-label="requests per minute on {k}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg"><line x1="{pad_l}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#999"/><text x="{lx}" y="{ty}" font-size="11" fill="#555" text-anchor="end">{max}</text><text x="{lx}" y="{yb}" font-size="11" fill="#555" text-anchor="end">0</text><text class="axis-label" x="12" y="{my}" font-size="11" fill="#555" transform="rotate(-90 12 {my})" text-anchor="middle">requests per minute</text>"##,
        k = esc(&u.key_id),
        yb = h - pad_b,
        xr = w - 16.0,
        lx = pad_l - 6.0,
        ty = pad_t + 4.0,
        max = max as u64,
        my = (pad_t + h - pad_b) / 2.0,
    );
    for (i, (t, c)) in u.per_minute.iter().enumerate() {
        let bh = (h - pad_b - pad_t) * *c as f64 / max;
        let _ = write!(
            s,
            r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#2471a3"><title>{} {}</title></rect>"##,
            pad_l + i as f64 * bw,
            h - pad_b - bh,
            (bw - 1.0).max(1.0),
            bh,
            esc(t),
            c
        );
    }
    if let (Some(a), Some(b)) = (u.per_minute.first(), u.per_minute.last()) {
        let _ = write!(
            s,
            r##"<text x="{pad_l}" y="{ty}" font-size="11" fill="#555">{}</text><text x="{xr}" y="{ty}" font-size="11" fill="#555" text-anchor="end">{}</text><text class="axis-label" x="{mx}" y="{ly}" font-size="11" fill="#555" text-anchor="middle">time (UTC)</text>"##,
            esc(a.0.get(..16).unwrap_or(&a.0)),
            esc(b.0.get(..16).unwrap_or(&b.0)),
            ty = h - pad_b + 14.0,
            xr = w - 16.0,
            mx = (pad_l + w) / 2.0,
            ly = h - 6.0,
        );
    }
    s.push_str("</svg>\n<h2>Heaviest clients</h2>\n<table class=\"clients\"><tr><th>client</th><th>requests</th><th>last seen</th></tr>\n");
    for c in &u.top_clients {
        client_row(&mut s, "client", c);
    }
    s.push_str("</table>\n</body></html>\n");
    s
}
