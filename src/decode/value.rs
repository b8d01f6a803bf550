//! Values as found in a record, and their typed conversion into the fields of
//! an access event. The fast path and the slow path both produce [`Raw`]
//! values; one set of conversions turns them into typed fields, so the two
//! paths cannot disagree on what a field accepts, and every error names the
//! field.

use std::borrow::Cow;

use super::number::{self, Integral};
use super::DecodeError;
use crate::schema::timestamp::{self, Millis};

/// A JSON value in a record. Strings borrow from the record unless they hold
/// an escape; numbers are kept as their text, to be converted exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw<'a> {
    Str(Cow<'a, str>),
    Num(&'a str),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl<'a> Raw<'a> {
    /// What kind of JSON value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Raw::Str(_) => "a string",
            Raw::Num(_) => "a number",
            Raw::Bool(_) => "a boolean",
            Raw::Null => "null",
            Raw::Array => "an array",
            Raw::Object => "an object",
        }
    }

    /// A value from serde_json's raw text of it (the slow path).
    pub fn from_json_text(t: &'a str) -> Result<Raw<'a>, DecodeError> {
        Ok(match t.as_bytes().first() {
            Some(b'"') => {
                let body = &t[1..t.len() - 1];
                if body.contains('\\') {
                    Raw::Str(Cow::Owned(
                        serde_json::from_str::<String>(t)
                            .map_err(|e| DecodeError::Syntax(e.to_string()))?,
                    ))
                } else {
                    Raw::Str(Cow::Borrowed(body))
                }
            }
            Some(b'n') => Raw::Null,
            Some(b't') => Raw::Bool(true),
            Some(b'f') => Raw::Bool(false),
            Some(b'[') => Raw::Array,
            Some(b'{') => Raw::Object,
            _ => Raw::Num(t),
        })
    }
}

fn wrong(field: &str, want: &str, got: &Raw<'_>) -> DecodeError {
    DecodeError::Schema(format!(
        "field `{field}`: expected {want}, found {}",
        got.kind()
    ))
}

pub fn missing(field: &str) -> DecodeError {
    DecodeError::Schema(format!("missing field `{field}`"))
}

/// A required string.
#[inline]
pub fn string<'a>(field: &str, v: Option<Raw<'a>>) -> Result<Cow<'a, str>, DecodeError> {
    match v {
        Some(Raw::Str(s)) => Ok(s),
        Some(other) => Err(wrong(field, "a string", &other)),
        None => Err(missing(field)),
    }
}

/// A required string that must not be empty.
#[inline]
pub fn nonempty<'a>(field: &str, v: Option<Raw<'a>>) -> Result<Cow<'a, str>, DecodeError> {
    let s = string(field, v)?;
    if s.is_empty() {
        return Err(DecodeError::Schema(format!("field `{field}` is empty")));
    }
    Ok(s)
}

/// An optional string that must not be empty when present: absent or null
/// is `None`.
#[inline]
pub fn opt_nonempty<'a>(
    field: &str,
    v: Option<Raw<'a>>,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match v {
        Some(Raw::Null) | None => Ok(None),
        v => nonempty(field, v).map(Some),
    }
}

/// An optional string: absent or null is `None`.
#[inline]
pub fn opt_string<'a>(
    field: &str,
    v: Option<Raw<'a>>,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match v {
        Some(Raw::Str(s)) => Ok(Some(s)),
        Some(Raw::Null) | None => Ok(None),
        Some(other) => Err(wrong(field, "a string or null", &other)),
    }
}

/// An integer field: a JSON number with no fractional part (`200`, `200.0`,
/// `2e2`), exactly.
#[inline]
pub fn integer(field: &str, text: &str) -> Result<i128, DecodeError> {
    if let Some(v) = number::plain_uint(text) {
        return Ok(v as i128);
    }
    integer_slow(field, text)
}

fn integer_slow(field: &str, text: &str) -> Result<i128, DecodeError> {
    let d = number::parse_json(text)
        .ok_or_else(|| DecodeError::Syntax(format!("field `{field}`: not a number")))?;
    match d.integral() {
        Integral::Int(v) => Ok(v),
        Integral::Fraction => Err(DecodeError::Schema(format!(
            "field `{field}`: expected an integer, found a fractional number"
        ))),
        Integral::TooLarge => Err(DecodeError::Schema(format!(
            "field `{field}`: number out of range"
        ))),
    }
}

/// An HTTP status: an integer 0..=999.
#[inline]
pub fn status(field: &str, v: Option<Raw<'_>>) -> Result<u16, DecodeError> {
    let n = match v {
        Some(Raw::Num(t)) => integer(field, t)?,
        Some(other) => return Err(wrong(field, "an integer", &other)),
        None => return Err(missing(field)),
    };
    if !(0..=crate::schema::AccessEvent::MAX_STATUS as i128).contains(&n) {
        return Err(DecodeError::Schema(format!(
            "field `{field}`: {n} is out of range 0..={}",
            crate::schema::AccessEvent::MAX_STATUS
        )));
    }
    Ok(n as u16)
}

/// A v1 timestamp: an RFC 3339 string or an integer of epoch milliseconds.
#[inline]
pub fn timestamp(field: &str, v: Option<Raw<'_>>) -> Result<Millis, DecodeError> {
    let ts = |e: timestamp::TimestampError| DecodeError::Schema(format!("field `{field}`: {e}"));
    match v {
        Some(Raw::Str(s)) => timestamp::parse_rfc3339(&s).map_err(ts),
        Some(Raw::Num(t)) => {
            let v = match number::plain_uint(t) {
                Some(v) => Some(Integral::Int(v as i128)),
                None => number::parse_json(t).map(|d| d.integral()),
            };
            match v {
                Some(Integral::Int(v)) => timestamp::from_epoch_millis(v).map_err(ts),
                Some(Integral::Fraction) => {
                    Err(ts(timestamp::TimestampError::Type("a fractional number")))
                }
                Some(Integral::TooLarge) | None => {
                    Err(ts(timestamp::TimestampError::Type("a number out of range")))
                }
            }
        }
        Some(other) => Err(ts(timestamp::TimestampError::Type(other.kind()))),
        None => Err(missing(field)),
    }
}

/// An optional v1 timestamp: absent or null is `None`.
#[inline]
pub fn opt_timestamp(field: &str, v: Option<Raw<'_>>) -> Result<Option<Millis>, DecodeError> {
    match v {
        Some(Raw::Null) | None => Ok(None),
        v => timestamp(field, v).map(Some),
    }
}
