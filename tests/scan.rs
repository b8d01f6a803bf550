//! `replayguard scan` end to end, through the binary.

use replayguard::generate::GenConfig;

use crate::util::*;

#[test]
fn scan_finds_exactly_the_planted_alerts() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 30_000,
            seed: 7,
            disorder_ms: 20_000,
            malformed_rate: 0.002,
            ..Default::default()
        },
    );
    let alerts = d.path("alerts.jsonl");
    let dl = d.path("dl.jsonl");
    let o = scan_ok(
        &[
            ("--lifecycle", &t.lifecycle),
            ("--alerts", &alerts),
            ("--dead-letter", &dl),
        ],
        &[&t.events],
    );
    let got = read_alerts(&alerts);
    assert!(!t.truth.is_empty());
    assert_eq!(keyset(&got), truth_keyset(&t.truth));
    let kinds: std::collections::BTreeSet<_> = got.iter().map(|a| a.kind).collect();
    assert!(kinds.len() >= 4, "traffic exercises most kinds: {kinds:?}");
    // the summary names the counts
    let err = stderr(&o);
    assert!(err.contains("events/s"), "{err}");
    assert!(
        err.contains(&format!("alerts:        {}", got.len())),
        "{err}"
    );
    // malformed lines went to the dead-letter file with their line numbers
    let letters = read_json_lines(&dl);
    assert!(!letters.is_empty());
    for l in &letters {
        let n = l["offset"].as_u64().unwrap() as usize;
        assert_eq!(l["raw"].as_str().unwrap(), t.lines[n - 1], "line {n}");
        assert_eq!(l["source"].as_str().unwrap(), t.events.to_str().unwrap());
    }
    assert!(
        err.contains(&format!("malformed:     {}", letters.len())),
        "{err}"
    );
}

#[test]
fn two_runs_over_two_halves_equal_one_run_over_the_whole() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 40_000,
            seed: 11,
            rate: 200.0, // 200 s of traffic: replays straddle the split
            replay_rate: 0.01,
            duplicate_rate: 0.01,
            disorder_ms: 30_000,
            ..Default::default()
        },
    );
    let whole = d.path("whole.jsonl");
    scan_ok(
        &[("--lifecycle", &t.lifecycle), ("--alerts", &whole)],
        &[&t.events],
    );
    for split in [1, 9_999, 20_000, 39_999] {
        let (a, b) = t.lines.split_at(split);
        let pa = d.write(&format!("a{split}.jsonl"), &(a.join("\n") + "\n"));
        let pb = d.write(&format!("b{split}.jsonl"), &(b.join("\n") + "\n"));
        let state = d.path(&format!("state{split}"));
        let out = d.path(&format!("split{split}.jsonl"));
        for (i, part) in [pa, pb].iter().enumerate() {
            let mut opts = vec![("--state-dir", state.as_path()), ("--alerts", &out)];
            if i == 0 {
                opts.push(("--lifecycle", &t.lifecycle));
            }
            scan_ok(&opts, &[part]);
        }
        let one = read_alerts(&whole);
        let two = read_alerts(&out);
        // alerts only depend on the events before them: the same, in the same order
        assert_eq!(one, two, "split at {split}");
    }
    assert_eq!(keyset(&read_alerts(&whole)), truth_keyset(&t.truth));
}

#[test]
fn rescanning_the_same_file_recognises_every_record_as_itself() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 5_000,
            seed: 3,
            ..Default::default()
        },
    );
    let state = d.path("state");
    let scan_to = |out: &str| {
        scan_ok(
            &[("--state-dir", &state), ("--alerts", &d.path(out))],
            &[&t.events],
        )
    };
    let o = scan_to("first.jsonl");
    assert!(!read_alerts(&d.path("first.jsonl")).is_empty());
    let dup_line = |err: &str| {
        err.lines()
            .find(|l| l.contains("duplicates:"))
            .unwrap()
            .to_string()
    };
    let dups_first = dup_line(&stderr(&o));
    let o = scan_to("again.jsonl");
    let err = stderr(&o);
    assert!(
        read_alerts(&d.path("again.jsonl")).is_empty(),
        "no new alerts: {err}"
    );
    // copies of an event at other positions are still copies, no more, no fewer
    assert_eq!(dup_line(&err), dups_first);
    assert!(err.contains("reprocessed:   "), "{err}");
}

#[test]
fn stdin_and_dash_are_read() {
    let line = r#"{"event_id":"a","received_at":"2026-11-28T00:00:00Z","key_id":"k","nonce":"n","client_ts":"2026-11-28T00:00:00Z","client_ip":"1.2.3.4","method":"GET","path":"/","status":200}
{"event_id":"b","received_at":"2026-11-28T00:00:01Z","key_id":"k","nonce":"n","client_ts":1795824000500,"client_ip":"1.2.3.5","method":"GET","path":"/","status":200}
"#;
    for args in [vec!["scan", "--quiet"], vec!["scan", "--quiet", "-"]] {
        let o = run(&args, Some(line.as_bytes()));
        assert!(o.status.success(), "{}", stderr(&o));
        let alerts = alerts_in(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].kind.as_str(), alerts[0].event_id.as_str()),
            ("replay", "b")
        );
    }
}

#[test]
fn malformed_lines_never_stop_the_scan() {
    let d = Dir::new();
    let good = |id: &str, n: &str| {
        format!(
            r#"{{"event_id":"{id}","received_at":1795824000000,"key_id":"k","nonce":"{n}","client_ts":1795824000000,"client_ip":"1.2.3.4","method":"GET","path":"/","status":200}}"#
        )
    };
    let mut input = Vec::new();
    input.extend_from_slice(good("a", "n").as_bytes());
    input.extend_from_slice(b"\n\xff\xfe not utf8\n{\"event_id\":\"trunc\n[1,2]\n");
    input.extend_from_slice(&vec![b'{'; 200_000]);
    input.extend_from_slice(b"\n");
    input.extend_from_slice(good("b", "n").as_bytes());
    input.extend_from_slice(b"\n");
    // good lines the majority: a few bad ones are no reason to exit 1
    for i in 0..3 {
        input.extend_from_slice(good(&format!("c{i}"), &format!("u{i}")).as_bytes());
        input.extend_from_slice(b"\n");
    }
    let p = d.path("in.jsonl");
    std::fs::write(&p, &input).unwrap();
    let dl = d.path("dl.jsonl");
    let o = scan_ok(&[("--dead-letter", &dl)], &[&p]);
    let alerts = alerts_in(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(alerts.len(), 1, "the neighbours of bad lines are processed");
    let letters = read_json_lines(&dl);
    let got: Vec<(u64, &str)> = letters
        .iter()
        .map(|l| {
            (
                l["offset"].as_u64().unwrap(),
                l["error_kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(2, "utf8"), (3, "syntax"), (4, "schema"), (5, "too_large")]
    );
    assert!(letters[0]["raw_base64"].is_string());
    assert_eq!(letters[3]["len"].as_u64(), Some(200_000));
    assert_eq!(letters[3]["truncated"].as_bool(), Some(true));
    assert!(stderr(&o).contains("malformed:     4"));
}

#[test]
fn a_state_dir_in_use_is_a_clear_error() {
    let d = Dir::new();
    let state = d.path("state");
    let _held = replayguard::state::RocksStore::open(&state, &Default::default()).unwrap();
    let o = run(&["scan", "--state-dir", state.to_str().unwrap()], Some(b""));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("in use by another replayguard process"),
        "{}",
        stderr(&o)
    );
}

/// A gzip-compressed log (a rotated one, or two members concatenated as
/// `cat a.gz b.gz` makes them), as a file or on stdin, scans to exactly the
/// alerts of the plain text, and its dead letters name the decompressed
/// line; a truncated one is an error that names the file and says gzip.
#[test]
fn gzip_input_scans_as_the_plain_text_does() {
    use std::io::Write;
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 5_000,
            seed: 11,
            malformed_rate: 0.002,
            ..Default::default()
        },
    );
    let text = std::fs::read(&t.events).unwrap();
    let half = text.len() / 2
        + text[text.len() / 2..]
            .iter()
            .position(|&c| c == b'\n')
            .unwrap()
        + 1;
    let mut two = gz(&text[..half]);
    two.extend(gz(&text[half..]));
    let packed = d.path("events.jsonl.gz");
    std::fs::write(&packed, &two).unwrap();
    let scan_to = |name: &str, input: &std::path::Path| {
        let (alerts, dl) = (
            d.path(&format!("{name}.jsonl")),
            d.path(&format!("{name}-dl.jsonl")),
        );
        scan_ok(
            &[
                ("--lifecycle", &t.lifecycle),
                ("--alerts", &alerts),
                ("--dead-letter", &dl),
            ],
            &[input],
        );
        (std::fs::read(&alerts).unwrap(), read_json_lines(&dl))
    };
    let (plain, plain_dl) = scan_to("plain", &t.events);
    let (packed_alerts, packed_dl) = scan_to("packed", &packed);
    assert!(!plain.is_empty());
    assert_eq!(packed_alerts, plain, "the same alerts, byte for byte");
    assert!(!plain_dl.is_empty());
    let at = |l: &Vec<serde_json::Value>| -> Vec<u64> {
        l.iter().map(|x| x["offset"].as_u64().unwrap()).collect()
    };
    assert_eq!(
        at(&packed_dl),
        at(&plain_dl),
        "dead letters at the same lines"
    );
    // on stdin
    let lifecycle = t.lifecycle.to_str().unwrap();
    let o = run(
        &["scan", "--quiet", "--lifecycle", lifecycle, "-"],
        Some(&two),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        alerts_in(&String::from_utf8_lossy(&o.stdout)).len(),
        alerts_in(&String::from_utf8_lossy(&plain)).len()
    );
    // truncated: an error naming the input, exit 1
    let cut = d.path("cut.jsonl.gz");
    std::fs::write(&cut, &two[..two.len() / 3]).unwrap();
    let o = run(&["scan", "--quiet", cut.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("cut.jsonl.gz") && err.contains("gzip"),
        "{err}"
    );
}

/// A plain file is read through a memory map by default (`scan.mmap`):
/// with it and with `read`, on one thread and on three, the same alerts
/// and dead letters come out byte for byte, from a file with a byte-order
/// mark, malformed and oversize lines and no newline at its end, given
/// twice (the second time read after a gzip file).
#[test]
fn a_mapped_file_scans_as_a_read_one_does() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 20_000,
            seed: 23,
            disorder_ms: 20_000,
            malformed_rate: 0.003,
            ..Default::default()
        },
    );
    let mut text = b"\xEF\xBB\xBF".to_vec();
    text.extend(std::fs::read(&t.events).unwrap());
    text.extend_from_slice(&vec![b'x'; 70_000]);
    text.extend_from_slice(b"\n\n");
    let last = event("tail", T0, "k", "n", "10.0.0.1");
    text.extend_from_slice(last.as_bytes());
    let input = d.path("bom.jsonl");
    std::fs::write(&input, &text).unwrap();
    let packed = d.path("small.jsonl.gz");
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(format!("{}\n", event("gz", T0, "k", "n", "10.0.0.2")).as_bytes())
            .unwrap();
        std::fs::write(&packed, e.finish().unwrap()).unwrap();
    }
    let scan_with = |name: &str, mmap: bool, threads: usize| {
        let cfg = d.write(
            &format!("{name}.toml"),
            &format!(
                "[scan]\nmmap = {mmap}\nbatch_events = 5000\n[pipeline]\nthreads = {threads}\n"
            ),
        );
        let (alerts, dl) = (
            d.path(&format!("{name}.jsonl")),
            d.path(&format!("{name}-dl.jsonl")),
        );
        scan_ok(
            &[
                ("--config", &cfg),
                ("--lifecycle", &t.lifecycle),
                ("--alerts", &alerts),
                ("--dead-letter", &dl),
            ],
            &[&input, &packed, &input],
        );
        (std::fs::read(&alerts).unwrap(), std::fs::read(&dl).unwrap())
    };
    let read = scan_with("read", false, 1);
    assert!(read.0.len() > 1000 && read.1.len() > 1000);
    assert!(String::from_utf8_lossy(&read.1).contains("too_large"));
    for (name, mmap, threads) in [
        ("mapped", true, 1),
        ("mapped3", true, 3),
        ("read3", false, 3),
    ] {
        let got = scan_with(name, mmap, threads);
        assert!(got.0 == read.0, "{name}: the same alerts, byte for byte");
        assert!(
            got.1 == read.1,
            "{name}: the same dead letters, byte for byte"
        );
    }
}

/// A mapped file that ends exactly at a page boundary, inside its last
/// request (no newline after it): nothing is read past the end of the map
/// (that page is not mapped), and the request is judged.
#[test]
fn a_mapped_file_ending_at_a_page_boundary_reads_its_last_request() {
    let d = Dir::new();
    let first = event("p1", T0, "k", "n", "10.0.0.1");
    let mut text = format!("{first}\n");
    let second = event("p2", T0 + 1000, "k", "n", "10.0.0.2");
    // pad the second request's path so that the file is two pages long
    let pad = 8192 - text.len() - second.len();
    let second = second.replacen(
        "\"path\":\"/",
        &format!("\"path\":\"/{}", "a".repeat(pad)),
        1,
    );
    assert_ne!(
        second.len(),
        event("p2", T0 + 1000, "k", "n", "10.0.0.2").len()
    );
    text.push_str(&second);
    assert_eq!(text.len(), 8192);
    let input = d.write("paged.jsonl", &text);
    let o = run(&["scan", input.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let alerts = alerts_in(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(alerts.len(), 1, "{}", stderr(&o));
    assert_eq!(alerts[0].event_id, "p2");
}

/// Hundreds of input files (a year of rotated logs is thousands) under a
/// limit of 64 open files: each is opened when it is read, so the scan
/// gives the alerts of the same lines in one file. A directory among the
/// inputs is a usage error that names it.
#[test]
fn many_inputs_are_opened_one_at_a_time() {
    let d = Dir::new();
    let t = traffic(
        &d,
        &GenConfig {
            events: 3_000,
            seed: 5,
            ..Default::default()
        },
    );
    let text = std::fs::read_to_string(&t.events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let parts = std::fs::create_dir_all(d.path("parts"))
        .map(|_| d.path("parts"))
        .unwrap();
    let mut names = Vec::new();
    for (i, chunk) in lines.chunks(10).enumerate() {
        let p = parts.join(format!("part-{i:04}.jsonl"));
        std::fs::write(&p, chunk.join("\n") + "\n").unwrap();
        names.push(p.to_str().unwrap().to_string());
    }
    assert!(names.len() >= 300);
    let whole = d.path("whole.jsonl");
    scan_ok(&[("--alerts", &whole)], &[&t.events]);
    let split = d.path("split.jsonl");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && alerts=\"$1\" && shift && exec \"$0\" scan --quiet --alerts \"$alerts\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_replayguard"))
        .arg(&split)
        .args(&names)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (
        std::fs::read(&whole).unwrap(),
        std::fs::read(&split).unwrap(),
    );
    assert!(!a.is_empty());
    assert_eq!(
        alerts_in(&String::from_utf8_lossy(&a)).len(),
        alerts_in(&String::from_utf8_lossy(&b)).len()
    );
    assert_eq!(keyset(&read_alerts(&whole)), keyset(&read_alerts(&split)));
    // a directory: exit 2, named
    let o = run(&["scan", "--quiet", parts.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

/// A file (or stdin) starting with a UTF-8 byte-order mark: the mark is
/// skipped, the first line is an event like the others.
#[test]
fn a_byte_order_mark_is_skipped_not_dead_lettered() {
    let d = Dir::new();
    let mut text = "\u{feff}".to_string();
    text.push_str(&event("e1", T0, "k", "n", "10.0.0.1"));
    text.push('\n');
    text.push_str(&event("e2", T0 + 1000, "k", "n", "10.0.0.2"));
    text.push('\n');
    let input = d.write("bom.jsonl", &text);
    for args in [vec!["scan", input.to_str().unwrap()], vec!["scan", "-"]] {
        let stdin = (args[1] == "-").then_some(text.as_bytes());
        let o = run(&args, stdin);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("malformed:     0"), "{err}");
        let alerts = alerts_in(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(alerts.len(), 1, "{err}");
        assert_eq!(alerts[0].event_id, "e2");
    }
}

/// Counter nonces with stale counters planted, `detect.sequence = "on"`:
/// scan raises exactly the generator's ground truth (which follows the same
/// config), out_of_sequence alerts included, with their evidence.
#[test]
fn sequence_numbers_out_of_order_are_reported_by_scan() {
    let d = Dir::new();
    let config = d.path("seq.toml");
    std::fs::write(&config, "[detect]\nsequence = \"on\"\n").unwrap();
    let (events, truth, lifecycle) = (
        d.path("ev.jsonl"),
        d.path("truth.jsonl"),
        d.path("lc.jsonl"),
    );
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run_ok(
        &[
            "generate",
            "--events",
            "20000",
            "--keys",
            "20",
            "--disorder-ms",
            "30000",
            "--nonces",
            "counter",
            "--out-of-sequence-rate",
            "0.01",
            "--config",
            &p(&config),
            "--out",
            &p(&events),
            "--truth",
            &p(&truth),
            "--lifecycle",
            &p(&lifecycle),
        ],
        None,
    );
    let truth: Vec<replayguard::generate::TruthLine> = read_json_lines(&truth)
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let alerts = d.path("alerts.jsonl");
    scan_ok(
        &[
            ("--config", &config),
            ("--lifecycle", &lifecycle),
            ("--alerts", &alerts),
        ],
        &[&events],
    );
    let got = read_alerts(&alerts);
    assert_eq!(keyset(&got), truth_keyset(&truth));
    let seq: Vec<_> = got
        .iter()
        .filter(|a| a.kind == replayguard::schema::AlertKind::OutOfSequence)
        .collect();
    assert!(seq.len() >= 50, "{} out_of_sequence alerts", seq.len());
    for a in seq {
        a.check().unwrap();
        let replayguard::schema::Evidence::Sequence(q) = &a.evidence else {
            panic!("{a:?}")
        };
        assert!(a.received_at - q.larger_received_at > q.tolerance_ms);
        assert!(a.request.is_some());
    }
    // the rule off (the default): none
    let off = d.path("off.jsonl");
    scan_ok(
        &[("--lifecycle", &lifecycle), ("--alerts", &off)],
        &[&events],
    );
    assert!(!read_alerts(&off)
        .iter()
        .any(|a| a.kind == replayguard::schema::AlertKind::OutOfSequence));
}

#[test]
fn dash_outputs_are_stdout() {
    let d = Dir::new();
    let line = r#"{"event_id":"a","received_at":"2026-11-28T00:00:00Z","key_id":"k","nonce":"n","client_ts":"2026-11-28T00:00:00Z","client_ip":"1.2.3.4","method":"GET","path":"/","status":200}
{"event_id":"b","received_at":"2026-11-28T00:00:01Z","key_id":"k","nonce":"n","client_ts":1795824000500,"client_ip":"1.2.3.5","method":"GET","path":"/","status":200}
not json
"#;
    let input = d.path("in.jsonl");
    std::fs::write(&input, line).unwrap();
    let input = input.to_str().unwrap();
    let cwd = d.path("");
    let run_in = |args: &[&str]| {
        let mut c = bin();
        c.current_dir(&cwd).args(args);
        c.output().unwrap()
    };
    // --alerts -: the alerts on stdout, and no file called "-"
    let o = run_in(&["scan", "--quiet", "--alerts", "-", input]);
    assert!(o.status.success(), "{}", stderr(&o));
    let alerts = alerts_in(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(alerts.len(), 1);
    assert!(!d.path("-").exists());
    // --dead-letter -: the dead letter on stdout, the alerts in their file
    let file = d.path("alerts.jsonl");
    let o = run_in(&[
        "scan",
        "--quiet",
        "--alerts",
        file.to_str().unwrap(),
        "--dead-letter",
        "-",
        input,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let dead: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{out}");
    assert_eq!(dead[0]["offset"], 3);
    assert_eq!(read_alerts(&file).len(), 1);
    assert!(!d.path("-").exists());
    // both on stdout: refused up front (usage, exit 2)
    let o = run_in(&["scan", "--quiet", "--dead-letter", "-", input]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--dead-letter -"), "{}", stderr(&o));
    // convert and generate take "-" as stdout too
    let o = run_in(&["convert", "--output", "-", "--allow-dead-letters", input]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    let o = run_in(&["generate", "--events", "10", "--out", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 10);
    let o = run_in(&[
        "generate", "--events", "10", "--out", "ev.jsonl", "--truth", "-",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(alerts_in(&String::from_utf8_lossy(&o.stdout)).len() <= 10);
    assert_eq!(
        std::fs::read_to_string(d.path("ev.jsonl"))
            .unwrap()
            .lines()
            .count(),
        10
    );
    let o = run_in(&["generate", "--events", "10", "--lifecycle", "-"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!d.path("-").exists());
}
