//! What `run` shares with the HTTP server and the signal handler. Nothing
//! here is behind the poll loop's lock: the loop writes atomics and swaps
//! published snapshots in, readers never wait for it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

/// State of a running detector, for health, readiness and `/v1/status`.
#[derive(Default)]
pub struct Status {
    /// Set to stop: finish the batch, commit, deliver, leave the group.
    pub stop: AtomicBool,
    /// State restored, lifecycle read, partitions assigned.
    pub ready: AtomicBool,
    /// Why the detector is not healthy (e.g. the state store is full), if it is not.
    pub unhealthy: Mutex<Option<String>>,
    /// Consumer lag per partition, from librdkafka's statistics.
    pub lag: Mutex<HashMap<String, i64>>,
    /// Partitions assigned to this instance ("topic/partition").
    pub assigned: Mutex<Vec<String>>,
    pub events: AtomicU64,
    pub alerts: AtomicU64,
    /// Live reports, once the pipeline runs (published at commit time).
    pub reports: OnceLock<Arc<dyn crate::report::ReportSource>>,
}

impl Status {
    pub fn healthy(&self) -> Result<(), String> {
        match &*self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn set_unhealthy(&self, why: Option<String>) {
        *self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub(crate) fn set_assigned(&self, mut names: Vec<String>) {
        names.sort();
        *self.assigned.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }
}
