//! Any bytes through the access-event decoder: it never panics, every
//! failure is a typed error, and whenever the fast path accepts a line,
//! serde_json (the reference) decodes the same event from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replayguard::decode::{self, Decoder};

fuzz_target!(|data: &[u8]| {
    let d = Decoder::default();
    match d.access(data) {
        Ok(ev) => {
            assert!(!ev.event_id.is_empty() && !ev.key_id.is_empty());
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            if let Some(fast) = decode::fast_path(text) {
                let reference: replayguard::schema::AccessEvent<'_> = serde_json::from_str(text)
                    .expect("serde_json accepts what the fast path accepts");
                assert_eq!(fast, reference);
            }
        }
        Err(e) => {
            // every error has a category and a message for the dead letter
            assert!(!e.kind().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
});
