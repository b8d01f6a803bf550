//! Access event v1: one logged request, as the gateway wrote it.

use std::borrow::Cow;

use serde::Serialize;

use super::timestamp::{self, Millis};

/// One request as logged by the gateway (access event v1).
///
/// Decoding (`decode::Decoder::access`) borrows string fields from the input
/// buffer where no JSON escapes forbid it, so it allocates nothing for a
/// typical line. Unknown fields are ignored, so gateways may log more than
/// this. Serializes as access event v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessEvent<'a> {
    /// Unique per logged request; a redelivered copy keeps it.
    pub event_id: Cow<'a, str>,
    /// Server receive time: the event time every rule uses.
    #[serde(serialize_with = "timestamp::ser")]
    pub received_at: Millis,
    /// API key identifier (never the secret); `None`: an unsigned request
    /// (a public endpoint), which no per-key rule judges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Cow<'a, str>>,
    /// Per-key nonce; `null` or absent means the request carried none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Cow<'a, str>>,
    /// The time the client signed; `None`: the request carried none (the
    /// skew rules do not apply).
    #[serde(
        serialize_with = "timestamp::ser_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ts: Option<Millis>,
    pub client_ip: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    /// HTTP status the gateway answered with.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Cow<'a, str>>,
    /// Request signature. Read so that malformed values are refused, but never
    /// stored or logged by replayguard.
    #[serde(skip_serializing)]
    pub signature: Option<Cow<'a, str>>,
}

impl AccessEvent<'_> {
    /// Highest status accepted; anything above is refused as out of range.
    pub const MAX_STATUS: u16 = 999;

    /// The status class (1..=5 for 1xx..5xx, 0 for anything else).
    pub fn status_class(&self) -> u8 {
        match self.status {
            100..=599 => (self.status / 100) as u8,
            _ => 0,
        }
    }

    /// A copy that owns its strings (for tests, fixtures and evidence).
    pub fn into_owned(self) -> AccessEvent<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        AccessEvent {
            event_id: own(self.event_id),
            received_at: self.received_at,
            key_id: self.key_id.map(own),
            nonce: self.nonce.map(own),
            client_ts: self.client_ts,
            client_ip: own(self.client_ip),
            method: own(self.method),
            path: own(self.path),
            status: self.status,
            user_agent: self.user_agent.map(own),
            client_id: self.client_id.map(own),
            signature: self.signature.map(own),
        }
    }
}
