//! Topics `run` writes to, created when they are missing
//! (`kafka.create_topics`).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use super::client::{ClientFactory, Role};
use crate::pipeline::kafka::KafkaConfig;
use crate::pipeline::PipelineError;

/// Creates the alert, dead-letter, reports, usage (compacted) and
/// repartition topics when missing (with the broker's default replication).
pub(super) fn create_topics(
    clients: &ClientFactory,
    k: &KafkaConfig,
    report_topic: &str,
) -> Result<(), PipelineError> {
    let admin: AdminClient<DefaultClientContext> =
        clients.create("Kafka admin client", &clients.config(Role::Admin, None))?;
    let mut names = vec![k.alert_topic.clone(), k.dead_letter_topic.clone()];
    if !report_topic.is_empty() {
        names.push(report_topic.to_string());
    }
    if k.repartition {
        names.push(k.repartition_topic());
    }
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(15))
        .map_err(PipelineError::kafka(format!(
            "Kafka metadata from {}",
            k.brokers
        )))?;
    let existing: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    let missing: Vec<NewTopic<'_>> = names
        .iter()
        .filter(|n| !existing.contains(&n.as_str()))
        .map(|n| NewTopic::new(n, k.topic_partitions, TopicReplication::Fixed(-1)))
        .collect();
    // the usage changelog keeps the newest record of every key
    let mut missing = missing;
    if !k.usage_topic.is_empty() && !existing.contains(&k.usage_topic.as_str()) {
        missing.push(
            NewTopic::new(
                &k.usage_topic,
                k.topic_partitions,
                TopicReplication::Fixed(-1),
            )
            .set("cleanup.policy", "compact"),
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PipelineError::io(
            "starting an async runtime for the admin client",
        ))?;
    let res = rt
        .block_on(admin.create_topics(missing.iter(), &AdminOptions::new()))
        .map_err(PipelineError::kafka("creating topics"))?;
    for r in res {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created topic"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((t, e)) => tracing::warn!(topic = %t, error = %e, "could not create topic"),
        }
    }
    Ok(())
}
