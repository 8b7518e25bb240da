//! Operator commands on the platform database: tenants and their tokens.

use winback_platform::auth::{TokenSigner, read_key};
use winback_platform::config::Config;
use winback_platform::error::ServiceError;
use winback_platform::host::StartError;
use winback_platform::tenancy::{Tenant, TenantRegistry};

/// Name of the platform database (tenants).
pub const PLATFORM_DB: &str = "platform";

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
    /// A token with every scope, valid for `auth.token_ttl_days`.
    pub token: String,
}

/// Opens the tenant registry of the configured deployment.
pub async fn registry(config: &Config) -> Result<TenantRegistry, StartError> {
    let url = config.database.url_for(PLATFORM_DB, &config.data_dir);
    let db = winback_platform::db::connect(&url, PLATFORM_DB, 2)
        .await
        .map_err(|source| StartError::Database {
            service: PLATFORM_DB,
            source,
        })?;
    TenantRegistry::open(db)
        .await
        .map_err(|source| StartError::Database {
            service: PLATFORM_DB,
            source,
        })
}

/// Creates a tenant and signs a token for it (generating the keys if this is a new data folder).
pub async fn create_tenant(config: &Config, name: &str) -> Result<CreatedTenant, AdminError> {
    crate::embedded::ensure_keys(config)?;
    let Tenant { tenant_id, name } = registry(config)
        .await?
        .create(name, chrono::Utc::now())
        .await?;
    let token = signer(config)?.tenant_token(
        &tenant_id,
        &["*"],
        i64::from(config.auth.token_ttl_days) * 86_400,
    )?;
    Ok(CreatedTenant {
        tenant_id,
        name,
        token,
    })
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
