//! Database connections. One URL per service: `sqlite://…` (the embedded default, one file
//! per service) or `postgres://…` (production; each service in a schema of its own name).
//! Every service runs its migrations at start.

use std::path::Path;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use sea_orm_migration::MigratorTrait;

pub mod statement_profile;

/// Connects to a service's database, creating the SQLite file or the PostgreSQL schema if
/// needed.
pub async fn connect(
    url: &str,
    service: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        if let Some(dir) = sqlite_path(url).and_then(|p| p.parent().map(Path::to_path_buf))
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DbErr::Custom(format!("{}: {e}", dir.display())))?;
        }
        // WAL lets readers (the event feed) run beside the single writer; the busy timeout
        // makes writers queue instead of failing with "database is locked".
        options.map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                .create_if_missing(true)
                // A 32 MiB page cache per connection (SQLite's default is 2 MiB) and statement
                // journals in memory: batch ingest was spending its time re-reading pages
                // and writing sub-journals to disk.
                .pragma("cache_size", "-32768")
                .pragma("temp_store", "memory")
                // Checkpoint every 64 MiB of WAL instead of every 4 MiB: a page rewritten by
                // many small commits (outbox and inbox tails, hot index pages) is copied to
                // the database file once per checkpoint, and each checkpoint syncs both files.
                .pragma("wal_autocheckpoint", "16384")
                // Rows come back from the driver's own thread through a channel; at 50 (the
                // default) a 500-row batch read parked and woke that thread ten times.
                .row_buffer_size(1024)
        });
        // Opening sets WAL, which needs the file's lock for a moment; another process or
        // pool opening or migrating the same file at that instant answers SQLITE_BUSY
        // without waiting. Try again for a few seconds.
        let mut attempt = 0u32;
        let mut db = loop {
            match Database::connect(options.clone()).await {
                Ok(db) => break db,
                Err(error) if attempt < 50 && error.to_string().contains("database is locked") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10))))
                        .await;
                }
                Err(error) => return Err(error),
            }
        };
        statement_profile::attach(&mut db, service);
        return Ok(db);
    }
    let schema = schema_name(service);
    {
        let admin = Database::connect(
            ConnectOptions::new(url.to_owned())
                .sqlx_logging(false)
                .to_owned(),
        )
        .await?;
        let created = admin
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
            ))
            .await;
        admin.close().await?;
        // Two processes creating the schema at once: the loser fails on the catalogue's
        // unique key (23505) although IF NOT EXISTS was said. The schema is there.
        match created {
            Err(error) if error.to_string().contains("pg_namespace_nspname_index") => {}
            other => {
                other?;
            }
        }
    }
    options.set_schema_search_path(schema);
    // Batches look rows up with `IN ($2 … $1001)` through prepared statements. After five
    // runs PostgreSQL may switch such a statement to a generic plan that cannot see the
    // keys and scans the table (seen: 0.6–2 s per lookup at 50k rows); custom plans keep
    // the primary-key lookups.
    options.map_sqlx_postgres_opts(|opts| opts.options([("plan_cache_mode", "force_custom_plan")]));
    let mut db = Database::connect(options).await?;
    statement_profile::attach(&mut db, service);
    Ok(db)
}

/// Connects and runs the migrations of `M`, plus the platform's own (event feed) tables.
pub async fn connect_and_migrate<M: MigratorTrait>(
    url: &str,
    service: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url, service, max_connections).await?;
    migrate_in_turn(&db, url, service, || async {
        crate::events::migration::PlatformMigrator::up(&db, None).await?;
        M::up(&db, None).await
    })
    .await?;
    Ok(db)
}

/// Runs `up` on `db` (opened from `url`) while no other process migrates the same
/// service's database: replicas starting together take turns, because a migration that
/// renames or copies a table cannot run twice at once, whatever retrying does afterwards.
pub async fn migrate_in_turn<F, Fut>(
    db: &DatabaseConnection,
    url: &str,
    service: &str,
    up: F,
) -> Result<(), DbErr>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbErr>>,
{
    let turn = MigrationTurn::take(db, url, service).await?;
    migrate_shared(service, up).await?;
    turn.release().await
}

/// One process at a time migrates a service's database: a PostgreSQL advisory lock on
/// a connection of its own, or on SQLite an OS lock on a file beside the database.
enum MigrationTurn {
    Postgres(DatabaseConnection, i64),
    Sqlite(std::fs::File),
    None,
}

impl MigrationTurn {
    async fn take(db: &DatabaseConnection, url: &str, service: &str) -> Result<Self, DbErr> {
        match db.get_database_backend() {
            DbBackend::Postgres => {
                let mut options = ConnectOptions::new(url.to_owned());
                options
                    .max_connections(1)
                    .min_connections(1)
                    .connect_timeout(Duration::from_secs(10))
                    .sqlx_logging(false);
                let lock = Database::connect(options).await?;
                // A stable key per service schema (FNV-1a; the same in every process).
                let key = schema_name(service)
                    .bytes()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                    }) as i64;
                lock.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_lock($1)",
                    [key.into()],
                ))
                .await?;
                Ok(Self::Postgres(lock, key))
            }
            DbBackend::Sqlite => {
                let Some(path) = sqlite_path(url) else {
                    return Ok(Self::None);
                };
                let lock_path = path.with_extension("migrate-lock");
                let file = tokio::task::spawn_blocking(move || {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&lock_path)?;
                    file.lock()?;
                    Ok::<_, std::io::Error>(file)
                })
                .await
                .map_err(|e| DbErr::Custom(format!("migration lock: {e}")))?
                .map_err(|e| DbErr::Custom(format!("migration lock: {e}")))?;
                Ok(Self::Sqlite(file))
            }
            _ => Ok(Self::None),
        }
    }

    async fn release(self) -> Result<(), DbErr> {
        match self {
            Self::Postgres(lock, key) => {
                lock.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_unlock($1)",
                    [key.into()],
                ))
                .await?;
                lock.close().await
            }
            // Closing the file releases the lock.
            Self::Sqlite(file) => {
                drop(file);
                Ok(())
            }
            Self::None => Ok(()),
        }
    }
}

/// Runs migrations that replicas starting together on one database may run at the same
/// time: the loser of the race fails on the migration table's key (or a DDL the winner
/// just ran) and tries again, and then finds the work done. Each PostgreSQL migration is
/// one transaction, so a lost race leaves nothing half applied.
pub async fn migrate_shared<F, Fut>(service: &str, up: F) -> Result<(), DbErr>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbErr>>,
{
    const ATTEMPTS: u32 = 20;
    let mut attempt = 1;
    loop {
        match up().await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < ATTEMPTS && raced(&error) => {
                tracing::info!(service, %error, attempt, "migration raced another replica; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                    .await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// What losing a migration race looks like: the winner's row in the migration table, or a
/// table, type or schema it just made, or SQLite's file lock. Anything else is a broken
/// migration and fails at once.
fn raced(error: &DbErr) -> bool {
    let text = error.to_string();
    [
        "UNIQUE constraint failed",
        "duplicate key value",
        "already exists",
        "database is locked",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// The schema name of a service on PostgreSQL: the service name, made identifier-safe.
pub fn schema_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

/// A statement written with PostgreSQL's `$n` placeholders, so one SQL text serves both
/// backends. On SQLite each `$n` becomes an anonymous `?` and the values are laid out in
/// the order the placeholders appear: numbered `?NNN` parameters make sqlx look every name
/// up with a linear scan, which made a 5,000-parameter batch insert cost O(n²).
pub fn statement(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    if backend != DbBackend::Sqlite {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let mut out_sql = String::with_capacity(sql.len());
    let mut order: Vec<usize> = Vec::with_capacity(values.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out_sql.push(c);
            continue;
        }
        let mut end = i + 1;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        match sql[i + 1..end]
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=values.len()).contains(n))
        {
            Some(n) => {
                out_sql.push('?');
                order.push(n - 1);
            }
            None => out_sql.push_str(&sql[i..end]),
        }
    }
    // Placeholders in their own order, each once (every batch insert): the values move as
    // they are; otherwise each placeholder gets a copy of its value.
    let out_values =
        if order.len() == values.len() && order.iter().enumerate().all(|(i, &n)| i == n) {
            values
        } else {
            order.iter().map(|&n| values[n].clone()).collect()
        };
    Statement::from_sql_and_values(backend, out_sql, out_values)
}

/// Executes statements in turn, building each next one while the one before it runs: the
/// SQLite driver runs a statement on its own thread and PostgreSQL in its own process, so
/// on two cores the building (SQL text, encoded values) overlaps the execution. Pass a
/// lazy iterator — one that builds a statement when asked for it.
pub async fn execute_all<C: ConnectionTrait>(
    conn: &C,
    statements: impl IntoIterator<Item = Statement>,
) -> Result<(), DbErr> {
    let mut statements = statements.into_iter();
    let mut next = statements.next();
    while let Some(current) = next {
        // `join!` polls the execution first (handing the statement to the driver), then
        // builds the following statement while the driver works.
        let (done, following) =
            futures::join!(conn.execute_raw(current), async { statements.next() });
        done?;
        next = following;
    }
    Ok(())
}

/// Runs `statements` (plain SQL, no parameters) in one transaction on one connection, all
/// or nothing. What a migration that changes data must do: through the pool each statement
/// would go to whichever connection is free, outside any transaction.
pub async fn execute_in_one_transaction(
    db: &(impl ConnectionTrait + sea_orm::TransactionTrait),
    statements: &[&str],
) -> Result<(), DbErr> {
    use sea_orm::TransactionSession as _;
    let txn = db.begin().await?;
    for sql in statements {
        txn.execute_unprepared(sql).await?;
    }
    txn.commit().await
}

/// `$first, $first+1, …`: `n` numbered placeholders, for an `IN (…)` list or one row.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, …), (…), …`: `rows` rows of `width` numbered placeholders each, for a
/// `VALUES` list joined in an `UPDATE … FROM`.
pub fn value_rows(first: usize, width: usize, rows: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(first + width * i, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One multi-row insert: `head` (`INSERT INTO t (a, b)`) followed by `VALUES ($1, $2),
/// ($3, $4), …` for `rows`, with the values in placeholder order. Callers chunk their rows
/// so a statement stays within the backends' parameter limits.
pub fn multi_row_insert(
    backend: DbBackend,
    head: &str,
    rows: impl IntoIterator<Item = Vec<sea_orm::Value>>,
) -> Statement {
    let mut sql = match head.strip_prefix("INSERT INTO ") {
        // A multi-row statement that may abort makes SQLite copy every page it changes
        // into a statement journal, to undo just that statement. A failed statement fails
        // its whole transaction here (as it must on PostgreSQL), so FAIL — stop at the
        // failing row without undoing the rows before it — is enough, and needs no journal.
        Some(rest) if backend == DbBackend::Sqlite => format!("INSERT OR FAIL INTO {rest} VALUES "),
        _ => format!("{head} VALUES "),
    };
    let mut values = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        if backend == DbBackend::Sqlite {
            // Anonymous placeholders in value order: nothing for `statement` to renumber.
            for k in 0..row.len() {
                sql.push_str(if k == 0 { "?" } else { ", ?" });
            }
        } else {
            sql.push_str(&placeholders(values.len() + 1, row.len()));
        }
        sql.push(')');
        values.extend(row);
    }
    Statement::from_sql_and_values(backend, sql, values)
}

/// A `CREATE TABLE` written for PostgreSQL, for `backend`: `BYTEA` is `BLOB` on SQLite,
/// and `{serial}` becomes an auto-incrementing primary key of either.
pub fn ddl(backend: DbBackend, sql: &str) -> String {
    let serial = if backend == DbBackend::Sqlite {
        "INTEGER PRIMARY KEY AUTOINCREMENT"
    } else {
        "BIGSERIAL PRIMARY KEY"
    };
    let sql = sql.replace("{serial}", serial);
    if backend == DbBackend::Sqlite {
        sql.replace("BYTEA", "BLOB")
    } else {
        sql
    }
}

/// Runs a query written with `$n` placeholders, on either backend.
pub async fn query<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    db.query_all_raw(statement(db.get_database_backend(), sql, values))
        .await
}

/// Runs a statement written with `$n` placeholders, on either backend; returns the rows it
/// affected.
pub async fn execute<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<u64, DbErr> {
    Ok(db
        .execute_raw(statement(db.get_database_backend(), sql, values))
        .await?
        .rows_affected())
}

/// SQLite has one writer: a service's writers queue here instead of failing to upgrade a
/// read transaction (SQLITE_BUSY). On PostgreSQL the gate is open: writers lock the rows
/// they change instead. Cloning shares the gate.
#[derive(Debug, Clone, Default)]
pub struct WriteGate(std::sync::Arc<tokio::sync::Mutex<()>>);

/// Held while writing on SQLite; nothing on PostgreSQL. Keep it until the commit.
pub type WriteGuard = Option<tokio::sync::OwnedMutexGuard<()>>;

impl WriteGate {
    /// Waits for the gate when `db` is SQLite.
    pub async fn enter(&self, db: &impl ConnectionTrait) -> WriteGuard {
        if db.get_database_backend() == DbBackend::Sqlite {
            Some(self.0.clone().lock_owned().await)
        } else {
            None
        }
    }

    /// Enters the gate and begins a transaction on `db`.
    pub async fn begin(
        &self,
        db: &DatabaseConnection,
    ) -> Result<(WriteGuard, sea_orm::DatabaseTransaction), DbErr> {
        let guard = self.enter(db).await;
        Ok((guard, sea_orm::TransactionTrait::begin(db).await?))
    }
}

/// Makes the text keys of a service's tables compare byte by byte (`COLLATE "C"`) on
/// PostgreSQL, or puts them back to the database's default collation (`to_c == false`);
/// nothing on SQLite, whose text already compares bytes. `keys` lists each table with its
/// key and index columns. Ids are opaque: under a locale collation (`C.UTF-8` here) every
/// key comparison of an index went through `strcoll`; byte order sorts UTF-8 as code
/// points, the order `C.UTF-8` gives anyway.
pub async fn collate_keys(
    db: &impl ConnectionTrait,
    keys: &[(&str, &[&str])],
    to_c: bool,
) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let collation = if to_c { "\"C\"" } else { "\"default\"" };
    for (table, columns) in keys {
        let alters: Vec<String> = columns
            .iter()
            .map(|c| format!("ALTER COLUMN {c} TYPE TEXT COLLATE {collation}"))
            .collect();
        db.execute_unprepared(&format!("ALTER TABLE {table} {}", alters.join(", ")))
            .await?;
    }
    Ok(())
}

/// True when the connection is PostgreSQL.
pub fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multi_row_insert_numbers_every_value_in_order() {
        let rows = vec![vec![1i64.into(), "a".into()], vec![2i64.into(), "b".into()]];
        let pg = multi_row_insert(DbBackend::Postgres, "INSERT INTO t (n, s)", rows.clone());
        assert_eq!(pg.sql, "INSERT INTO t (n, s) VALUES ($1, $2), ($3, $4)");
        assert_eq!(pg.values.map(|v| v.0.len()), Some(4));
        let lite = multi_row_insert(DbBackend::Sqlite, "INSERT INTO t (n, s)", rows);
        // FAIL: no statement journal (see multi_row_insert).
        assert_eq!(
            lite.sql,
            "INSERT OR FAIL INTO t (n, s) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(value_rows(2, 2, 2), "($2, $3), ($4, $5)");
    }

    // `INSERT OR FAIL` keeps the rows before a failing one until the transaction ends:
    // what callers rely on is that the failure fails the transaction and nothing of it,
    // nor of the statements before it, is stored.
    crate::db_test!(
        a_failing_multi_row_insert_stores_nothing_of_its_transaction,
        |db| async move {
            let conn = connect(&db.url("platform"), "platform", 2).await.unwrap();
            let backend = conn.get_database_backend();
            conn.execute_unprepared("CREATE TABLE kept (n BIGINT PRIMARY KEY)")
                .await
                .unwrap();
            let row = |n: i64| vec![sea_orm::Value::from(n)];
            let txn = sea_orm::TransactionTrait::begin(&conn).await.unwrap();
            txn.execute_raw(multi_row_insert(
                backend,
                "INSERT INTO kept (n)",
                [row(1), row(2)],
            ))
            .await
            .unwrap();
            let failed = txn
                .execute_raw(multi_row_insert(
                    backend,
                    "INSERT INTO kept (n)",
                    [row(3), row(4), row(3)],
                ))
                .await;
            assert!(failed.is_err(), "a repeated key must fail the statement");
            drop(txn);
            let rows = query(&conn, "SELECT COUNT(*) AS n FROM kept", vec![])
                .await
                .unwrap();
            let stored: i64 = rows[0].try_get("", "n").unwrap();
            assert_eq!(stored, 0);
        }
    );

    #[test]
    fn ddl_adapts_blobs_and_serial_keys() {
        let sql = "CREATE TABLE t (seq {serial}, b BYTEA)";
        assert_eq!(
            ddl(DbBackend::Sqlite, sql),
            "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, b BLOB)"
        );
        assert_eq!(
            ddl(DbBackend::Postgres, sql),
            "CREATE TABLE t (seq BIGSERIAL PRIMARY KEY, b BYTEA)"
        );
    }

    use super::*;

    #[test]
    fn sqlite_statements_use_anonymous_placeholders_in_text_order() {
        let stmt = statement(
            DbBackend::Sqlite,
            "SELECT * FROM t WHERE a = $2 AND b = $1 AND c = $2",
            vec![10i64.into(), 20i64.into()],
        );
        assert_eq!(stmt.sql, "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?");
        let values: Vec<sea_orm::Value> = stmt.values.unwrap().0;
        assert_eq!(values, vec![20i64.into(), 10i64.into(), 20i64.into()]);
        let pg = statement(DbBackend::Postgres, "SELECT $1", vec![1i64.into()]);
        assert_eq!(pg.sql, "SELECT $1");
    }

    #[test]
    fn sqlite_path_is_read_from_the_url() {
        assert_eq!(
            sqlite_path("sqlite://data/profiles.db?mode=rwc"),
            Some(Path::new("data/profiles.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(schema_name("Profiles-1"), "profiles_1");
    }
}
