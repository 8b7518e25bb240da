//! Storage of the campaigns service: migrations and the SQL helpers.

mod migration;

use sea_orm_migration::prelude::*;

/// Migrations of the campaigns service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(migration::CreateCampaigns),
            Box::new(migration::StepFailureReasons),
            Box::new(migration::ClaimEnrolmentRequests),
        ]
    }
}

pub(crate) use winback_platform::db::{execute, query};

/// Runs `sql` for `keys` in chunks of 500: its `{list}` becomes the chunk's placeholders,
/// numbered after the `head` values. The rows of every chunk, in order.
pub(crate) async fn query_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    sql: &str,
    head: Vec<sea_orm::Value>,
    keys: &[String],
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let list = winback_platform::db::placeholders(head.len() + 1, chunk.len());
        let mut values = head.clone();
        values.extend(chunk.iter().map(|k| sea_orm::Value::from(k.clone())));
        out.extend(query(db, &sql.replace("{list}", &list), values).await?);
    }
    Ok(out)
}
