//! The configuration tree (TOML). Each section belongs to the component it
//! configures, which owns its defaults and its checks; this module only
//! puts them together, in one step: read the file, resolve `${NAME}`
//! references, deserialize (unknown fields refused), apply the command-line
//! flags and the `REPLAYGUARD_*` variables, resolve derived values once
//! ([`Config::sanitize`]), and refuse contradictions with the reason
//! ([`Config::validate`]).
//!
//! Durations and sizes are written as [`crate::units`] says.

mod env;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use env::{Env, KAFKA_ENV_PREFIX};

use crate::decode::{DecodeConfig, InputConfig};
use crate::detect::{DetectConfig, UsageConfig};
use crate::http::HttpConfig;
use crate::pipeline::kafka::KafkaConfig;
use crate::pipeline::scan::ScanConfig;
use crate::pipeline::PipelineConfig;
use crate::report::ReportConfig;
use crate::state::StateConfig;

pub use crate::units::{ByteSize, DurationMs};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub detect: DetectConfig,
    pub usage: UsageConfig,
    pub input: InputConfig,
    pub decode: DecodeConfig,
    pub state: StateConfig,
    pub scan: ScanConfig,
    pub pipeline: PipelineConfig,
    pub kafka: KafkaConfig,
    pub report: ReportConfig,
    pub http: HttpConfig,
}

impl Config {
    /// Reads, resolves and validates a TOML file against the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::resolve(Some(path), &Env::process(), |_| {})
    }

    /// The one way to a configuration: the file (none: every default),
    /// `${NAME}` references, `flags` (the command line), the `REPLAYGUARD_*`
    /// variables, derived values, checks.
    pub fn resolve(
        path: Option<&Path>,
        env: &Env,
        flags: impl FnOnce(&mut Config),
    ) -> Result<Config, ConfigError> {
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.display().to_string(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "<defaults>".to_string()),
        };
        let mut c = Self::read(&text, env).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: name.clone(),
                message,
            },
            e => e,
        })?;
        flags(&mut c);
        c.apply_env(env);
        c.sanitize();
        c.validate()?;
        Ok(c)
    }

    /// Parses and validates TOML text, with `${NAME}` references resolved
    /// from the process environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, &Env::process())
    }

    /// [`Config::parse`] with the environment given by `env`.
    pub fn parse_with_env(text: &str, env: &Env) -> Result<Config, ConfigError> {
        let mut c = Self::read(text, env)?;
        c.apply_env(env);
        c.sanitize();
        c.validate()?;
        Ok(c)
    }

    /// TOML text to a config: `${NAME}` references resolved in every string,
    /// then deserialized section by section.
    fn read(text: &str, env: &Env) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: "<text>".into(),
            message,
        };
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        for (k, v) in tree.iter_mut() {
            env::interpolate(v, k, env)?;
        }
        toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))
    }

    /// The `REPLAYGUARD_KAFKA_*` properties and `REPLAYGUARD_HTTP_TOKEN`.
    fn apply_env(&mut self, env: &Env) {
        self.kafka.apply_env(env);
        if self.http.token.is_none() {
            self.http.token = env.var("REPLAYGUARD_HTTP_TOKEN").filter(|t| !t.is_empty());
        }
    }

    /// Resolves derived values, once: the retention, the reports' straggler count.
    pub fn sanitize(&mut self) {
        self.detect.sanitize();
        // the settings `[pipeline]` replaced still work, with a warning
        if let Some(d) = self.kafka.commit_interval.take() {
            crate::telemetry::DeprecatedSetting {
                old: "kafka.commit_interval",
                new: "pipeline.max_commit_delay",
            }
            .emit();
            self.pipeline.max_commit_delay = d;
        }
        if let Some(n) = self.kafka.batch_records.take() {
            crate::telemetry::DeprecatedSetting {
                old: "kafka.batch_records",
                new: "pipeline.batch_events",
            }
            .emit();
            self.pipeline.batch_events = n;
        }
        self.pipeline.sanitize();
        self.report.top_clients = self.usage.top_clients;
    }

    /// Rejects contradictions, naming the setting and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::Invalid;
        self.detect.validate().map_err(invalid)?;
        self.usage.validate().map_err(invalid)?;
        self.input.validate().map_err(invalid)?;
        self.decode.validate().map_err(invalid)?;
        self.state.validate().map_err(invalid)?;
        self.scan.validate().map_err(invalid)?;
        self.pipeline.validate().map_err(invalid)?;
        self.kafka.validate()?;
        self.report.validate().map_err(invalid)?;
        self.http.validate().map_err(invalid)?;
        Ok(())
    }

    /// The effective configuration as TOML (defaults and derived values filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// [`Config::to_toml`] with secrets replaced by `"<redacted>"`: the HTTP
    /// token and every librdkafka property that may hold one (what
    /// `check-config` prints).
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        if c.http.token.is_some() {
            c.http.token = Some(REDACTED.into());
        }
        for props in [
            &mut c.kafka.properties,
            &mut c.kafka.consumer_properties,
            &mut c.kafka.producer_properties,
        ] {
            for (k, v) in props.iter_mut() {
                if is_secret_property(k) {
                    *v = REDACTED.into();
                }
            }
        }
        c.to_toml()
    }
}

const REDACTED: &str = "<redacted>";

/// Whether a librdkafka property may hold a secret: its name contains
/// password, secret, jaas, token, key or credential (sasl.password,
/// ssl.key.password, ssl.key.pem, sasl.oauthbearer.client.secret,
/// sasl.oauthbearer.config's token, ssl.keystore.password…). Paths to key
/// files are redacted too: better a path hidden than a key shown.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "key", "credential"]
        .iter()
        .any(|w| n.contains(w))
        || n == "sasl.oauthbearer.config"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_batches_are_set_in_pipeline_and_the_old_kafka_names_still_work() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.pipeline.max_commit_delay, DurationMs(5));
        assert_eq!(c.pipeline.batch_events, 20_000);
        let c =
            Config::parse("[pipeline]\nmax_commit_delay = \"2ms\"\nbatch_events = 100\n").unwrap();
        assert_eq!(
            (c.pipeline.max_commit_delay, c.pipeline.batch_events),
            (DurationMs(2), 100)
        );
        // deprecated: read into [pipeline], not printed back under the old name
        let c =
            Config::parse("[kafka]\ncommit_interval = \"20ms\"\nbatch_records = 500\n").unwrap();
        assert_eq!(
            (c.pipeline.max_commit_delay, c.pipeline.batch_events),
            (DurationMs(20), 500)
        );
        assert_eq!(
            (c.kafka.commit_interval, c.kafka.batch_records),
            (None, None)
        );
        let printed = c.to_toml();
        assert!(!printed.contains("commit_interval"), "{printed}");
        assert_eq!(Config::parse(&printed).unwrap(), c);
        for bad in [
            "[pipeline]\nbatch_events = 0\n",
            "[pipeline]\nmax_commit_delay = \"2m\"\n",
            "[kafka]\nbatch_records = 0\n",
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.contains("pipeline."), "{bad}: {e}");
        }
        Config::parse("[pipeline]\nmax_commit_delay = 0\n").unwrap();
    }

    #[test]
    fn secrets_are_redacted_in_the_printed_config() {
        let c = Config::parse(
            r#"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "replayguard"
"sasl.password" = "hunter2-sasl"
"ssl.key.location" = "/etc/replayguard/client.key"
"ssl.key.password" = "hunter2-key"
[kafka.producer_properties]
"ssl.key.pem" = "-----BEGIN PRIVATE KEY-----hunter2-pem"
[kafka.consumer_properties]
"sasl.oauthbearer.client.secret" = "hunter2-oauth"
[http]
token = "hunter2-http"
"#,
        )
        .unwrap();
        let out = c.to_toml_redacted();
        assert!(!out.contains("hunter2"), "{out}");
        // the key file's path too: every name with "key" is redacted
        assert_eq!(out.matches(REDACTED).count(), 6, "{out}");
        for kept in ["replayguard", "SCRAM-SHA-512", "SASL_SSL"] {
            assert!(out.contains(kept), "{kept} is not a secret: {out}");
        }
        // the unredacted form is untouched
        assert!(c.to_toml().contains("hunter2-sasl"));
    }

    #[test]
    fn environment_references_are_resolved_and_unset_ones_refused() {
        let env = Env::from_pairs([("PW", "s3cret"), ("BROKERS", "k1:9092,k2:9092")]);
        let c = Config::parse_with_env(
            "[kafka]\nbrokers = \"${BROKERS}\"\ninput_topics = [\"a-${PW}\"]\n\
             [kafka.properties]\n\"sasl.password\" = \"${PW}\"\n\
             [report]\ntopic = \"literal-$${PW}\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.input_topics, vec!["a-s3cret".to_string()]);
        assert_eq!(c.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(c.report.topic, "literal-${PW}");
        assert!(
            c.to_toml_redacted()
                .contains("\"sasl.password\" = \"<redacted>\""),
            "{}",
            c.to_toml_redacted()
        );
        let e = Config::parse_with_env("[kafka]\nbrokers = \"${NOPE}\"", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NOPE") && e.contains("kafka.brokers"), "{e}");
        for bad in ["${}", "${A-B}", "${unclosed"] {
            let text = format!("[kafka]\nbrokers = \"{bad}\"");
            assert!(Config::parse_with_env(&text, &env).is_err(), "{bad}");
        }
    }

    #[test]
    fn kafka_properties_and_the_token_come_from_the_environment() {
        let env = Env::from_pairs([
            ("REPLAYGUARD_KAFKA_SASL_PASSWORD", "pw-from-env"),
            ("REPLAYGUARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("REPLAYGUARD_HTTP_TOKEN", "tok-from-env"),
            ("REPLAYGUARD_KAFKAESQUE", "not a property"),
        ]);
        let c = Config::parse_with_env(
            "[kafka.properties]\n\"security.protocol\" = \"PLAINTEXT\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "pw-from-env");
        assert_eq!(
            c.kafka.properties["security.protocol"], "SASL_SSL",
            "env overrides the file"
        );
        assert_eq!(c.kafka.properties.len(), 2);
        assert_eq!(c.http.token.as_deref(), Some("tok-from-env"));
        let out = c.to_toml_redacted();
        assert!(
            !out.contains("pw-from-env") && !out.contains("tok-from-env"),
            "{out}"
        );
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::parse("").unwrap();
        let r = c.detect;
        assert_eq!(
            (
                r.max_past_skew_ms,
                r.max_future_skew_ms,
                r.allowed_lateness_ms,
                r.retention_ms
            ),
            (300_000, 30_000, 60_000, 390_000)
        );
        assert_eq!(c.decode.max_event_bytes, 65_536);
        // the printed form parses back to the same config
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn durations_and_sizes() {
        let c = Config::parse(
            "[detect]\nmax_past_skew = \"2m\"\nmax_future_skew = 1500\nallowed_lateness = \"250ms\"\n\
             [state]\nblock_cache = \"128MiB\"\nwrite_buffer = 8388608\n",
        )
        .unwrap();
        assert_eq!(c.detect.retention_ms, 120_000 + 1_500 + 250);
        assert_eq!(c.state.block_cache.0, 128 << 20);
        assert!(Config::parse("[detect]\nmax_past_skew = \"1.5ns\"").is_err());
        assert!(Config::parse("[detect]\nmax_past_skew = -5").is_err());
        assert!(Config::parse("[state]\nblock_cache = \"12 parsecs\"").is_err());
    }

    fn refused(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn short_retention_is_refused_with_the_reason() {
        let e = refused("[detect]\nretention = \"389999ms\"");
        assert!(e.contains("shorter than"), "{e}");
        assert!(e.contains("slip through"), "{e}");
        assert!(Config::parse("[detect]\nretention = \"390s\"").is_ok());
        assert!(Config::parse("[detect]\nretention = \"8d\"").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = refused("[detect]\nmax_past_skw = \"1s\"");
        assert!(e.contains("max_past_skw"), "{e}");
        assert!(Config::parse("[nonsense]\n").is_err());
    }
}

/// Bounded, stable-Rust equivalent of fuzz/fuzz_targets/config_parse.rs:
/// arbitrary and mutated TOML never panics the parser, and whatever it
/// accepts is valid and survives its printed form.
#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"
[detect]
max_past_skew = "5m"
max_future_skew = "30s"
allowed_lateness = "1m"
retention = "390s"
[decode]
max_event_bytes = "64KiB"
[state]
block_cache = "64MiB"
sync = false
[kafka]
brokers = "127.0.0.1:9092"
group = "g"
input_topics = ["a", "b"]
commit_interval = "20ms"
[pipeline]
batch_events = 1000
[kafka.properties]
"security.protocol" = "SASL_SSL"
[report]
interval = "1m"
[http]
listen = "127.0.0.1:9898"
token = "t"
"#;

    fn check(text: &str) {
        if let Ok(c) = Config::parse(text) {
            c.validate().unwrap();
            assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "{text}");
            Config::parse(&c.to_toml_redacted()).unwrap();
        }
    }

    #[test]
    fn the_seed_config_is_valid() {
        // otherwise every mutation would be refused and the test vacuous
        check(FULL);
        Config::parse(FULL).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            check(&text);
        }

        #[test]
        fn mutated_configs_never_panic(
            at in 0..FULL.len(),
            insert in "[\\[\\]=\"a-z0-9._ \n-]{0,12}",
            cut in 0..20usize,
        ) {
            let mut s = FULL.to_string();
            let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + cut).min(s.len());
            s.replace_range(at..end, &insert);
            check(&s);
        }

        #[test]
        fn any_duration_and_size_text_never_panics(d in "\\PC{0,16}", z in "\\PC{0,16}") {
            check(&format!("[detect]\nmax_past_skew = {d:?}\n[decode]\nmax_event_bytes = {z:?}\n"));
        }
    }
}
