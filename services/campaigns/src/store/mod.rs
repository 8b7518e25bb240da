//! Storage of the campaigns service: migrations and the SQL helpers.

mod migration;

use sea_orm_migration::prelude::*;

/// Migrations of the campaigns service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(migration::CreateCampaigns)]
    }
}

pub(crate) use winback_platform::db::{execute, query};
