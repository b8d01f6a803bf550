//! The key-lifecycle topic as a global table: every instance reads it whole
//! (from the beginning, to the high watermarks as of startup) before it
//! consumes events, then follows it while running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::BaseConsumer;

use super::client::{ClientFactory, Role};
use super::runtime::{lock, Runtime};
use crate::pipeline::kafka::KafkaConfig;
use crate::pipeline::PipelineError;
use crate::source::kafka::{self as ksrc, LifecycleMsg};
use crate::source::{MessageKey, Payload, Record};

pub(super) struct LifecycleReader {
    rx: Option<Receiver<LifecycleMsg>>,
    topic: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    caught_up: bool,
}

impl LifecycleReader {
    /// Starts reading (nothing to read when `kafka.lifecycle_topic` is "").
    pub(super) fn start(clients: &ClientFactory, k: &KafkaConfig) -> Result<Self, PipelineError> {
        let stop = Arc::new(AtomicBool::new(false));
        if k.lifecycle_topic.is_empty() {
            return Ok(LifecycleReader {
                rx: None,
                topic: String::new(),
                stop,
                thread: None,
                caught_up: true,
            });
        }
        let group = format!("{}-lifecycle", k.group);
        let c: BaseConsumer = clients.create(
            "lifecycle consumer",
            &clients.config(Role::Reader, Some(&group)),
        )?;
        let (tx, rx) = mpsc::channel();
        let (topic, s) = (k.lifecycle_topic.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("lifecycle".into())
            .spawn(move || ksrc::read_lifecycle(c, topic, tx, s))
            .map_err(PipelineError::io("starting the lifecycle reader"))?;
        Ok(LifecycleReader {
            rx: Some(rx),
            topic: k.lifecycle_topic.clone(),
            stop,
            thread: Some(thread),
            caught_up: false,
        })
    }

    /// Whether everything the topic held at startup has been applied.
    pub(super) fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Applies what the reader sent; undecodable records are dead-lettered.
    pub(super) fn apply(&mut self, rt: &Mutex<Runtime>) -> Result<(), PipelineError> {
        let Some(rx) = &self.rx else {
            return Ok(());
        };
        let mut guard = None;
        while let Ok(msg) = rx.try_recv() {
            let rt: &mut Runtime = guard.get_or_insert_with(|| lock(rt));
            match msg {
                LifecycleMsg::Record {
                    partition,
                    offset,
                    key,
                    bytes,
                } => match rt.decoder.lifecycle(&bytes) {
                    Ok(ev) => {
                        if rt.engine.add_lifecycle(ev) {
                            rt.reporter.invalidate();
                            crate::telemetry::LifecycleUpdated.emit();
                        }
                    }
                    Err(e) => {
                        let name = ksrc::partition_name(&self.topic, partition);
                        let source = rt.engine.source_id(&name);
                        let rec = Record {
                            pos: crate::detect::Position::new(source, offset as u64),
                            payload: Payload::Data(&bytes),
                            key: key
                                .as_deref()
                                .map_or(MessageKey::Absent, MessageKey::Present),
                            plain: false,
                        };
                        let Runtime { engine, dlq, .. } = rt;
                        engine.dead_letter(&name, &rec, &e, dlq)?;
                    }
                },
                LifecycleMsg::CaughtUp => self.caught_up = true,
                LifecycleMsg::Error(e) => tracing::warn!(error = %e, "lifecycle reader"),
            }
        }
        Ok(())
    }

    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
