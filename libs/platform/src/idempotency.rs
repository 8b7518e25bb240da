//! Creates an integrator can retry: a create carrying a client `request_id` is done once,
//! and the same id with the same request gives back the first result. The first call
//! claims the id (a row without a response), does the work, then stores the encoded
//! response; a retry finds the response, a concurrent retry finds the claim and is told
//! to retry (`ABORTED`), and a claim left by a crash is taken over after
//! [`STALE_CLAIM`]. The same id with a different request is `ALREADY_EXISTS` naming
//! `request_id`. Ids are kept [`KEPT_FOR`], per tenant and method.

use std::future::Future;

use sea_orm::{DatabaseConnection, DbErr};
use sea_orm_migration::prelude::*;

use crate::error::ServiceError;

/// How long a request id is remembered.
pub const KEPT_FOR: chrono::Duration = chrono::Duration::days(7);
/// How old an unanswered claim must be before another call takes it over.
pub const STALE_CLAIM: chrono::Duration = chrono::Duration::seconds(60);

/// The request ids of one service's creates, in its own database.
#[derive(Debug, Clone)]
pub struct RequestLog {
    db: DatabaseConnection,
}

impl RequestLog {
    /// The log in `db` (its table is made by the platform migrations).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Runs `create` once per `(tenant, method, request_id)`; an empty id runs it every
    /// time. `request` is the whole request, compared by its encoding.
    pub async fn once<Req, Resp, F, Fut>(
        &self,
        tenant: &str,
        method: &str,
        request_id: &str,
        request: &Req,
        create: F,
    ) -> Result<Resp, ServiceError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Resp, ServiceError>>,
    {
        if request_id.is_empty() {
            return create().await;
        }
        if request_id.len() > 128 || request_id.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "request_id",
                "at most 128 characters, no control characters",
            ));
        }
        let hash = crate::api_keys::sha256_hex(&request.encode_to_vec());
        let now = chrono::Utc::now();
        match self.claim(tenant, method, request_id, &hash, now).await? {
            Claim::Ours => {}
            Claim::Answered {
                hash: first,
                response,
            } => {
                if first != hash {
                    return Err(ServiceError::already_exists_at(
                        "request",
                        request_id,
                        "request_id",
                    ));
                }
                return Resp::decode(response.as_slice()).map_err(ServiceError::internal);
            }
            Claim::InProgress => {
                return Err(ServiceError::Aborted(format!(
                    "request {request_id} is being done by another call; retry"
                )));
            }
        }
        match create().await {
            Ok(response) => {
                self.answer(tenant, method, request_id, &response.encode_to_vec())
                    .await?;
                Ok(response)
            }
            Err(error) => {
                // Nothing was created: the id is free for a corrected retry.
                self.release(tenant, method, request_id).await?;
                Err(error)
            }
        }
    }

    async fn claim(
        &self,
        tenant: &str,
        method: &str,
        request_id: &str,
        hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Claim, DbErr> {
        let now_us = now.timestamp_micros();
        crate::db::execute(
            &self.db,
            "DELETE FROM request_log WHERE tenant_id = $1 AND created_at_us < $2",
            vec![tenant.into(), (now - KEPT_FOR).timestamp_micros().into()],
        )
        .await?;
        let claimed = crate::db::execute(
            &self.db,
            "INSERT INTO request_log (tenant_id, method, request_id, request_sha256, \
             created_at_us) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            vec![
                tenant.into(),
                method.into(),
                request_id.into(),
                hash.into(),
                now_us.into(),
            ],
        )
        .await?;
        if claimed == 1 {
            return Ok(Claim::Ours);
        }
        let rows = crate::db::query(
            &self.db,
            "SELECT request_sha256, response, created_at_us FROM request_log \
             WHERE tenant_id = $1 AND method = $2 AND request_id = $3",
            vec![tenant.into(), method.into(), request_id.into()],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(Claim::InProgress);
        };
        let first: String = row.try_get("", "request_sha256")?;
        let response: Option<Vec<u8>> = row.try_get("", "response")?;
        let created_us: i64 = row.try_get("", "created_at_us")?;
        if let Some(response) = response {
            return Ok(Claim::Answered {
                hash: first,
                response,
            });
        }
        // A claim nobody answered for a minute: its call died. Take it over.
        if created_us < (now - STALE_CLAIM).timestamp_micros() {
            let taken = crate::db::execute(
                &self.db,
                "UPDATE request_log SET created_at_us = $1, request_sha256 = $2 \
                 WHERE tenant_id = $3 AND method = $4 AND request_id = $5 \
                 AND response IS NULL AND created_at_us = $6",
                vec![
                    now_us.into(),
                    hash.into(),
                    tenant.into(),
                    method.into(),
                    request_id.into(),
                    created_us.into(),
                ],
            )
            .await?;
            if taken == 1 {
                return Ok(Claim::Ours);
            }
        }
        Ok(Claim::InProgress)
    }

    async fn answer(
        &self,
        tenant: &str,
        method: &str,
        request_id: &str,
        response: &[u8],
    ) -> Result<(), DbErr> {
        crate::db::execute(
            &self.db,
            "UPDATE request_log SET response = $1 \
             WHERE tenant_id = $2 AND method = $3 AND request_id = $4",
            vec![
                response.to_vec().into(),
                tenant.into(),
                method.into(),
                request_id.into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn release(&self, tenant: &str, method: &str, request_id: &str) -> Result<(), DbErr> {
        crate::db::execute(
            &self.db,
            "DELETE FROM request_log WHERE tenant_id = $1 AND method = $2 AND request_id = $3 \
             AND response IS NULL",
            vec![tenant.into(), method.into(), request_id.into()],
        )
        .await?;
        Ok(())
    }
}

enum Claim {
    Ours,
    Answered { hash: String, response: Vec<u8> },
    InProgress,
}

/// The `request_log` table, created in every service's database.
#[derive(Debug)]
pub(crate) struct CreateRequestLog;

impl MigrationName for CreateRequestLog {
    fn name(&self) -> &str {
        "m20261207_000003_create_request_log"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreateRequestLog {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let sql = crate::db::ddl(
            db.get_database_backend(),
            "CREATE TABLE IF NOT EXISTS request_log (
                tenant_id TEXT NOT NULL,
                method TEXT NOT NULL,
                request_id TEXT NOT NULL,
                request_sha256 TEXT NOT NULL,
                response BYTEA,
                created_at_us BIGINT NOT NULL,
                PRIMARY KEY (tenant_id, method, request_id))",
        );
        db.execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS request_log")
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db_test;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    db_test!(a_request_id_creates_once, |db| async move {
        let conn = db
            .connect::<crate::events::migration::PlatformMigrator>("profiles")
            .await;
        let log = RequestLog::new(conn);
        let made = Arc::new(AtomicUsize::new(0));
        let create = |value: &'static str| {
            let made = made.clone();
            move || async move {
                made.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ServiceError>(prost_types::Duration {
                    seconds: value.len() as i64,
                    nanos: 0,
                })
            }
        };
        let request = prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        };
        let first = log
            .once("t", "CreateX", "r-1", &request, create("abc"))
            .await
            .unwrap();
        let again = log
            .once("t", "CreateX", "r-1", &request, create("abcdef"))
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(made.load(Ordering::SeqCst), 1);
        // The same id with another request, another tenant, another method.
        let other = prost_types::Timestamp {
            seconds: 2,
            nanos: 0,
        };
        match log.once("t", "CreateX", "r-1", &other, create("x")).await {
            Err(ServiceError::AlreadyExists { field, .. }) => {
                assert_eq!(field.as_deref(), Some("request_id"))
            }
            other => panic!("{other:?}"),
        }
        log.once("u", "CreateX", "r-1", &request, create("x"))
            .await
            .unwrap();
        log.once("t", "CreateY", "r-1", &request, create("x"))
            .await
            .unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 3);
        // A failed create frees the id.
        let failed: Result<prost_types::Duration, _> = log
            .once("t", "CreateX", "r-2", &request, || async {
                Err(ServiceError::invalid("name", "empty"))
            })
            .await;
        assert!(failed.is_err());
        log.once("t", "CreateX", "r-2", &request, create("x"))
            .await
            .unwrap();
        assert!(matches!(
            log.once("t", "CreateX", &"x".repeat(129), &request, create("x"))
                .await,
            Err(ServiceError::InvalidArgument(_))
        ));
    });
}
