//! `export-print`: exports a PID/PPS batch as a printable PDF key sheet (format `pdf`),
//! the list a technician carries to the bench: a title block (batch, comment, date,
//! the provisioning server's address and port), then one row per pair — a tick box,
//! the row number, PID and PPS with dashes in a large DejaVu Sans Mono (whose dotted
//! zero and serifed one tell 0 from O and 1 from I) — and on every page its number,
//! "pairs n–m of N" and a confidentiality footer.
//!
//! Options: `paper=a4|letter` (default a4); `printer=NAME` also sends the sheet to
//! that CUPS printer with `lp -d NAME` (the file is written either way).
//! Rendered with printpdf; the text stays text, so the sheet can be searched.

use std::io::{Cursor, Write};
use std::process::{Command, Stdio};

use printpdf::{
    BuiltinFont, IndirectFontRef, Line, Mm, PdfDocument, PdfDocumentReference, PdfLayerReference,
    Point, Rect,
};
use serde::Deserialize;
use time::macros::format_description;
use time::OffsetDateTime;
use vprov_sdk::{
    Context, ExportFormat, ExportRequest, ExportedFile, KeyExporter, Plugin, PluginError,
    PluginKinds,
};

const MONO: &[u8] = include_bytes!("../fonts/DejaVuSansMono.ttf");

pub struct ExportPrint;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    paper: Option<String>,
    printer: Option<String>,
}

/// Page geometry in millimetres.
struct Paper {
    width: f32,
    height: f32,
}

const MARGIN: f32 = 15.0;
const ROW: f32 = 9.0;
const KEY_PT: f32 = 13.0;
const TITLE_BLOCK: f32 = 38.0;
const FOOTER: f32 = 16.0;

impl Plugin for ExportPrint {
    const NAME: &'static str = "export-print";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "printable PDF key sheets (format pdf)";
    const KINDS: PluginKinds = PluginKinds::KEY_EXPORTER;

    fn new(_context: Context) -> Result<Self, PluginError> {
        Ok(ExportPrint)
    }

    fn key_exporter(&self) -> Option<&dyn KeyExporter> {
        Some(self)
    }
}

impl KeyExporter for ExportPrint {
    fn formats(&self) -> Vec<ExportFormat> {
        vec![ExportFormat {
            name: "pdf".into(),
            description: "printable key sheet for technicians (A4 or Letter)".into(),
            extension: "pdf".into(),
            mime_type: "application/pdf".into(),
            needs_provisioning_password: false,
        }]
    }

    fn export(&self, request: &ExportRequest) -> Result<ExportedFile, PluginError> {
        let options: Options = vprov_sdk::export_options(request, "pdf")?;
        let paper = match options.paper.as_deref() {
            None | Some("a4") => Paper {
                width: 210.0,
                height: 297.0,
            },
            Some("letter") => Paper {
                width: 215.9,
                height: 279.4,
            },
            Some(other) => {
                return Err(PluginError::unsupported(format!(
                    "option paper must be a4 or letter, not {other:?}"
                )))
            }
        };
        let bytes = render(request, &paper)?;
        if let Some(printer) = &options.printer {
            print(printer, &bytes)?;
        }
        Ok(ExportedFile {
            bytes: bytes.into(),
            file_name: format!("vprov-batch-{}.pdf", request.batch_id).into(),
            mime_type: "application/pdf".into(),
        })
    }
}

/// `ABCDEFGH` → `ABCD-EFGH`.
fn dashed(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

fn rows_per_page(paper: &Paper, first: bool) -> usize {
    let top = if first { TITLE_BLOCK + 10.0 } else { 10.0 };
    ((paper.height - 2.0 * MARGIN - top - FOOTER) / ROW).floor() as usize
}

fn render(request: &ExportRequest, paper: &Paper) -> Result<Vec<u8>, PluginError> {
    let fail = |e: printpdf::Error| PluginError::failed(format!("cannot render the PDF: {e}"));
    let total = request.pairs.len();
    let title = format!("vprov provisioning keys, batch {}", request.batch_id);
    let (doc, page, layer) = PdfDocument::new(&title, Mm(paper.width), Mm(paper.height), "keys");
    let mono = doc.add_external_font(Cursor::new(MONO)).map_err(fail)?;
    let sans = doc.add_builtin_font(BuiltinFont::Helvetica).map_err(fail)?;
    let bold = doc
        .add_builtin_font(BuiltinFont::HelveticaBold)
        .map_err(fail)?;

    // Page breaks first, so every footer can say "page n of M".
    let mut pages = Vec::new();
    let mut start = 0;
    while start < total || pages.is_empty() {
        let n = rows_per_page(paper, pages.is_empty()).max(1);
        let end = (start + n).min(total);
        pages.push((start, end));
        start = end;
    }
    let fonts = Fonts { mono, sans, bold };
    for (index, (start, end)) in pages.iter().enumerate() {
        let layer = if index == 0 {
            doc.get_page(page).get_layer(layer)
        } else {
            let (p, l) = doc.add_page(Mm(paper.width), Mm(paper.height), "keys");
            doc.get_page(p).get_layer(l)
        };
        let mut y = paper.height - MARGIN;
        if index == 0 {
            y = title_block(&layer, &fonts, request, paper, y);
        }
        y -= 10.0;
        layer.use_text("Done", 8.0, Mm(MARGIN), Mm(y + 2.0), &fonts.sans);
        layer.use_text("#", 8.0, Mm(MARGIN + 12.0), Mm(y + 2.0), &fonts.sans);
        layer.use_text("PID", 8.0, Mm(MARGIN + 27.0), Mm(y + 2.0), &fonts.sans);
        layer.use_text("PPS", 8.0, Mm(MARGIN + 60.0), Mm(y + 2.0), &fonts.sans);
        for (i, pair) in request.pairs[*start..*end].iter().enumerate() {
            let row = start + i + 1;
            y -= ROW;
            tick_box(&layer, MARGIN + 1.0, y);
            layer.use_text(row.to_string(), 9.0, Mm(MARGIN + 12.0), Mm(y), &fonts.sans);
            layer.use_text(
                dashed(&pair.pid),
                KEY_PT,
                Mm(MARGIN + 27.0),
                Mm(y),
                &fonts.mono,
            );
            layer.use_text(
                dashed(&pair.pps),
                KEY_PT,
                Mm(MARGIN + 60.0),
                Mm(y),
                &fonts.mono,
            );
        }
        footer(
            &layer,
            &fonts,
            paper,
            index + 1,
            pages.len(),
            *start,
            *end,
            total,
        );
    }
    save(doc).map_err(fail)
}

struct Fonts {
    mono: IndirectFontRef,
    sans: IndirectFontRef,
    bold: IndirectFontRef,
}

fn title_block(
    layer: &PdfLayerReference,
    fonts: &Fonts,
    request: &ExportRequest,
    paper: &Paper,
    top: f32,
) -> f32 {
    let mut y = top - 8.0;
    layer.use_text(
        "Intel AMT provisioning keys (PID / PPS)",
        16.0,
        Mm(MARGIN),
        Mm(y),
        &fonts.bold,
    );
    y -= 8.0;
    let created =
        OffsetDateTime::from_unix_timestamp(request.batch_created_unix_ms.div_euclid(1000))
            .ok()
            .and_then(|t| {
                t.format(format_description!(
                    "[year]-[month]-[day] [hour]:[minute] UTC"
                ))
                .ok()
            })
            .unwrap_or_default();
    let comment = if request.batch_comment.is_empty() {
        String::new()
    } else {
        format!(" — {}", request.batch_comment)
    };
    layer.use_text(
        format!("Batch {}{comment}", request.batch_id),
        11.0,
        Mm(MARGIN),
        Mm(y),
        &fonts.sans,
    );
    y -= 6.0;
    layer.use_text(
        format!("Created {created}"),
        11.0,
        Mm(MARGIN),
        Mm(y),
        &fonts.sans,
    );
    y -= 6.0;
    let server = if request.server_address.is_empty() {
        format!("(ask your administrator), port {}", request.server_port)
    } else {
        format!("{}, port {}", request.server_address, request.server_port)
    };
    layer.use_text(
        format!("In MEBx enter: provisioning server {server}"),
        11.0,
        Mm(MARGIN),
        Mm(y),
        &fonts.sans,
    );
    y -= 4.0;
    rule(layer, MARGIN, paper.width - MARGIN, y);
    top - TITLE_BLOCK
}

#[allow(clippy::too_many_arguments)]
fn footer(
    layer: &PdfLayerReference,
    fonts: &Fonts,
    paper: &Paper,
    page: usize,
    pages: usize,
    start: usize,
    end: usize,
    total: usize,
) {
    let y = MARGIN;
    rule(layer, MARGIN, paper.width - MARGIN, y + 7.0);
    let range = if total == 0 {
        "no pairs".to_string()
    } else {
        format!("pairs {}–{} of {total}", start + 1, end)
    };
    layer.use_text(
        format!("Page {page} of {pages}   ·   {range}"),
        9.0,
        Mm(MARGIN),
        Mm(y + 2.0),
        &fonts.sans,
    );
    layer.use_text(
        "CONFIDENTIAL: these keys let a device join your management. Keep this sheet locked away; destroy it when done.",
        7.0,
        Mm(MARGIN),
        Mm(y - 2.5),
        &fonts.sans,
    );
}

fn tick_box(layer: &PdfLayerReference, x: f32, y: f32) {
    layer.set_outline_thickness(0.6);
    layer.add_rect(
        Rect::new(Mm(x), Mm(y - 0.5), Mm(x + 4.0), Mm(y + 3.5))
            .with_mode(printpdf::path::PaintMode::Stroke),
    );
}

fn rule(layer: &PdfLayerReference, x1: f32, x2: f32, y: f32) {
    layer.set_outline_thickness(0.4);
    layer.add_line(Line {
        points: vec![
            (Point::new(Mm(x1), Mm(y)), false),
            (Point::new(Mm(x2), Mm(y)), false),
        ],
        is_closed: false,
    });
}

fn save(doc: PdfDocumentReference) -> Result<Vec<u8>, printpdf::Error> {
    doc.save_to_bytes()
}

/// Sends the PDF to a CUPS printer with `lp`.
fn print(printer: &str, pdf: &[u8]) -> Result<(), PluginError> {
    let mut child = Command::new("lp")
        .args(["-d", printer, "-t", "vprov key sheet", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            PluginError::failed(format!(
                "cannot run lp to print on {printer} ({e}); is CUPS (cups-client) installed?"
            ))
        })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(pdf)
        .map_err(|e| PluginError::failed(format!("lp: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| PluginError::failed(format!("lp: {e}")))?;
    if !out.status.success() {
        return Err(PluginError::failed(format!(
            "lp could not print on {printer}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

vprov_sdk::export_plugin!(ExportPrint);

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{ROption, RString};
    use vprov_sdk::testing::FakeHost;
    use vprov_sdk::KeyPair;

    use super::*;

    pub fn request(n: usize, options: &str) -> ExportRequest {
        ExportRequest {
            format: "pdf".into(),
            options_json: options.into(),
            batch_id: 12,
            batch_comment: "Site B".into(),
            batch_created_unix_ms: 1_764_000_000_000,
            server_address: "10.0.0.5".into(),
            server_port: 9971,
            provisioning_password: ROption::RNone,
            destination: ROption::RNone,
            pairs: (0..n)
                .map(|i| KeyPair {
                    pid: format!("{i:08}").into(),
                    pps: RString::from("NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ"),
                })
                .collect(),
        }
    }

    /// Page objects in the file (`/Type /Page`, not `/Pages`).
    fn page_count(pdf: &[u8]) -> usize {
        let text = String::from_utf8_lossy(pdf).replace(' ', "");
        text.matches("/Type/Page").count() - text.matches("/Type/Pages").count()
    }

    fn export(n: usize, options: &str) -> Result<ExportedFile, PluginError> {
        let host = FakeHost::default();
        let p = host.instantiate::<ExportPrint>("", &std::env::temp_dir())?;
        p.export_keys(&request(n, options)).into_result()
    }

    #[test]
    fn a_sheet_is_a_pdf_with_as_many_pages_as_rows_need() {
        let file = export(100, "{}").unwrap();
        assert!(file.bytes.starts_with(b"%PDF-"));
        assert_eq!(file.file_name, "vprov-batch-12.pdf");
        let a4 = Paper {
            width: 210.0,
            height: 297.0,
        };
        let (first, rest) = (rows_per_page(&a4, true), rows_per_page(&a4, false));
        assert!(first >= 20 && rest > first, "{first} {rest}");
        let pages = 1 + (100 - first).div_ceil(rest);
        assert_eq!(page_count(&file.bytes), pages);
        assert_eq!(page_count(&export(1, "{}").unwrap().bytes), 1);
    }

    #[test]
    fn paper_and_unknown_options_are_checked() {
        assert!(export(3, r#"{"paper":"letter"}"#).is_ok());
        let err = export(3, r#"{"paper":"a3"}"#).unwrap_err();
        assert!(err.message.contains("paper"), "{err}");
        let err = export(3, r#"{"colour":"red"}"#).unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
        assert!(export(0, "{}").unwrap().bytes.starts_with(b"%PDF-"));
    }

    #[test]
    fn a_missing_printer_is_a_clear_error() {
        let err = export(1, r#"{"printer":"no-such-printer-vprov"}"#).unwrap_err();
        assert!(
            err.message.contains("no-such-printer-vprov") || err.message.contains("lp"),
            "{err}"
        );
    }

    #[test]
    fn keys_are_grouped_with_dashes() {
        assert_eq!(dashed("0000037M"), "0000-037M");
        assert_eq!(
            dashed("NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ"),
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ"
        );
    }
}
