//! `export-csv`: exports a PID/PPS batch as CSV (format `csv`) for spreadsheet users.
//!
//! Columns: `row,pid,pps,batch,comment`, PID and PPS in their dashed display form (the
//! form technicians type). Options: `dashes=false` writes the bare 8/32 characters;
//! `delimiter=;` for spreadsheets in locales that use the comma as decimal mark.

use serde::Deserialize;
use vprov_sdk::{
    Context, ExportFormat, ExportRequest, ExportedFile, KeyExporter, Plugin, PluginError,
    PluginKinds,
};

pub struct ExportCsv;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    dashes: Option<String>,
    delimiter: Option<String>,
}

impl Plugin for ExportCsv {
    const NAME: &'static str = "export-csv";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "PID/PPS batches as CSV (format csv)";
    const KINDS: PluginKinds = PluginKinds::KEY_EXPORTER;

    fn new(_context: Context) -> Result<Self, PluginError> {
        Ok(ExportCsv)
    }

    fn key_exporter(&self) -> Option<&dyn KeyExporter> {
        Some(self)
    }
}

impl KeyExporter for ExportCsv {
    fn formats(&self) -> Vec<ExportFormat> {
        vec![ExportFormat {
            name: "csv".into(),
            description: "comma-separated values, one PID/PPS pair per row".into(),
            extension: "csv".into(),
            mime_type: "text/csv".into(),
            needs_provisioning_password: false,
        }]
    }

    fn export(&self, request: &ExportRequest) -> Result<ExportedFile, PluginError> {
        let options: Options = vprov_sdk::export_options(request, "csv")?;
        let dashes = match options.dashes.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(PluginError::unsupported(format!(
                    "dashes must be true or false, not {other:?}"
                )))
            }
        };
        let delimiter = match options.delimiter.as_deref() {
            None => b',',
            Some(d) if d.len() == 1 && matches!(d, "," | ";" | "\t" | "|") => d.as_bytes()[0],
            Some(other) => {
                return Err(PluginError::unsupported(format!(
                    "delimiter must be one of , ; | or a tab, not {other:?}"
                )))
            }
        };
        let mut out = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .from_writer(Vec::with_capacity(request.pairs.len() * 64 + 64));
        let write = |e: csv::Error| PluginError::failed(e.to_string());
        out.write_record(["row", "pid", "pps", "batch", "comment"])
            .map_err(write)?;
        let batch = request.batch_id.to_string();
        for (i, pair) in request.pairs.iter().enumerate() {
            let (pid, pps) = if dashes {
                (grouped(&pair.pid), grouped(&pair.pps))
            } else {
                (pair.pid.to_string(), pair.pps.to_string())
            };
            out.write_record([
                (i + 1).to_string().as_str(),
                &pid,
                &pps,
                &batch,
                &request.batch_comment,
            ])
            .map_err(write)?;
        }
        let bytes = out
            .into_inner()
            .map_err(|e| PluginError::failed(e.to_string()))?;
        Ok(ExportedFile {
            bytes: bytes.into(),
            file_name: format!("vprov-batch-{}.csv", request.batch_id).into(),
            mime_type: "text/csv".into(),
        })
    }
}

/// `ABCDEFGH` → `ABCD-EFGH`: groups of four joined by dashes.
fn grouped(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

vprov_sdk::export_plugin!(ExportCsv);

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::{ROption, RString};
    use vprov_sdk::testing::FakeHost;
    use vprov_sdk::KeyPair;

    fn request(options: &str, n: usize) -> ExportRequest {
        ExportRequest {
            format: "csv".into(),
            options_json: options.into(),
            batch_id: 7,
            batch_comment: "floor 3, \"east\"".into(),
            batch_created_unix_ms: 0,
            server_address: RString::new(),
            server_port: 9971,
            provisioning_password: ROption::RNone,
            destination: ROption::RNone,
            pairs: (0..n)
                .map(|_| KeyPair {
                    pid: "0000037M".into(),
                    pps: "NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ".into(),
                })
                .collect(),
        }
    }

    fn export(options: &str, n: usize) -> Result<String, PluginError> {
        let host = FakeHost::default();
        let instance = host.instantiate::<ExportCsv>("", &std::env::temp_dir())?;
        let file = instance.export_keys(&request(options, n)).into_result()?;
        assert_eq!(file.file_name, "vprov-batch-7.csv");
        Ok(String::from_utf8(file.bytes.to_vec()).unwrap())
    }

    #[test]
    fn rows_carry_dashed_pairs_and_a_quoted_comment() {
        let text = export("{}", 2).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "row,pid,pps,batch,comment");
        assert_eq!(
            lines[1],
            "1,0000-037M,NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ,7,\"floor 3, \"\"east\"\"\""
        );
        assert!(lines[2].starts_with("2,"));
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn options_choose_bare_keys_and_the_delimiter() {
        let text = export(r#"{"dashes":"false","delimiter":";"}"#, 1).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("1;0000037M;NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ;7;"),
            "{text}"
        );
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let err = export(r#"{"colour":"red"}"#, 1).unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
        let err = export(r#"{"delimiter":"ab"}"#, 1).unwrap_err();
        assert!(err.message.contains("delimiter"), "{err}");
    }
}
