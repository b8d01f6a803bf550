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

/// librdkafka's own messages quote the value of a property it refuses (a
/// JAAS line with a password, a typo'd password property): neither `run`
/// nor `check-config` ever shows it.
#[test]
fn refused_kafka_properties_are_named_without_their_values() {
    let d = Dir::new();
    for (prop, value) in [
        (
            "sasl.jaas.config",
            "org.apache.kafka.common.security.plain.PlainLoginModule required username=\\\"u\\\" password=\\\"hunter2-jaas\\\";",
        ),
        ("sasl.pasword", "hunter2-typo"),
    ] {
        let p = d.write(
            "props.toml",
            &format!(
                "[kafka]\nbrokers = \"127.0.0.1:1\"\ncreate_topics = false\n\
                 [kafka.properties]\n\"{prop}\" = \"{value}\"\n\
                 [state]\ndir = \"{}\"\n[http]\nlisten = \"\"\n",
                d.path("state").display()
            ),
        );
        for args in [
            vec!["check-config", p.to_str().unwrap()],
            vec!["run", "--config", p.to_str().unwrap()],
        ] {
            let o = run(&args, None);
            let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
            assert_eq!(o.status.code(), Some(2), "{args:?}: {all}");
            assert!(all.contains(prop), "{args:?}: {all}");
            assert!(!all.contains("hunter2"), "{args:?}: {all}");
        }
    }
}

/// Secrets out of config files: `${NAME}` in any string and
/// `REPLAYGUARD_KAFKA_<PROPERTY>` for librdkafka properties; an unset
/// variable is refused, and what is read is redacted when printed.
#[test]
fn secrets_come_from_the_environment_and_stay_out_of_the_output() {
    let d = Dir::new();
    let p = d.write(
        "env.toml",
        "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
         \"sasl.username\" = \"${RG_TEST_USER}\"\n[http]\ntoken = \"${RG_TEST_TOKEN}\"\n",
    );
    let out = bin()
        .args(["check-config", p.to_str().unwrap()])
        .env("RG_TEST_USER", "svc-replayguard")
        .env("RG_TEST_TOKEN", "planted-token-from-env")
        .env(
            "REPLAYGUARD_KAFKA_SASL_PASSWORD",
            "planted-password-from-env",
        )
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("svc-replayguard"), "{all}");
    assert!(all.contains("\"sasl.password\" = \"<redacted>\""), "{all}");
    assert!(!all.contains("planted"), "{all}");
    // an unset variable: exit 2, naming it and where
    let out = bin()
        .args(["check-config", p.to_str().unwrap()])
        .env_remove("RG_TEST_USER")
        .env("RG_TEST_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RG_TEST_USER") && err.contains("sasl.username"),
        "{err}"
    );
}
