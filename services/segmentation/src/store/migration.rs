//! The segmentation tables. Every row carries `tenant_id`; every key starts with it.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;
use winback_platform::db::ddl;

#[derive(Debug)]
pub(crate) struct CreateSegmentation;

impl MigrationName for CreateSegmentation {
    fn name(&self) -> &str {
        "m20261122_200000_create_segmentation"
    }
}

const COMMON: &[&str] = &[
    // The tenant's policy, as an encoded `winback.segmentation.v1.Policy` with defaults filled in.
    "CREATE TABLE policies (
        tenant_id TEXT PRIMARY KEY,
        policy BYTEA NOT NULL,
        updated_at_us BIGINT NOT NULL)",
    // The scores of the latest recompute, in chunks of consecutive customer ids: a
    // recompute of a million customers writes a few hundred rows, not a million.
    "CREATE TABLE score_chunks (
        tenant_id TEXT NOT NULL,
        chunk_no BIGINT NOT NULL,
        first_customer_id TEXT NOT NULL,
        last_customer_id TEXT NOT NULL,
        scores BYTEA NOT NULL,
        PRIMARY KEY (tenant_id, chunk_no))",
    "CREATE INDEX score_chunks_first ON score_chunks (tenant_id, first_customer_id)",
    // One row per recompute: counts, the summary (sizes, grid) and the model fit.
    "CREATE TABLE recompute_runs (
        tenant_id TEXT NOT NULL,
        recompute_id TEXT NOT NULL,
        as_of_us BIGINT NOT NULL,
        finished_at_us BIGINT NOT NULL,
        took_us BIGINT NOT NULL,
        customers BIGINT NOT NULL,
        segment_changes BIGINT NOT NULL,
        lifecycle_changes BIGINT NOT NULL,
        summary BYTEA NOT NULL,
        models BYTEA NOT NULL,
        PRIMARY KEY (tenant_id, recompute_id))",
    "CREATE INDEX recompute_runs_finished ON recompute_runs (tenant_id, finished_at_us)",
    "CREATE TABLE transitions (
        seq {serial},
        tenant_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        from_segment TEXT NOT NULL,
        to_segment TEXT NOT NULL,
        from_state BIGINT NOT NULL,
        to_state BIGINT NOT NULL,
        recompute_id TEXT NOT NULL,
        at_us BIGINT NOT NULL)",
    "CREATE INDEX transitions_tenant ON transitions (tenant_id, seq)",
    "CREATE INDEX transitions_customer ON transitions (tenant_id, customer_id, seq)",
];

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateSegmentation {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for sql in COMMON {
            db.execute_unprepared(&ddl(backend, sql)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in ["transitions", "recompute_runs", "score_chunks", "policies"] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// Score chunks are stored uncompressed on PostgreSQL (`STORAGE EXTERNAL`): a chunk is
/// already a compact encoding of 2,000 scores, and pglz spent a quarter of a million-
/// customer recompute compressing it for little gain. Nothing on SQLite.
pub(crate) struct ScoreChunksUncompressed;

impl MigrationName for ScoreChunksUncompressed {
    fn name(&self) -> &str {
        "m20261207_000001_score_chunks_uncompressed"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ScoreChunksUncompressed {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE score_chunks ALTER COLUMN scores SET STORAGE EXTERNAL",
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE score_chunks ALTER COLUMN scores SET STORAGE EXTENDED",
            )
            .await?;
        }
        Ok(())
    }
}

/// Incremental recomputes: a run records what the next incremental one needs (the facts
/// cursor, the RFM boundaries, the summary's tallies), and the customers an incremental
/// run rescored are kept as patches over the chunks until the next full run folds them in.
pub(crate) struct IncrementalRecompute;

impl MigrationName for IncrementalRecompute {
    fn name(&self) -> &str {
        "m20261208_000001_incremental_recompute"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for IncrementalRecompute {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        for sql in [
            // An encoded `RunState`; NULL for runs before this migration and backtests.
            "ALTER TABLE recompute_runs ADD COLUMN incremental BYTEA",
            // One rescored customer: an encoded `StoredScore`, or empty when the customer
            // was erased since the chunks were written.
            "CREATE TABLE score_patches (
                tenant_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                score BYTEA NOT NULL,
                PRIMARY KEY (tenant_id, customer_id))",
        ] {
            db.execute_unprepared(&ddl(backend, sql)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS score_patches")
            .await?;
        db.execute_unprepared("ALTER TABLE recompute_runs DROP COLUMN incremental")
            .await?;
        Ok(())
    }
}
