//! Usage and configuration errors, exit codes.

use crate::util::*;

#[test]
fn check_config_accepts_a_valid_file_and_prints_the_effective_config() {
    let d = Dir::new();
    let p = d.write("ok.toml", "[detect]\nmax_past_skew = \"2m\"\n");
    let o = run(&["check-config", p.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("max_past_skew = \"120s\""), "{out}");
    assert!(out.contains("max_event_bytes"), "defaults are shown: {out}");
}

#[test]
fn contradictions_and_typos_exit_2_with_the_reason() {
    let d = Dir::new();
    for (text, needle) in [
        ("[detect]\nretention = \"100s\"\n", "slip through"),
        ("[detect]\nmax_past_skw = \"1s\"\n", "max_past_skw"),
        ("[detect]\nmax_past_skew = \"soon\"\n", "bad duration"),
        ("not toml [", "config file"),
    ] {
        let p = d.write("bad.toml", text);
        let o = run(&["check-config", p.to_str().unwrap()], None);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(stderr(&o).contains(needle), "{text}: {}", stderr(&o));
        let o = run(&["scan", "--config", p.to_str().unwrap()], Some(b""));
        assert_eq!(o.status.code(), Some(2), "scan refuses it too");
    }
}

#[test]
fn usage_errors_exit_2() {
    let d = Dir::new();
    let o = run(&["scan", d.path("missing.jsonl").to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read input"));
    let o = run(&["scan", "--no-such-flag"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        &["check-config", d.path("nope.toml").to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let a = run(&["generate", "--events", "500", "--seed", "5"], None);
    let b = run(&["generate", "--events", "500", "--seed", "5"], None);
    let c = run(&["generate", "--events", "500", "--seed", "6"], None);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    assert_eq!(String::from_utf8_lossy(&a.stdout).lines().count(), 500);
}

#[test]
fn check_config_never_prints_secrets() {
    let d = Dir::new();
    let p = d.write(
        "secret.toml",
        "[kafka.properties]\n\"sasl.password\" = \"planted-sasl-secret\"\n[http]\ntoken = \"planted-http-token\"\n",
    );
    let o = run(&["check-config", p.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!all.contains("planted"), "{all}");
    assert!(all.contains("sasl.password"), "{all}");
}

#[test]
fn kafka_properties_librdkafka_refuses_exit_2_naming_the_property() {
    let d = Dir::new();
    // no broker is needed to find out: clients are created before any IO
    let p = d.write(
        "bad-props.toml",
        &format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\ncreate_topics = false\n\
             [kafka.consumer_properties]\n\"no.such.property\" = \"1\"\n\
             [state]\ndir = \"{}\"\n[http]\nlisten = \"\"\n",
            d.path("state").display()
        ),
    );
    let o = run(&["run", "--config", p.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no.such.property"), "{}", stderr(&o));
}
