//! The JSON Schemas in schemas/ against the Rust types, with the golden
//! examples in schemas/examples/ and with what the detector really writes.

use std::path::{Path, PathBuf};

use jsonschema::{Registry, Validator};
use replayguard::decode::Decoder;
use replayguard::generate::GenConfig;
use replayguard::schema::{Alert, LifecycleEvent};
use serde_json::Value;

use crate::util::*;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn load(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn validator(name: &str) -> Validator {
    let dir = schemas_dir();
    let mut all = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v = load(&p);
            all.push((v["$id"].as_str().unwrap().to_string(), v));
        }
    }
    let registry = Registry::new()
        .extend(all.iter().map(|(id, v)| (id.clone(), v.clone())))
        .unwrap()
        .prepare()
        .unwrap();
    let schema = load(&dir.join(name));
    jsonschema::options()
        .with_registry(&registry)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Fails with every schema error when `json` does not follow the schema.
fn assert_valid(v: &Validator, json: &Value, what: &str) {
    assert!(
        v.is_valid(json),
        "{what}: {:?}",
        v.iter_errors(json)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
}

/// (file name, contents) of every example of one format.
fn examples(kind: &str) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(schemas_dir().join("examples").join(kind))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 2, "{kind} has golden examples");
    v
}

#[test]
fn every_schema_is_a_valid_2020_12_schema() {
    for name in [
        "access-event.v1.schema.json",
        "lifecycle-event.v1.schema.json",
        "alert.v1.schema.json",
        "dead-letter.v1.schema.json",
        "report.v1.schema.json",
    ] {
        let s = load(&schemas_dir().join(name));
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        jsonschema::meta::validate(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
        validator(name);
    }
}

#[test]
fn access_event_examples_agree_with_the_decoder() {
    let v = validator("access-event.v1.schema.json");
    let d = Decoder::default();
    for (name, text) in examples("access-event") {
        let json: Value = serde_json::from_str(&text).unwrap();
        let schema_ok = v.is_valid(&json);
        let rust_ok = d.access(text.trim().as_bytes());
        if name.starts_with("valid") {
            assert_valid(&v, &json, &name);
            assert!(rust_ok.is_ok(), "{name}: {:?}", rust_ok.err());
        } else {
            assert!(!schema_ok, "{name} should fail the schema");
            assert!(rust_ok.is_err(), "{name} should fail the decoder");
        }
    }
}

#[test]
fn lifecycle_examples_agree_with_the_decoder() {
    let v = validator("lifecycle-event.v1.schema.json");
    let d = Decoder::default();
    for (name, text) in examples("lifecycle-event") {
        let json: Value = serde_json::from_str(&text).unwrap();
        let rust: Result<LifecycleEvent, _> = d.lifecycle(text.trim().as_bytes());
        assert_eq!(
            v.is_valid(&json),
            name.starts_with("valid"),
            "{name} (schema)"
        );
        assert_eq!(
            rust.is_ok(),
            name.starts_with("valid"),
            "{name} (decoder): {:?}",
            rust.err()
        );
    }
}

#[test]
fn alert_examples_agree_with_the_rust_type() {
    let v = validator("alert.v1.schema.json");
    for (name, text) in examples("alert") {
        let json: Value = serde_json::from_str(&text).unwrap();
        let rust = serde_json::from_str::<Alert>(&text)
            .map_err(|e| e.to_string())
            .and_then(|a| a.check().map(|_| a));
        if name.starts_with("invalid") {
            assert!(!v.is_valid(&json), "{name} should fail the schema");
            assert!(rust.is_err(), "{name} should fail the Rust type");
        } else {
            assert_valid(&v, &json, &name);
            let a = rust.unwrap_or_else(|e| panic!("{name}: {e}"));
            // and the Rust type writes it back the same way
            assert_eq!(serde_json::to_value(&a).unwrap(), json, "{name}");
        }
    }
}

#[test]
fn report_examples_agree_with_the_rust_type() {
    use replayguard::report::RotationReport;
    let v = validator("report.v1.schema.json");
    for (name, text) in examples("report") {
        let json: Value = serde_json::from_str(&text).unwrap();
        let rust = serde_json::from_str::<RotationReport>(&text);
        if name.starts_with("invalid") {
            assert!(!v.is_valid(&json), "{name} should fail the schema");
            assert!(rust.is_err(), "{name} should fail the Rust type");
        } else {
            assert_valid(&v, &json, &name);
            let r = rust.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                serde_json::to_value(&r).unwrap(),
                json,
                "{name} round-trips"
            );
        }
    }
}

#[test]
fn reports_of_a_scanned_rotation_follow_the_schema() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 60_000,
            seed: 23,
            rate: 10.0,
            rotations: 3,
            ..Default::default()
        },
    );
    let state = d.path("state");
    scan_ok(
        &[
            ("--state-dir", &state),
            ("--lifecycle", &t.lifecycle),
            ("--alerts", &d.path("a.jsonl")),
        ],
        &[&t.events],
    );
    let o = report_rotation(&state, "json");
    let reports: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!reports.is_empty());
    let v = validator("report.v1.schema.json");
    for r in &reports {
        assert_valid(&v, r, &r.to_string());
    }
}

#[test]
fn what_scan_writes_follows_the_schemas() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 20_000,
            seed: 21,
            malformed_rate: 0.003,
            ..Default::default()
        },
    );
    let alerts = d.path("alerts.jsonl");
    let dl = d.path("dl.jsonl");
    scan_ok(
        &[
            ("--lifecycle", &t.lifecycle),
            ("--alerts", &alerts),
            ("--dead-letter", &dl),
        ],
        &[&t.events],
    );
    let va = validator("alert.v1.schema.json");
    let written = read_json_lines(&alerts);
    assert!(written.len() > 50);
    let mut kinds = std::collections::BTreeSet::new();
    for a in &written {
        assert_valid(&va, a, &a.to_string());
        kinds.insert(a["kind"].as_str().unwrap().to_string());
    }
    assert!(kinds.len() >= 4, "{kinds:?}");
    let vd = validator("dead-letter.v1.schema.json");
    let letters = read_json_lines(&dl);
    assert!(!letters.is_empty());
    for l in &letters {
        assert!(vd.is_valid(l), "{l}");
    }
    for (_, text) in examples("dead-letter") {
        let json: Value = serde_json::from_str(&text).unwrap();
        assert!(vd.is_valid(&json), "{text}");
    }
}
