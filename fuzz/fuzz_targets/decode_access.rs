//! Any bytes through the access-event decoder: it never panics, every
//! failure is a typed error, and whenever the fast path judges a line,
//! serde_json (the reference slow path) judges it the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replayguard::decode::{self, Decoder};

fuzz_target!(|data: &[u8]| {
    let d = Decoder::default();
    match d.access(data) {
        Ok(ev) => {
            assert!(!ev.event_id.is_empty() && !ev.key_id.is_empty());
        }
        Err(e) => {
            // every error has a category and a message for the dead letter
            assert!(!e.kind().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(fast) = decode::fast_path(text) {
            let slow = decode::slow_path(text);
            assert_eq!(fast.map_err(|e| e.kind()), slow.map_err(|e| e.kind()));
        }
    }
});
