//! `export-usb`: exports a PID/PPS batch as Intel's `setup.bin` (format `setupbin`),
//! the file a USB key carries to one-touch provision devices: one 512-byte record per
//! pair, each setting the MEBx password from `admin` to the provisioning password,
//! selecting AMT, and giving the PID, PPS, provisioning mode and the provisioning
//! server's address and port. The layout lives in `vprov-setupbin`.
//!
//! Options: `version=1..4` (default 2: the 2.1 layout PSK-era firmware reads, with
//! server address and port), `consumable=true|false` (default true: the BIOS marks a
//! record used), `scramble=true|false` (default true), `server=IPV4` and `port=N`
//! (default: the `[export]` settings and the hello port), `mode=N` (provisioning mode
//! value, default 1 = enterprise). `force=true` is the core's: it replaces an existing
//! file.
//! Version 1 records carry only passwords, PID and PPS.
//!
//! The core writes the file whole and synced; this plugin warns (through the core's
//! log) when the destination is not the root of a FAT file system, where the BIOS
//! would not find it.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;
use setupbin::{encode_ipv4, var, Entry, Record, SetupBin};
use vprov_sdk::{
    Context, ExportFormat, ExportRequest, ExportedFile, Host, KeyExporter, Plugin, PluginError,
    PluginKinds,
};

/// The MEBx password of a device in factory state.
const FACTORY_MEBX_PASSWORD: &[u8] = b"admin";

pub struct ExportUsb {
    host: Host,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    version: Option<String>,
    consumable: Option<String>,
    scramble: Option<String>,
    server: Option<String>,
    port: Option<String>,
    mode: Option<String>,
}

fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, PluginError> {
    match value {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(PluginError::unsupported(format!(
            "option {name} must be true or false, not {other:?}"
        ))),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, PluginError> {
    value.parse().map_err(|_| {
        PluginError::unsupported(format!("option {name}: {value:?} is not a valid value"))
    })
}

impl Plugin for ExportUsb {
    const NAME: &'static str = "export-usb";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "PID/PPS batches as an Intel setup.bin USB key file (format setupbin)";
    const KINDS: PluginKinds = PluginKinds::KEY_EXPORTER;

    fn new(context: Context) -> Result<Self, PluginError> {
        Ok(ExportUsb { host: context.host })
    }

    fn key_exporter(&self) -> Option<&dyn KeyExporter> {
        Some(self)
    }
}

impl KeyExporter for ExportUsb {
    fn formats(&self) -> Vec<ExportFormat> {
        vec![ExportFormat {
            name: "setupbin".into(),
            description: "Intel setup.bin for one-touch provisioning from a USB key".into(),
            extension: "bin".into(),
            mime_type: "application/octet-stream".into(),
            needs_provisioning_password: true,
        }]
    }

    fn export(&self, request: &ExportRequest) -> Result<ExportedFile, PluginError> {
        let options: Options = vprov_sdk::export_options(request, "setupbin")?;
        let version: u8 = match options.version.as_deref() {
            None => 2,
            Some(v) => number("version", v)?,
        };
        let consumable = flag("consumable", options.consumable.as_deref(), true)?;
        let scrambled = flag("scramble", options.scramble.as_deref(), true)?;
        let mode: u8 = match options.mode.as_deref() {
            None => 1,
            Some(v) => number("mode", v)?,
        };
        let port: u16 = match options.port.as_deref() {
            None => request.server_port,
            Some(p) => number("port", p)?,
        };
        let server_text = options
            .server
            .clone()
            .unwrap_or_else(|| request.server_address.to_string());
        let password = request
            .provisioning_password
            .as_ref()
            .into_option()
            .ok_or_else(|| PluginError::failed("the core passed no provisioning password"))?;

        let mut file = SetupBin::new(version, consumable)
            .map_err(|e| PluginError::unsupported(format!("option version: {e}")))?;
        let server: Option<Ipv4Addr> = if version >= 2 {
            Some(server_text.parse().map_err(|_| {
                PluginError::unsupported(format!(
                    "setup.bin needs the provisioning server's IPv4 address: set [export] \
                     server_address in the configuration or pass --option server=IPV4 \
                     (got {server_text:?})"
                ))
            })?)
        } else {
            None
        };
        for (i, pair) in request.pairs.iter().enumerate() {
            let mut entries = vec![
                Entry::new(var::CURRENT_MEBX_PASSWORD, FACTORY_MEBX_PASSWORD),
                Entry::new(var::NEW_MEBX_PASSWORD, password.as_bytes()),
                Entry::new(var::PID, pair.pid.as_bytes()),
                Entry::new(var::PPS, pair.pps.as_bytes()),
            ];
            if let Some(server) = server {
                entries.extend([
                    Entry::new(var::MANAGEABILITY_SELECTION, [1]),
                    Entry::new(var::PROVISIONING_MODE, [mode]),
                    Entry::new(var::SERVER_IPV4, encode_ipv4(server)),
                    Entry::new(var::SERVER_PORT, port.to_le_bytes()),
                ]);
            }
            file.records.push(Record {
                number: i as u32 + 1,
                valid: true,
                scrambled,
                entries,
            });
        }
        let bytes = file
            .encode()
            .map_err(|e| PluginError::failed(format!("cannot lay out setup.bin: {e}")))?;
        if let Some(destination) = request.destination.as_ref().into_option() {
            if let Some(warning) = fat_root_warning(Path::new(destination.as_str())) {
                self.host.warn(&warning);
            }
        }
        Ok(ExportedFile {
            bytes: bytes.into(),
            file_name: "setup.bin".into(),
            mime_type: "application/octet-stream".into(),
        })
    }
}

/// A warning when `destination` is not a file in the root of a FAT file system (the
/// BIOS reads setup.bin with raw I/O as the first file in the root of a FAT16 key).
fn fat_root_warning(destination: &Path) -> Option<String> {
    let dir = destination.parent().filter(|p| !p.as_os_str().is_empty())?;
    let dir = dir.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (mount_point, fs_type) = mount_of(&mountinfo, &dir)?;
    let fat = matches!(fs_type.as_str(), "vfat" | "msdos" | "fat");
    let root = Path::new(&mount_point) == dir;
    (!(fat && root)).then(|| {
        format!(
            "{} is {} of a {fs_type} file system: the BIOS reads setup.bin only as the first file in the root of a FAT (FAT16) USB key",
            dir.display(),
            if root { "the root" } else { "not the root" }
        )
    })
}

/// The mount point containing `dir` (the longest matching one) and its type, from
/// `/proc/self/mountinfo` text.
fn mount_of(mountinfo: &str, dir: &Path) -> Option<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            let fs_type = fields.get(dash + 1)?.to_string();
            dir.starts_with(&mount_point)
                .then_some((mount_point, fs_type))
        })
        .max_by_key(|(m, _)| m.len())
}

/// Mount points escape space, tab, newline and backslash as octal `\NNN`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&code, 8) {
                out.push(char::from(v));
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

vprov_sdk::export_plugin!(ExportUsb);

#[cfg(test)]
mod tests {
    use abi_stable::std_types::{ROption, RString};
    use vprov_sdk::testing::FakeHost;
    use vprov_sdk::KeyPair;

    use super::*;

    const PPS: &str = "NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ";

    fn request(options: &str, n: usize) -> ExportRequest {
        ExportRequest {
            format: "setupbin".into(),
            options_json: options.into(),
            batch_id: 3,
            batch_comment: RString::new(),
            batch_created_unix_ms: 0,
            server_address: "10.20.30.40".into(),
            server_port: 9971,
            provisioning_password: ROption::RSome("Str0ng!Provisioning".into()),
            destination: ROption::RNone,
            pairs: (0..n)
                .map(|_| KeyPair {
                    pid: "0000037M".into(),
                    pps: PPS.into(),
                })
                .collect(),
        }
    }

    fn export(options: &str, n: usize) -> Result<SetupBin, PluginError> {
        let host = FakeHost::default();
        let p = host.instantiate::<ExportUsb>("", &std::env::temp_dir())?;
        let file = p.export_keys(&request(options, n)).into_result()?;
        Ok(SetupBin::decode(&file.bytes).unwrap())
    }

    fn value(r: &Record, key: (u16, u16)) -> &[u8] {
        &r.entries
            .iter()
            .find(|e| (e.module, e.variable) == key)
            .unwrap()
            .value
    }

    #[test]
    fn each_pair_becomes_a_numbered_scrambled_record_with_every_setting() {
        let file = export("{}", 2).unwrap();
        assert_eq!((file.version, file.major, file.minor), (2, 2, 1));
        assert!(file.consumable);
        assert_eq!(file.records.len(), 2);
        let r = &file.records[1];
        assert_eq!((r.number, r.valid, r.scrambled), (2, true, true));
        let keys: Vec<(u16, u16)> = r.entries.iter().map(|e| (e.module, e.variable)).collect();
        assert_eq!(
            keys,
            [
                (1, 1),
                (1, 2),
                (1, 3),
                (2, 1),
                (2, 2),
                (2, 16),
                (2, 17),
                (2, 18)
            ]
        );
        assert_eq!(value(r, var::CURRENT_MEBX_PASSWORD), b"admin");
        assert_eq!(value(r, var::NEW_MEBX_PASSWORD), b"Str0ng!Provisioning");
        assert_eq!(value(r, var::MANAGEABILITY_SELECTION), [1]);
        assert_eq!(value(r, var::PID), b"0000037M");
        assert_eq!(value(r, var::PPS), PPS.as_bytes());
        assert_eq!(value(r, var::PROVISIONING_MODE), [1]);
        assert_eq!(value(r, var::SERVER_IPV4), [40, 30, 20, 10]);
        assert_eq!(value(r, var::SERVER_PORT), 9971u16.to_le_bytes());
    }

    #[test]
    fn options_choose_version_consumption_scrambling_and_server() {
        let file = export(
            r#"{"version":"4","consumable":"false","scramble":"false","server":"192.168.0.9","port":"1234"}"#,
            1,
        )
        .unwrap();
        assert_eq!(file.version, 4);
        assert!(!file.consumable);
        let r = &file.records[0];
        assert!(!r.scrambled);
        assert_eq!(value(r, var::SERVER_IPV4), [9, 0, 168, 192]);
        assert_eq!(value(r, var::SERVER_PORT), 1234u16.to_le_bytes());
        let v1 = export(r#"{"version":"1"}"#, 1).unwrap();
        assert_eq!(v1.records[0].entries.len(), 4);
    }

    #[test]
    fn bad_options_and_a_missing_server_address_are_refused() {
        for (options, needle) in [
            (r#"{"version":"9"}"#, "version"),
            (r#"{"consumable":"maybe"}"#, "consumable"),
            (r#"{"colour":"red"}"#, "colour"),
            (r#"{"server":"usb.example"}"#, "IPv4"),
        ] {
            let err = export(options, 1).unwrap_err();
            assert!(err.message.contains(needle), "{options}: {err}");
        }
    }

    #[test]
    fn mount_points_are_found_and_fat_roots_recognised() {
        let info = "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n\
                    40 22 8:17 / /media/usb\\040key rw,nosuid - vfat /dev/sdb1 rw\n";
        assert_eq!(
            mount_of(info, Path::new("/media/usb key")),
            Some(("/media/usb key".into(), "vfat".into()))
        );
        assert_eq!(
            mount_of(info, Path::new("/home/x")),
            Some(("/".into(), "ext4".into()))
        );
        // The temp directory here is not a FAT root.
        let warning = fat_root_warning(&std::env::temp_dir().join("setup.bin")).unwrap();
        assert!(warning.contains("FAT"), "{warning}");
    }
}
