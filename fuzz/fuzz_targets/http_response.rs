//! A device's answer to `POST /wsman`, read by hyper's HTTP/1.1 client as `device/http.rs` does,
//! `WWW-Authenticate` values through the Digest challenge parser.
//! The entry point is `vprov_core::fuzzing::http_response`; seeds are in `fuzz/corpus/http_response/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vprov_core::fuzzing::http_response(data);
});
