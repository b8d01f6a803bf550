//! Key lifecycle event v1: a key's state from a point in event time on.

use serde::{Deserialize, Serialize};

use super::timestamp::{self, Millis};

/// The state of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    /// Being replaced by `successor`; old-key use is tolerated until `grace_until`.
    Rotating,
    Retired,
    /// Final: no later record brings a revoked key back.
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Rotating => "rotating",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }
}

/// Key lifecycle event v1 (the lifecycle topic is compacted and keyed by `key_id`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LifecycleEvent {
    pub key_id: String,
    pub state: KeyState,
    /// From when (event time) this state holds.
    #[serde(with = "timestamp::rfc3339")]
    pub at: Millis,
    /// The key that replaces this one, if any.
    #[serde(default)]
    pub successor: Option<String>,
    /// For `rotating`: old-key use is accepted up to and including this time.
    #[serde(default, with = "timestamp::rfc3339_opt")]
    pub grace_until: Option<Millis>,
}
