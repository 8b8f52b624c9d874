//! Output helpers shared by the subcommands: formats, time stamps, tables, and
//! [`outln!`], the `println!` that returns write errors instead of panicking (a closed
//! pipe, as in `vprov … | head`, then ends the command quietly: see `main`).

use std::io::{self, Write};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `println!` to standard output that returns the `io::Result` of the write instead of
/// panicking; use it with `?`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}
pub(crate) use outln;

/// Output format of lists that offer table and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for people
    Table,
    /// A JSON array for scripts
    Json,
}

/// Output format of `keys list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyListFormat {
    /// Aligned columns for people
    Table,
    /// A JSON array for scripts
    Json,
    /// Comma-separated values for spreadsheets
    Csv,
}

/// A store time stamp (Unix milliseconds) as RFC 3339 UTC, to the second.
pub fn time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// An optional value for a table cell.
pub fn cell(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

/// Prints rows under headers with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(&mut out, &mut headers.iter().copied())?;
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str))?;
    }
    out.flush()
}

/// Prints `value` as pretty JSON.
pub fn json(value: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_stamps_are_rfc3339_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_764_000_000_999), "2025-11-24T16:00:00Z");
    }
}
