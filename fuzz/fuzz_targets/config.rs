//! Configuration file text through `vprov_core::config::Config::parse`.
//! The entry point is `vprov_core::fuzzing::config`; seeds are in `fuzz/corpus/config/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vprov_core::fuzzing::config(data);
});
