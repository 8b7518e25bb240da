//! The tenant registry: the businesses a deployment serves. Tokens name the tenant; the
//! registry is where tenants are created and listed.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use sea_orm_migration::prelude::*;

use crate::error::ServiceError;

/// Name of the platform database (tenants, API keys).
pub const PLATFORM_DB: &str = "platform";

/// Opens the platform database of a deployment and runs its migrations.
pub async fn open_platform_db(config: &crate::config::Config) -> Result<DatabaseConnection, DbErr> {
    let url = config.database.url_for(PLATFORM_DB, &config.data_dir);
    let db = crate::db::connect(&url, PLATFORM_DB, 2).await?;
    crate::db::migrate_in_turn(&db, &url, PLATFORM_DB, || TenantMigrator::up(&db, None)).await?;
    Ok(db)
}

/// Runs `refresh` every `every` until `shutdown`, in a task of its own; a refresh that
/// fails keeps what the last one loaded and is logged, naming `what`.
pub(crate) fn refresh_every<F, Fut>(
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
    refresh: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), DbErr>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = refresh().await {
                tracing::warn!(%error, what, "could not re-read from the platform database");
            }
        }
    });
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tenant {
    /// Id, as tokens carry it.
    pub tenant_id: String,
    /// Name for people; unique.
    pub name: String,
}

/// Tenants in the platform database.
#[derive(Debug, Clone)]
pub struct TenantRegistry {
    db: DatabaseConnection,
}

impl TenantRegistry {
    /// Opens the registry in `db`, creating its table if needed.
    pub async fn open(db: DatabaseConnection) -> Result<Self, DbErr> {
        crate::db::migrate_shared(PLATFORM_DB, || TenantMigrator::up(&db, None)).await?;
        Ok(Self { db })
    }

    /// Creates a tenant named `name`.
    pub async fn create(
        &self,
        name: &str,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Tenant, ServiceError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ServiceError::invalid("name", "must be 1 to 100 characters"));
        }
        if self.find_by_name(name).await?.is_some() {
            return Err(ServiceError::already_exists_at("tenant", name, "name"));
        }
        let tenant = Tenant {
            tenant_id: format!("t_{}", uuid::Uuid::now_v7().simple()),
            name: name.to_owned(),
        };
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Sqlite => {
                "INSERT INTO tenants (tenant_id, name, created_at_us) VALUES (?, ?, ?)"
            }
            _ => "INSERT INTO tenants (tenant_id, name, created_at_us) VALUES ($1, $2, $3)",
        };
        self.db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [
                    tenant.tenant_id.clone().into(),
                    tenant.name.clone().into(),
                    created_at.timestamp_micros().into(),
                ],
            ))
            .await?;
        Ok(tenant)
    }

    /// The tenant named `name`.
    pub async fn find_by_name(&self, name: &str) -> Result<Option<Tenant>, DbErr> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Sqlite => "SELECT tenant_id, name FROM tenants WHERE name = ?",
            _ => "SELECT tenant_id, name FROM tenants WHERE name = $1",
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [name.into()]))
            .await?;
        row.map(|r| {
            Ok(Tenant {
                tenant_id: r.try_get("", "tenant_id")?,
                name: r.try_get("", "name")?,
            })
        })
        .transpose()
    }

    /// Every tenant, oldest first.
    pub async fn list(&self) -> Result<Vec<Tenant>, DbErr> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                self.db.get_database_backend(),
                "SELECT tenant_id, name FROM tenants ORDER BY created_at_us, tenant_id",
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Tenant {
                    tenant_id: r.try_get("", "tenant_id")?,
                    name: r.try_get("", "name")?,
                })
            })
            .collect()
    }
}

#[derive(Debug)]
struct TenantMigrator;

impl MigratorTrait for TenantMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateTenants),
            Box::new(CreateApiKeys),
            Box::new(CreateTenantQuotas),
        ]
    }

    fn migration_table_name() -> sea_orm::DynIden {
        Alias::new("winback_tenancy_migrations").into_iden()
    }
}

#[derive(Debug)]
struct CreateTenants;

impl MigrationName for CreateTenants {
    fn name(&self) -> &str {
        "m20261122_000002_create_tenants"
    }
}

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateTenants {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS tenants (
                    tenant_id TEXT PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE,
                    created_at_us BIGINT NOT NULL)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS tenants")
            .await?;
        Ok(())
    }
}

#[derive(Debug)]
struct CreateApiKeys;

impl MigrationName for CreateApiKeys {
    fn name(&self) -> &str {
        "m20261207_000001_create_api_keys"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateApiKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The token is never stored: only its SHA-256 (see `api_keys`).
        db.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS api_keys (
                key_id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                name TEXT NOT NULL,
                scopes TEXT NOT NULL,
                token_sha256 TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                expires_at_us BIGINT NOT NULL,
                revoked_at_us BIGINT)",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, created_at_us)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS api_keys")
            .await?;
        Ok(())
    }
}

#[derive(Debug)]
struct CreateTenantQuotas;

impl MigrationName for CreateTenantQuotas {
    fn name(&self) -> &str {
        "m20261207_000002_create_tenant_quotas"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateTenantQuotas {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS tenant_quotas (
                    tenant_id TEXT PRIMARY KEY,
                    calls_per_second BIGINT NOT NULL,
                    call_burst BIGINT NOT NULL,
                    messages_per_day BIGINT NOT NULL)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS tenant_quotas")
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db_test;

    db_test!(tenants_are_created_once_by_name, |db| async move {
        let conn = crate::db::connect(&db.url("platform"), "platform", 2)
            .await
            .unwrap();
        let registry = TenantRegistry::open(conn).await.unwrap();
        let now = chrono::Utc::now();
        let shop = registry.create("Tattoo on Arbat", now).await.unwrap();
        assert!(shop.tenant_id.starts_with("t_"));
        assert!(matches!(
            registry.create("Tattoo on Arbat", now).await,
            Err(ServiceError::AlreadyExists { .. })
        ));
        assert!(matches!(
            registry.create("  ", now).await,
            Err(ServiceError::InvalidArgument(_))
        ));
        registry.create("Beauty salon", now).await.unwrap();
        let names: Vec<String> = registry
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["Tattoo on Arbat", "Beauty salon"]);
    });
}
