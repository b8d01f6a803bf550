//! One factory for every Kafka client of `run` (the detector's group
//! consumer, the lifecycle and alert-topic readers, the producers, the admin
//! client): the brokers and the user's librdkafka properties are applied in
//! one place, in one order (replayguard's defaults, then `kafka.properties`,
//! then the consumer or producer properties), and every error librdkafka
//! gives about them is stripped of property values before anyone sees it.

use std::collections::BTreeMap;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::KafkaError;

use super::config::KafkaConfig;
use crate::config::ConfigError;

/// What a client is for; its defaults and which property table applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The detectors' consumer group over the input topics.
    Group,
    /// A consumer that reads a topic without committing (lifecycle table,
    /// alert topic read back, start-position lookups).
    Reader,
    /// Alerts, dead letters and the repartition topic: idempotent, acks=all.
    Producer,
    /// Rotation reports (snapshots: fire and forget, batched).
    ReportProducer,
    Admin,
}

/// Builds every client configuration from `[kafka]`.
#[derive(Debug, Clone)]
pub struct ClientFactory {
    brokers: String,
    group: String,
    common: BTreeMap<String, String>,
    consumer: BTreeMap<String, String>,
    producer: BTreeMap<String, String>,
}

/// The detectors' consumer defaults. The offsets that matter live in
/// RocksDB; the group's commits are made by replayguard itself.
const GROUP_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.partition.eof", "false"),
    // prefetch deep enough that fetching never waits for detection; bounds
    // prefetch memory to 256 MiB
    ("queued.min.messages", "500000"),
    ("queued.max.messages.kbytes", "262144"),
];

const READER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.partition.eof", "false"),
];

const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // alerts go out the moment their commit is written (the commit cycle
    // waits for their acknowledgement); under load librdkafka still batches
    // what queues up while requests are in flight
    ("linger.ms", "0"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "60000"),
];

const REPORT_PRODUCER_DEFAULTS: &[(&str, &str)] = &[("linger.ms", "50")];

impl ClientFactory {
    pub fn new(k: &KafkaConfig) -> Self {
        ClientFactory {
            brokers: k.brokers.clone(),
            group: k.group.clone(),
            common: k.properties.clone(),
            consumer: k.consumer_properties.clone(),
            producer: k.producer_properties.clone(),
        }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The configuration of a client of `role`; `group` names the group of
    /// a reader (readers never commit, but librdkafka wants one).
    pub fn config(&self, role: Role, group: Option<&str>) -> ClientConfig {
        type Props<'a> = Option<&'a BTreeMap<String, String>>;
        let (defaults, specific): (&[(&str, &str)], Props<'_>) = match role {
            Role::Group => (GROUP_DEFAULTS, Some(&self.consumer)),
            Role::Reader => (READER_DEFAULTS, Some(&self.consumer)),
            Role::Producer => (PRODUCER_DEFAULTS, Some(&self.producer)),
            Role::ReportProducer => (REPORT_PRODUCER_DEFAULTS, Some(&self.producer)),
            Role::Admin => (&[], None),
        };
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        match (role, group) {
            (Role::Group, _) => {
                c.set("group.id", &self.group);
            }
            (Role::Reader, Some(g)) => {
                c.set("group.id", g);
            }
            _ => {}
        }
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.common.iter().chain(specific.into_iter().flatten()) {
            c.set(k, v);
        }
        c
    }

    /// Creates a client; an error is a configuration error (exit 2) when
    /// librdkafka refused the properties, with every property value removed.
    pub fn create<T: FromClientConfig>(
        &self,
        what: &str,
        c: &ClientConfig,
    ) -> Result<T, ConfigError> {
        c.create().map_err(|e| creation_error(what, &e, c))
    }

    /// [`ClientFactory::create`] with a context.
    pub fn create_with_context<C: ClientContext, T: FromClientConfigAndContext<C>>(
        &self,
        what: &str,
        c: &ClientConfig,
        ctx: C,
    ) -> Result<T, ConfigError> {
        c.create_with_context(ctx)
            .map_err(|e| creation_error(what, &e, c))
    }

    /// Checks every client's properties the way librdkafka will when `run`
    /// creates them (names and values), without connecting to anything.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (role, what) in [
            (Role::Group, "the consumer"),
            (Role::Reader, "the topic readers"),
            (Role::Producer, "the alert producer"),
            (Role::ReportProducer, "the report producer"),
            (Role::Admin, "the admin client"),
        ] {
            let c = self.config(role, Some("check"));
            c.create_native_config()
                .map_err(|e| creation_error(what, &e, &c))?;
        }
        Ok(())
    }
}

/// A client-creation error without property values: librdkafka's messages
/// (and rdkafka's `Display`) include the value of a refused property, which
/// may be a password or a JAAS line.
pub fn creation_error(what: &str, e: &KafkaError, c: &ClientConfig) -> ConfigError {
    ConfigError::Invalid(format!(
        "{what}: {} (check kafka.properties, kafka.consumer_properties and \
         kafka.producer_properties, and REPLAYGUARD_KAFKA_* variables)",
        redacted(e, c)
    ))
}

/// The text of `e` with the value of every property of `c` removed.
pub fn redacted(e: &KafkaError, c: &ClientConfig) -> String {
    let text = match e {
        KafkaError::ClientConfig(_, desc, key, _) => {
            format!("librdkafka refused the property `{key}`: {desc}")
        }
        e => e.to_string(),
    };
    strip_values(&text, c.config_map().iter().map(|(k, v)| (&k[..], &v[..])))
}

/// Replaces every value of `props` found in `text` by `<redacted>` (longest
/// first, so that a value containing another is removed whole). Values of
/// fewer than three characters (`1`, `all`'s prefix…) are common words of
/// messages and cannot be secrets worth the name: they are left.
pub fn strip_values<'a>(text: &str, props: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut values: Vec<&str> = props
        .filter(|(k, v)| v.len() >= 3 && *k != "bootstrap.servers")
        .map(|(_, v)| v)
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for v in values {
        if out.contains(v) {
            out = out.replace(v, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(props: &[(&str, &str)]) -> ClientFactory {
        let mut k = KafkaConfig::default();
        for (a, b) in props {
            k.properties.insert(a.to_string(), b.to_string());
        }
        ClientFactory::new(&k)
    }

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        for (name, value) in [
            ("sasl.pasword", "hunter2-typo"),
            (
                "sasl.jaas.config",
                "org.apache.kafka.common.security.plain.PlainLoginModule required \
                 username=\"u\" password=\"hunter2-jaas\";",
            ),
            ("security.protocol", "hunter2-protocol"),
        ] {
            let f = factory(&[(name, value)]);
            let e = f.check().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn valid_properties_pass_the_check_without_a_broker() {
        let f = factory(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]);
        f.check().unwrap();
    }

    #[test]
    fn user_properties_override_the_defaults() {
        let mut k = KafkaConfig::default();
        k.consumer_properties
            .insert("queued.min.messages".into(), "1000".into());
        k.producer_properties.insert("linger.ms".into(), "5".into());
        let f = ClientFactory::new(&k);
        let c = f.config(Role::Group, None);
        assert_eq!(c.get("queued.min.messages"), Some("1000"));
        assert_eq!(c.get("group.id"), Some("replayguard"));
        assert_eq!(f.config(Role::Producer, None).get("linger.ms"), Some("5"));
        assert_eq!(f.config(Role::Producer, None).get("acks"), Some("all"));
        assert_eq!(f.config(Role::Reader, Some("r")).get("group.id"), Some("r"));
    }

    #[test]
    fn values_are_stripped_longest_first() {
        let s = strip_values(
            "bad value secret-long and secret",
            [("a", "secret"), ("b", "secret-long"), ("c", "x")].into_iter(),
        );
        assert_eq!(s, "bad value <redacted> and <redacted>");
    }
}
