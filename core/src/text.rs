//! Text that came from outside — devices, hellos, plugins, sign-in names — made safe
//! to store and to log: [`cap`] bounds its size (cut on a character boundary, with a
//! marker saying how long it was), [`escape_control`] makes control characters
//! visible so that no such text can end a log line early or forge another one.

use std::borrow::Cow;
use std::fmt::Write;

/// Cuts `text` to at most `max` bytes (on a character boundary), ending a cut text
/// with a marker saying how many bytes it had. `max` must leave room for the marker
/// (at least 64 bytes); shorter texts are returned as they are.
pub fn cap(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let marker = format!("… [cut: {} bytes in all]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{marker}", &text[..end]))
}

/// `text` with every control character (CR, LF, ESC, …, and the Unicode line and
/// paragraph separators) written as an escape: `\r`, `\n`, `\t`, `\u{1b}`.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_log_line() {
        let forged = "mismatch\r\n2026-12-07T06:00:00Z INFO device provisioned\u{1b}[2J\u{2028}";
        let escaped = escape_control(forged);
        assert!(!escaped.chars().any(|c| c.is_control() || c == '\u{2028}'));
        assert_eq!(
            escaped,
            "mismatch\\r\\n2026-12-07T06:00:00Z INFO device provisioned\\u{1b}[2J\\u{2028}"
        );
        assert!(matches!(escape_control("plain text ü"), Cow::Borrowed(_)));
    }

    #[test]
    fn capped_text_is_cut_on_a_character_boundary_with_a_marker() {
        let long = "ü".repeat(600_000); // 1.2 MB, two bytes a character
        let capped = cap(&long, 2048);
        assert!(capped.len() <= 2048, "{}", capped.len());
        assert!(
            capped.ends_with("… [cut: 1200000 bytes in all]"),
            "{capped}"
        );
        assert!(capped.starts_with("üü"));
        assert_eq!(cap("short", 2048), "short");
    }
}
