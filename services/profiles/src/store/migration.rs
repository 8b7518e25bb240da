//! The profiles tables. Every row carries `tenant_id`; every key starts with it.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub(crate) struct CreateProfiles;

impl MigrationName for CreateProfiles {
    fn name(&self) -> &str {
        "m20261122_100000_create_profiles"
    }
}

/// Tables whose SQL is the same on both backends.
const COMMON: &[&str] = &[
    "CREATE TABLE customers (
        tenant_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        phone TEXT NOT NULL,
        push_tokens TEXT NOT NULL,
        locale TEXT NOT NULL,
        time_zone TEXT NOT NULL,
        birthday TEXT NOT NULL,
        tags TEXT NOT NULL,
        attributes TEXT NOT NULL,
        erased BIGINT NOT NULL DEFAULT 0,
        created_at_us BIGINT NOT NULL,
        updated_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, customer_id))",
    "CREATE INDEX customers_updated ON customers (tenant_id, updated_at_us)",
    "CREATE TABLE consents (
        tenant_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        channel BIGINT NOT NULL,
        purpose BIGINT NOT NULL,
        granted BIGINT NOT NULL,
        source TEXT NOT NULL,
        recorded_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, customer_id, channel, purpose))",
    "CREATE TABLE orders (
        tenant_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        placed_at_us BIGINT NOT NULL,
        currency TEXT NOT NULL,
        total_minor BIGINT NOT NULL,
        refunded_minor BIGINT NOT NULL DEFAULT 0,
        cancelled BIGINT NOT NULL DEFAULT 0,
        store TEXT NOT NULL,
        coupon_code TEXT NOT NULL,
        lines TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (tenant_id, order_id))",
    "CREATE INDEX orders_customer ON orders (tenant_id, customer_id, placed_at_us)",
    "CREATE TABLE order_adjustments (
        tenant_id TEXT NOT NULL,
        adjustment_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        kind BIGINT NOT NULL,
        amount_minor BIGINT NOT NULL,
        occurred_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, adjustment_id))",
    "CREATE TABLE engagement_events (
        tenant_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        occurred_at_us BIGINT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (tenant_id, event_id))",
    "CREATE INDEX engagement_customer ON engagement_events (tenant_id, customer_id, occurred_at_us)",
    "CREATE TABLE bonus_balances (
        tenant_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        lots TEXT NOT NULL,
        PRIMARY KEY (tenant_id, customer_id))",
    "CREATE TABLE bonus_adjustments (
        tenant_id TEXT NOT NULL,
        adjustment_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        points BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, adjustment_id))",
];

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateProfiles {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in COMMON {
            db.execute_unprepared(sql).await?;
        }
        let specific: &[&str] = match db.get_database_backend() {
            DbBackend::Sqlite => &[
                "CREATE TABLE consent_history (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    tenant_id TEXT NOT NULL,
                    customer_id TEXT NOT NULL,
                    channel BIGINT NOT NULL,
                    purpose BIGINT NOT NULL,
                    granted BIGINT NOT NULL,
                    source TEXT NOT NULL,
                    recorded_at_us BIGINT NOT NULL)",
                // The facts row: change position (tx_id is 0 on SQLite: one writer, so
                // change_seq is commit order), the incremental state, and the encoded
                // CustomerFacts that StreamFacts serves as is.
                "CREATE TABLE facts (
                    tenant_id TEXT NOT NULL,
                    customer_id TEXT NOT NULL,
                    tx_id BIGINT NOT NULL DEFAULT 0,
                    change_seq BIGINT NOT NULL,
                    state BLOB NOT NULL,
                    encoded BLOB NOT NULL,
                    PRIMARY KEY (tenant_id, customer_id))",
                "CREATE TABLE change_counter (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
                "INSERT INTO change_counter (name, value) VALUES ('facts', 0)",
            ],
            _ => &[
                "CREATE TABLE consent_history (
                    id BIGSERIAL PRIMARY KEY,
                    tenant_id TEXT NOT NULL,
                    customer_id TEXT NOT NULL,
                    channel BIGINT NOT NULL,
                    purpose BIGINT NOT NULL,
                    granted BIGINT NOT NULL,
                    source TEXT NOT NULL,
                    recorded_at_us BIGINT NOT NULL)",
                // On PostgreSQL changes commit out of sequence order; the row keeps the id of
                // the transaction that last wrote it (see the event feed for the horizon).
                "CREATE SEQUENCE facts_change_seq",
                "CREATE TABLE facts (
                    tenant_id TEXT NOT NULL,
                    customer_id TEXT NOT NULL,
                    tx_id BIGINT NOT NULL,
                    change_seq BIGINT NOT NULL,
                    state BYTEA NOT NULL,
                    encoded BYTEA NOT NULL,
                    PRIMARY KEY (tenant_id, customer_id))",
            ],
        };
        for sql in specific {
            db.execute_unprepared(sql).await?;
        }
        db.execute_unprepared(
            "CREATE INDEX consent_history_customer ON consent_history (tenant_id, customer_id, id)",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX facts_changes ON facts (tenant_id, tx_id, change_seq)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            "facts",
            "consent_history",
            "bonus_adjustments",
            "bonus_balances",
            "engagement_events",
            "order_adjustments",
            "orders",
            "consents",
            "customers",
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}
