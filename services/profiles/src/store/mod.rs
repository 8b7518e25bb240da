//! Storage of the profiles service: migrations and the queries behind the handlers.

mod migration;
mod migration_change_sets;
mod migration_first_day;
mod migration_framed;
mod migration_keys;
pub(crate) mod rows;

use sea_orm_migration::prelude::*;

/// Migrations of the profiles service's own tables, run at start.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(migration::CreateProfiles),
            Box::new(migration_keys::KeysInByteOrder),
            Box::new(migration_framed::FactsFramed),
            Box::new(migration_change_sets::FactsChangeSets),
            Box::new(migration_first_day::FactsFirstDay),
        ]
    }
}
