//! Output helpers shared by the subcommands: formats, time stamps, tables,
//! [`outln!`], the `println!` that returns write errors instead of panicking (a closed
//! pipe, as in `vprov … | head`, then ends the command quietly: see `main`), and
//! [`PrivateFile`], how every file holding secrets is written.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// The directory a file is written in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file of secrets (exports, revealed keys) being written: a temporary file beside
/// the destination, created with mode 0600 whatever the umask, moved into place by
/// [`PrivateFile::commit`] once written and synced — without `force` only if the
/// destination still does not exist. Dropped uncommitted (an error), it is removed,
/// so no partial file is ever left behind.
pub struct PrivateFile {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    out: PathBuf,
    force: bool,
}

/// What the command says about a file [`PrivateFile`] wrote.
pub const PRIVATE_MODE_NOTE: &str = "written with mode 0600: only you can read it";

impl PrivateFile {
    pub fn create(out: &Path, force: bool) -> io::Result<PrivateFile> {
        let name = out
            .file_name()
            .ok_or_else(|| io::Error::other("the output path names no file"))?;
        let tmp = parent_dir(out).join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&tmp)?;
        Ok(PrivateFile {
            file: Some(file),
            tmp,
            out: out.to_path_buf(),
            force,
        })
    }

    /// Syncs the file and moves it into place.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("not yet committed");
        file.sync_all()?;
        drop(file);
        if self.force {
            std::fs::rename(&self.tmp, &self.out)?;
        } else {
            // A hard link fails if `out` appeared meanwhile; nothing is overwritten.
            std::fs::hard_link(&self.tmp, &self.out)?;
            std::fs::remove_file(&self.tmp)?;
        }
        if let Ok(d) = std::fs::File::open(parent_dir(&self.out)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for PrivateFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not yet committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not yet committed").flush()
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        // Committed: the temporary name is gone already (linked and removed, or
        // renamed); otherwise remove what was written.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

pub use vprov_core::views::time_s as time;

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
