//! Query strings of `/v1/events`, `/v1/ws`, `/v1/snapshot`, `/v1/stats`: parsed, or
//! refused with a client error (4xx) — never a panic, never a 5xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        changecast::fuzzing::parse_query(raw);
    }
});
