//! A WS-Man reply body through the reply parsers of `device/wsman.rs`.
//! The entry point is `vprov_core::fuzzing::wsman_reply`; seeds are in `fuzz/corpus/wsman_reply/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vprov_core::fuzzing::wsman_reply(data);
});
