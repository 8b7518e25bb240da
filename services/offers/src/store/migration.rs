//! The offers tables. Every row carries `tenant_id`; every key starts with it.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;
use winback_platform::db::ddl;

#[derive(Debug)]
pub(crate) struct CreateOffers;

impl MigrationName for CreateOffers {
    fn name(&self) -> &str {
        "m20261122_300000_create_offers"
    }
}

const TABLES: &[&str] = &[
    // Templates and ladders as their encoded API messages.
    "CREATE TABLE templates (
        tenant_id TEXT NOT NULL,
        template_id TEXT NOT NULL,
        template BYTEA NOT NULL,
        archived BIGINT NOT NULL DEFAULT 0,
        created_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, template_id))",
    "CREATE TABLE ladders (
        tenant_id TEXT NOT NULL,
        ladder_id TEXT NOT NULL,
        ladder BYTEA NOT NULL,
        created_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, ladder_id))",
    // One row per coupon; state 1 active, 2 redeemed, 3 expired. The idempotency key is
    // unique per tenant, so a retried issue finds the coupon it made.
    "CREATE TABLE coupons (
        tenant_id TEXT NOT NULL,
        code TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        template_id TEXT NOT NULL,
        campaign_id TEXT NOT NULL,
        ladder_id TEXT NOT NULL,
        rung BIGINT NOT NULL,
        state BIGINT NOT NULL,
        issued_at_us BIGINT NOT NULL,
        expires_at_us BIGINT NOT NULL,
        currency TEXT NOT NULL,
        estimated_cost_minor BIGINT NOT NULL,
        real_cost_minor BIGINT NOT NULL DEFAULT 0,
        order_id TEXT NOT NULL DEFAULT '',
        idempotency_key TEXT NOT NULL,
        PRIMARY KEY (tenant_id, code))",
    "CREATE UNIQUE INDEX coupons_idempotency ON coupons (tenant_id, idempotency_key)",
    "CREATE INDEX coupons_customer ON coupons (tenant_id, customer_id, template_id)",
    // Redemption flips `state`, `order_id` and `real_cost_minor`: with none of them in an
    // index, PostgreSQL updates the row in place (a HOT update, no index writes), and no
    // index but the primary key matches the redemption's `WHERE`, so the planner cannot
    // wander off the key before the table has statistics.
    "CREATE INDEX coupons_expiry ON coupons (tenant_id, expires_at_us)",
    "CREATE INDEX coupons_campaign ON coupons (tenant_id, campaign_id)",
    "CREATE INDEX coupons_template ON coupons (tenant_id, template_id)",
    // Running issue totals per template and per campaign: the budget check at issue reads
    // and bumps one row. (Redemption totals are summed from the coupons.)
    "CREATE TABLE budget_usage (
        tenant_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        issued BIGINT NOT NULL DEFAULT 0,
        redeemed BIGINT NOT NULL DEFAULT 0,
        estimated_minor BIGINT NOT NULL DEFAULT 0,
        real_minor BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, scope))",
    // Failed attempts and lockouts per subject ("customer:<id>" or "source:<addr>").
    "CREATE TABLE attempt_counters (
        tenant_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        failures BIGINT NOT NULL,
        lockouts BIGINT NOT NULL,
        locked_until_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, subject))",
    "CREATE TABLE fraud_signals (
        seq {serial},
        tenant_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        source TEXT NOT NULL,
        code TEXT NOT NULL,
        at_us BIGINT NOT NULL,
        locked_until_us BIGINT NOT NULL)",
    "CREATE INDEX fraud_signals_tenant ON fraud_signals (tenant_id, seq)",
];

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateOffers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for sql in TABLES {
            db.execute_unprepared(&ddl(backend, sql)).await?;
        }
        if backend == sea_orm::DbBackend::Postgres {
            // Room on each page for the in-place updates.
            db.execute_unprepared("ALTER TABLE coupons SET (fillfactor = 85)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            "fraud_signals",
            "attempt_counters",
            "budget_usage",
            "coupons",
            "ladders",
            "templates",
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}
