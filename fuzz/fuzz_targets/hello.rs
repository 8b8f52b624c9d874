//! A hello message as received on TCP port 9971 (`vprov_core::hello::parse`).
//! The entry point is `vprov_core::fuzzing::hello`; seeds are in `fuzz/corpus/hello/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vprov_core::fuzzing::hello(data);
});
