//! Storage of the delivery service: migrations and the SQL helpers.

mod migration;

use sea_orm::{ConnectionTrait, DbErr, QueryResult, Value};
use sea_orm_migration::prelude::*;
use winback_platform::db::statement;

/// Migrations of the delivery service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(migration::CreateDelivery)]
    }
}

/// Runs a query (`$n` placeholders on both backends).
pub(crate) async fn query<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all_raw(statement(db.get_database_backend(), sql, values))
        .await
}

/// Runs a statement; returns the rows it affected.
pub(crate) async fn execute<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, DbErr> {
    Ok(db
        .execute_raw(statement(db.get_database_backend(), sql, values))
        .await?
        .rows_affected())
}
