//! Repartitioning (`kafka.repartition = true`): input records are forwarded
//! to `<group>-repartition` keyed by their key_id before detection, as Kafka
//! Streams does, so every event of a key reaches one partition.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::BaseRecord;

use crate::pipeline::PipelineError;
use crate::sink::kafka as ksink;
use crate::sink::SinkError;

pub(super) struct Forwarder {
    producer: Arc<ksink::Producer_>,
    topic: String,
}

impl Forwarder {
    pub(super) fn new(producer: Arc<ksink::Producer_>, topic: String) -> Self {
        Forwarder { producer, topic }
    }

    /// Produces `payload` keyed by `key` (waiting for room in the queue).
    pub(super) fn forward(&self, key: &[u8], payload: &[u8]) -> Result<(), PipelineError> {
        let rec = BaseRecord::<[u8], [u8], ()>::to(&self.topic)
            .key(key)
            .payload(payload);
        ksink::send(&self.producer, rec).map_err(|e| {
            PipelineError::Sink(SinkError::Delivery(format!(
                "forwarding to {}: {e}",
                self.topic
            )))
        })
    }

    /// Waits until every forwarded record is acknowledged: the input offsets
    /// that pass them may be committed only then.
    pub(super) fn wait_acked(&self) -> Result<(), PipelineError> {
        ksink::wait_acked(&self.producer, Duration::from_secs(65))
            .map_err(|e| PipelineError::Sink(SinkError::Delivery(format!("forwarding: {e}"))))
    }
}
