//! Test databases: every database test runs on SQLite and on the local PostgreSQL.
//!
//! PostgreSQL is found at `WINBACK_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`); each test gets a fresh database of its
//! own. When PostgreSQL cannot be reached, a developer's run says so loudly and skips the
//! PostgreSQL half; under CI (`CI` set) it fails.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};
use sea_orm_migration::MigratorTrait;

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "WINBACK_TEST_POSTGRES_URL";
/// TLS is off for the local server: over loopback it only adds cost (sqlx's TLS stream
/// stalls on large statements, see docs/decisions.md).
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the local PostgreSQL.
    Postgres,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// Backend.
    pub backend: Backend,
    /// URL with `{service}` where the service name goes (SQLite: one file per service).
    pub url_template: String,
    dir: tempfile::TempDir,
    admin_url: Option<String>,
    name: String,
}

impl TestDatabase {
    /// A fresh SQLite folder.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}"));
        let url_template = format!("sqlite://{}/{{service}}.db?mode=rwc", dir.path().display());
        Self {
            backend: Backend::Sqlite,
            url_template,
            dir,
            admin_url: None,
            name: String::new(),
        }
    }

    /// A fresh PostgreSQL database, or `None` (with a loud message) when PostgreSQL cannot
    /// be reached outside CI.
    pub async fn postgres() -> Option<Self> {
        let admin_url =
            std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let name = format!("winback_test_{}", uuid::Uuid::new_v4().simple());
        match create_database(&admin_url, &name).await {
            Ok(()) => {}
            Err(err) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "\n*** SKIPPED: the PostgreSQL half of this test: cannot reach {admin_url} ({err}).\n\
                     *** Start PostgreSQL or set {POSTGRES_URL_VAR}; under CI this is a failure. ***\n"
                );
                return None;
            }
            Err(err) => panic!("PostgreSQL is required under CI: cannot reach {admin_url}: {err}"),
        }
        let url_template = replace_database(&admin_url, &name);
        Some(Self {
            backend: Backend::Postgres,
            url_template,
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}")),
            admin_url: Some(admin_url),
            name,
        })
    }

    /// A temporary folder that lives as long as the database (keys, outbox files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The URL of one service's database.
    pub fn url(&self, service: &str) -> String {
        self.url_template.replace("{service}", service)
    }

    /// Connects as `service` and runs the platform's and `M`'s migrations.
    pub async fn connect<M: MigratorTrait>(&self, service: &str) -> DatabaseConnection {
        crate::db::connect_and_migrate::<M>(&self.url(service), service, 5)
            .await
            .unwrap_or_else(|e| panic!("test database for {service}: {e}"))
    }

    /// Drops the PostgreSQL database (SQLite files go with the folder).
    pub async fn cleanup(self) {
        if let Some(admin_url) = &self.admin_url
            && let Err(err) = drop_database(admin_url, &self.name).await
        {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

async fn create_database(admin_url: &str, name: &str) -> Result<(), DbErr> {
    let admin = Database::connect(admin_url).await?;
    admin
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("CREATE DATABASE \"{name}\""),
        ))
        .await?;
    admin.close().await
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), DbErr> {
    let admin = Database::connect(admin_url).await?;
    admin
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        ))
        .await?;
    admin.close().await
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Environment variable naming the NATS server for JetStream tests.
pub const NATS_URL_VAR: &str = "WINBACK_TEST_NATS_URL";

/// JetStream settings of a test's own (under a fresh stream prefix, so tests sharing the
/// local NATS server never see each other's events), or `None` with a loud message when
/// NATS cannot be reached outside CI; under CI that fails.
pub async fn jetstream() -> Option<crate::config::JetStreamConfig> {
    let url = std::env::var(NATS_URL_VAR).unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let address = url
        .trim_start_matches("nats://")
        .trim_start_matches("tls://")
        .to_owned();
    if let Err(err) = tokio::net::TcpStream::connect(&address).await {
        if std::env::var_os("CI").is_none() {
            eprintln!(
                "\n*** SKIPPED: the JetStream half of this test: cannot reach NATS at {url} ({err}).\n\
                 *** Start nats-server -js or set {NATS_URL_VAR}; under CI this is a failure. ***\n"
            );
            return None;
        }
        panic!("NATS JetStream is required under CI: cannot reach {url}: {err}");
    }
    Some(crate::config::JetStreamConfig {
        url,
        prefix: format!(
            "wbtest_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
        ack_wait_ms: 1_000,
        max_age_hours: 1,
    })
}

/// Declares a database test that runs twice: `name::sqlite` and `name::postgres`.
/// The body gets `$db: &TestDatabase`.
#[macro_export]
macro_rules! db_test {
    ($(#[$meta:meta])* $name:ident, |$db:ident| $body:expr) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let database = $crate::testing::TestDatabase::sqlite().await;
                {
                    let $db = &database;
                    $body.await;
                }
                database.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(database) = $crate::testing::TestDatabase::postgres().await else {
                    return;
                };
                {
                    let $db = &database;
                    $body.await;
                }
                database.cleanup().await;
            }
        }
    };
}

/// A fresh key pair for tests: a signer and its verifier, issuer `winback`.
pub fn test_keys() -> (crate::auth::TokenSigner, crate::auth::TokenVerifier) {
    let keys = crate::auth::generate_key_pair().unwrap_or_else(|e| panic!("key pair: {e}"));
    let signer = crate::auth::TokenSigner::from_pem(keys.private_pem.as_bytes(), "winback")
        .unwrap_or_else(|e| panic!("signer: {e}"));
    let verifier = crate::auth::TokenVerifier::from_pem(keys.public_pem.as_bytes(), "winback")
        .unwrap_or_else(|e| panic!("verifier: {e}"));
    (signer, verifier)
}

/// The type of every event in `db`'s outbox for `tenant`, in feed order on one writer
/// (a row of many events gives its type once per event).
pub async fn outbox_event_types(db: &impl ConnectionTrait, tenant: &str) -> Vec<String> {
    let rows = db
        .query_all_raw(crate::db::statement(
            db.get_database_backend(),
            "SELECT event_type, event_count FROM event_outbox WHERE tenant_id = $1 ORDER BY seq",
            vec![tenant.into()],
        ))
        .await
        .unwrap_or_else(|e| panic!("outbox: {e}"));
    let mut types = Vec::new();
    for row in rows {
        let event_type: String = row
            .try_get("", "event_type")
            .unwrap_or_else(|e| panic!("outbox event_type: {e}"));
        let count: i64 = row
            .try_get("", "event_count")
            .unwrap_or_else(|e| panic!("outbox event_count: {e}"));
        types.extend(std::iter::repeat_n(event_type, count as usize));
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_replaces_the_path_of_the_admin_url() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://h/db?sslmode=disable", "t1"),
            "postgres://h/t1?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "t1"), "postgres://h/t1");
    }
}
