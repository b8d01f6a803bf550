//! `[kafka]`: the consumer group, the topics, the commit cycle and the
//! librdkafka properties of `run`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::start::StartPolicy;
use crate::config::{ConfigError, Env, KAFKA_ENV_PREFIX};
use crate::units::DurationMs;

/// `[kafka]`: `replayguard run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// bootstrap.servers. Default "127.0.0.1:9092".
    pub brokers: String,
    /// Consumer group of the detectors (group.id). Default "replayguard".
    pub group: String,
    /// Access-event topics. Default ["access-events"].
    pub input_topics: Vec<String>,
    /// Key lifecycle topic (compacted, keyed by key_id), read whole by every
    /// instance. Default "key-lifecycle"; "" disables it.
    pub lifecycle_topic: String,
    /// Where alerts go (key = key_id, headers kind and alert_id). Default "replayguard-alerts".
    pub alert_topic: String,
    /// Where undecodable records go, with headers naming their origin.
    /// Default "replayguard-dead-letters".
    pub dead_letter_topic: String,
    /// Per-key usage as a compacted changelog keyed by key_id: published at
    /// every usage checkpoint, read whole by every instance (a partition
    /// taken over gets its keys' usage back; rotation reports cover every
    /// key of the group). Default "replayguard-usage"; "" disables it (each
    /// instance then reports the keys of its own partitions).
    pub usage_topic: String,
    /// Route events through an internal topic keyed by key_id before
    /// detection, for producers that do not key by key_id. Default false.
    pub repartition: bool,
    /// The internal topic of `repartition`. Default `<group>-repartition`.
    pub repartition_topic: Option<String>,
    /// Create the alert, dead-letter and repartition topics when missing. Default true.
    pub create_topics: bool,
    /// Partitions of topics replayguard creates. Default 4.
    pub topic_partitions: i32,
    /// Deprecated: `pipeline.max_commit_delay` (read into it, with a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_interval: Option<DurationMs>,
    /// Deprecated: `pipeline.batch_events` (read into it, with a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_records: Option<usize>,
    /// Interval of the per-partition lag and rate log lines. Default 30s.
    pub log_interval: DurationMs,
    /// Where a partition with neither local state nor a group offset (a
    /// first deployment) begins: "latest" (default: alerts from the log end
    /// as of assignment, the replay window warmed from the records of the
    /// last retention before it), "earliest" (the whole topic, with alerts)
    /// or an RFC 3339 time (alerts from then on, warmed the same way).
    pub start: StartPolicy,
    /// librdkafka properties for every client (SASL, TLS, timeouts…).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumers only.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producers only.
    pub producer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group: "replayguard".into(),
            input_topics: vec!["access-events".into()],
            lifecycle_topic: "key-lifecycle".into(),
            alert_topic: "replayguard-alerts".into(),
            dead_letter_topic: "replayguard-dead-letters".into(),
            usage_topic: "replayguard-usage".into(),
            repartition: false,
            repartition_topic: None,
            create_topics: true,
            topic_partitions: 4,
            commit_interval: None,
            batch_records: None,
            log_interval: DurationMs::secs(30),
            start: Default::default(),
            properties: Default::default(),
            consumer_properties: Default::default(),
            producer_properties: Default::default(),
        }
    }
}

impl KafkaConfig {
    pub fn repartition_topic(&self) -> String {
        self.repartition_topic
            .clone()
            .unwrap_or_else(|| format!("{}-repartition", self.group))
    }

    /// Sets `kafka.properties` from `REPLAYGUARD_KAFKA_<PROPERTY>` variables
    /// (the property name upper-cased, dots as underscores); they override the
    /// file. librdkafka checks the names like any other property.
    pub fn apply_env(&mut self, env: &Env) {
        for (rest, v) in env.with_prefix(KAFKA_ENV_PREFIX) {
            if rest.is_empty() {
                continue;
            }
            let name = rest.to_ascii_lowercase().replace('_', ".");
            self.properties.insert(name, v.to_string());
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty".into());
        }
        if self.group.trim().is_empty() {
            return bad("kafka.group is empty".into());
        }
        if self.input_topics.is_empty() || self.input_topics.iter().any(|t| t.trim().is_empty()) {
            return bad("kafka.input_topics needs at least one topic name".into());
        }
        if self.alert_topic.is_empty() || self.dead_letter_topic.is_empty() {
            return bad("kafka.alert_topic and kafka.dead_letter_topic must be named".into());
        }
        let outputs = [
            &self.alert_topic,
            &self.dead_letter_topic,
            &self.lifecycle_topic,
            &self.usage_topic,
        ];
        for t in &self.input_topics {
            if outputs.contains(&t) {
                return bad(format!(
                    "topic {t:?} is both an input topic and an output or lifecycle topic"
                ));
            }
        }
        if self.repartition && self.input_topics.contains(&self.repartition_topic()) {
            return bad("kafka.repartition_topic must not be an input topic".into());
        }
        if self.topic_partitions < 1 {
            return bad("kafka.topic_partitions must be at least 1".into());
        }
        for (k, v) in self
            .properties
            .iter()
            .chain(&self.consumer_properties)
            .chain(&self.producer_properties)
        {
            // the guarantees rest on these; refuse overrides instead of breaking them quietly
            let fixed = [
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.idempotence", "true"),
                ("acks", "all"),
            ];
            if let Some((_, want)) = fixed.iter().find(|(f, _)| f == k) {
                if v != want {
                    return bad(format!(
                        "librdkafka property {k}={v} would break replayguard's delivery guarantees \
                         (it is always {want})"
                    ));
                }
            }
            if k == "group.id" || k == "bootstrap.servers" {
                return bad(format!(
                    "set {k} with kafka.group / kafka.brokers, not as a property"
                ));
            }
        }
        Ok(())
    }
}
