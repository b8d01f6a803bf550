use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn paths(list: &[&[&str]]) -> Paths {
    let mut p = Paths::new(list.len());
    for (i, segs) in list.iter().enumerate() {
        assert!(p.add(segs, &[], i));
    }
    p
}

/// The scan of `s`, which, when the record is [`crate::decode::plain`],
/// is the same when the scanner is told so, and which is the same on the
/// path for records with escapes (the simple path, with its quote masks,
/// checked against the byte-by-byte one).
fn run<'a>(s: &'a str, p: &Paths) -> Result<Vec<Option<Val<'a>>>, ScanError> {
    let mut out = vec![None; p.slots()];
    let got = scan(s, p, &mut out).map(|_| out);
    let mut slow = vec![None; p.slots()];
    let escaped_path = scan_escaped_path(s, p, &mut slow).map(|_| slow);
    assert_eq!(escaped_path, got, "escaped path: {s:?}");
    if crate::decode::plain(s.as_bytes()) {
        let mut told = vec![None; p.slots()];
        let again = scan_known(s, true, p, &mut told).map(|_| told);
        assert_eq!(again, got, "told plain: {s:?}");
    }
    got
}

fn str_val(raw: &str) -> Option<Val<'_>> {
    Some(Val::Str {
        raw,
        escaped: false,
    })
}

#[test]
fn finds_top_level_and_nested_values() {
    let p = paths(&[&["a"], &["b", "c"], &["b", "d", "e"], &["x"]]);
    let got = run(
        r#"{"a":"1","skip":{"deep":[1,2,{"z":null}]},"b":{"c":12.5e3,"d":{"e":true}},"t":[]}"#,
        &p,
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            str_val("1"),
            Some(Val::Num("12.5e3")),
            Some(Val::Bool(true)),
            None
        ]
    );
}

#[test]
fn header_maps_compare_keys_without_case_and_lists_give_their_first_value() {
    let mut p = Paths::new(2);
    assert!(p.add(&["request", "headers", "x-nonce"], &[false, false, true], 0));
    assert!(p.add(
        &["request", "headers", "X-Api-Key"],
        &[false, false, true],
        1
    ));
    let got = run(
        r#"{"request":{"headers":{"X-NONCE":["n1","n2"],"x-api-key":"k"}}}"#,
        &p,
    )
    .unwrap();
    assert_eq!(got, vec![str_val("n1"), str_val("k")]);
    let got = run(
        r#"{"request":{"headers":{"x-nonce":[[1],2],"x-api-key":[]}}}"#,
        &p,
    )
    .unwrap();
    assert_eq!(got, vec![Some(Val::Array), Some(Val::Array)]);
}

#[test]
fn escapes_are_found_and_decoded() {
    let p = paths(&[&["k\"ey"], &["v"]]);
    let got = run(r#"{"k\"ey":"a\"b\u00e9\ud83d\ude00","v":"\/"}"#, &p).unwrap();
    let Some(Val::Str { raw, escaped: true }) = got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(unescape(raw).unwrap(), "a\"b\u{e9}\u{1F600}");
    assert!(unescape(r"\ud800").is_err());
    assert!(unescape(r"\udc00x").is_err());
}

#[test]
fn wanted_duplicates_are_refused_others_ignored() {
    let p = paths(&[&["a"]]);
    assert_eq!(
        run(r#"{"a":1,"a":2}"#, &p),
        Err(ScanError::Duplicate { slot: 0 })
    );
    assert!(run(r#"{"a":1,"b":2,"b":3}"#, &p).is_ok());
}

#[test]
fn not_json_or_not_an_object_is_refused() {
    let p = paths(&[&["a"]]);
    for bad in [
        "",
        "{",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{\"a\":01}",
        "{\"a\":1}x",
        "{\"a\":\"\t\"}",
        "{\"a\":tru}",
        "{\"a\":\"\\x\"}",
        "{\"a\":[1,]}",
        "{\"a\":\"\\u12g4\"}",
    ] {
        assert!(
            matches!(run(bad, &p), Err(ScanError::Syntax { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(run("[1,2]", &p), Err(ScanError::NotObject));
    assert_eq!(run(" 7 ", &p), Err(ScanError::NotObject));
}

#[test]
fn deep_nesting_in_skipped_values_costs_no_stack() {
    let p = paths(&[&["a"]]);
    let deep = format!(
        "{{\"x\":{}{},\"a\":1}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    assert_eq!(run(&deep, &p).unwrap(), vec![Some(Val::Num("1"))]);
    // objects and arrays alternating, members after every close, deeper
    // than the 64 levels the skip keeps in a word; and each closing
    // bracket swapped for the other kind, at every depth, refused as
    // serde_json refuses it
    let nested = |depth: usize, swap_at: Option<usize>| {
        let (mut open, mut close) = (String::new(), Vec::new());
        for d in 0..depth {
            let object = d % 2 == 0;
            open.push_str(if object { "{\"k\":" } else { "[" });
            let end = match (object, swap_at == Some(d)) {
                (true, false) => r#","after":[1,{"z":2}]}"#,
                (true, true) => r#","after":[1,{"z":2}]]"#,
                (false, false) => r#",3,{"w":[]},[]]"#,
                (false, true) => r#",3,{"w":[]},[]}"#,
            };
            close.push(end);
        }
        close.reverse();
        format!("{{\"x\":{open}0{},\"a\":1}}", close.concat())
    };
    // (serde_json refuses more than 128 levels)
    let good = nested(100, None);
    assert!(serde_json::from_str::<serde_json::Value>(&good).is_ok());
    assert_eq!(run(&good, &p).unwrap(), vec![Some(Val::Num("1"))]);
    for d in [0, 1, 62, 63, 64, 65, 99] {
        let bad = nested(100, Some(d));
        assert!(serde_json::from_str::<serde_json::Value>(&bad).is_err());
        assert!(run(&bad, &p).is_err(), "swapped at depth {d}");
    }
}

// ---------------------------------------------------------------------------
// Against serde_json.

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-zA-Z0-9 \"\\\\/\u{e9}\u{1F600}\t\n-]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-d]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The value at `path` as the scanner reports it, from serde_json's tree.
fn reference(v: &Value, path: &[String]) -> Option<String> {
    let mut cur = v;
    for seg in path {
        cur = cur.as_object()?.get(seg)?;
    }
    let first = match cur {
        Value::Array(a) => match a.first() {
            Some(x @ (Value::Array(_) | Value::Object(_))) => {
                let _ = x;
                return Some("array".into());
            }
            Some(x) => x,
            None => return Some("array".into()),
        },
        x => x,
    };
    Some(match first {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("num {}", n.as_f64().unwrap()),
        Value::String(s) => format!("str {s}"),
        Value::Object(_) => "object".into(),
        Value::Array(_) => unreachable!(),
    })
}

fn described(v: &Val<'_>) -> String {
    match v {
        Val::Null => "null".into(),
        Val::Bool(b) => format!("bool {b}"),
        Val::Num(t) => format!("num {}", t.parse::<f64>().unwrap()),
        Val::Str { raw, .. } => format!("str {}", unescape(raw).unwrap()),
        Val::Object => "object".into(),
        Val::Array => "array".into(),
    }
}

/// Every path to a value in `v` (objects only), up to depth 4.
fn all_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(m) = v {
        for (k, x) in m {
            prefix.push(k.clone());
            out.push(prefix.clone());
            if prefix.len() < 4 {
                all_paths(x, prefix, out);
            }
            prefix.pop();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// For any JSON object and any set of its leaf paths (or missing ones),
    /// the scanner finds what serde_json's tree has there.
    #[test]
    fn agrees_with_serde_json(
        v in prop::collection::btree_map("[a-d]{1,2}", arb_json(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        pretty in any::<bool>(),
    ) {
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
        let mut candidates = Vec::new();
        all_paths(&v, &mut Vec::new(), &mut candidates);
        candidates.push(vec!["zz".into()]);
        let mut chosen: Vec<Vec<String>> = Vec::new();
        for pick in picks {
            let c = &candidates[pick.index(candidates.len())];
            // a path and its own prefix cannot both be wanted
            if !chosen.iter().any(|x| x.starts_with(c) || c.starts_with(x)) {
                chosen.push(c.clone());
            }
        }
        let mut p = Paths::new(chosen.len());
        for (i, c) in chosen.iter().enumerate() {
            let segs: Vec<&str> = c.iter().map(|s| s.as_str()).collect();
            prop_assert!(p.add(&segs, &[], i));
        }
        let got = run(&text, &p).unwrap();
        for (i, c) in chosen.iter().enumerate() {
            prop_assert_eq!(got[i].as_ref().map(described), reference(&v, c), "{:?} in {}", c, text);
        }
    }

    /// Any bytes: the scanner never panics, and accepts exactly the JSON
    /// objects serde_json accepts.
    #[test]
    fn accepts_what_serde_json_accepts(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let p = paths(&[&["a"]]);
            let ours = run(text, &p);
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(text);
            if let Err(ScanError::Syntax { .. }) = ours {
                prop_assert!(theirs.is_err(), "{:?}", text);
            }
            if theirs.is_err() {
                prop_assert!(ours.is_err(), "{:?}", text);
            }
        }
    }

    /// Mutations of a valid record: the same agreement.
    #[test]
    fn mutated_records_are_judged_as_serde_json_judges_them(
        at in 0usize..60,
        insert in "[\\[\\]{}\",:\\\\ a-z0-9.eE+-]{0,3}",
        cut in 0usize..3,
    ) {
        let base = r#"{"a":[1,{"b":"c\"d"}],"e":-1.5e3,"f":null,"g":true}"#;
        let mut s = base.to_string();
        let at = at.min(s.len());
        let end = (at + cut).min(s.len());
        s.replace_range(at..end, &insert);
        let p = paths(&[&["g"]]);
        let ours = run(&s, &p);
        // judged as serde_json judges a record whose values it ignores
        // (as the typed decoders do): a number beyond f64's range in an
        // ignored value is valid JSON there, only a `Value` refuses it
        let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&s)
            .map(|_| s.trim_start().starts_with('{'));
        match theirs {
            Ok(true) => {
                // duplicates of "g" are refused by us, kept by Value
                if !matches!(ours, Err(ScanError::Duplicate { .. })) {
                    prop_assert!(ours.is_ok(), "{:?}", s);
                }
            }
            Ok(false) => prop_assert_eq!(ours, Err(ScanError::NotObject), "{:?}", s),
            Err(_) => prop_assert!(ours.is_err(), "{:?}", s),
        }
    }
}

/// Strings and numbers of every length, starting at every offset of the
/// 64-byte quote blocks, on the simple and the escaped path alike.
#[test]
fn strings_across_quote_blocks() {
    let p = paths(&[&["k"], &["n"], &["h", "x-nonce"]]);
    for pad in 0..70 {
        for len in [0, 1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 130] {
            let v = "v".repeat(len);
            let s = format!(
                r#"{{"{}":"{v}","k":"{v}","n":12345678901234567{},"h":{{"a":"","x-nonce":"{v}"}},"z":"{v}"}}"#,
                "p".repeat(pad),
                "0".repeat(len % 20)
            );
            let got = run(&s, &p).unwrap();
            assert_eq!(got[0], str_val(&v), "{s}");
            assert_eq!(got[2], str_val(&v), "{s}");
            // a quote missing at the end, wherever it falls
            let cut = &s[..s.len() - 3];
            assert!(run(cut, &p).is_err(), "{cut}");
        }
    }
}

#[test]
fn word_helpers_agree_with_their_byte_at_a_time_versions() {
    for c in 0..=255u8 {
        for pos in 0..8 {
            let mut bytes = *b"aZ@[`{\x80\xff";
            bytes[pos] = c;
            let want = u64::from_le_bytes(bytes.map(|b| b.to_ascii_lowercase()));
            assert_eq!(
                ascii_lower(u64::from_le_bytes(bytes)),
                want,
                "{c:#x} at {pos}"
            );
        }
    }
    // the first quote, whatever comes before and after it and wherever
    // the search starts (both ways of searching)
    for len in 0..=100 {
        let line: Vec<u8> = (0..len)
            .map(|k| {
                if k % 37 == 36 || k % 41 == 40 {
                    b'"'
                } else {
                    b'a' + (k % 26) as u8
                }
            })
            .collect();
        for from in 0..=len {
            let want = line[from..]
                .iter()
                .position(|&b| b == b'"')
                .map(|p| from + p);
            assert_eq!(find_quote(&line, from), want, "len {len} from {from}");
            assert_eq!(find_quote_swar(&line, from), want, "len {len} from {from}");
        }
    }
    let long = format!("{}\"", "k".repeat(100));
    assert_eq!(find_quote(long.as_bytes(), 3), Some(100));
    assert_eq!(find_quote(b"abc", 0), None);
    assert_eq!(
        head(b"Ab", 0, 2, true),
        u64::from_le_bytes(*b"ab\0\0\0\0\0\0")
    );
    assert_eq!(
        head(b"\"AbCdEfGhIj\"", 1, 10, true),
        u64::from_le_bytes(*b"abcdefgh")
    );
    assert_eq!(
        head(b"\"key\":1234567", 1, 3, false),
        u64::from_le_bytes(*b"key\0\0\0\0\0")
    );
}

#[test]
fn keys_alike_in_their_first_eight_bytes_are_told_apart() {
    // keys alike in their first 8 bytes, then in their first 16 (past the
    // word compared after the first eight), with and without regard to
    // case: `a` and `b` wanted, `c` as long and alike, `s` shorter
    for (a, b, c, s) in [
        (
            "x-signature-a",
            "x-signature-b",
            "x-signature-c",
            "x-signature",
        ),
        (
            "x-request-signature-a",
            "x-request-signature-b",
            "x-request-signature-c",
            "x-request-signature",
        ),
    ] {
        let mut p = Paths::new(4);
        assert!(p.add(&["h", a], &[false, true], 0));
        assert!(p.add(&["h", b], &[false, true], 1));
        assert!(p.add(&[a], &[], 2));
        assert!(p.add(&[b], &[], 3));
        let (upper_a, upper_b) = (a.to_ascii_uppercase(), b.to_ascii_uppercase());
        let mixed_a = format!("X{}", &a[1..]);
        let line = format!(
            r#"{{"{b}":"3","h":{{"{upper_b}":"1","{c}":"no","{upper_a}":"0","{s}":"no"}},"{mixed_a}":"no","{a}":"2","{s}":"no"}}"#
        );
        let got = run(&line, &p).unwrap();
        assert_eq!(
            got,
            vec![str_val("0"), str_val("1"), str_val("2"), str_val("3")],
            "{line}"
        );
    }
    // a key of 9 to 16 bytes differing only in its last byte, or only in
    // case where case matters, is another key
    let p = paths(&[&["started_at"], &["client_ip"]]);
    let got = run(
        r#"{"started_aT":"no","client_iP":"no","started_as":"no","client_ip":"1","started_at":"0"}"#,
        &p,
    )
    .unwrap();
    assert_eq!(got, vec![str_val("0"), str_val("1")]);
}

/// The first quote, backslash or control character, against the byte by
/// byte answer, for every kind of byte at every place of lines of every
/// length around the 16-byte steps, and from every start.
#[test]
fn find_special_stops_where_a_string_scan_must() {
    let special = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
    // ordinary bytes next to the special ones in value (0x1f, 0x20), ASCII
    // and not (0x7f, 0x80, 0xff: bytes of multi-byte characters)
    let fill = [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xff];
    for stop in [b'"', b'\\', 0x00, 0x09, 0x0a, 0x1f] {
        for len in 0..=50 {
            for at in (0..len).chain([usize::MAX]) {
                let line: Vec<u8> = (0..len)
                    .map(|k| if k == at { stop } else { fill[k % fill.len()] })
                    .collect();
                for from in 0..=len {
                    let want = line[from..]
                        .iter()
                        .position(|&c| special(c))
                        .map(|p| from + p);
                    assert_eq!(
                        find_special(&line, from),
                        want,
                        "stop {stop:#x} len {len} at {at} from {from}"
                    );
                }
            }
        }
    }
}
