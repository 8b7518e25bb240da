//! What every operation of the segmentation service works with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::DatabaseConnection;
use tokio::sync::Mutex;
use winback_platform::ServiceError;
use winback_platform::events::Outbox;
use winback_platform::host::ServiceContext;
use winback_proto::segmentation::Policy;

use crate::policy::{Effective, default_policy};
use crate::store::queries;

/// The service's database, outbox, and the context to reach profiles.
#[derive(Debug, Clone)]
pub(crate) struct Segmentation {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: Outbox,
    pub(crate) ctx: ServiceContext,
    /// The latest run's members of the tenants this process recomputed.
    pub(crate) members: crate::members::MemberCache,
    /// One recompute per tenant at a time in this process.
    recompute_locks: Arc<StdMutex<HashMap<String, Arc<Mutex<()>>>>>,
}

impl Segmentation {
    pub(crate) fn new(db: DatabaseConnection, outbox: Outbox, ctx: ServiceContext) -> Self {
        Self {
            db,
            outbox,
            ctx,
            members: Default::default(),
            recompute_locks: Arc::default(),
        }
    }

    /// Now, by the service clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.ctx.clock.now()
    }

    /// The lock that serialises recomputes of `tenant`.
    pub(crate) fn recompute_lock(&self, tenant: &str) -> Arc<Mutex<()>> {
        let mut locks = self
            .recompute_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(tenant.to_owned()).or_default().clone()
    }

    /// The tenant's stored policy, or the defaults.
    pub(crate) async fn policy(&self, tenant: &str) -> Result<Policy, ServiceError> {
        match queries::policy(&self.db, tenant)
            .await
            .map_err(ServiceError::internal)?
        {
            Some(bytes) => Policy::decode(bytes.as_slice()).map_err(ServiceError::internal),
            None => Ok(default_policy()),
        }
    }

    /// The tenant's policy, ready for scoring.
    pub(crate) async fn effective_policy(&self, tenant: &str) -> Result<Effective, ServiceError> {
        Effective::new(self.policy(tenant).await?)
    }
}
