//! Units of the configuration: durations and sizes, as people write them.
//!
//! Durations are strings like `"300s"`, `"5m"`, `"250ms"` or integers of
//! milliseconds; sizes are strings like `"64MiB"` or integers of bytes. A
//! leaf module: every section's config uses it, it uses nothing of ours.
//!
//! Fields kept as plain integers (the detector's rule parameters, read on
//! the hot path) use the [`ms`] and [`bytes`] serde helpers; the others use
//! the [`DurationMs`] and [`ByteSize`] types. Both parse and print the same way.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct DurationMs(pub i64);

impl DurationMs {
    pub const fn secs(s: i64) -> Self {
        DurationMs(s * 1000)
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl Serialize for DurationMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationMs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration like \"300s\", \"5m\", \"250ms\" or an integer of milliseconds",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationMs, E> {
                if v < 0 {
                    return Err(E::custom("a duration must not be negative"));
                }
                Ok(DurationMs(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationMs, E> {
                i64::try_from(v)
                    .map(DurationMs)
                    .map_err(|_| E::custom("duration too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationMs, E> {
                let d = humantime::parse_duration(v.trim())
                    .map_err(|e| E::custom(format!("bad duration {v:?}: {e}")))?;
                if d.as_nanos() % 1_000_000 != 0 {
                    return Err(E::custom(format!(
                        "bad duration {v:?}: the resolution is one millisecond"
                    )));
                }
                i64::try_from(d.as_millis())
                    .map(DurationMs)
                    .map_err(|_| E::custom("duration too large"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `"64MiB"`, `"1GiB"`, `"512KiB"`, `"10MB"`, `"4096"`.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {v:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "bad size {v:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {v:?} too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"64MiB\" or an integer of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `#[serde(with = "crate::units::ms")]` for an `i64` of milliseconds.
pub mod ms {
    use super::DurationMs;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        DurationMs(*v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        DurationMs::deserialize(d).map(|v| v.0)
    }
}

/// `#[serde(with = "crate::units::bytes")]` for a `usize` of bytes.
pub mod bytes {
    use super::ByteSize;
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &usize, s: S) -> Result<S::Ok, S::Error> {
        ByteSize(*v as u64).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let v = ByteSize::deserialize(d)?.0;
        usize::try_from(v).map_err(|_| de::Error::custom("size too large"))
    }
}
