//! What every operation of the campaigns service works with.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};

use winback_platform::ServiceError;
use winback_platform::clock::SharedClock;
use winback_platform::config::CampaignsConfig;
use winback_platform::db::{WriteGate, WriteGuard};
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
    /// Writers (and the event consumers) queue here on SQLite.
    pub(crate) sqlite_writer: WriteGate,
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
            sqlite_writer: WriteGate::default(),
        }
    }

    /// Begins a writing transaction. Keep the guard until the commit.
    pub(crate) async fn begin_write(&self) -> Result<(WriteGuard, DatabaseTransaction), DbErr> {
        self.sqlite_writer.begin(&self.db).await
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

pub(crate) use winback_platform::paging::page_size;
