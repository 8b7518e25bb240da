//! What every operation of the campaigns service works with.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{Mutex, OwnedMutexGuard};
use winback_platform::ServiceError;
use winback_platform::clock::SharedClock;
use winback_platform::config::CampaignsConfig;
use winback_platform::events::Outbox;
use winback_platform::host::ServiceContext;

/// The service's database, outbox, clock, settings and the way to the other services.
#[derive(Debug, Clone)]
pub(crate) struct Campaigns {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    pub(crate) config: Arc<CampaignsConfig>,
    /// Peers (profiles, segmentation, offers, delivery) are reached through this.
    pub(crate) host: ServiceContext,
    /// Wakes idle workers when something was enrolled or a campaign activated.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// SQLite has one writer: writers queue here instead of failing to upgrade a read
    /// transaction. (PostgreSQL writers lock the rows they change.)
    pub(crate) sqlite_writer: Arc<Mutex<()>>,
}

impl Campaigns {
    pub(crate) fn new(db: DatabaseConnection, outbox: Outbox, host: &ServiceContext) -> Self {
        Self {
            db,
            outbox,
            clock: host.clock.clone(),
            config: Arc::new(host.config.campaigns.clone()),
            host: host.clone(),
            wake: Arc::default(),
            sqlite_writer: Arc::default(),
        }
    }

    /// Begins a writing transaction. Keep the guard until the commit.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<(Option<OwnedMutexGuard<()>>, DatabaseTransaction), DbErr> {
        let guard = if self.db.get_database_backend() == DbBackend::Sqlite {
            Some(self.sqlite_writer.clone().lock_owned().await)
        } else {
            None
        };
        Ok((guard, self.db.begin().await?))
    }

    /// Now by the service clock.
    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}

/// A database error as the caller sees it.
pub(crate) fn db_error(e: DbErr) -> ServiceError {
    ServiceError::internal(e)
}

/// A protobuf timestamp of microseconds (none for 0).
pub(crate) fn timestamp(us: i64) -> Option<prost_types::Timestamp> {
    if us == 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_micros(us).map(winback_platform::time::to_timestamp)
}

/// A time from microseconds.
pub(crate) fn time(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Page size from a request: 0 means 100, at most 1000.
pub(crate) fn page_size(page: &winback_proto::common::PageRequest) -> Result<i64, ServiceError> {
    match page.page_size {
        0 => Ok(100),
        n if (1..=1000).contains(&n) => Ok(i64::from(n)),
        _ => Err(ServiceError::invalid(
            "page.page_size",
            "must be between 0 and 1000",
        )),
    }
}
