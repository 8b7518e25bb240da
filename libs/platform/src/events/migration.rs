//! Tables of the event feed, created in every service's database: the outbox it serves,
//! and the cursor and inbox of the consumers it runs.

use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::prelude::*;

/// Migrations of the platform's own tables, tracked apart from the service's.
#[derive(Debug)]
pub struct PlatformMigrator;

impl MigratorTrait for PlatformMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateEventTables),
            Box::new(EventKeysInByteOrder),
            Box::new(OutboxWithoutEventIdIndex),
            Box::new(OutboxRowsHoldManyEvents),
            Box::new(crate::idempotency::CreateRequestLog),
        ]
    }

    fn migration_table_name() -> sea_orm::DynIden {
        Alias::new("winback_platform_migrations").into_iden()
    }
}

#[derive(Debug)]
struct CreateEventTables;

impl MigrationName for CreateEventTables {
    fn name(&self) -> &str {
        "m20261122_000001_create_event_tables"
    }
}

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateEventTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            // SQLite has one writer at a time, so `seq` order is commit order.
            DbBackend::Sqlite => &[
                "CREATE TABLE IF NOT EXISTS event_outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    tx_id INTEGER NOT NULL DEFAULT 0,
                    event_id TEXT NOT NULL UNIQUE,
                    tenant_id TEXT NOT NULL,
                    event_type TEXT NOT NULL,
                    occurred_at_us BIGINT NOT NULL,
                    payload BLOB NOT NULL)",
                "CREATE INDEX IF NOT EXISTS event_outbox_tenant ON event_outbox (tenant_id, seq)",
            ],
            // On PostgreSQL concurrent transactions commit out of `seq` order, so each row
            // records its transaction id and the feed only serves rows of transactions older
            // than every transaction still running (see feed.rs).
            _ => &[
                "CREATE TABLE IF NOT EXISTS event_outbox (
                    seq BIGSERIAL PRIMARY KEY,
                    tx_id BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
                    event_id TEXT NOT NULL UNIQUE,
                    tenant_id TEXT NOT NULL,
                    event_type TEXT NOT NULL,
                    occurred_at_us BIGINT NOT NULL,
                    payload BYTEA NOT NULL)",
                "CREATE INDEX IF NOT EXISTS event_outbox_position ON event_outbox (tx_id, seq)",
                "CREATE INDEX IF NOT EXISTS event_outbox_tenant ON event_outbox (tenant_id, tx_id, seq)",
            ],
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        for sql in [
            "CREATE TABLE IF NOT EXISTS event_cursor (
                consumer TEXT NOT NULL,
                source TEXT NOT NULL,
                position TEXT NOT NULL,
                updated_at_us BIGINT NOT NULL,
                PRIMARY KEY (consumer, source))",
            "CREATE TABLE IF NOT EXISTS event_inbox (
                consumer TEXT NOT NULL,
                event_id TEXT NOT NULL,
                handled_at_us BIGINT NOT NULL,
                PRIMARY KEY (consumer, event_id))",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in ["event_inbox", "event_cursor", "event_outbox"] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// The feed's text keys compare bytes on PostgreSQL (`crate::db::collate_keys`): every
/// event appended inserts its id into a unique index and its tenant into another.
#[derive(Debug)]
struct EventKeysInByteOrder;

impl MigrationName for EventKeysInByteOrder {
    fn name(&self) -> &str {
        "m20261205_000002_event_keys_in_byte_order"
    }
}

const EVENT_KEYS: &[(&str, &[&str])] = &[
    ("event_outbox", &["event_id", "tenant_id"]),
    ("event_cursor", &["consumer", "source"]),
    ("event_inbox", &["consumer", "event_id"]),
];

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for EventKeysInByteOrder {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::db::collate_keys(manager.get_connection(), EVENT_KEYS, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::db::collate_keys(manager.get_connection(), EVENT_KEYS, false).await
    }
}

/// The outbox keeps no unique index on `event_id`: the id is a UUIDv7 made where the event
/// is appended, nothing looks an event up by it (consumers deduplicate in their own inbox),
/// and the index cost an insert into a text-keyed B-tree for every event of every service.
/// SQLite cannot drop a column's `UNIQUE`, so there the table is copied without it (rows
/// and their `seq` kept; AUTOINCREMENT's counter follows the rename).
#[derive(Debug)]
struct OutboxWithoutEventIdIndex;

impl MigrationName for OutboxWithoutEventIdIndex {
    fn name(&self) -> &str {
        "m20261206_000001_outbox_without_event_id_index"
    }
}

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for OutboxWithoutEventIdIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Sqlite => &[
                "CREATE TABLE event_outbox_copy (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    tx_id INTEGER NOT NULL DEFAULT 0,
                    event_id TEXT NOT NULL,
                    tenant_id TEXT NOT NULL,
                    event_type TEXT NOT NULL,
                    occurred_at_us BIGINT NOT NULL,
                    payload BLOB NOT NULL)",
                "INSERT INTO event_outbox_copy (seq, tx_id, event_id, tenant_id, event_type, occurred_at_us, payload) \
                 SELECT seq, tx_id, event_id, tenant_id, event_type, occurred_at_us, payload FROM event_outbox",
                // AUTOINCREMENT never reuses a `seq` the old table handed out, even one
                // whose row was deleted since.
                "UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'event_outbox') \
                 WHERE name = 'event_outbox_copy' AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'event_outbox')",
                "DROP TABLE event_outbox",
                "ALTER TABLE event_outbox_copy RENAME TO event_outbox",
                "CREATE INDEX event_outbox_tenant ON event_outbox (tenant_id, seq)",
            ],
            _ => &["ALTER TABLE event_outbox DROP CONSTRAINT IF EXISTS event_outbox_event_id_key"],
        };
        // The copy must be all or nothing.
        crate::db::execute_in_one_transaction(db, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(match db.get_database_backend() {
            DbBackend::Sqlite => {
                "CREATE UNIQUE INDEX IF NOT EXISTS event_outbox_event_id ON event_outbox (event_id)"
            }
            _ => "ALTER TABLE event_outbox ADD CONSTRAINT event_outbox_event_id_key UNIQUE (event_id)",
        })
        .await?;
        Ok(())
    }
}

/// An outbox row may hold a run of events (`event_count` of them, length-delimited in
/// `payload`; see `outbox::OutboxRows`): a row costs each of the outbox's indexes an insert,
/// an event inside a row only its bytes. Rows written before hold one event each, which is
/// what the default says. On PostgreSQL a full row (~13 KB) goes out of line, and is stored
/// there uncompressed (`STORAGE EXTERNAL`): compressing runs of events that repeat their
/// tenant, type and field names kept the backend busy for longer than their inserts
/// (the events of a 50,000-order group: ~95 ms compressed, ~58 ms not).
#[derive(Debug)]
struct OutboxRowsHoldManyEvents;

impl MigrationName for OutboxRowsHoldManyEvents {
    fn name(&self) -> &str {
        "m20261206_200000_outbox_rows_hold_many_events"
    }
}

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for OutboxRowsHoldManyEvents {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let add = "ALTER TABLE event_outbox ADD COLUMN event_count BIGINT NOT NULL DEFAULT 1";
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &[
                add,
                "ALTER TABLE event_outbox ALTER COLUMN payload SET STORAGE EXTERNAL",
            ],
            _ => &[add],
        };
        crate::db::execute_in_one_transaction(db, statements).await
    }

    /// Refuses while a row holds more than one event: the table before could not hold
    /// them, and spreading them over rows of their own would put them after every later
    /// event in the feed.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let txn = db.begin().await?;
        let held = txn
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM event_outbox WHERE event_count > 1",
            ))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if held > 0 {
            return Err(DbErr::Migration(format!(
                "{held} outbox rows hold more than one event; the outbox can go back only once they are gone"
            )));
        }
        txn.execute_unprepared("ALTER TABLE event_outbox DROP COLUMN event_count")
            .await?;
        if db.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(
                "ALTER TABLE event_outbox ALTER COLUMN payload SET STORAGE EXTENDED",
            )
            .await?;
        }
        txn.commit().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    use sea_orm_migration::MigratorTrait;

    use super::PlatformMigrator;
    use crate::testing::TestDatabase;

    async fn seqs(db: &impl ConnectionTrait) -> Vec<i64> {
        db.query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT seq FROM event_outbox ORDER BY seq",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<i64>("", "seq").unwrap())
        .collect()
    }

    async fn append(db: &impl ConnectionTrait, event_id: &str) {
        db.execute_raw(crate::db::statement(
            db.get_database_backend(),
            "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload) \
             VALUES ($1, 't', 'purchase_recorded', 1, $2)",
            vec![event_id.into(), vec![1u8, 2, 3].into()],
        ))
        .await
        .unwrap();
    }

    crate::db_test!(
        dropping_the_event_id_index_keeps_the_outbox_and_its_numbering,
        |db| async move {
            let db: &TestDatabase = db;
            let conn = crate::db::connect(&db.url("feed"), "feed", 2)
                .await
                .unwrap();
            // The tables as they were before: events appended, the last one deleted.
            PlatformMigrator::up(&conn, Some(2)).await.unwrap();
            for id in ["e1", "e2", "e3"] {
                append(&conn, id).await;
            }
            conn.execute_unprepared("DELETE FROM event_outbox WHERE event_id = 'e3'")
                .await
                .unwrap();
            PlatformMigrator::up(&conn, None).await.unwrap();

            assert_eq!(seqs(&conn).await, vec![1, 2]);
            let payload = conn
                .query_one_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT payload FROM event_outbox WHERE event_id = 'e2'",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get::<Vec<u8>>("", "payload")
                .unwrap();
            assert_eq!(payload, vec![1, 2, 3]);
            // Numbering goes on after every seq handed out (3 was, then deleted), and the
            // feed's index by tenant is there.
            append(&conn, "e4").await;
            assert_eq!(seqs(&conn).await, vec![1, 2, 4]);
            if conn.get_database_backend() == DbBackend::Sqlite {
                let index = conn
                    .query_all_raw(Statement::from_string(
                        DbBackend::Sqlite,
                        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event_outbox'",
                    ))
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.try_get::<String>("", "name").unwrap())
                    .collect::<Vec<_>>();
                assert_eq!(index, vec!["event_outbox_tenant".to_owned()]);
            }
            // Down (this migration and the one after it) and up again.
            PlatformMigrator::down(&conn, Some(2)).await.unwrap();
            PlatformMigrator::up(&conn, None).await.unwrap();
            assert_eq!(seqs(&conn).await, vec![1, 2, 4]);
            conn.close().await.unwrap();
        }
    );

    crate::db_test!(
        the_outbox_goes_back_to_one_event_a_row_only_when_no_row_holds_more,
        |db| async move {
            let db: &TestDatabase = db;
            let conn = crate::db::connect(&db.url("feed"), "feed", 2)
                .await
                .unwrap();
            PlatformMigrator::up(&conn, None).await.unwrap();
            let outbox = crate::events::Outbox::new(winback_proto::events::EventSource::Profiles);
            let purchase = || {
                (
                    "t".to_owned(),
                    chrono::Utc::now(),
                    winback_proto::events::event::Payload::PurchaseRecorded(Default::default()),
                )
            };
            outbox
                .append_many(&conn, vec![purchase(), purchase(), purchase()])
                .await
                .unwrap();
            // The request log came later; it goes back first.
            PlatformMigrator::down(&conn, Some(1)).await.unwrap();
            let refused = PlatformMigrator::down(&conn, Some(1)).await.unwrap_err();
            assert!(
                refused
                    .to_string()
                    .contains("1 outbox rows hold more than one event"),
                "{refused}"
            );
            // Refused means untouched: the rows read as before.
            assert_eq!(seqs(&conn).await, vec![1]);

            // PostgreSQL keeps full rows out of line, uncompressed; back to its default after.
            let storage = || async {
                conn.query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT attstorage::text AS s FROM pg_attribute \
                     WHERE attrelid = 'event_outbox'::regclass AND attname = 'payload'",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get::<String>("", "s")
                .unwrap()
            };
            let postgres = conn.get_database_backend() == DbBackend::Postgres;
            if postgres {
                assert_eq!(storage().await, "e");
            }

            conn.execute_unprepared("DELETE FROM event_outbox")
                .await
                .unwrap();
            outbox.append_many(&conn, vec![purchase()]).await.unwrap();
            PlatformMigrator::down(&conn, Some(1)).await.unwrap();
            if postgres {
                assert_eq!(storage().await, "x");
            }
            assert_eq!(seqs(&conn).await, vec![2]);
            PlatformMigrator::up(&conn, None).await.unwrap();
            let count = conn
                .query_one_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT event_count FROM event_outbox",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get::<i64>("", "event_count")
                .unwrap();
            assert_eq!(count, 1);
            conn.close().await.unwrap();
        }
    );
}
