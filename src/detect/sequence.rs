//! Out-of-sequence counters (`detect.sequence = "on"`): for APIs whose nonce
//! is an increasing number per key, a request whose nonce `n` is smaller
//! than the largest nonce of the same key among requests received more than
//! `sequence_tolerance` earlier.
//!
//! By event time, whatever the arrival order within the allowed lateness: a
//! request is judged once the watermark has passed its received_at, so every
//! request it is judged against, and whether it is itself a replay (then it
//! is not also out of sequence), is final. The state per key is the requests
//! not yet folded into the running maximum (those of the last lateness plus
//! tolerance) and that maximum. The maximum and its bounds live in the key's
//! usage record; the requests are first sightings, in the sighting log with
//! their numbers, and are rebuilt from it at restart.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::schema::alert::SequenceEvidence;
use crate::schema::{AccessEvent, Millis};

/// The nonce as a sequence number: a decimal unsigned 64-bit integer.
#[inline]
pub fn number(nonce: &str) -> Option<u64> {
    let b = nonce.as_bytes();
    if b.is_empty() {
        return None;
    }
    // Up to 19 digits cannot overflow (10^19 - 1 < 2^64): eight digits at a
    // time, then one by one, with no overflow checks. Counter nonces
    // (milliseconds, microseconds) are 13 to 16 digits.
    if b.len() <= 19 {
        let mut n = 0u64;
        let mut rest = b;
        while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
            n = n * 100_000_000 + u64::from(eight_digits(u64::from_le_bytes(*eight))?);
            rest = tail;
        }
        for &c in rest {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            n = n * 10 + u64::from(d);
        }
        return Some(n);
    }
    // longer (leading zeros, or too large): checked, as `str::parse` reads
    // it, without a sign
    b.iter().try_fold(0u64, |n, &c| {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(d as u64)
    })
}

/// Eight ASCII digits (the first in the lowest byte) as their value; `None`
/// when a byte is not a digit. The usual SWAR reading: three multiply-and-
/// mask steps combine 8 one-digit lanes into 4 two-digit, 2 four-digit and
/// one eight-digit lane.
#[inline]
fn eight_digits(v: u64) -> Option<u32> {
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    // every byte 0x30..=0x39: its high nibble is 3, and still 3 after
    // adding 6 (a carry out of a byte only comes from a high nibble of F,
    // which fails the first test)
    let high = v & HIGH;
    let plus6 = (v.wrapping_add(0x0606_0606_0606_0606) & HIGH) >> 4;
    if high | plus6 != 0x3333_3333_3333_3333 {
        return None;
    }
    let d = v - 0x3030_3030_3030_3030;
    let d = (d.wrapping_mul(10) + (d >> 8)) & 0x00ff_00ff_00ff_00ff;
    let d = (d.wrapping_mul(100) + (d >> 16)) & 0x0000_ffff_0000_ffff;
    let d = d.wrapping_mul(10_000) + (d >> 32);
    Some(d as u32)
}

pub use super::event_id::EventId;

/// A request remembered for the sequence rule: a first sighting (replays
/// are not kept), in 32 bytes. Its event id and context are not kept: an
/// alert reads them back from its window in the sighting log by `fp`, as
/// the running maximum's event id is ([`SeqState::resolve_max`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqEntry {
    pub n: u64,
    pub received_at: Millis,
    /// The (key, nonce) fingerprint of its window in the sighting log, in
    /// two halves (a `u128` would align the entry to 16 bytes).
    fp: [u64; 2],
}

// 32 bytes: a minute and more of counter traffic is held in these
const _: () = assert!(std::mem::size_of::<SeqEntry>() == 32);

impl SeqEntry {
    fn new(n: u64, received_at: Millis, fp: u128) -> Self {
        SeqEntry {
            n,
            received_at,
            fp: [fp as u64, (fp >> 64) as u64],
        }
    }

    /// The (key, nonce) fingerprint of its window in the sighting log.
    pub fn fp(&self) -> u128 {
        u128::from(self.fp[0]) | u128::from(self.fp[1]) << 64
    }

    /// Whether it comes before the request at `r` with fingerprint `fp` in
    /// a key's buffer (by received_at, then fingerprint), or is that
    /// request with `or_equal`.
    #[inline]
    fn before(&self, r: Millis, fp: u128, or_equal: bool) -> bool {
        match self.received_at.cmp(&r) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => match self.fp().cmp(&fp) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => or_equal,
                std::cmp::Ordering::Greater => false,
            },
        }
    }
}

/// `VecDeque::partition_point` (`pred` true for a prefix of `buf`, false
/// after), searched from the back: 1, 2, 4... entries back, then by halves
/// within the last step. A request comes in order, or a little late: its
/// place is at the back or a few entries before it, where a search from
/// the middle of a minute of requests would touch a dozen cold entries.
fn partition_from_back(buf: &VecDeque<SeqEntry>, pred: impl Fn(&SeqEntry) -> bool) -> usize {
    // every entry at `hi` or after is known false
    let mut hi = buf.len();
    let mut step = 1;
    let lo = loop {
        if hi == 0 {
            return 0;
        }
        let probe = hi.saturating_sub(step);
        if pred(&buf[probe]) {
            break probe + 1;
        }
        hi = probe;
        step *= 2;
    };
    // true before `lo`, false from `hi`: the boundary is in between
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(&buf[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The sequence state of one key. What the key's usage record keeps is the
/// running maximum and two bounds; the requests not folded in yet are not
/// written with it (that would rewrite them at every commit): each is a
/// first sighting in the sighting log, which carries its number
/// ([`crate::detect::SightingInfo::seq`]), and a restart rebuilds them from
/// there ([`SeqState::restore`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeqState {
    /// The largest nonce among the requests folded in: the number, its
    /// request's event id and received_at. The event id is read back from
    /// the sighting log after a fold ([`SeqState::resolve_max`]), before
    /// the state is written or an alert shows it.
    pub max: Option<(u64, EventId, Millis)>,
    /// Requests not yet folded in, by (received_at, fingerprint).
    #[serde(skip)]
    pub buf: VecDeque<SeqEntry>,
    /// Every request received at or before this has been judged.
    pub judged_until: Option<Millis>,
    /// Every request received before this is folded into `max`.
    pub folded_below: Option<Millis>,
    /// How many requests at the front of `buf` are judged (those received
    /// at or before `judged_until`).
    #[serde(skip)]
    judged: usize,
    /// The latest received_at ever put in `buf`: not earlier than its last
    /// entry's, so a request later than it goes at the back without a read
    /// of that entry (a minute of requests ago in the key's ring, most
    /// often no longer cached). Not part of the state.
    #[serde(skip)]
    latest: Option<Millis>,
    /// While `max` came from a fold and its event id is not read yet: the
    /// fingerprints of its request, or of every request with its number
    /// and time (different nonces of one number, `7` and `07`: the
    /// smallest event id is the maximum's, as if folded by (received_at,
    /// event id)).
    #[serde(skip)]
    max_from: Vec<u128>,
    /// Changed since it was last taken for a commit.
    #[serde(skip)]
    pub dirty: bool,
    /// The key's number in its shard (which keys wait to be judged is a set
    /// of (time, number), not of key strings); not part of the state.
    #[serde(skip)]
    pub(crate) id: u32,
}

impl PartialEq for SeqState {
    fn eq(&self, o: &Self) -> bool {
        // everything but `id`, which depends on the order keys were met
        (&self.max, &self.buf, self.judged_until, self.folded_below)
            == (&o.max, &o.buf, o.judged_until, o.folded_below)
            && (self.judged, self.dirty, &self.max_from) == (o.judged, o.dirty, &o.max_from)
    }
}

impl Eq for SeqState {}

impl SeqState {
    /// The time of the oldest request not folded in.
    pub fn oldest(&self) -> Option<Millis> {
        self.buf.front().map(|e| e.received_at)
    }

    /// Folds every request received before `bound` (all judged) into the
    /// running maximum.
    pub fn fold(&mut self, bound: Millis) {
        if self.folded_below.is_some_and(|f| f >= bound) {
            return;
        }
        // the few oldest, from the front (they are all judged)
        while self.buf.front().is_some_and(|e| e.received_at < bound) {
            let e = self.buf.pop_front().expect("peeked");
            self.judged = self.judged.saturating_sub(1);
            match &mut self.max {
                Some(m) if e.n < m.0 => {}
                // a tie of number and time, within this fold (anything
                // folded before was received earlier): decided by event id
                Some(m) if e.n == m.0 => {
                    if e.received_at == m.2 && !self.max_from.is_empty() {
                        self.max_from.push(e.fp());
                    }
                }
                _ => {
                    self.max = Some((e.n, EventId::default(), e.received_at));
                    self.max_from.clear();
                    self.max_from.push(e.fp());
                }
            }
        }
        self.folded_below = Some(bound);
    }

    /// Whether the maximum's event id is still to be read back
    /// ([`SeqState::resolve_max`]).
    pub fn max_unresolved(&self) -> bool {
        !self.max_from.is_empty()
    }

    /// Reads the maximum's event id back after a fold: `event_id(fp, t)` is
    /// the event id of the first sighting of fingerprint `fp` received at
    /// `t`, if the sighting log still has it (it does: the maximum is
    /// resolved long before its window expires; `None` only when another
    /// (key, nonce) with the same 64-bit fingerprint took its slot).
    pub fn resolve_max<E>(
        &mut self,
        mut event_id: impl FnMut(u128, Millis) -> Result<Option<String>, E>,
    ) -> Result<(), E> {
        let Some(m) = &mut self.max else {
            self.max_from.clear();
            return Ok(());
        };
        let mut best: Option<String> = None;
        for &fp in &self.max_from {
            if let Some(id) = event_id(fp, m.2)? {
                if best.as_ref().is_none_or(|b| id < *b) {
                    best = Some(id);
                }
            }
        }
        if !self.max_from.is_empty() {
            m.1 = EventId::new(best.as_deref().unwrap_or_default());
            self.max_from.clear();
        }
        Ok(())
    }

    /// A first sighting read back from the sighting log at restart: kept
    /// when it was not folded in yet.
    pub fn restore(&mut self, n: u64, fp: u128, received_at: Millis) {
        self.put_back(n, fp, received_at);
    }

    /// A request read again while a partition handed over is rebuilt, that
    /// the seeded state counts already (its previous owner had it when it
    /// published the state): kept when it was not folded in yet, and judged
    /// when the state had judged it, as [`SeqState::restore`] does at a
    /// restart.
    pub fn reinsert(&mut self, ev: &AccessEvent<'_>, n: u64, fp: u128) {
        let r = ev.received_at;
        // the judged requests are the front of the buffer, up to judged_until
        if self.put_back(n, fp, r) && self.judged_until.is_some_and(|j| r <= j) {
            self.judged += 1;
        }
    }

    /// Puts a request the state already accounts for back in the buffer, in
    /// order, unless it is folded in or there already; whether it was put.
    fn put_back(&mut self, n: u64, fp: u128, r: Millis) -> bool {
        if self.folded_below.is_some_and(|f| r < f) {
            return false;
        }
        let at = self.buf.partition_point(|e| e.before(r, fp, false));
        if self
            .buf
            .get(at)
            .is_some_and(|e| e.received_at == r && e.fp() == fp)
        {
            return false;
        }
        self.buf.insert(at, SeqEntry::new(n, r, fp));
        self.latest = self.latest.max(Some(r));
        true
    }

    /// The largest number folded in.
    pub fn max_n(&self) -> Option<u64> {
        self.max.as_ref().map(|m| m.0)
    }

    /// The received_at of the first request not judged yet.
    pub fn next_undecided(&self) -> Option<Millis> {
        self.buf.get(self.judged).map(|e| e.received_at)
    }

    /// After [`SeqState::restore`] calls: counts the judged requests.
    pub fn reindex(&mut self) {
        self.judged = match self.judged_until {
            Some(j) => self.buf.partition_point(|e| e.received_at <= j),
            None => 0,
        };
    }

    /// Whether the request at `at` in the buffer is the first one not
    /// judged yet.
    pub fn is_first_undecided(&self, at: usize) -> bool {
        at == self.judged
    }

    /// Remembers a first sighting (inside the lateness); one at a time
    /// already judged (after an end-of-input flush) is not checked.
    /// Where it went in the buffer, if it was taken.
    pub fn insert(&mut self, ev: &AccessEvent<'_>, n: u64, fp: u128) -> Option<usize> {
        let r = ev.received_at;
        if self.judged_until.is_some_and(|j| r <= j) {
            return None;
        }
        // in order, mostly: at the back, else a few entries before it
        let at = if self.latest.is_none_or(|l| r > l) {
            self.buf.len()
        } else {
            partition_from_back(&self.buf, |e| e.before(r, fp, true))
        };
        self.latest = self.latest.max(Some(r));
        debug_assert!(at >= self.judged);
        let e = SeqEntry::new(n, r, fp);
        if at == self.buf.len() {
            self.buf.push_back(e);
        } else {
            self.buf.insert(at, e);
        }
        Some(at)
    }

    /// Forgets the request received at `r` with fingerprint `fp`, that
    /// turned out to be a replay (a late request took its place as the
    /// first sighting: it is not judged, and its number is the new first
    /// sighting's).
    pub fn remove(&mut self, r: Millis, fp: u128) -> Option<SeqEntry> {
        let at = self.buf.partition_point(|e| e.before(r, fp, false));
        if !self
            .buf
            .get(at)
            .is_some_and(|e| e.received_at == r && e.fp() == fp)
        {
            return None;
        }
        if at < self.judged {
            self.judged -= 1;
        }
        self.buf.remove(at)
    }

    /// Judges every request received at or before `until`, in event-time
    /// order; calls `alert` for each out-of-sequence one, with the
    /// maximum's event id read back first (`event_id`, see
    /// [`SeqState::resolve_max`]).
    pub fn judge<E>(
        &mut self,
        until: Millis,
        tolerance: Millis,
        mut event_id: impl FnMut(u128, Millis) -> Result<Option<String>, E>,
        mut alert: impl FnMut(&SeqEntry, SequenceEvidence),
    ) -> Result<(), E> {
        let mut i = self.judged;
        while i < self.buf.len() {
            let r = self.buf[i].received_at;
            if r > until {
                break;
            }
            if self.judged_until.is_some_and(|j| r <= j) {
                i += 1;
                continue;
            }
            // fold the requests more than `tolerance` earlier (all judged)
            let before = self.buf.len();
            self.fold(r.saturating_sub(tolerance));
            let fold = before - self.buf.len();
            i -= fold.min(i);
            // every request at this time is judged against the same maximum
            let mut j = i;
            while j < self.buf.len() && self.buf[j].received_at == r {
                if self.max.as_ref().is_some_and(|m| self.buf[j].n < m.0) {
                    if self.max_unresolved() {
                        self.resolve_max(&mut event_id)?;
                    }
                    let e = &self.buf[j];
                    let (m, id, at) = self.max.as_ref().expect("checked");
                    alert(
                        e,
                        SequenceEvidence {
                            larger_nonce: m.to_string(),
                            larger_event_id: id.to_string(),
                            larger_received_at: *at,
                            gap: m - e.n,
                            tolerance_ms: tolerance,
                        },
                    );
                }
                j += 1;
            }
            self.judged_until = Some(r);
            self.judged = j;
            i = j;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_record_keeps_its_wire_form() {
        let state = SeqState {
            max: Some((7, EventId::new("e-1"), 1_000)),
            ..SeqState::default()
        };
        // the record as a `String` event id wrote it: (max, judged_until, folded_below)
        type Before = (
            Option<(u64, String, Millis)>,
            Option<Millis>,
            Option<Millis>,
        );
        let old: Before = postcard::from_bytes(&postcard::to_allocvec(&state).unwrap()).unwrap();
        assert_eq!(old, (Some((7, "e-1".to_string(), 1_000)), None, None));
    }

    /// A request of key `k` with nonce `1` (the buffer's tests give the
    /// number and fingerprint themselves).
    fn event(id: &str, t: Millis) -> AccessEvent<'static> {
        AccessEvent {
            event_id: id.to_string().into(),
            received_at: t,
            key_id: Some("k".into()),
            nonce: Some("1".into()),
            client_ts: None,
            client_ip: "10.0.0.1".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            user_agent: None,
            client_id: None,
            signature: None,
        }
    }

    /// Requests in any order, ties of time included, end up in the buffer
    /// by (received_at, fingerprint), whether they go at the back without a
    /// look or are searched for; those at or before `judged_until` are not
    /// taken.
    #[test]
    fn requests_in_any_order_are_kept_in_order() {
        // a generator of pseudo-random orders (no clock, no rand: repeatable)
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..200 {
            let mut s = SeqState::default();
            let mut want = Vec::new();
            for i in 0..(round % 40) {
                // mostly later, sometimes a little or much earlier, ties often
                let t = match next(4) {
                    0 => 1_000 - next(50) as Millis,
                    _ => 1_000 + (i as Millis) * 3 - next(4) as Millis,
                };
                // fingerprints of both halves, so that ties compare both
                let fp = u128::from(next(3)) << 64 | u128::from(next(40));
                if want.contains(&(t, fp)) {
                    continue;
                }
                assert!(s.insert(&event("e", t), 1, fp).is_some());
                want.push((t, fp));
            }
            want.sort();
            let got: Vec<_> = s.buf.iter().map(|e| (e.received_at, e.fp())).collect();
            assert_eq!(got, want, "round {round}");
            // each is found again, and only itself
            for &(t, fp) in &want {
                let mut c = s.clone();
                let e = c.remove(t, fp).expect("there");
                assert_eq!((e.received_at, e.fp()), (t, fp));
                assert_eq!(c.buf.len(), s.buf.len() - 1);
                assert!(c.remove(t, fp).is_none());
            }
            assert!(s.clone().remove(999, 12345).is_none());
            s.judged_until = Some(1_000);
            assert!(s.insert(&event("late", 1_000), 1, 0).is_none());
            assert!(s.insert(&event("on", 1_001), 1, 0).is_some());
            let order: Vec<_> = s.buf.iter().map(|e| (e.received_at, e.fp())).collect();
            assert!(order.is_sorted(), "round {round}: {order:?}");
        }
    }

    /// A fold takes the largest number, the earliest of equal numbers, and
    /// leaves the event id to be read back; of requests with the same
    /// number and time, the smallest event id wins.
    #[test]
    fn the_maximum_is_read_back_after_a_fold() {
        let ev = |t: Millis| event("x", t);
        let ids = |fp: u128, _t: Millis| -> Result<Option<String>, ()> {
            Ok(match fp {
                1 => Some("b".to_string()),
                2 => Some("a".to_string()),
                3 => Some("c".to_string()),
                _ => None,
            })
        };
        let mut s = SeqState::default();
        s.insert(&ev(10), 5, 1);
        s.insert(&ev(10), 5, 2);
        s.insert(&ev(11), 5, 3);
        s.insert(&ev(12), 4, 4);
        s.judged = 4;
        s.fold(20);
        assert!(s.max_unresolved());
        s.resolve_max(ids).unwrap();
        assert!(!s.max_unresolved());
        assert_eq!(s.max, Some((5, EventId::new("a"), 10)));
        // a larger number later: its own id; nothing to read: resolved as is
        s.insert(&ev(30), 9, 3);
        s.judged = 1;
        s.fold(40);
        s.resolve_max(ids).unwrap();
        assert_eq!(s.max, Some((9, EventId::new("c"), 30)));
        s.resolve_max(|_, _| -> Result<Option<String>, ()> { panic!("read again") })
            .unwrap();
    }

    #[test]
    fn the_search_from_the_back_finds_partition_points_place() {
        for len in 0..70usize {
            let buf: VecDeque<SeqEntry> = (0..len)
                .map(|i| SeqEntry::new(i as u64, i as Millis, 0))
                .collect();
            for cut in 0..=len {
                let pred = |e: &SeqEntry| (e.n as usize) < cut;
                assert_eq!(
                    partition_from_back(&buf, pred),
                    buf.partition_point(pred),
                    "{len} {cut}"
                );
            }
        }
    }

    proptest::proptest! {
        /// The one-pass reading is the definition: decimal digits only,
        /// read as `str::parse` reads them.
        #[test]
        fn number_is_a_decimal_u64(s in "[0-9]{0,25}|[0-9+ a.-]{0,6}") {
            let want = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().ok()
            } else {
                None
            };
            proptest::prop_assert_eq!(number(&s), want, "{:?}", s);
        }
    }

    #[test]
    fn eight_digits_at_a_time_reads_every_byte() {
        for lane in 0..8 {
            for byte in 0..=255u8 {
                let mut s = *b"31415926";
                s[lane] = byte;
                let want = std::str::from_utf8(&s)
                    .ok()
                    .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                    .map(|t| t.parse::<u32>().unwrap());
                assert_eq!(eight_digits(u64::from_le_bytes(s)), want, "{s:?}");
            }
        }
        for len in 1..=40 {
            let s: String = (0..len)
                .map(|i| char::from(b'0' + (i * 7 % 10) as u8))
                .collect();
            assert_eq!(number(&s), s.parse::<u64>().ok(), "{s}");
            // a bad byte at each place, for every length
            for at in 0..len {
                let mut b = s.clone().into_bytes();
                b[at] = b'/';
                assert_eq!(number(std::str::from_utf8(&b).unwrap()), None);
                b[at] = b':';
                assert_eq!(number(std::str::from_utf8(&b).unwrap()), None);
            }
        }
    }

    #[test]
    fn only_decimal_u64_nonces_count() {
        assert_eq!(number("42"), Some(42));
        assert_eq!(number("007"), Some(7));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        assert_eq!(
            number("000000000000000000000018446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(number("0"), Some(0));
        // every u64 and its neighbours beyond, as `str::parse` reads them
        for v in [
            0u64,
            9,
            10,
            99,
            1 << 32,
            u64::MAX / 10,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(number(&v.to_string()), Some(v));
            assert_eq!(number(&format!("{v}0")), v.checked_mul(10));
        }
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "18446744073709551616",
            "a1",
            " 1",
            "١",
            "99999999999999999999",
            "1 ",
            "/",
            ":",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }
}
