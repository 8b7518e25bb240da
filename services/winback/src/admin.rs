//! Operator commands on the platform database: tenants and their tokens.

use winback_platform::api_keys::{ApiKey, ApiKeyStore, CreatedKey, KeyRequest};
use winback_platform::auth::{TokenSigner, read_key};
use winback_platform::config::Config;
use winback_platform::error::ServiceError;
use winback_platform::host::StartError;
use winback_platform::tenancy::{PLATFORM_DB, Tenant, TenantRegistry, open_platform_db};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Start-up (configuration, keys, database).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The request was refused.
    #[error(transparent)]
    Refused(#[from] ServiceError),
    /// A token could not be signed.
    #[error(transparent)]
    Auth(#[from] winback_platform::auth::AuthError),
}

/// A new tenant and its first token.
#[derive(Debug, serde::Serialize)]
pub struct CreatedTenant {
    /// The tenant id.
    pub tenant_id: String,
    /// Its name.
    pub name: String,
    /// Id of the first API key (every scope, valid for `auth.token_ttl_days`).
    pub key_id: String,
    /// Its token.
    pub token: String,
}

async fn platform_db(config: &Config) -> Result<sea_orm::DatabaseConnection, StartError> {
    open_platform_db(config)
        .await
        .map_err(|source| StartError::Database {
            service: PLATFORM_DB,
            source,
        })
}

/// Opens the tenant registry of the configured deployment.
pub async fn registry(config: &Config) -> Result<TenantRegistry, StartError> {
    TenantRegistry::open(platform_db(config).await?)
        .await
        .map_err(|source| StartError::Database {
            service: PLATFORM_DB,
            source,
        })
}

/// Creates a tenant and its first API key, named `initial`, with every scope (generating
/// the keys if this is a new data folder).
pub async fn create_tenant(config: &Config, name: &str) -> Result<CreatedTenant, AdminError> {
    crate::embedded::ensure_keys(config)?;
    let Tenant { tenant_id, name } = registry(config)
        .await?
        .create(name, chrono::Utc::now())
        .await?;
    let key = create_key(
        config,
        KeyRequest {
            tenant_id: &tenant_id,
            name: "initial",
            scopes: &["all".to_owned()],
            ttl_days: config.auth.token_ttl_days,
        },
    )
    .await?;
    Ok(CreatedTenant {
        tenant_id,
        name,
        key_id: key.key.key_id,
        token: key.token,
    })
}

/// Creates an API key for an existing tenant.
pub async fn create_key(
    config: &Config,
    request: KeyRequest<'_>,
) -> Result<CreatedKey, AdminError> {
    known_tenant(config, request.tenant_id).await?;
    let store = ApiKeyStore::new(platform_db(config).await?);
    Ok(store.create(&signer(config)?, request).await?)
}

/// The tenant's API keys.
pub async fn list_keys(config: &Config, tenant_id: &str) -> Result<Vec<ApiKey>, AdminError> {
    known_tenant(config, tenant_id).await?;
    Ok(ApiKeyStore::new(platform_db(config).await?)
        .list(tenant_id)
        .await?)
}

/// Revokes one of the tenant's API keys; every service refuses it within
/// `auth.revocation_poll_ms`.
pub async fn revoke_key(config: &Config, tenant_id: &str, key_id: &str) -> Result<(), AdminError> {
    known_tenant(config, tenant_id).await?;
    Ok(ApiKeyStore::new(platform_db(config).await?)
        .revoke(tenant_id, key_id, chrono::Utc::now())
        .await?)
}

async fn known_tenant(config: &Config, tenant_id: &str) -> Result<(), AdminError> {
    let known = registry(config)
        .await?
        .list()
        .await
        .map_err(ServiceError::from)?
        .into_iter()
        .any(|t| t.tenant_id == tenant_id);
    if known {
        Ok(())
    } else {
        Err(ServiceError::not_found_at("tenant", tenant_id, "tenant").into())
    }
}

/// The token signer of the deployment.
pub fn signer(config: &Config) -> Result<TokenSigner, AdminError> {
    let pem = read_key(&config.auth.private_key_path(&config.data_dir))?;
    Ok(TokenSigner::from_pem(&pem, &config.auth.issuer)?)
}

/// The health status a server reports for `service` ("" for the server as a whole).
pub async fn health(addr: &str, service: &str) -> Result<String, tonic::Status> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("addr: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{addr}: {e}")))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(reply.status().as_str_name().to_owned())
}

/// Sets a tenant's own quotas (what is not given keeps its current value, from the
/// tenant's own limits or the configured defaults) and returns them.
pub async fn set_quota(
    config: &Config,
    tenant_id: &str,
    change: QuotaChange,
) -> Result<winback_platform::quotas::TenantQuota, AdminError> {
    use winback_platform::quotas::{Quotas, set_tenant_quota};
    known_tenant(config, tenant_id).await?;
    let db = platform_db(config).await?;
    let quotas = Quotas::new(config.quotas);
    quotas
        .watch(
            db.clone(),
            std::time::Duration::from_secs(3600),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map_err(ServiceError::from)?;
    let mut quota = quotas.of(tenant_id);
    quota.calls_per_second = change.calls_per_second.unwrap_or(quota.calls_per_second);
    quota.call_burst = change.call_burst.unwrap_or(quota.call_burst);
    quota.messages_per_day = change.messages_per_day.unwrap_or(quota.messages_per_day);
    if quota.calls_per_second > 0 && quota.call_burst == 0 {
        return Err(ServiceError::invalid(
            "call_burst",
            "must be at least 1 when calls are limited",
        )
        .into());
    }
    set_tenant_quota(&db, tenant_id, quota)
        .await
        .map_err(ServiceError::from)?;
    Ok(quota)
}

/// Quota values to change; `None` keeps the current one; 0 means no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaChange {
    /// Calls per second to one service process.
    pub calls_per_second: Option<u32>,
    /// Calls at once above that rate.
    pub call_burst: Option<u32>,
    /// Messages per UTC day.
    pub messages_per_day: Option<u32>,
}
