//! HTTP Digest authentication (RFC 2617, MD5, `qop="auth"`) as the device's server
//! side: challenges in the firmware's form (`stale="false"`, `qop="auth"`, as in the
//! AMT 15.0.23 replies captured in RPS's tests), parsing `Authorization: Digest …`, and
//! verification from the stored HA1 = MD5(`user:realm:password`), which is what
//! `SetAdminAclEntryEx` delivers. RFC 2069 responses (no `qop`) verify only when the
//! caller allows them ([`super::Behaviour::require_qop_auth`] off).

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

/// `WWW-Authenticate` value for `realm` and `nonce`, spelled like the firmware's.
pub fn challenge(realm: &str, nonce: &str) -> String {
    format!("Digest realm=\"{realm}\", nonce=\"{nonce}\",stale=\"false\",qop=\"auth\"")
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
/// server needs is missing (`nc` and `cnonce` are needed only with a `qop`).
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
    let complete = [&c.username, &c.nonce, &c.uri, &c.response]
        .iter()
        .all(|f| !f.is_empty())
        && (c.qop.is_empty() || (!c.nc.is_empty() && !c.cnonce.is_empty()));
    complete.then_some(c)
}

/// The expected `response`: RFC 2617 `qop=auth`, or RFC 2069 without `qop`.
pub fn expected_response(ha1: &[u8; 16], method: &str, c: &Credentials) -> String {
    let ha2 = hex(&md5_joined(&[method.as_bytes(), c.uri.as_bytes()]));
    if c.qop.is_empty() {
        return hex(&md5_joined(&[
            hex(ha1).as_bytes(),
            c.nonce.as_bytes(),
            ha2.as_bytes(),
        ]));
    }
    hex(&md5_joined(&[
        hex(ha1).as_bytes(),
        c.nonce.as_bytes(),
        c.nc.as_bytes(),
        c.cnonce.as_bytes(),
        b"auth",
        ha2.as_bytes(),
    ]))
}

/// What a response must look like to be checked at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qop {
    /// Only `qop=auth` (RFC 2617), as firmware requires.
    AuthOnly,
    /// `qop=auth`, or no `qop` (RFC 2069).
    AllowRfc2069,
}

/// Whether `c` proves knowledge of `ha1` for `user`@`realm` (nonce and URI are
/// checked by the caller).
pub fn verify(
    c: &Credentials,
    method: &str,
    user: &str,
    realm: &str,
    ha1: &[u8; 16],
    qop: Qop,
) -> bool {
    let qop_ok = c.qop == "auth" || (c.qop.is_empty() && qop == Qop::AllowRfc2069);
    if c.username != user || c.realm != realm || !qop_ok {
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
        let realm = "testrealm@host.com";
        assert!(verify(&c, "GET", "Mufasa", realm, &h, Qop::AuthOnly));
        assert!(!verify(&c, "POST", "Mufasa", realm, &h, Qop::AuthOnly));
        let wrong = ha1("Mufasa", "testrealm@host.com", "circle of life");
        assert!(!verify(&c, "GET", "Mufasa", realm, &wrong, Qop::AuthOnly));
    }

    #[test]
    fn rfc2069_responses_verify_only_when_allowed() {
        // RFC 2069 §2.4 example (password "CircleOfLife"): MD5(HA1:nonce:HA2).
        let h = ha1("Mufasa", "testrealm@host.com", "CircleOfLife");
        let mut c = parse(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"x\"",
        )
        .unwrap();
        c.response = expected_response(&h, "GET", &c);
        assert_eq!(c.response, "1949323746fe6a43ef61f9606e7febea");
        let realm = "testrealm@host.com";
        assert!(verify(&c, "GET", "Mufasa", realm, &h, Qop::AllowRfc2069));
        assert!(!verify(&c, "GET", "Mufasa", realm, &h, Qop::AuthOnly));
        // qop=auth without nc/cnonce is incomplete.
        assert!(parse(
            "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", qop=auth"
        )
        .is_none());
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
