use std::borrow::Cow;

use super::*;

const T0: Millis = 1_795_824_000_000;

fn ev(t: Millis, status: u16, client: &str) -> AccessEvent<'static> {
    AccessEvent {
        event_id: Cow::Owned(format!("e{t}-{client}-{status}")),
        received_at: t,
        key_id: Some(Cow::Borrowed("k")),
        nonce: None,
        client_ts: Some(t),
        client_ip: Cow::Owned(format!("10.0.0.{}", client.len())),
        method: Cow::Borrowed("GET"),
        path: Cow::Borrowed("/"),
        status,
        user_agent: None,
        client_id: Some(Cow::Owned(client.to_string())),
        signature: None,
    }
}

fn run(cfg: &UsageConfig, u: &mut KeyUsage, events: &[AccessEvent<'_>]) -> Vec<Alert> {
    let mut out = vec![];
    for e in events {
        observe(cfg, u, e, &mut out);
    }
    out
}

#[test]
fn ring_counts_sums_and_forgets() {
    let mut r = Ring::new(MINUTE, 5);
    r.add(T0, 1);
    r.add(T0 + 30_000, 2);
    r.add(T0 + MINUTE, 4);
    assert_eq!(r.get(T0), 3);
    assert_eq!(r.sum(T0, T0 + MINUTE), 7);
    r.add(T0 + 5 * MINUTE, 1); // T0's bucket falls out
    assert_eq!(r.get(T0), 0);
    assert_eq!(r.sum(T0, T0 + 10 * MINUTE), 5);
    r.add(T0 - MINUTE, 9); // older than the window: ignored
    assert_eq!(r.sum(T0 - MINUTE, T0 + 10 * MINUTE), 5);
    assert_eq!(r.series().len(), 5);
    r.add(T0 + 100 * MINUTE, 1);
    assert_eq!(
        r.sum(T0, T0 + 100 * MINUTE),
        1,
        "a long gap clears everything"
    );
}

/// `per_minute` requests in each of `minutes` minutes from `start`.
fn steady(start: Millis, minutes: i64, per_minute: i64) -> Vec<AccessEvent<'static>> {
    (0..minutes)
        .flat_map(|m| {
            (0..per_minute)
                .map(move |i| ev(start + m * MINUTE + i * (MINUTE / per_minute), 200, "c1"))
        })
        .collect()
}

#[test]
fn a_spike_after_warm_up_is_reported_once_per_minute() {
    let cfg = UsageConfig::default();
    let mut u = KeyUsage::new(T0);
    assert!(
        run(&cfg, &mut u, &steady(T0, 40, 50)).is_empty(),
        "steady traffic is normal"
    );
    let spike = steady(T0 + 40 * MINUTE, 1, 200);
    let alerts = run(&cfg, &mut u, &spike);
    assert_eq!(alerts.len(), 1);
    let Evidence::Rate(r) = &alerts[0].evidence else {
        panic!()
    };
    assert_eq!(r.direction, "spike");
    assert!(r.z_score >= cfg.rate_z);
    assert!((r.baseline_mean - 50.0).abs() < 1.0, "{r:?}");
    assert_eq!(r.window_start, T0 + 40 * MINUTE);
    assert!(r.p_value < 1e-4);
}

#[test]
fn no_spike_before_warm_up_or_under_the_minimum_volume() {
    let cfg = UsageConfig::default();
    let mut u = KeyUsage::new(T0);
    run(&cfg, &mut u, &steady(T0, 5, 50));
    assert!(
        run(&cfg, &mut u, &steady(T0 + 5 * MINUTE, 1, 500)).is_empty(),
        "still warming up"
    );
    let mut u = KeyUsage::new(T0);
    run(&cfg, &mut u, &steady(T0, 40, 1));
    assert!(
        run(&cfg, &mut u, &steady(T0 + 40 * MINUTE, 1, 20)).is_empty(),
        "20 < min volume 30"
    );
}

#[test]
fn a_drop_is_reported_when_the_minute_closes() {
    let cfg = UsageConfig::default();
    let mut u = KeyUsage::new(T0);
    run(&cfg, &mut u, &steady(T0, 40, 100));
    run(&cfg, &mut u, &steady(T0 + 40 * MINUTE, 1, 2));
    let alerts = run(&cfg, &mut u, &steady(T0 + 41 * MINUTE, 1, 100));
    assert_eq!(alerts.len(), 1);
    let Evidence::Rate(r) = &alerts[0].evidence else {
        panic!()
    };
    assert_eq!((r.direction.as_str(), r.observed), ("drop", 2));
}

#[test]
fn auth_failure_burst_at_the_threshold_within_the_window() {
    let cfg = UsageConfig {
        auth_fail_threshold: 5,
        auth_fail_window_ms: 10_000,
        ..Default::default()
    };
    let mut u = KeyUsage::new(T0);
    // 4 failures, then the 5th 10 s after the first: outside the window (t - 10 s excluded)
    let mut evs: Vec<_> = (0..4).map(|i| ev(T0 + i * 1000, 401, "c")).collect();
    evs.push(ev(T0 + 10_000, 403, "c"));
    assert!(run(&cfg, &mut u, &evs).is_empty());
    // one more inside the window: 5 within (t - 10 s, t]
    let alerts = run(&cfg, &mut u, &[ev(T0 + 10_500, 401, "c")]);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::AuthFailureBurst);
    // the burst goes on: no second alert
    assert!(run(&cfg, &mut u, &[ev(T0 + 10_600, 401, "c")]).is_empty());
    // successes do not count
    assert!(run(&cfg, &mut u, &[ev(T0 + 10_700, 200, "c")]).is_empty());
    // after a quiet window a new burst is a new alert with a new id
    let later: Vec<_> = (0..5).map(|i| ev(T0 + 100_000 + i, 401, "c")).collect();
    let again = run(&cfg, &mut u, &later);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].alert_id, alerts[0].alert_id);
}

#[test]
fn new_client_only_on_a_settled_key() {
    let cfg = UsageConfig {
        new_client_settle_ms: HOUR,
        new_client_min_requests: 10,
        ..Default::default()
    };
    let mut u = KeyUsage::new(T0);
    let early: Vec<_> = (0..20)
        .map(|i| ev(T0 + i * 1000, 200, if i < 3 { "a" } else { "b" }))
        .collect();
    assert!(
        run(&cfg, &mut u, &early).is_empty(),
        "new clients while the set forms"
    );
    // an hour later with no new client: settled
    let alerts = run(
        &cfg,
        &mut u,
        &[
            ev(T0 + 19_000 + HOUR, 200, "b"),
            ev(T0 + 20_000 + HOUR, 200, "intruder"),
        ],
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::NewClient);
    assert_eq!(alerts[0].severity, Severity::Info);
    let Evidence::NewClient(n) = &alerts[0].evidence else {
        panic!()
    };
    assert_eq!((n.client.as_str(), n.known_clients), ("intruder", 2));
    // right after a new client the set is not settled
    assert!(run(&cfg, &mut u, &[ev(T0 + 21_000 + HOUR, 200, "another")]).is_empty());
}

#[test]
fn heavy_hitters_keep_the_heaviest() {
    let cfg = UsageConfig {
        top_clients: 2,
        ..Default::default()
    };
    let mut u = KeyUsage::new(T0);
    let mut evs = vec![];
    for i in 0..100 {
        evs.push(ev(T0 + i, 200, "heavy"));
        if i % 2 == 0 {
            evs.push(ev(T0 + i, 200, "medium"));
        }
        evs.push(ev(T0 + i, 200, &format!("light{i}")));
    }
    run(&cfg, &mut u, &evs);
    let mut top = u.top.clone();
    top.sort_by_key(|c| std::cmp::Reverse(c.count));
    assert_eq!(top[0].client, "heavy");
    assert!(top[0].count >= 100 && top[0].count - top[0].error <= 100);
    assert!(
        u.distinct_client_ids() > 90,
        "sketch: {}",
        u.distinct_client_ids()
    );
}

#[test]
fn usage_round_trips_through_postcard() {
    let cfg = UsageConfig::default();
    let mut u = KeyUsage::new(T0);
    run(&cfg, &mut u, &steady(T0, 3, 10));
    let bytes = postcard::to_stdvec(&u).unwrap();
    let back: KeyUsage = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.total, 30);
    assert_eq!(back.minutes, u.minutes);
    assert_eq!(back.distinct_ips(), u.distinct_ips());
    assert!(bytes.len() < 1200, "{} bytes", bytes.len());
}
