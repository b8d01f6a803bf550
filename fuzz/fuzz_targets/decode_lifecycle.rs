//! Any bytes through the key-lifecycle decoder: never a panic, only typed
//! errors; an accepted event names a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replayguard::decode::Decoder;

fuzz_target!(|data: &[u8]| {
    match Decoder::default().lifecycle(data) {
        Ok(ev) => assert!(!ev.key_id.is_empty()),
        Err(e) => assert!(!e.kind().is_empty()),
    }
});
