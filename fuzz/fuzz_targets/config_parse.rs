//! Any text through the config parser: never a panic; an accepted config is
//! valid and survives its own printed form (what `check-config` prints).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replayguard::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text) {
        c.validate().expect("a parsed config is valid");
        let again = Config::parse(&c.to_toml()).expect("the printed config parses");
        assert_eq!(again, c);
    }
});
