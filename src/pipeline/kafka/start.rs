//! Where an assigned partition starts: a pure decision over what is known
//! about it (the local state's position, the group's committed offset and
//! its metadata, the `kafka.start` policy and the log's offsets).
//!
//! - The truth is in RocksDB: local state that covers at least the group's
//!   offset resumes from its own position (resetting the group backwards
//!   re-reports nothing).
//! - Local state behind the group (another instance went further, or this
//!   one has none): the partition is rebuilt, from the commit metadata's
//!   `from=` offset, with alerts suppressed up to the group's offset.
//! - Neither has a position (a first deployment): `kafka.start` says where
//!   alerts begin; the replay window is first warmed from the records of the
//!   last retention (plus lateness) before that point, with alerts
//!   suppressed, so a replay of a request logged just before is still caught.

use crate::schema::Millis;

/// `kafka.start`: where a partition with no position at all begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPolicy {
    /// Alerts begin at the log end as of assignment (the window warmed first).
    #[default]
    Latest,
    /// The whole topic, with alerts (audits of history).
    Earliest,
    /// Alerts begin at the first record at or after this time (message
    /// timestamp), the window warmed first.
    At(Millis),
}

impl std::fmt::Display for StartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPolicy::Latest => f.write_str("latest"),
            StartPolicy::Earliest => f.write_str("earliest"),
            StartPolicy::At(t) => f.write_str(&crate::schema::timestamp::format_rfc3339(*t)),
        }
    }
}

impl std::str::FromStr for StartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(StartPolicy::Latest),
            "earliest" => Ok(StartPolicy::Earliest),
            t => crate::schema::timestamp::parse_rfc3339(t)
                .map(StartPolicy::At)
                .map_err(|e| {
                    format!("kafka.start {t:?} is not latest, earliest or an RFC 3339 time ({e})")
                }),
        }
    }
}

impl serde::Serialize for StartPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StartPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a partition starts reading, and from which offset it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Read from `offset` and report everything: the local state covers
    /// what came before (or, with `earliest`, nothing came before).
    Resume { offset: u64 },
    /// Throw the local state away, read from `from` to rebuild it, report
    /// from `live_from` on (another instance reported what came before).
    Rebuild { from: u64, live_from: u64 },
    /// A first deployment: read from `warm_from` to warm the replay window,
    /// report from `live_from` on.
    Warm { warm_from: u64, live_from: u64 },
}

/// What is known about an assigned partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known {
    /// Next offset the local state covers.
    pub local: Option<u64>,
    /// The group's committed offset.
    pub group: Option<u64>,
    /// The commit metadata's `from=` (where the committing instance's live
    /// state could be rebuilt from).
    pub rebuild_from: Option<u64>,
    /// Whether the group offset carried replayguard's metadata at all.
    pub has_metadata: bool,
}

/// Offsets of the log, looked up only when a first deployment needs them.
pub trait LogLookup {
    /// Low and high watermark.
    fn watermarks(&mut self) -> Result<(u64, u64), String>;
    /// Timestamp of the newest record, if it can be read.
    fn newest_timestamp(&mut self, high: u64) -> Result<Option<Millis>, String>;
    /// The first offset whose timestamp is at or after `t` (`None`: none is).
    fn offset_for_time(&mut self, t: Millis) -> Result<Option<u64>, String>;
}

/// Decides where a partition starts. `warm_span` is how far before the
/// point where alerts begin the window must be warmed (retention plus
/// allowed lateness); `now` stands in for the newest record's timestamp when
/// that cannot be read (only ever to find where to start reading).
pub fn decide(
    known: Known,
    policy: StartPolicy,
    warm_span: Millis,
    log: &mut dyn LogLookup,
    now: Millis,
) -> Result<Start, String> {
    match (known.local, known.group) {
        (Some(l), None) => Ok(Start::Resume { offset: l }),
        (Some(l), Some(g)) if l >= g => Ok(Start::Resume { offset: l }),
        (_, Some(g)) => {
            // metadata written by another tool, or none at all: only the
            // whole partition is sure to rebuild the window
            let from = match (known.has_metadata, known.rebuild_from) {
                (true, Some(f)) => f.min(g),
                (true, None) => g,
                (false, _) => 0,
            };
            Ok(Start::Rebuild { from, live_from: g })
        }
        (None, None) => first_deployment(policy, warm_span, log, now),
    }
}

fn first_deployment(
    policy: StartPolicy,
    warm_span: Millis,
    log: &mut dyn LogLookup,
    now: Millis,
) -> Result<Start, String> {
    let (low, high) = log.watermarks()?;
    let live_from = match policy {
        StartPolicy::Earliest => return Ok(Start::Resume { offset: low }),
        StartPolicy::Latest => high,
        StartPolicy::At(t) => log.offset_for_time(t)?.unwrap_or(high).clamp(low, high),
    };
    if live_from <= low {
        return Ok(Start::Resume { offset: low });
    }
    // the time alerts begin at: the newest record's (latest), or the one given
    let begin = match policy {
        StartPolicy::At(t) => t,
        _ => log.newest_timestamp(high)?.unwrap_or(now),
    };
    let warm_from = log
        .offset_for_time(begin.saturating_sub(warm_span))?
        .unwrap_or(live_from)
        .clamp(low, live_from);
    if warm_from >= live_from {
        return Ok(Start::Resume { offset: live_from });
    }
    Ok(Start::Warm {
        warm_from,
        live_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of records at the given timestamps, offsets from `low`.
    struct Log {
        low: u64,
        ts: Vec<Millis>,
        lookups: usize,
    }

    impl LogLookup for Log {
        fn watermarks(&mut self) -> Result<(u64, u64), String> {
            self.lookups += 1;
            Ok((self.low, self.low + self.ts.len() as u64))
        }
        fn newest_timestamp(&mut self, _high: u64) -> Result<Option<Millis>, String> {
            Ok(self.ts.last().copied())
        }
        fn offset_for_time(&mut self, t: Millis) -> Result<Option<u64>, String> {
            Ok(self
                .ts
                .iter()
                .position(|x| *x >= t)
                .map(|i| self.low + i as u64))
        }
    }

    fn log(low: u64, ts: &[Millis]) -> Log {
        Log {
            low,
            ts: ts.to_vec(),
            lookups: 0,
        }
    }

    const SPAN: Millis = 450_000;

    #[test]
    fn local_state_at_or_past_the_group_resumes_without_asking_the_log() {
        let mut l = log(0, &[1, 2, 3]);
        for (local, group) in [(5, Some(5)), (7, Some(5)), (3, None)] {
            let k = Known {
                local: Some(local),
                group,
                ..Default::default()
            };
            assert_eq!(
                decide(k, StartPolicy::Latest, SPAN, &mut l, 0),
                Ok(Start::Resume { offset: local })
            );
        }
        assert_eq!(l.lookups, 0);
    }

    #[test]
    fn a_partition_behind_the_group_is_rebuilt_from_the_metadata() {
        let mut l = log(0, &[]);
        let k = |local, meta: Option<u64>, has| Known {
            local,
            group: Some(100),
            rebuild_from: meta,
            has_metadata: has,
        };
        let d = |k| decide(k, StartPolicy::Latest, SPAN, &mut log(0, &[]), 0);
        assert_eq!(
            d(k(None, Some(40), true)),
            Ok(Start::Rebuild {
                from: 40,
                live_from: 100
            })
        );
        assert_eq!(
            d(k(Some(60), Some(40), true)),
            Ok(Start::Rebuild {
                from: 40,
                live_from: 100
            })
        );
        // nothing live when the group committed: nothing to rebuild
        assert_eq!(
            d(k(None, None, true)),
            Ok(Start::Rebuild {
                from: 100,
                live_from: 100
            })
        );
        // another tool's commit: the whole partition
        assert_eq!(
            d(k(None, None, false)),
            Ok(Start::Rebuild {
                from: 0,
                live_from: 100
            })
        );
        assert_eq!(l.watermarks().unwrap(), (0, 0));
    }

    #[test]
    fn a_first_deployment_warms_the_window_then_reports_from_the_end() {
        const M: Millis = 60_000;
        // records an hour ago, then the last 10 minutes
        let ts: Vec<Millis> = (0..10)
            .map(|i| i * 1000)
            .chain((0..10).map(|i| 60 * M + i * M))
            .collect();
        let newest = *ts.last().unwrap();
        let want_warm = ts.iter().position(|t| *t >= newest - SPAN).unwrap() as u64 + 1000;
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::Latest,
                SPAN,
                &mut log(1000, &ts),
                0
            ),
            Ok(Start::Warm {
                warm_from: want_warm,
                live_from: 1020
            })
        );
        // earliest: everything, with alerts
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::Earliest,
                SPAN,
                &mut log(1000, &ts),
                0
            ),
            Ok(Start::Resume { offset: 1000 })
        );
        // a time: alerts from the first record at it, warmed before it
        let at = 63 * M;
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::At(at),
                SPAN,
                &mut log(1000, &ts),
                0
            ),
            Ok(Start::Warm {
                warm_from: 1010,
                live_from: 1013
            })
        );
        // a time after every record: from the end, nothing to warm
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::At(200 * M),
                SPAN,
                &mut log(1000, &ts),
                0
            ),
            Ok(Start::Resume { offset: 1020 })
        );
        // no timestamp to read: the given clock stands in for it
        struct NoTs(Log);
        impl LogLookup for NoTs {
            fn watermarks(&mut self) -> Result<(u64, u64), String> {
                self.0.watermarks()
            }
            fn newest_timestamp(&mut self, _: u64) -> Result<Option<Millis>, String> {
                Ok(None)
            }
            fn offset_for_time(&mut self, t: Millis) -> Result<Option<u64>, String> {
                self.0.offset_for_time(t)
            }
        }
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::Latest,
                SPAN,
                &mut NoTs(log(1000, &ts)),
                63 * M
            ),
            Ok(Start::Warm {
                warm_from: 1010,
                live_from: 1020
            })
        );
        // an empty partition, or one whose records are all in the warm span
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::Latest,
                SPAN,
                &mut log(7, &[]),
                0
            ),
            Ok(Start::Resume { offset: 7 })
        );
        assert_eq!(
            decide(
                Known::default(),
                StartPolicy::Latest,
                SPAN,
                &mut log(0, &[5, 6]),
                0
            ),
            Ok(Start::Warm {
                warm_from: 0,
                live_from: 2
            })
        );
    }

    #[test]
    fn the_policy_parses_and_prints() {
        for s in ["latest", "earliest", "2026-11-28T00:00:00.000Z"] {
            let p: StartPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert!("yesterday".parse::<StartPolicy>().is_err());
    }
}
