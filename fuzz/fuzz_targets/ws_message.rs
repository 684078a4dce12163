//! WebSocket text frames of `/v1/ws`: a known message, or an `error` frame's code and
//! message — never a panic (a `subscribe`'s selection checked as far as it needs no
//! database).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        changecast::fuzzing::parse_ws_message(text);
    }
});
