//! Storage of the profiles service: its migrations (its tables arrive with issue #3).

use sea_orm_migration::prelude::*;

/// Migrations of the profiles service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
