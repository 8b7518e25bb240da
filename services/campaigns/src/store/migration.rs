//! The campaigns tables. Every row carries `tenant_id`; every key starts with it.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;
use winback_platform::db::ddl;

#[derive(Debug)]
pub(crate) struct CreateCampaigns;

impl MigrationName for CreateCampaigns {
    fn name(&self) -> &str {
        "m20261122_300000_create_campaigns"
    }
}

const TABLES: &[&str] = &[
    // The tenant's contact policy as its encoded API message (absent: the defaults).
    "CREATE TABLE policies (
        tenant_id TEXT NOT NULL PRIMARY KEY,
        policy BYTEA NOT NULL)",
    // Chains as their encoded API messages.
    "CREATE TABLE chains (
        tenant_id TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        chain BYTEA NOT NULL,
        created_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, chain_id))",
    // Campaigns as their encoded API messages; state and winback also as columns to filter.
    "CREATE TABLE campaigns (
        tenant_id TEXT NOT NULL,
        campaign_id TEXT NOT NULL,
        state BIGINT NOT NULL,
        campaign BYTEA NOT NULL,
        created_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, campaign_id))",
    // One row per decision: enrolled (running → returned / stopped / completed), held out, or
    // skipped with a reason. A running enrolment is also its own durable step timer:
    // `next_step` is due at `due_at_us`; a worker holds it until `lease_until_us`.
    // The contact columns are the reach snapshot taken from profiles at enrolment; consent
    // bits are kept current by profiles' consent events.
    "CREATE TABLE enrolments (
        tenant_id TEXT NOT NULL,
        enrolment_id TEXT NOT NULL,
        campaign_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        chain_id TEXT NOT NULL,
        state BIGINT NOT NULL,
        skip_reason BIGINT NOT NULL,
        winback BIGINT NOT NULL,
        segment TEXT NOT NULL,
        trigger_kind BIGINT NOT NULL,
        enrolled_at_us BIGINT NOT NULL,
        ended_at_us BIGINT NOT NULL DEFAULT 0,
        end_reason TEXT NOT NULL DEFAULT '',
        next_state TEXT NOT NULL DEFAULT '',
        next_step BIGINT NOT NULL DEFAULT 0,
        due_at_us BIGINT NOT NULL DEFAULT 0,
        anchor_us BIGINT NOT NULL DEFAULT 0,
        lease_until_us BIGINT NOT NULL DEFAULT 0,
        name TEXT NOT NULL DEFAULT '',
        email TEXT NOT NULL DEFAULT '',
        phone TEXT NOT NULL DEFAULT '',
        push_token TEXT NOT NULL DEFAULT '',
        locale TEXT NOT NULL DEFAULT '',
        time_zone TEXT NOT NULL DEFAULT '',
        consent_bits BIGINT NOT NULL DEFAULT 0,
        usual_check_minor BIGINT NOT NULL DEFAULT 0,
        currency TEXT NOT NULL DEFAULT '',
        coupon_code TEXT NOT NULL DEFAULT '',
        coupon_expires_at_us BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, enrolment_id))",
    // What the step workers look for, across tenants.
    "CREATE INDEX enrolments_due ON enrolments (state, due_at_us)",
    "CREATE INDEX enrolments_customer ON enrolments (tenant_id, customer_id, enrolled_at_us)",
    "CREATE INDEX enrolments_campaign ON enrolments (tenant_id, campaign_id, state)",
    // One running chain per customer, whatever races.
    "CREATE UNIQUE INDEX enrolments_one_running ON enrolments (tenant_id, customer_id) WHERE state = 1",
    // The outcome of each step of each enrolment (pending while deferred).
    "CREATE TABLE step_outcomes (
        tenant_id TEXT NOT NULL,
        enrolment_id TEXT NOT NULL,
        step BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        due_at_us BIGINT NOT NULL,
        executed_at_us BIGINT NOT NULL DEFAULT 0,
        channel BIGINT NOT NULL DEFAULT 0,
        offer_template_id TEXT NOT NULL DEFAULT '',
        coupon_code TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (tenant_id, enrolment_id, step))",
    // What delivery reported about each step's message (its events may arrive before the
    // step's own commit, so they land here rather than on the outcome row).
    "CREATE TABLE step_reactions (
        tenant_id TEXT NOT NULL,
        enrolment_id TEXT NOT NULL,
        step BIGINT NOT NULL,
        sent BIGINT NOT NULL DEFAULT 0,
        delivered BIGINT NOT NULL DEFAULT 0,
        opened BIGINT NOT NULL DEFAULT 0,
        clicked BIGINT NOT NULL DEFAULT 0,
        cost_minor BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, enrolment_id, step))",
    // The caps ledger: every marketing touch per customer, across campaigns.
    "CREATE TABLE touches (
        tenant_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        at_us BIGINT NOT NULL,
        enrolment_id TEXT NOT NULL,
        step BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, enrolment_id, step))",
    "CREATE INDEX touches_customer ON touches (tenant_id, customer_id, at_us)",
    // Returns: the first purchase within an enrolment's measurement window.
    "CREATE TABLE conversions (
        tenant_id TEXT NOT NULL,
        enrolment_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        placed_at_us BIGINT NOT NULL,
        value_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        PRIMARY KEY (tenant_id, enrolment_id))",
    "CREATE INDEX conversions_customer ON conversions (tenant_id, customer_id, placed_at_us)",
    // Redemptions of the campaigns' coupons (offer cost), from offers' events.
    "CREATE TABLE redemptions (
        tenant_id TEXT NOT NULL,
        code TEXT NOT NULL,
        campaign_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        discount_minor BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, code))",
    // Customers waiting to be enrolled by a trigger or a segment change (drained in batches
    // by the workers, which look them up in profiles).
    "CREATE TABLE enrolment_requests (
        seq {serial},
        tenant_id TEXT NOT NULL,
        campaign_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        segment TEXT NOT NULL,
        trigger_kind BIGINT NOT NULL,
        p_alive DOUBLE PRECISION NOT NULL,
        clv_minor BIGINT NOT NULL,
        requested_at_us BIGINT NOT NULL)",
];

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateCampaigns {
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
            "enrolment_requests",
            "redemptions",
            "conversions",
            "touches",
            "step_reactions",
            "step_outcomes",
            "enrolments",
            "campaigns",
            "chains",
            "policies",
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}

/// A failed step keeps delivery's reason.
#[derive(Debug)]
pub(crate) struct StepFailureReasons;

impl MigrationName for StepFailureReasons {
    fn name(&self) -> &str {
        "m20261207_300000_step_failure_reasons"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for StepFailureReasons {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE step_outcomes ADD COLUMN failure_reason TEXT NOT NULL DEFAULT ''",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE step_outcomes DROP COLUMN failure_reason")
            .await?;
        Ok(())
    }
}

/// Enrolment requests are claimed by one worker at a time.
#[derive(Debug)]
pub(crate) struct ClaimEnrolmentRequests;

impl MigrationName for ClaimEnrolmentRequests {
    fn name(&self) -> &str {
        "m20261207_300001_claim_enrolment_requests"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ClaimEnrolmentRequests {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE enrolment_requests ADD COLUMN claimed_until_us BIGINT NOT NULL DEFAULT 0",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE enrolment_requests DROP COLUMN claimed_until_us")
            .await?;
        Ok(())
    }
}
