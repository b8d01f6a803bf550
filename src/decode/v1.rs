//! Access event v1: the fields of the native format, found by the fast path
//! ([`super::fast`]) or by serde_json (everything else), then converted by
//! one set of typed conversions ([`super::value`]).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::value::{self, Raw};
use super::DecodeError;
use crate::schema::AccessEvent;

/// The fields of access event v1, in the order of [`Fields::vals`].
pub const NAMES: [&str; 12] = [
    "event_id",
    "received_at",
    "key_id",
    "nonce",
    "client_ts",
    "client_ip",
    "method",
    "path",
    "status",
    "user_agent",
    "client_id",
    "signature",
];

pub const EVENT_ID: usize = 0;
pub const RECEIVED_AT: usize = 1;
pub const KEY_ID: usize = 2;
pub const NONCE: usize = 3;
pub const CLIENT_TS: usize = 4;
pub const CLIENT_IP: usize = 5;
pub const METHOD: usize = 6;
pub const PATH: usize = 7;
pub const STATUS: usize = 8;
pub const USER_AGENT: usize = 9;
pub const CLIENT_ID: usize = 10;
pub const SIGNATURE: usize = 11;

/// The field index of a v1 field name.
#[inline]
pub fn field_index(name: &str) -> Option<usize> {
    Some(match name {
        "event_id" => EVENT_ID,
        "received_at" => RECEIVED_AT,
        "key_id" => KEY_ID,
        "nonce" => NONCE,
        "client_ts" => CLIENT_TS,
        "client_ip" => CLIENT_IP,
        "method" => METHOD,
        "path" => PATH,
        "status" => STATUS,
        "user_agent" => USER_AGENT,
        "client_id" => CLIENT_ID,
        "signature" => SIGNATURE,
        _ => return None,
    })
}

/// The raw value of each v1 field found in a record (`None`: absent).
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub vals: [Option<Raw<'a>>; 12],
}

impl<'a> Fields<'a> {
    fn take(&mut self, i: usize) -> Option<Raw<'a>> {
        self.vals[i].take()
    }

    /// The access event these fields make, or the first field that is
    /// wrong. Takes the values out (by reference: the fields are never
    /// moved, see [`super::fast::access_known`]).
    #[inline(always)]
    pub fn build(&mut self) -> Result<AccessEvent<'a>, DecodeError> {
        let n = &NAMES;
        Ok(AccessEvent {
            event_id: value::nonempty(n[EVENT_ID], self.take(EVENT_ID))?,
            received_at: value::timestamp(n[RECEIVED_AT], self.take(RECEIVED_AT))?,
            key_id: value::opt_nonempty(n[KEY_ID], self.take(KEY_ID))?,
            nonce: value::opt_string(n[NONCE], self.take(NONCE))?,
            client_ts: value::opt_timestamp(n[CLIENT_TS], self.take(CLIENT_TS))?,
            client_ip: value::string(n[CLIENT_IP], self.take(CLIENT_IP))?,
            method: value::string(n[METHOD], self.take(METHOD))?,
            path: value::string(n[PATH], self.take(PATH))?,
            status: value::status(n[STATUS], self.take(STATUS))?,
            user_agent: value::opt_string(n[USER_AGENT], self.take(USER_AGENT))?,
            client_id: value::opt_string(n[CLIENT_ID], self.take(CLIENT_ID))?,
            signature: value::opt_string(n[SIGNATURE], self.take(SIGNATURE))?,
        })
    }

    /// [`Fields::build`] into `out` (built there field by field, not
    /// copied: see [`super::Decoder::access_into`]).
    pub fn build_into(
        &mut self,
        out: &mut std::mem::MaybeUninit<Result<AccessEvent<'a>, DecodeError>>,
    ) {
        out.write(self.build());
    }
}

/// Wraps a present value, `null` included (absent stays `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The v1 object as serde_json reads it: each known field as its raw text.
/// serde refuses duplicate fields and skips unknown ones (iteratively: deep
/// nesting in an unknown field costs no stack).
#[derive(Deserialize)]
#[serde(rename = "AccessEvent")]
struct RawV1<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    received_at: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    key_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    nonce: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    client_ts: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    client_ip: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    path: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    status: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user_agent: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    client_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    signature: Option<&'a RawValue>,
}

pub fn json_error(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => DecodeError::Schema(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => DecodeError::Syntax(e.to_string()),
    }
}

/// The slow path: any JSON serde_json accepts.
pub fn slow(text: &str) -> Result<Fields<'_>, DecodeError> {
    let r: RawV1<'_> = serde_json::from_str(text).map_err(json_error)?;
    let all = [
        r.event_id,
        r.received_at,
        r.key_id,
        r.nonce,
        r.client_ts,
        r.client_ip,
        r.method,
        r.path,
        r.status,
        r.user_agent,
        r.client_id,
        r.signature,
    ];
    let mut f = Fields::default();
    for (slot, raw) in f.vals.iter_mut().zip(all) {
        if let Some(raw) = raw {
            *slot = Some(Raw::from_json_text(raw.get())?);
        }
    }
    Ok(f)
}
