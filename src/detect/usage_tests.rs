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

/// The ring as it was before it held only its used buckets: every bucket of
/// the window in slot `index mod len` (also its stored form). The model the
/// lazily grown [`Ring`] must agree with.
#[derive(Serialize)]
struct DenseModel {
    width: Millis,
    newest: i64,
    counts: Vec<u32>,
}

impl DenseModel {
    fn new(width: Millis, len: usize) -> Self {
        DenseModel {
            width,
            newest: i64::MIN,
            counts: vec![0; len],
        }
    }

    fn slot(&self, idx: i64) -> usize {
        idx.rem_euclid(self.counts.len() as i64) as usize
    }

    fn add(&mut self, t: Millis, n: u32) {
        let idx = t.div_euclid(self.width);
        let len = self.counts.len() as i64;
        if self.newest == i64::MIN {
            self.newest = idx;
        }
        if idx > self.newest {
            let gap = (idx - self.newest).min(len);
            for k in 1..=gap {
                let s = self.slot(self.newest + k);
                self.counts[s] = 0;
            }
            self.newest = idx;
        } else if idx <= self.newest - len {
            return;
        }
        let s = self.slot(idx);
        self.counts[s] = self.counts[s].saturating_add(n);
    }

    fn get(&self, t: Millis) -> u32 {
        let idx = t.div_euclid(self.width);
        if self.newest == i64::MIN
            || idx > self.newest
            || idx <= self.newest - self.counts.len() as i64
        {
            0
        } else {
            self.counts[self.slot(idx)]
        }
    }

    fn sum(&self, from: Millis, to: Millis) -> u64 {
        let (a, b) = (from.div_euclid(self.width), to.div_euclid(self.width));
        (a.max(self.newest - self.counts.len() as i64 + 1)..=b.min(self.newest))
            .map(|i| self.counts[self.slot(i)] as u64)
            .sum()
    }

    fn series(&self) -> Vec<(Millis, u32)> {
        if self.newest == i64::MIN {
            return Vec::new();
        }
        let len = self.counts.len() as i64;
        (self.newest - len + 1..=self.newest)
            .map(|i| (i * self.width, self.counts[self.slot(i)]))
            .collect()
    }
}

proptest::proptest! {
    /// Any sequence of additions (in order, late, older than the window,
    /// after gaps longer than it, of zero) leaves the ring and the dense
    /// model with the same counts, sums, series and stored bytes; the stored
    /// bytes read back give an equal ring.
    #[test]
    fn ring_agrees_with_the_dense_model(
        len in 1usize..8,
        steps in proptest::collection::vec((-12i64..30, 0u32..4, 0u8..10), 0..60),
    ) {
        let w = 1_000;
        let mut r = Ring::new(w, len);
        let mut m = DenseModel::new(w, len);
        let mut t = T0;
        for (dt, n, jump) in steps {
            // mostly small moves around the newest bucket, sometimes a long gap
            t += if jump == 0 { 40 * w } else { dt * w / 3 };
            r.add(t, n);
            m.add(t, n);
            for probe in -10..3 {
                let p = t + probe * w;
                proptest::prop_assert_eq!(r.get(p), m.get(p));
                proptest::prop_assert_eq!(r.sum(p - 3 * w, p), m.sum(p - 3 * w, p));
            }
            proptest::prop_assert_eq!(r.series(), m.series());
            let bytes = postcard::to_stdvec(&r).unwrap();
            proptest::prop_assert_eq!(&bytes, &postcard::to_stdvec(&m).unwrap());
            let back: Ring = postcard::from_bytes(&bytes).unwrap();
            proptest::prop_assert_eq!(&back, &r);
        }
    }
}

#[test]
fn a_ring_holds_only_the_buckets_it_used() {
    let mut r = Ring::new(MINUTE, 60);
    for m in 0..10 {
        r.add(T0 + m * MINUTE, 1);
    }
    assert_eq!(r.held.len(), 10);
    assert!(r.held.capacity() <= 16, "{}", r.held.capacity());
    for m in 10..200 {
        r.add(T0 + m * MINUTE, 1);
    }
    assert_eq!(r.held.len(), 60);
    assert_eq!(r.held.capacity(), 60, "never grown past its window");
    r.add(T0 + 1000 * MINUTE, 0);
    assert!(r.held.is_empty(), "a gap longer than the window empties it");
    assert_eq!(r.sum(T0, T0 + 1000 * MINUTE), 0);
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
