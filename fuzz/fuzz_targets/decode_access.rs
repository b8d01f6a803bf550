//! Any bytes through the access-event decoder (v1 and every gateway
//! format): it never panics, every failure is a typed error, and whenever
//! the fast path judges a line, serde_json (the reference slow path) judges
//! it the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replayguard::decode::{self, DecodeConfig, Decoder, Format, InputConfig};

fuzz_target!(|data: &[u8]| {
    for format in Format::ALL {
        let input = InputConfig {
            format,
            ..InputConfig::default()
        };
        let d = Decoder::new(&DecodeConfig::default(), &input).expect("every preset resolves");
        match d.access(data) {
            Ok(ev) => {
                assert!(!ev.event_id.is_empty());
                assert!(ev.key_id.as_deref().is_none_or(|k| !k.is_empty()) || format != Format::V1);
            }
            Err(e) => {
                // every error has a category and a message for the dead letter
                assert!(!e.kind().is_empty());
                assert!(!e.to_string().is_empty());
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(fast) = decode::fast_path(text) {
            let slow = decode::slow_path(text);
            assert_eq!(fast.map_err(|e| e.kind()), slow.map_err(|e| e.kind()));
        }
    }
});
