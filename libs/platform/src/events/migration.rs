//! Tables of the event feed, created in every service's database: the outbox it serves,
//! and the cursor and inbox of the consumers it runs.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

/// Migrations of the platform's own tables, tracked apart from the service's.
#[derive(Debug)]
pub struct PlatformMigrator;

impl MigratorTrait for PlatformMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateEventTables), Box::new(EventKeysInByteOrder)]
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
