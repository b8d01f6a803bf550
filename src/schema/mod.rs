//! Wire types, version-tagged; no logic beyond (de)serialization.
//!
//! The JSON Schemas in `schemas/` describe the same formats; tests check the
//! golden examples there against both.

pub mod access;
pub mod alert;
pub mod lifecycle;
pub mod timestamp;

pub use access::AccessEvent;
pub use alert::{Alert, AlertKind, Evidence, Severity};
pub use lifecycle::{KeyState, LifecycleEvent};
pub use timestamp::Millis;
