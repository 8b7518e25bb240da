//! Storage of the delivery service: migrations and the SQL helpers.

mod migration;

use sea_orm_migration::prelude::*;

/// Migrations of the delivery service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(migration::CreateDelivery),
            Box::new(migration::IndexMessagesByTime),
        ]
    }
}

pub(crate) use winback_platform::db::{execute, query};

/// How many messages `tenant` has had accepted since `since_us` (the daily quota).
pub(crate) async fn messages_created_since(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &str,
    since_us: i64,
) -> Result<u64, DbErr> {
    let rows = query(
        db,
        "SELECT COUNT(*) AS n FROM messages WHERE tenant_id = $1 AND created_at_us >= $2",
        vec![tenant.into(), since_us.into()],
    )
    .await?;
    let n: i64 = match rows.first() {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(<u64 as TryFrom<i64>>::try_from(n).unwrap_or_default())
}
