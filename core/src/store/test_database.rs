//! A PostgreSQL database per test, on the server `VPROV_TEST_PG_URL` names
//! (`scripts/test.sh` starts a throwaway cluster), for the store's unit tests and the
//! end-to-end tests (`vprov-tests`, through the `test-support` feature). Without a
//! server a test says so on stderr and skips, unless `VPROV_TEST_REQUIRE_PG` is set
//! (`scripts/test.sh`), when it fails.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A database created for one test on the server of `VPROV_TEST_PG_URL`.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// The database's URL (password included: the test cluster's).
    pub url: String,
}

impl PgDatabase {
    /// A new empty database, or `None` (after saying so) when no server is given.
    pub fn create() -> Option<PgDatabase> {
        let admin_url = match std::env::var("VPROV_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                assert!(
                    std::env::var_os("VPROV_TEST_REQUIRE_PG").is_none(),
                    "VPROV_TEST_REQUIRE_PG is set but VPROV_TEST_PG_URL is not: no PostgreSQL server to test the store on"
                );
                // Straight to stderr: the test harness captures eprintln!.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED the PostgreSQL half: VPROV_TEST_PG_URL is not set (scripts/test.sh runs a cluster)"
                );
                return None;
            }
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "vprov_test_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .expect("connecting to VPROV_TEST_PG_URL");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("creating a test database");
        let url = with_database(&admin_url, &name);
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl PgDatabase {
    /// A client on the test database.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connecting")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` naming database `name` instead (query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{name}{query}", &base[..host_end])
}

#[cfg(test)]
#[test]
fn a_database_name_replaces_the_url_s_path() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5/postgres?sslmode=disable", "t1"),
        "postgres://u:p@127.0.0.1:5/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t2"), "postgres://h/t2");
}
