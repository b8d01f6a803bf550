//! Gateway log formats: the golden fixtures of every preset (tests/fixtures/
//! gateways/, each written from its gateway's documentation), and `scan`,
//! `convert` and the dead-letter warning through the binary.

use std::path::PathBuf;

use replayguard::config::Config;
use replayguard::decode::{Decoder, Format};
use replayguard::schema::AlertKind;

use crate::util::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    format: String,
    /// Extra `[input]` lines.
    #[serde(default)]
    input: String,
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    record: String,
    /// The access event v1 it decodes to.
    expect: Option<String>,
    /// Or: a dead letter whose error contains this.
    dead: Option<String>,
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gateways")
}

fn fixture(format: &str) -> (Fixture, String) {
    let p = fixtures_dir().join(format!("{format}.toml"));
    let text = std::fs::read_to_string(&p).unwrap();
    (toml::from_str(&text).unwrap(), text)
}

fn decoder_of(f: &Fixture) -> Decoder {
    let c = Config::parse(&format!("[input]\nformat = \"{}\"\n{}", f.format, f.input)).unwrap();
    Decoder::new(&c.decode, &c.input).unwrap()
}

const PRESETS: [&str; 5] = ["kong", "envoy", "nginx", "aws-apigw", "traefik"];

#[test]
fn every_preset_reads_its_documented_fixture() {
    for name in PRESETS {
        let (f, text) = fixture(name);
        assert_eq!(f.format, name);
        assert!(
            text.contains("# Source: https://"),
            "{name}: the fixture cites the gateway's documentation"
        );
        assert!(f.case.len() >= 4, "{name}: cases");
        let d = decoder_of(&f);
        assert_eq!(d.format(), Format::parse(name).unwrap());
        let mut decoded = 0;
        for (i, c) in f.case.iter().enumerate() {
            let got = d.access(c.record.as_bytes());
            match (&c.expect, &c.dead) {
                (Some(want), None) => {
                    let ev = got.unwrap_or_else(|e| panic!("{name} case {i}: {e}"));
                    let want: serde_json::Value = serde_json::from_str(want).unwrap();
                    assert_eq!(serde_json::to_value(&ev).unwrap(), want, "{name} case {i}");
                    decoded += 1;
                }
                (None, Some(why)) => {
                    let e = got.expect_err(&format!("{name} case {i} is a dead letter"));
                    let msg = e.to_string();
                    assert!(msg.contains(why), "{name} case {i}: {msg}");
                    assert!(msg.contains(&format!("format {name}")), "{msg}");
                }
                _ => panic!("{name} case {i}: expect or dead"),
            }
        }
        assert!(decoded >= 3, "{name}");
        // and the same records as v1 are dead letters: the format matters
        let v1 = Decoder::default();
        assert!(f
            .case
            .iter()
            .all(|c| v1.access(c.record.as_bytes()).is_err()));
    }
}

/// Every preset's records as other writers write them: every slash as `\/`
/// (lua-cjson's default, PHP's `json_encode`), every character past ASCII
/// as a `\u` escape, and with a CRLF line end: the same events (and the
/// same dead letters).
#[test]
fn every_preset_reads_its_fixture_written_with_escapes_and_crlf() {
    for name in PRESETS {
        let (f, _) = fixture(name);
        let d = decoder_of(&f);
        for (i, c) in f.case.iter().enumerate() {
            // an event id derived from the record hashes its bytes as they
            // are: a record written otherwise is another record
            let plain_id = |r: Result<replayguard::schema::AccessEvent<'_>, &'static str>| {
                r.map(|mut ev| {
                    if ev.event_id.starts_with("sha256:") {
                        ev.event_id = "derived".into();
                    }
                    ev.into_owned()
                })
            };
            let want = d.access(c.record.as_bytes()).map_err(|e| e.kind());
            // outside strings JSON has no slash and no character past ASCII
            let ascii: String = c
                .record
                .chars()
                .map(|ch| match ch {
                    '/' => "\\/".to_string(),
                    ch if !ch.is_ascii() => {
                        let mut units = [0u16; 2];
                        ch.encode_utf16(&mut units)
                            .iter()
                            .map(|u| format!("\\u{u:04x}"))
                            .collect()
                    }
                    ch => ch.to_string(),
                })
                .collect();
            // the same bytes with a CRLF end: the same event, its id too
            let crlf = format!("{}\r", c.record);
            let got = d.access(crlf.as_bytes()).map_err(|e| e.kind());
            assert_eq!(got, want, "{name} case {i}: CRLF");
            for variant in [ascii.clone(), format!("{ascii}\r")] {
                let got = plain_id(d.access(variant.as_bytes()).map_err(|e| e.kind()));
                assert_eq!(got, plain_id(want.clone()), "{name} case {i}: {variant}");
            }
        }
    }
}

/// The fixture records that decode, as JSON lines.
fn good_lines(name: &str) -> String {
    let (f, _) = fixture(name);
    f.case
        .iter()
        .filter(|c| c.expect.is_some())
        .map(|c| format!("{}\n", c.record))
        .collect()
}

#[test]
fn scan_reads_a_kong_log_with_one_flag() {
    let d = Dir::new();
    let (f, _) = fixture("kong");
    let input = d.path("kong.jsonl");
    let all: String = f.case.iter().map(|c| format!("{}\n", c.record)).collect();
    std::fs::write(&input, &all).unwrap();
    let alerts = d.path("alerts.jsonl");
    let dl = d.path("dl.jsonl");
    let input_s = input.to_str().unwrap();
    let o = run_ok(
        &[
            "scan",
            "--quiet",
            "--input-format",
            "kong",
            "--alerts",
            alerts.to_str().unwrap(),
            "--dead-letter",
            dl.to_str().unwrap(),
            input_s,
        ],
        None,
    );
    let got = read_alerts(&alerts);
    let replays: Vec<_> = got.iter().filter(|a| a.kind == AlertKind::Replay).collect();
    assert_eq!(replays.len(), 1, "{got:?}");
    assert_eq!(replays[0].key_id, "key-live-7f3a");
    assert_eq!(replays[0].event_id, "77aa01bb02cc03dd04ee05ff06aa07bb");
    let err = stderr(&o);
    assert!(err.contains("4 events"), "{err}");
    // the two bad records are dead letters naming the format and the path
    let dead = read_json_lines(&dl);
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|l| l["error"]
        .as_str()
        .unwrap()
        .contains("format kong: field `")));
    assert_eq!(dead[0]["offset"], 5);
}

#[test]
fn missing_header_placeholders_never_make_replays() {
    let d = Dir::new();
    let alerts = d.path("alerts.jsonl");
    // NGINX logs a header not sent as "", AWS as "-": three requests each
    // (each request signed differently: the same signature without a nonce
    // would be a signature replay)
    for (format, field, sig_field, placeholder) in [
        ("nginx", "http_x_nonce", "http_x_signature", ""),
        ("aws-apigw", "nonce", "signature", "-"),
        ("envoy", "nonce", "signature", "-"),
    ] {
        let (f, _) = fixture(format);
        let base: serde_json::Value =
            serde_json::from_str(&f.case[0].record).expect("first case is signed");
        let mut lines = String::new();
        for i in 0..3 {
            let mut v = base.clone();
            v[field] = placeholder.into();
            v[sig_field] = format!("sig-{i}").into();
            let id_field = match format {
                "nginx" | "envoy" => "request_id",
                _ => "requestId",
            };
            v[id_field] = format!("req-{i}").into();
            lines.push_str(&format!("{v}\n"));
        }
        let input = d.path(&format!("{format}.jsonl"));
        std::fs::write(&input, lines).unwrap();
        let o = run_ok(
            &[
                "scan",
                "--quiet",
                "--input-format",
                format,
                "--alerts",
                alerts.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
            None,
        );
        assert!(stderr(&o).contains("3 events"), "{}", stderr(&o));
    }
    let got = read_alerts(&alerts);
    assert!(
        got.iter().all(|a| a.kind != AlertKind::Replay),
        "no replay from placeholders: {got:?}"
    );
}

#[test]
fn a_wrong_format_fails_the_scan_unless_allowed() {
    let d = Dir::new();
    let input = d.path("kong.jsonl");
    std::fs::write(&input, good_lines("kong")).unwrap();
    let o = run(&["scan", "--quiet", input.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("--input-format"), "{err}");
    assert!(err.contains("--allow-dead-letters"), "{err}");
    assert_eq!(
        err.matches("are dead letters: is the input in format")
            .count(),
        1,
        "said once: {err}"
    );
    let o = run(
        &[
            "scan",
            "--quiet",
            "--allow-dead-letters",
            input.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // a few bad records among many good ones are no reason to fail
    let mut mixed = good_lines("nginx").repeat(3);
    mixed.push_str("not json\n");
    std::fs::write(&input, mixed).unwrap();
    run_ok(
        &[
            "scan",
            "--quiet",
            "--input-format",
            "nginx",
            input.to_str().unwrap(),
        ],
        None,
    );
}

#[test]
fn convert_writes_v1_that_scans_to_the_same_alerts() {
    let d = Dir::new();
    let (f, _) = fixture("kong");
    let input = d.path("kong.jsonl");
    let mut all: String = f.case.iter().map(|c| format!("{}\n", c.record)).collect();
    // and a replay of a request signed without a nonce: the converted
    // events carry what the signature replay rule needs, not the signature
    let sig = "7d1f9c3a5e0b2d4f6a8c1e3b5d7f9a0c";
    for (id, t, ip) in [
        ("sig-1", 1795857302417u64, "203.0.113.9"),
        ("sig-2", 1795857303417, "198.51.100.4"),
    ] {
        all.push_str(&format!(
            r#"{{"request":{{"id":"{id}","method":"GET","uri":"/api/v3/account","headers":{{"x-api-key":"key-sig","x-signature":"{sig}","x-timestamp":"{t}"}}}},"started_at":{t},"client_ip":"{ip}","response":{{"status":200}}}}"#
        ));
        all.push('\n');
    }
    std::fs::write(&input, all).unwrap();
    let v1 = d.path("v1.jsonl");
    let dl = d.path("dl.jsonl");
    let o = run_ok(
        &[
            "convert",
            "--input-format",
            "kong",
            "--output",
            v1.to_str().unwrap(),
            "--dead-letter",
            dl.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        None,
    );
    assert!(stderr(&o).contains("6 events"), "{}", stderr(&o));
    assert_eq!(read_json_lines(&dl).len(), 2);
    let lines = read_json_lines(&v1);
    assert_eq!(lines.len(), 6);
    // converted events are v1, with each signature's digest, never itself
    let text = std::fs::read_to_string(&v1).unwrap();
    assert!(!text.contains(sig), "{text}");
    let digest = replayguard::pipeline::signature_digest(sig).into_owned();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["signature"] == digest.as_str())
            .count(),
        2,
        "{text}"
    );
    for l in text.lines() {
        Decoder::default().access(l.as_bytes()).unwrap();
    }
    let a_kong = d.path("a-kong.jsonl");
    let a_v1 = d.path("a-v1.jsonl");
    run_ok(
        &[
            "scan",
            "--quiet",
            "--allow-dead-letters",
            "--input-format",
            "kong",
            "--alerts",
            a_kong.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        None,
    );
    run_ok(
        &[
            "scan",
            "--quiet",
            "--alerts",
            a_v1.to_str().unwrap(),
            v1.to_str().unwrap(),
        ],
        None,
    );
    let ids = |p: &std::path::Path| {
        let mut v: Vec<String> = read_alerts(p).into_iter().map(|a| a.alert_id).collect();
        v.sort();
        v
    };
    assert!(!ids(&a_kong).is_empty());
    assert_eq!(ids(&a_kong), ids(&a_v1));
    let signature_replays = |p: &std::path::Path| {
        read_alerts(p)
            .into_iter()
            .filter(|a| a.event_id == "sig-2")
            .count()
    };
    assert_eq!(signature_replays(&a_kong), 1);
    assert_eq!(signature_replays(&a_v1), 1);
    // converting the converted events changes nothing
    let again = d.path("v1-again.jsonl");
    run_ok(
        &[
            "convert",
            "--output",
            again.to_str().unwrap(),
            v1.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);
}

#[test]
fn a_mapping_reads_any_json_log() {
    let c = Config::parse(
        r#"
[input]
format = "mapped"
absent_values = ["", "none"]
[input.map]
event_id = "meta.id"
received_at = "meta.\"ts.ms\""
key_id = "req.hdr.X-Key"
nonce = "req.hdr.X-Nonce"
client_ts = "req.hdr.X-Time"
client_ip = "peer"
method = "req.m"
path = "req.p"
status = "res.code"
[input.time]
received_at = "epoch_ms"
client_ts = "clf"
"#,
    )
    .unwrap();
    let d = Decoder::new(&c.decode, &c.input).unwrap();
    let line = r#"{"meta":{"id":"m-1","ts.ms":"1795857302417"},"peer":"10.0.0.9","req":{"m":"PUT","p":"/x","hdr":{"X-Key":"k-1","X-Nonce":"none","X-Time":"28/Nov/2026:09:15:02 +0000"}},"res":{"code":"204"}}"#;
    let ev = d.access(line.as_bytes()).unwrap();
    assert_eq!(ev.event_id, "m-1");
    assert_eq!(ev.received_at, 1_795_857_302_417);
    assert_eq!(ev.key_id.as_deref(), Some("k-1"));
    assert_eq!(ev.nonce, None, "an absent value");
    assert_eq!(ev.client_ts, Some(1_795_857_302_000));
    assert_eq!(ev.status, 204);
    let e = d
        .access(line.replace("28/Nov", "2026-11-28").as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("format mapped: field `client_ts` at req.hdr.X-Time"),
        "{e}"
    );
    assert!(e.contains("time format clf"), "{e}");
}
