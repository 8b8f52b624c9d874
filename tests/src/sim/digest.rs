//! HTTP Digest authentication (RFC 2617, MD5, `qop="auth"`) as the device's server
//! side: challenges, parsing `Authorization: Digest …`, and verification from the
//! stored HA1 = MD5(`user:realm:password`), which is what `SetAdminAclEntryEx`
//! delivers.

use md5::{Digest as _, Md5};

/// MD5 of `parts` joined by `:`.
pub fn md5_joined(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p);
    }
    h.finalize().into()
}

/// HA1 = MD5(`user:realm:password`).
pub fn ha1(user: &str, realm: &str, password: &str) -> [u8; 16] {
    md5_joined(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random nonce (32 hex characters).
pub fn new_nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

/// `WWW-Authenticate` value for `realm` and `nonce`.
pub fn challenge(realm: &str, nonce: &str) -> String {
    format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", qop=\"auth\"")
}

/// The fields of an `Authorization: Digest` header this server uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub qop: String,
    pub nc: String,
    pub cnonce: String,
}

/// Parses `Digest k=v, k="v", …`. `None` if it is not a Digest header or a field this
/// server needs is missing.
pub fn parse(header: &str) -> Option<Credentials> {
    let (scheme, mut rest) = header.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut c = Credentials::default();
    loop {
        rest = rest.trim_start_matches(|ch: char| ch == ',' || ch.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "username" => &mut c.username,
            "realm" => &mut c.realm,
            "nonce" => &mut c.nonce,
            "uri" => &mut c.uri,
            "response" => &mut c.response,
            "qop" => &mut c.qop,
            "nc" => &mut c.nc,
            "cnonce" => &mut c.cnonce,
            _ => {
                rest = next;
                continue;
            }
        };
        *slot = value.to_string();
        rest = next;
    }
    let complete = [&c.username, &c.nonce, &c.uri, &c.response, &c.nc, &c.cnonce]
        .iter()
        .all(|f| !f.is_empty());
    complete.then_some(c)
}

/// The expected `response` for `qop=auth`.
pub fn expected_response(ha1: &[u8; 16], method: &str, c: &Credentials) -> String {
    let ha2 = hex(&md5_joined(&[method.as_bytes(), c.uri.as_bytes()]));
    hex(&md5_joined(&[
        hex(ha1).as_bytes(),
        c.nonce.as_bytes(),
        c.nc.as_bytes(),
        c.cnonce.as_bytes(),
        b"auth",
        ha2.as_bytes(),
    ]))
}

/// Whether `c` proves knowledge of `ha1` for `user`@`realm` (nonce and URI are
/// checked by the caller).
pub fn verify(c: &Credentials, method: &str, user: &str, realm: &str, ha1: &[u8; 16]) -> bool {
    if c.username != user || c.realm != realm || c.qop != "auth" {
        return false;
    }
    let expected = expected_response(ha1, method, c);
    let given = c.response.to_ascii_lowercase();
    expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_verifies() {
        // RFC 2617 §3.5 (Mufasa / "Circle Of Life"), with qop=auth.
        let c = parse(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
             response=\"6629fae49393a05397450978507c4ef1\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        let h = ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert!(verify(&c, "GET", "Mufasa", "testrealm@host.com", &h));
        assert!(!verify(&c, "POST", "Mufasa", "testrealm@host.com", &h));
        let wrong = ha1("Mufasa", "testrealm@host.com", "circle of life");
        assert!(!verify(&c, "GET", "Mufasa", "testrealm@host.com", &wrong));
    }

    #[test]
    fn hostile_headers_are_rejected_without_panicking() {
        for h in [
            "",
            "Digest",
            "Basic YWRtaW46YWRtaW4=",
            "Digest username=\"admin",
            "Digest =,=,=",
            "Digest username=admin",
            "Digest \u{e9}=\"\u{e9}\"",
        ] {
            assert!(parse(h).is_none(), "{h}");
        }
    }
}
