use super::format::*;
use super::*;
use crate::detect::{Position, SightingInfo};

struct NoStore;
impl SegmentSource for NoStore {
    fn with_segment(&self, _: u32, _: u64, _: &mut Bytes<'_>) -> Result<bool, StateError> {
        Ok(false)
    }
}

fn info(t: Millis, id: &str) -> SightingInfo<&str> {
    SightingInfo {
        received_at: t,
        pos: Position::new(1, t as u64),
        event_id: id,
        client_ip: "10.0.0.1",
        method: "POST",
        path: "/api/v3/order",
        status: 200,
        client_id: (t % 2 == 0).then_some("c-1"),
        user_agent: None,
        seq: (t % 3 == 0).then_some(("k-1", t as u64 * 1000)),
    }
}

#[test]
fn find_in_open_sealed_and_parsed() {
    let mut log = SegmentLog::new(0, NoStore, 0, SegmentOptions::default());
    log.set_origin(1234);
    let a = log.append_window(
        &WindowRecord {
            fp: 7 | (1u128 << 64),
            first: info(10, "a"),
            prev: None,
        },
        10,
    );
    let b = log.append_window(
        &WindowRecord {
            fp: 7 | (1u128 << 64),
            first: info(5, "b"),
            prev: Some(info(1, "p")),
        },
        12,
    );
    log.append_event(99, 3, 42);
    assert_eq!(a, b);
    let w = log.window(a, 7 | (1u128 << 64)).unwrap().unwrap();
    assert_eq!(w.first.event_id, "b");
    assert!(
        log.window(a, 7 | (2u128 << 64)).unwrap().is_none(),
        "full fingerprint is checked"
    );
    let sealed = log.take_sealed();
    assert_eq!(sealed.len(), 1);
    let w = log.window(a, 7 | (1u128 << 64)).unwrap().unwrap();
    assert_eq!(w.first.event_id, "b");
    assert_eq!(w.prev.unwrap().event_id, "p");
    let v = SegmentView::parse(0, &sealed[0].1).unwrap();
    assert_eq!(
        (v.min_t, v.max_t),
        (3, 12),
        "max_t covers what a record supersedes"
    );
    assert_eq!(v.windows().count(), 1);
    assert_eq!(v.events().collect::<Vec<_>>(), vec![(99, 3, 42)]);
    assert!(log.expire(12).is_empty());
    assert_eq!(log.expire(13), vec![0]);
    assert_eq!(log.segment_count(), 0);
}

fn round_trip(x: &str) -> String {
    let mut b = Vec::new();
    put_str(&mut b, x);
    Reader {
        b: &b,
        at: 0,
        base: 0,
        v2: false,
    }
    .str()
    .unwrap()
}

proptest::proptest! {
    #[test]
    fn any_string_round_trips(x in ".{0,60}") {
        proptest::prop_assert_eq!(round_trip(&x), x);
    }

    #[test]
    fn varints_round_trip(v in proptest::num::i64::ANY) {
        let mut b = Vec::new();
        put_varint(&mut b, zigzag(v));
        proptest::prop_assert_eq!(unzigzag(Reader { b: &b, at: 0, base: 0, v2: false }.varint().unwrap()), v);
    }
}

#[test]
fn corrupt_segments_are_errors() {
    assert!(SegmentView::parse(1, b"nope").is_err());
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&1000u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 36]);
    assert!(SegmentView::parse(1, &b).is_err());
}

#[test]
fn a_string_whose_hash_another_holds_is_written_in_full() {
    let mut dict = Dict::default();
    let mut b = Vec::new();
    put_shared(&mut b, "203.0.113.7", &mut dict);
    // as if "198.51.100.4" had the same low half of its 128-bit hash (the
    // entry is the other string's)
    let h = xxhash_rust::xxh3::xxh3_128(b"198.51.100.4");
    dict.insert(h as u64, ((h >> 64) as u64 ^ 1, 0));
    put_shared(&mut b, "198.51.100.4", &mut dict);
    put_shared(&mut b, "198.51.100.4", &mut dict);
    put_shared(&mut b, "203.0.113.7", &mut dict);
    let mut r = Reader {
        b: &b,
        at: 0,
        base: 0,
        v2: false,
    };
    for want in ["203.0.113.7", "198.51.100.4", "198.51.100.4", "203.0.113.7"] {
        assert_eq!(r.shared().as_deref(), Some(want));
    }
}

#[test]
fn repeated_strings_are_written_once_per_segment_and_read_back() {
    let mut dict = Dict::default();
    let mut b = Vec::new();
    put_shared(&mut b, "Mozilla/5.0 (X11; Linux x86_64)", &mut dict);
    let first_len = b.len();
    put_shared(&mut b, "Mozilla/5.0 (X11; Linux x86_64)", &mut dict);
    assert!(b.len() - first_len < 4, "a back-reference, not the bytes");
    put_shared(&mut b, "/api/v3/order", &mut dict);
    let mut r = Reader {
        b: &b,
        at: 0,
        base: 0,
        v2: false,
    };
    for want in [
        "Mozilla/5.0 (X11; Linux x86_64)",
        "Mozilla/5.0 (X11; Linux x86_64)",
        "/api/v3/order",
    ] {
        assert_eq!(r.shared().as_deref(), Some(want));
    }
    // a reference forward (or to itself) is damage, not a loop
    let mut bad = Vec::new();
    put_varint(&mut bad, 2 * 5 + 1);
    let mut r = Reader {
        b: &bad,
        at: 0,
        base: 0,
        v2: false,
    };
    assert_eq!(r.shared(), None);
}

/// Event ids of every hexadecimal form are stored as 16 bytes and read back
/// as the same text; any other id as its text.
#[test]
fn event_ids_read_back_in_every_form() {
    let ids = [
        "9e2256ee-ae5e-4bab-32d2-97d30255f9c0",
        "9E2256EE-AE5E-4BAB-32D2-97D30255F9C0",
        "0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789ABCDEF",
        "sha256:0123456789abcdef0123456789abcdef",
        "sha256:0123456789ABCDEF0123456789ABCDEF",
        "01234567-89ab-cdef-0123-456789ABCDEF",
        "0123456789abcdef0123456789abcdeg",
        "9e2256ee-ae5e-4bab-32d2_97d30255f9c0",
        "sha256:0123456789abcdef0123456789abcde",
        "",
        "e-1",
        "Root=1-67891233-abcdef012345678912345678",
    ];
    let mut log = SegmentLog::new(0, NoStore, 0, SegmentOptions::default());
    for (i, id) in ids.iter().enumerate() {
        let fp = (i as u128 + 1) | (5u128 << 64);
        let seg = log.append_window(
            &WindowRecord {
                fp,
                first: info(10 + i as Millis, id),
                prev: None,
            },
            10,
        );
        assert_eq!(log.window(seg, fp).unwrap().unwrap().first.event_id, *id);
    }
    let sealed = log.take_sealed();
    let v = SegmentView::parse(0, &sealed[0].1).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let fp = (i as u128 + 1) | (5u128 << 64);
        assert_eq!(v.find(fp).unwrap().first.event_id, *id);
    }
    // the hexadecimal forms take 17 bytes, the others 1 + their length
    let size = |id: &str| {
        let mut one = Vec::new();
        put_info(&mut one, 0, &info(0, id), &mut Dict::default());
        one.len()
    };
    for (i, id) in ids.iter().enumerate() {
        let want = if i < 6 { 17 } else { 1 + id.len() };
        assert_eq!(size(id) - size("") + 1, want, "{id}");
    }
}

/// A segment written before event ids were stored by form (version 2,
/// every id as `put_str` wrote it) reads as it always did.
#[test]
fn a_version_2_segment_still_reads() {
    let mut log = SegmentLog::new(0, NoStore, 0, SegmentOptions::default());
    let fp = 9 | (3u128 << 64);
    log.append_window(
        &WindowRecord {
            fp,
            first: info(10, "short-id"),
            prev: None,
        },
        10,
    );
    let mut b = log.take_sealed()[0].1.to_vec();
    // the record is the last bytes of the segment: find its id by value
    let rec = b.windows(9).rposition(|w| &w[1..] == b"short-id").unwrap();
    assert_eq!(b[rec], 2 * 8, "v3 writes 2·len");
    b[rec] = 8;
    // then the client address (first in the segment: `2·len` and 8
    // bytes), then the method, one byte in v3, `put_str` in v2
    let m = rec + 9 + 9;
    assert_eq!(b[m], 3, "POST as code 1");
    b.splice(m..m + 1, [4, b'P', b'O', b'S', b'T']);
    b[..4].copy_from_slice(b"RGS2");
    let v2 = SegmentView::parse(0, &b).unwrap();
    let w = v2.find(fp).unwrap();
    assert_eq!(w.first.event_id, "short-id");
    assert_eq!(w.first.method, "POST");
    assert_eq!(w.first.path, "/api/v3/order");
}

/// Expiry and the rebuild position follow every kept segment, whatever the
/// order of their times and origins: segments sealed out of time order (a
/// late batch), found in the store at startup, and found again.
#[test]
fn expiry_and_rebuild_position_follow_every_segment() {
    let mut log = SegmentLog::new(0, NoStore, 0, SegmentOptions::default());
    // sealed: (newest time, origin) = (100, 10), (50, 20), (200, 30)
    for (t, origin) in [(100, 10), (50, 20), (200, 30)] {
        log.set_origin(origin);
        log.append_event(t as u64, t, 0);
        log.take_sealed();
        log.mark_durable();
    }
    // found at startup: 7 is older than everything, 9 found twice (the
    // second time with another time and origin)
    log.note_existing(7, 20, 5);
    log.note_existing(9, 500, 1);
    log.note_existing(9, 150, 40);
    assert_eq!(log.segment_count(), 5);
    assert_eq!(log.rebuild_from(), Some(5));
    assert!(log.expire(20).is_empty());
    assert_eq!(
        log.expire(51),
        vec![1, 7],
        "the late segment and the found one"
    );
    assert_eq!(log.rebuild_from(), Some(10));
    assert_eq!(log.expire(101), vec![0]);
    assert_eq!(log.rebuild_from(), Some(30));
    assert_eq!(log.floor(), 2);
    assert_eq!(
        log.expire(151),
        vec![9],
        "found again: its last time counts"
    );
    assert_eq!(log.rebuild_from(), Some(30));
    assert_eq!(log.expire(i64::MAX), vec![2]);
    assert_eq!((log.rebuild_from(), log.segment_count()), (None, 0));
}
