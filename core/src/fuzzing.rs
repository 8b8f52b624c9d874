//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly): each takes
//! the raw input of one parser of outside data, runs it the way vprov does and says
//! whether the input was accepted. A panic, a hang or unbounded memory is a finding.
//!
//! Compiled only with the `fuzzing` feature (off by default; `fuzz/Cargo.toml` turns
//! it on) and in this crate's unit tests, where every seed in `fuzz/corpus/<target>/`
//! (and every minimised regression in `fuzz/regressions/<target>/`) is run through
//! the same entry points on stable, without libFuzzer.
//!
//! Not part of vprov's API: nothing here changes behaviour.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, SERVER, WWW_AUTHENTICATE};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::device::{http, wsman};

/// The targets, by the name of their `fuzz/fuzz_targets/<name>.rs` and corpus folder.
pub const TARGETS: [&str; 5] = [
    "hello",
    "wsman_reply",
    "http_response",
    "setupbin",
    "config",
];

/// Runs one input through the named target: whether it was accepted. Panics on an
/// unknown name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "hello" => hello(data),
        "wsman_reply" => wsman_reply(data),
        "http_response" => http_response(data),
        "setupbin" => setupbin(data),
        "config" => config(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// The hello listener's parsing: [`crate::hello::parse`], then the PID as
/// `server/hello_listener.rs` reads it.
pub fn hello(data: &[u8]) -> bool {
    let Ok(hello) = crate::hello::parse(data) else {
        return false;
    };
    let _ = hello.header().uuid.to_string();
    if let crate::hello::Hello::Psk { pid, .. } = hello {
        let shown: String = pid
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect();
        let _ = shown.parse::<crate::keys::Pid>();
    }
    true
}

/// A WS-Man reply body as the connector reads it (`device/amt.rs`: UTF-8 or
/// Malformed), through every reply parser of `device/wsman.rs`. Every element of a
/// parsed body is serialised again the way a Put sends it back, and must be
/// well-formed XML holding as many elements. Accepted: a body or a SOAP fault.
pub fn wsman_reply(data: &[u8]) -> bool {
    let Ok(xml) = std::str::from_utf8(data) else {
        return false;
    };
    let _ = wsman::parse_enumerate_response(xml);
    if let Ok(page) = wsman::parse_pull_response(xml) {
        page.items.iter().for_each(check_reserialised);
    }
    for (class, method) in [
        ("AMT_SetupAndConfigurationService", "GetUuid"),
        ("AMT_PublicKeyManagementService", "AddCertificate"),
        ("AMT_TimeSynchronizationService", "GetLowAccuracyTimeSynch"),
    ] {
        if let Ok(output) = wsman::parse_method_output(xml, &wsman::amt_uri(class), method) {
            check_reserialised(&output);
        }
    }
    match wsman::reply_body(xml) {
        Ok(body) => {
            for element in &body {
                check_reserialised(element);
                let _ = element.selector("InstanceID");
            }
            true
        }
        Err(_) => wsman::fault_in(xml).is_some(),
    }
}

fn check_reserialised(element: &wsman::Element) {
    let xml = element.to_xml();
    let doc = roxmltree::Document::parse(&xml)
        .unwrap_or_else(|e| panic!("re-serialised element is not XML ({e}): {xml}"));
    let elements = doc.descendants().filter(|n| n.is_element()).count();
    assert_eq!(elements, element.element_count(), "{xml}");
}

/// A `WWW-Authenticate` value through the Digest challenge parser (`device/http.rs`):
/// whether it is a usable Digest challenge.
pub fn digest_challenge(value: &str) -> bool {
    matches!(http::parse_challenge(value), Ok(Some(_)))
}

/// `data` as a device's whole answer to one `POST /wsman`, read the way
/// `device/http.rs` reads it: hyper's HTTP/1.1 client connection (over an in-memory
/// pipe instead of TLS; the device closes its side after `data`), the status, the
/// `WWW-Authenticate` values through [`digest_challenge`], `Connection: close`, the
/// `Server` header, and the body capped at [`http::MAX_BODY`] bytes. Accepted: a
/// whole response was read.
pub fn http_response(data: &[u8]) -> bool {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(http_exchange(data)))
}

async fn http_exchange(data: &[u8]) -> bool {
    const ENVELOPE: &[u8] = b"<Envelope/>";
    // A TLS record's worth per write: large answers arrive in several reads.
    let (client, mut device) = tokio::io::duplex(16 * 1024);
    // The device answers once it has the whole request, then closes its side.
    let answer = async {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(ENVELOPE) {
            match device.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = device.write_all(data).await;
        let _ = device.shutdown().await;
    };
    let exchange = async {
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(client)).await
        else {
            return false;
        };
        let request = async move {
            let request = Request::builder()
                .method(Method::POST)
                .uri("/wsman")
                .header(HOST, "192.0.2.1:16992")
                .header(CONTENT_TYPE, "application/soap+xml;charset=UTF-8")
                .body(Full::new(Bytes::from_static(ENVELOPE)))
                .expect("a valid request");
            sender.ready().await.ok()?;
            let response = sender.send_request(request).await.ok()?;
            let headers = response.headers();
            for value in headers.get_all(WWW_AUTHENTICATE) {
                if let Ok(value) = value.to_str() {
                    let _ = digest_challenge(value);
                }
            }
            let _close = headers
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
            let _server: Option<String> = headers
                .get(SERVER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(128).collect());
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), http::MAX_BODY)
                .collect()
                .await
                .ok()?
                .to_bytes();
            assert!(body.len() <= http::MAX_BODY);
            Some(status)
            // `sender` is dropped here, so the connection ends.
        };
        tokio::join!(request, conn).0.is_some()
    };
    tokio::join!(answer, exchange).1
}

/// A setup.bin through the decoder (`plugins/setupbin`), its entries shown as
/// `vprov keys inspect-setupbin` shows them; a decoded file that encodes again must
/// decode to the same file (entries compared in the encoder's order).
pub fn setupbin(data: &[u8]) -> bool {
    use setupbin::SetupBin;
    let Ok(mut file) = SetupBin::decode(data) else {
        return false;
    };
    for entry in file.records.iter().flat_map(|r| &r.entries) {
        let _ = entry.to_string();
        let _ = entry.display_value(true);
    }
    let Ok(bytes) = file.encode() else {
        return true;
    };
    let mut again = SetupBin::decode(&bytes).expect("an encoded file decodes");
    for r in file.records.iter_mut().chain(again.records.iter_mut()) {
        r.entries.sort_by_key(|e| (e.module, e.variable));
    }
    assert_eq!(again, file);
    true
}

/// Configuration file text through [`crate::config::Config::parse`] (non-UTF-8
/// files fail to read before parsing).
pub fn config(data: &[u8]) -> bool {
    std::str::from_utf8(data)
        .is_ok_and(|text| crate::config::Config::parse(text, Path::new("fuzz.toml")).is_ok())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Every seed and regression input of every target, on stable, without libFuzzer:
    /// no panic, and every seed is accepted unless its name starts with `bad-`.
    #[test]
    fn fuzz_corpora_run_clean() {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        for target in TARGETS {
            let mut inputs = 0;
            for folder in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    let data = std::fs::read(&path).expect("a readable input");
                    let accepted = std::panic::catch_unwind(|| run(target, &data))
                        .unwrap_or_else(|_| panic!("{target} panics on {}", path.display()));
                    let bad = path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("bad-"));
                    assert!(
                        accepted || bad || folder == "regressions",
                        "{target} refuses its seed {}",
                        path.display()
                    );
                    inputs += 1;
                }
            }
            assert!(inputs >= 3, "{target}: only {inputs} seed inputs");
        }
    }
}
