//! A setup.bin file through the decoder of `plugins/setupbin` (and back through the encoder).
//! The entry point is `vprov_core::fuzzing::setupbin`; seeds are in `fuzz/corpus/setupbin/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vprov_core::fuzzing::setupbin(data);
});
