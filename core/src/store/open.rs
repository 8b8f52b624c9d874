//! Opening a store on PostgreSQL: the connection (TLS through rustls when the URL
//! asks for it with `sslmode=require`, trusting the webpki roots and the URL's
//! `sslrootcert` file), the same refusals as for an SQLite file (a foreign or newer
//! database is left untouched, a wrong master key refused), and the URL's password
//! redacted in everything vprov says about the store.

use std::path::PathBuf;
use std::sync::Arc;

use postgres::config::SslMode;

use super::db::Db;
use super::schema::{self, SchemaState};
use super::{check_schema, create_private_dir, resolve_key, Store, StoreError, StoreOptions};

/// `url` with any password replaced by `***` (URL `user:password@` form and the
/// key=value `password=` form).
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                out.replace_range(start..scheme_end + 3 + at, "***");
            }
        }
    }
    redact_password_params(&out)
}

/// Replaces the value of every `password=` parameter (query string or key=value).
fn redact_password_params(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("password=") {
        let boundary = pos == 0 || matches!(rest.as_bytes()[pos - 1], b'?' | b'&' | b' ');
        out.push_str(&rest[..pos + "password=".len()]);
        rest = &rest[pos + "password=".len()..];
        if boundary {
            let end = rest.find(['&', ' ']).unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Opens (or, in an empty database, creates) the store at `url`.
pub(super) fn open_postgres(options: &StoreOptions, url: &str) -> Result<Store, StoreError> {
    let label = PathBuf::from(redact(url));
    // The master key file lives in the data directory as with SQLite.
    create_private_dir(&options.data_dir).map_err(|source| StoreError::DataDir {
        path: options.data_dir.clone(),
        source,
    })?;
    let client = connect(url)?;
    let conn = Db::postgres(client, options.busy_timeout);
    let state = schema::inspect(&conn)?;
    check_schema(&state, &label)?;
    let is_new = state == SchemaState::Empty;
    let key = resolve_key(options, &label, is_new)?;
    let mut store = Store {
        conn,
        key,
        db_path: label,
        url: Some(url.to_string()),
    };
    if !is_new {
        store.verify_key()?;
    }
    schema::migrate(&mut store.conn)?;
    if is_new {
        store.verify_key()?;
    }
    Ok(store)
}

impl Store {
    /// On PostgreSQL, replaces a connection the server closed (a restart, a fail-over,
    /// an idle timeout) with a new one; `Ok(true)` when it did. The call that met the
    /// closed connection failed with its error; the store thread calls this before
    /// the next, so one failed call is what a lost connection costs.
    pub fn reconnect_if_lost(&mut self) -> Result<bool, StoreError> {
        let Some(url) = self.url.as_deref() else {
            return Ok(false);
        };
        if !self.conn.connection_lost() {
            return Ok(false);
        }
        let client = connect(url)?;
        self.conn = Db::postgres(client, self.conn.busy_timeout());
        Ok(true)
    }
}

/// Connects to `url`. Must not run on a tokio runtime thread (the sync client runs
/// its own runtime).
pub(super) fn connect(url: &str) -> Result<postgres::Client, StoreError> {
    let fail = |message: String| StoreError::Connect {
        url: redact(url),
        message,
    };
    let (url_without_root, root_cert) = take_param(url, "sslrootcert");
    let config: postgres::Config = url_without_root
        .parse()
        .map_err(|e: postgres::Error| fail(e.to_string()))?;
    let client = if config.get_ssl_mode() == SslMode::Require {
        let tls = tls(root_cert.as_deref()).map_err(fail)?;
        config.connect(tls)
    } else {
        config.connect(postgres::NoTls)
    };
    client.map_err(|e| fail(super::db::Error::Postgres(e).to_string()))
}

/// `url` without the query parameter `name`, and its value.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| match p.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), value)
    } else {
        (format!("{base}?{}", kept.join("&")), value)
    }
}

/// The rustls connector: webpki roots plus the certificates in `root_cert` (PEM).
fn tls(root_cert: Option<&str>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_cert {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_every_url_form() {
        assert_eq!(
            redact("postgres://vprov:s3cret@db.example:5432/vprov?sslmode=require"),
            "postgres://vprov:***@db.example:5432/vprov?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://db/vprov?user=v&password=s3cret&sslmode=require"),
            "postgresql://db/vprov?user=v&password=***&sslmode=require"
        );
        assert_eq!(
            redact("host=db user=v password=s3cret dbname=x"),
            "host=db user=v password=*** dbname=x"
        );
        assert_eq!(redact("postgres://v@db/x"), "postgres://v@db/x");
    }

    #[test]
    fn store_options_print_no_password() {
        let mut options = StoreOptions::new("/d");
        options.url = Some("postgres://v:s3cret@db/x".into());
        let shown = format!("{options:?}");
        assert!(shown.contains("postgres://v:***@db/x"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "postgres://db/x?sslmode=require&sslrootcert=/ca.pem",
                "sslrootcert"
            ),
            (
                "postgres://db/x?sslmode=require".to_string(),
                Some("/ca.pem".to_string())
            )
        );
        assert_eq!(
            take_param("postgres://db/x", "sslrootcert"),
            ("postgres://db/x".to_string(), None)
        );
    }

    /// A connection the database server closed (here: terminated from another
    /// session, as a restart or fail-over would; the second argument waits until it
    /// is gone) costs the call that meets it; the store then reconnects and the next
    /// call works.
    #[test]
    fn a_lost_postgres_connection_is_replaced() {
        let Some(pg) = crate::store::testdb::PgDatabase::create() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut options = StoreOptions::new(dir.path());
        options.url = Some(pg.url.clone());
        let mut store = Store::open(&options).unwrap();
        assert!(!store.reconnect_if_lost().unwrap(), "nothing lost yet");
        let backend: i32 = store
            .conn
            .query_row("SELECT pg_backend_pid()", [], |r| r.get(0))
            .unwrap();
        let mut admin = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
        admin
            .execute("SELECT pg_terminate_backend($1, 10000)", &[&backend])
            .unwrap();
        assert!(
            store.password_status().is_err(),
            "the closed connection fails"
        );
        assert!(store.reconnect_if_lost().unwrap(), "a new connection");
        assert!(!store.password_status().unwrap().set);
        store.generate_batch(1, None, "t", |_| {}).unwrap();
    }
}
