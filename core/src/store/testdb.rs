//! Test stores on every engine: SQLite in a temporary directory always, and
//! PostgreSQL (a database created for the test and dropped after it) when
//! `VPROV_TEST_PG_URL` names a server. Without it the PostgreSQL half is skipped with
//! a line on stderr, unless `VPROV_TEST_REQUIRE_PG` is set (`scripts/test.sh`), when
//! it fails.

pub use super::test_database::PgDatabase;
use super::{Store, StoreOptions};

/// One engine's test store: its data directory (the master key lives there on both
/// engines) and, on PostgreSQL, its database.
pub struct TestEngine {
    pub name: &'static str,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
}

impl TestEngine {
    pub fn options(&self) -> StoreOptions {
        let mut options = StoreOptions::new(self.dir.path());
        options.url = self.pg.as_ref().map(|pg| pg.url.clone());
        options
    }

    pub fn open(&self) -> Store {
        Store::open(&self.options()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

/// A fresh test store location on each engine available (see the module docs).
pub fn engines() -> Vec<TestEngine> {
    let mut engines = vec![TestEngine {
        name: "sqlite",
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    }];
    if let Some(pg) = PgDatabase::create() {
        engines.push(TestEngine {
            name: "postgres",
            dir: tempfile::tempdir().unwrap(),
            pg: Some(pg),
        });
    }
    engines
}
