//! The delivery tables. Every row carries `tenant_id`; every key starts with it.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;
use winback_platform::db::ddl;

#[derive(Debug)]
pub(crate) struct CreateDelivery;

impl MigrationName for CreateDelivery {
    fn name(&self) -> &str {
        "m20261122_400000_create_delivery"
    }
}

const TABLES: &[&str] = &[
    // Templates as their encoded API messages, per channel and locale.
    "CREATE TABLE templates (
        tenant_id TEXT NOT NULL,
        template_id TEXT NOT NULL,
        channel BIGINT NOT NULL,
        locale TEXT NOT NULL,
        template BYTEA NOT NULL,
        PRIMARY KEY (tenant_id, template_id, channel, locale))",
    // The durable outbox: a message is stored, rendered, before any provider is called.
    // status: 1 queued, 2 sending (leased to a worker until lease_until_us), 3 sent,
    // 4 delivered, 5 opened, 6 clicked, 7 bounced, 8 failed, 9 suppressed.
    "CREATE TABLE messages (
        tenant_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        channel BIGINT NOT NULL,
        provider TEXT NOT NULL DEFAULT '',
        customer_id TEXT NOT NULL,
        contact TEXT NOT NULL,
        template_id TEXT NOT NULL,
        purpose BIGINT NOT NULL,
        status BIGINT NOT NULL,
        subject TEXT NOT NULL,
        body_text TEXT NOT NULL,
        body_html TEXT NOT NULL,
        body_json TEXT NOT NULL,
        metadata TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_us BIGINT NOT NULL,
        lease_until_us BIGINT NOT NULL DEFAULT 0,
        provider_message_id TEXT NOT NULL DEFAULT '',
        cost_minor BIGINT NOT NULL DEFAULT 0,
        currency TEXT NOT NULL DEFAULT '',
        sms_segments BIGINT NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        created_at_us BIGINT NOT NULL,
        sent_at_us BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, message_id))",
    "CREATE UNIQUE INDEX messages_idempotency ON messages (tenant_id, idempotency_key)",
    "CREATE INDEX messages_customer ON messages (tenant_id, customer_id)",
    "CREATE INDEX messages_provider_id ON messages (provider_message_id)",
    // What the workers look for: due queued messages and expired leases, across tenants.
    "CREATE INDEX messages_due ON messages (status, next_attempt_us)",
    // The status timeline of every message.
    "CREATE TABLE message_timeline (
        seq {serial},
        tenant_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        status BIGINT NOT NULL,
        at_us BIGINT NOT NULL,
        detail TEXT NOT NULL)",
    "CREATE INDEX message_timeline_message ON message_timeline (tenant_id, message_id, seq)",
    // Contacts that must not be sent to, per channel.
    "CREATE TABLE suppressions (
        tenant_id TEXT NOT NULL,
        channel BIGINT NOT NULL,
        contact TEXT NOT NULL,
        reason TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        marketing_only BIGINT NOT NULL,
        created_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, channel, contact))",
    // Provider settings per tenant and channel, as encoded API messages.
    "CREATE TABLE channel_settings (
        tenant_id TEXT NOT NULL,
        channel BIGINT NOT NULL,
        settings BYTEA NOT NULL,
        PRIMARY KEY (tenant_id, channel))",
    // Provider callbacks already applied (replays are refused).
    "CREATE TABLE seen_callbacks (
        provider TEXT NOT NULL,
        callback_id TEXT NOT NULL,
        at_us BIGINT NOT NULL,
        PRIMARY KEY (provider, callback_id))",
];

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateDelivery {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for sql in TABLES {
            db.execute_unprepared(&ddl(backend, sql)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            "seen_callbacks",
            "channel_settings",
            "suppressions",
            "message_timeline",
            "messages",
            "templates",
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// The per-day message quota counts a tenant's messages since midnight.
#[derive(Debug)]
pub(crate) struct IndexMessagesByTime;

impl MigrationName for IndexMessagesByTime {
    fn name(&self) -> &str {
        "m20261207_400000_index_messages_by_time"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for IndexMessagesByTime {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS messages_created ON messages (tenant_id, created_at_us)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS messages_created")
            .await?;
        Ok(())
    }
}
