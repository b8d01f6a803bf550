//! Wire types, version-tagged; no logic beyond (de)serialization.
//!
//! The JSON Schemas in `schemas/` describe the same formats; tests check the
//! golden examples there against both.

pub mod access;
pub mod alert;
pub mod lifecycle;
pub mod timestamp;

pub use access::AccessEvent;

/// Appends `bytes` to `s` as lower-case hex, two digits a byte (the ids and
/// digests that replayguard writes).
pub fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.reserve(2 * bytes.len());
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
}
pub use alert::{Alert, AlertKind, Evidence, Severity};
pub use lifecycle::{KeyState, LifecycleEvent};
pub use timestamp::Millis;
