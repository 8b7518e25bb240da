//! Per-tenant API keys: a token signed for a tenant with chosen scopes and an expiry, whose
//! id (`jti`) is recorded in the platform database so it can be listed and revoked.
//!
//! The token itself is never stored, only its SHA-256 — a key that leaks from a backup of
//! the database is not a credential. Services never look a key up per request: each keeps
//! the ids of revoked, unexpired keys in memory ([`Revocations`]) and re-reads that short
//! list every `auth.revocation_poll_ms`, so a revoked key fails on every service and
//! replica within that interval.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement, Value};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, SCOPE_ALL, TokenSigner};
use crate::error::ServiceError;

/// The services whose RPCs scopes name (`<service>:read`, `<service>:write`).
pub const SCOPED_SERVICES: &[&str] = &[
    "profiles",
    "segmentation",
    "campaigns",
    "offers",
    "delivery",
    "events",
];

/// Named scope sets an operator can grant instead of listing scopes one by one.
pub const SCOPE_PRESETS: &[(&str, &str)] = &[
    ("all", "every scope"),
    ("read-only", "every <service>:read"),
    (
        "campaigns",
        "campaigns:read/write, and read on segmentation, offers, delivery, profiles",
    ),
    ("ingest", "profiles:read/write (order and customer import)"),
];

/// Expands presets and checks every scope; `INVALID_ARGUMENT` naming `scopes` otherwise.
pub fn expand_scopes(requested: &[String]) -> Result<Vec<String>, ServiceError> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |scope: String| {
        if !out.contains(&scope) {
            out.push(scope);
        }
    };
    for scope in requested {
        match scope.trim() {
            "all" | SCOPE_ALL => push(SCOPE_ALL.to_owned()),
            "read-only" => SCOPED_SERVICES
                .iter()
                .for_each(|s| push(format!("{s}:read"))),
            "campaigns" => {
                push("campaigns:read".into());
                push("campaigns:write".into());
                for s in ["segmentation", "offers", "delivery", "profiles"] {
                    push(format!("{s}:read"));
                }
            }
            "ingest" => {
                push("profiles:read".into());
                push("profiles:write".into());
            }
            exact => {
                let valid = exact.split_once(':').is_some_and(|(service, action)| {
                    SCOPED_SERVICES.contains(&service) && matches!(action, "read" | "write")
                });
                if !valid {
                    return Err(ServiceError::invalid(
                        "scopes",
                        format!(
                            "unknown scope {exact:?}: use <service>:read or <service>:write \
                             (services: {}) or a preset ({})",
                            SCOPED_SERVICES.join(", "),
                            SCOPE_PRESETS
                                .iter()
                                .map(|(name, _)| *name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                push(exact.to_owned());
            }
        }
    }
    if out.is_empty() {
        return Err(ServiceError::invalid("scopes", "give at least one scope"));
    }
    Ok(out)
}

/// A recorded key (never the token).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// Key id, the token's `jti`.
    pub key_id: String,
    /// Tenant the key acts for.
    pub tenant_id: String,
    /// Name for people ("crm sync", "analyst").
    pub name: String,
    /// Granted scopes, presets expanded.
    pub scopes: Vec<String>,
    /// Created, RFC 3339.
    pub created_at: String,
    /// Expires, RFC 3339.
    pub expires_at: String,
    /// Revoked, RFC 3339; absent while the key is live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// A key just created: the record and the token, shown once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedKey {
    /// The record.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The bearer token. Not stored: lost tokens are revoked and re-created.
    pub token: String,
}

/// What a new key grants.
#[derive(Debug, Clone)]
pub struct KeyRequest<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// Name for people.
    pub name: &'a str,
    /// Scopes or presets.
    pub scopes: &'a [String],
    /// Lifetime in days (1 to 3650).
    pub ttl_days: u32,
}

/// The `api_keys` table of the platform database.
#[derive(Debug, Clone)]
pub struct ApiKeyStore {
    db: DatabaseConnection,
}

impl ApiKeyStore {
    /// The store on the platform database (its table is made by the tenancy migrations).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Signs and records a key.
    pub async fn create(
        &self,
        signer: &TokenSigner,
        request: KeyRequest<'_>,
    ) -> Result<CreatedKey, ServiceError> {
        let name = request.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ServiceError::invalid("name", "must be 1 to 100 characters"));
        }
        if !(1..=3650).contains(&request.ttl_days) {
            return Err(ServiceError::invalid("ttl_days", "must be 1 to 3650"));
        }
        let scopes = expand_scopes(request.scopes)?;
        let key_id = format!("k_{}", uuid::Uuid::now_v7().simple());
        let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let ttl_secs = i64::from(request.ttl_days) * 86_400;
        let (token, claims) = signer
            .tenant_key(request.tenant_id, &key_id, &scope_refs, ttl_secs)
            .map_err(|e: AuthError| ServiceError::internal(e))?;
        let created_us = claims.iat * 1_000_000;
        let expires_us = claims.exp * 1_000_000;
        self.execute(
            "INSERT INTO api_keys (key_id, tenant_id, name, scopes, token_sha256, created_at_us, \
             expires_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![
                key_id.clone().into(),
                request.tenant_id.into(),
                name.into(),
                scopes.join(" ").into(),
                sha256_hex(token.as_bytes()).into(),
                created_us.into(),
                expires_us.into(),
            ],
        )
        .await?;
        Ok(CreatedKey {
            key: ApiKey {
                key_id,
                tenant_id: request.tenant_id.to_owned(),
                name: name.to_owned(),
                scopes,
                created_at: rfc3339(created_us),
                expires_at: rfc3339(expires_us),
                revoked_at: None,
            },
            token,
        })
    }

    /// The tenant's keys, oldest first, revoked ones included.
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<ApiKey>, ServiceError> {
        let sql = "SELECT key_id, tenant_id, name, scopes, created_at_us, expires_at_us, \
                   revoked_at_us FROM api_keys WHERE tenant_id = $1 ORDER BY created_at_us, key_id";
        let rows = self
            .db
            .query_all_raw(self.statement(sql, vec![tenant_id.into()]))
            .await?;
        rows.into_iter()
            .map(|r| {
                let scopes: String = r.try_get("", "scopes")?;
                let revoked: Option<i64> = r.try_get("", "revoked_at_us")?;
                Ok(ApiKey {
                    key_id: r.try_get("", "key_id")?,
                    tenant_id: r.try_get("", "tenant_id")?,
                    name: r.try_get("", "name")?,
                    scopes: scopes.split(' ').map(str::to_owned).collect(),
                    created_at: rfc3339(r.try_get("", "created_at_us")?),
                    expires_at: rfc3339(r.try_get("", "expires_at_us")?),
                    revoked_at: revoked.map(rfc3339),
                })
            })
            .collect::<Result<_, DbErr>>()
            .map_err(ServiceError::from)
    }

    /// Revokes a key; `NOT_FOUND` when it is not the tenant's. Revoking twice keeps the
    /// first time.
    pub async fn revoke(
        &self,
        tenant_id: &str,
        key_id: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ServiceError> {
        let known = self
            .db
            .query_one_raw(self.statement(
                "SELECT key_id FROM api_keys WHERE tenant_id = $1 AND key_id = $2",
                vec![tenant_id.into(), key_id.into()],
            ))
            .await?;
        if known.is_none() {
            return Err(ServiceError::not_found("api key", key_id));
        }
        self.execute(
            "UPDATE api_keys SET revoked_at_us = $1 WHERE key_id = $2 AND revoked_at_us IS NULL",
            vec![at.timestamp_micros().into(), key_id.into()],
        )
        .await
    }

    /// Ids of revoked keys that have not expired yet (an expired key fails anyway).
    pub async fn revoked_ids(&self) -> Result<HashSet<String>, DbErr> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let rows = self
            .db
            .query_all_raw(self.statement(
                "SELECT key_id FROM api_keys WHERE revoked_at_us IS NOT NULL AND expires_at_us > $1",
                vec![now_us.into()],
            ))
            .await?;
        rows.into_iter().map(|r| r.try_get("", "key_id")).collect()
    }

    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        crate::db::statement(self.db.get_database_backend(), sql, values)
    }

    async fn execute(&self, sql: &str, values: Vec<Value>) -> Result<(), ServiceError> {
        crate::db::execute(&self.db, sql, values).await?;
        Ok(())
    }
}

/// The revoked key ids a verifier refuses, shared by every clone of it.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    revoked: Arc<RwLock<HashSet<String>>>,
}

impl Revocations {
    /// True when `key_id` is revoked.
    pub fn is_revoked(&self, key_id: &str) -> bool {
        self.revoked
            .read()
            .map(|set| set.contains(key_id))
            .unwrap_or(false)
    }

    /// Replaces the list.
    pub fn replace(&self, ids: HashSet<String>) {
        if let Ok(mut set) = self.revoked.write() {
            *set = ids;
        }
    }

    /// Loads the list now, then keeps re-reading it every `every` until `shutdown`. A read
    /// that fails keeps the last list and is logged.
    pub async fn watch(
        &self,
        store: ApiKeyStore,
        every: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), DbErr> {
        self.replace(store.revoked_ids().await?);
        let revocations = self.clone();
        crate::tenancy::refresh_every(every, shutdown, "revoked API keys", move || {
            let store = store.clone();
            let revocations = revocations.clone();
            async move {
                revocations.replace(store.revoked_ids().await?);
                Ok(())
            }
        });
        Ok(())
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{TokenVerifier, generate_key_pair};
    use crate::db_test;
    use crate::tenancy::TenantRegistry;

    #[test]
    fn presets_expand_and_unknown_scopes_name_the_field() {
        assert_eq!(expand_scopes(&["all".into()]).unwrap(), vec!["*"]);
        let read = expand_scopes(&["read-only".into()]).unwrap();
        assert!(read.iter().all(|s| s.ends_with(":read")));
        assert_eq!(read.len(), SCOPED_SERVICES.len());
        assert!(
            expand_scopes(&["campaigns".into()])
                .unwrap()
                .contains(&"campaigns:write".to_owned())
        );
        for bad in ["campaigns:delete", "billing:read", "", "admin"] {
            match expand_scopes(&[bad.into()]) {
                Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "scopes"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    db_test!(a_key_is_stored_hashed_listed_and_revoked, |db| async move {
        let conn = crate::db::connect(&db.url("platform"), "platform", 2)
            .await
            .unwrap();
        TenantRegistry::open(conn.clone()).await.unwrap();
        let store = ApiKeyStore::new(conn.clone());
        let pair = generate_key_pair().unwrap();
        let signer = TokenSigner::from_pem(pair.private_pem.as_bytes(), "winback").unwrap();
        let verifier = TokenVerifier::from_pem(pair.public_pem.as_bytes(), "winback").unwrap();
        let created = store
            .create(
                &signer,
                KeyRequest {
                    tenant_id: "t-1",
                    name: "analyst",
                    scopes: &["read-only".into()],
                    ttl_days: 30,
                },
            )
            .await
            .unwrap();
        let bearer = format!("Bearer {}", created.token);
        let ctx = verifier.authenticate(Some(&bearer), None).unwrap();
        assert!(ctx.require("segmentation:read").is_ok());
        assert!(ctx.require("campaigns:write").is_err());
        assert_eq!(ctx.claims.jti.as_deref(), Some(created.key.key_id.as_str()));

        // Only the hash of the token is in the table.
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT token_sha256 FROM api_keys",
            ))
            .await
            .unwrap()
            .unwrap();
        let stored: String = row.try_get("", "token_sha256").unwrap();
        assert_eq!(stored, sha256_hex(created.token.as_bytes()));
        assert!(!stored.contains(&created.token));

        // Another tenant's key id is NOT_FOUND; the owner's revoke takes effect once the
        // list is re-read.
        assert!(matches!(
            store
                .revoke("t-2", &created.key.key_id, chrono::Utc::now())
                .await,
            Err(ServiceError::NotFound { .. })
        ));
        store
            .revoke("t-1", &created.key.key_id, chrono::Utc::now())
            .await
            .unwrap();
        let listed = store.list("t-1").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].revoked_at.is_some());
        assert!(store.list("t-2").await.unwrap().is_empty());
        verifier
            .revocations()
            .replace(store.revoked_ids().await.unwrap());
        assert!(matches!(
            verifier.authenticate(Some(&bearer), None),
            Err(AuthError::Revoked)
        ));
        // Bad requests store nothing.
        for (scopes, ttl, field) in [
            (vec!["nope".to_owned()], 30, "scopes"),
            (vec!["all".to_owned()], 0, "ttl_days"),
        ] {
            match store
                .create(
                    &signer,
                    KeyRequest {
                        tenant_id: "t-1",
                        name: "x",
                        scopes: &scopes,
                        ttl_days: ttl,
                    },
                )
                .await
            {
                Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, field),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(store.list("t-1").await.unwrap().len(), 1);
    });
}
