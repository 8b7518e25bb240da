//! Storage of the segmentation service: migrations and the queries behind the handlers.

mod migration;
pub(crate) mod queries;

use sea_orm_migration::prelude::*;

/// Migrations of the segmentation service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(migration::CreateSegmentation),
            Box::new(migration::ScoreChunksUncompressed),
            Box::new(migration::IncrementalRecompute),
        ]
    }
}
