//! Storage of the segmentation service: its migrations (its tables arrive with issue #4).

use sea_orm_migration::prelude::*;

/// Migrations of the segmentation service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
