//! What every operation of the offers service works with.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{Mutex, OwnedMutexGuard};
use winback_platform::ServiceError;
use winback_platform::clock::SharedClock;
use winback_platform::events::Outbox;

/// The service's database, outbox and clock.
#[derive(Debug, Clone)]
pub(crate) struct Offers {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    /// SQLite has one writer: writers queue here instead of failing to upgrade a read
    /// transaction. (PostgreSQL writers lock the rows they change.)
    sqlite_writer: Arc<Mutex<()>>,
}

impl Offers {
    pub(crate) fn new(db: DatabaseConnection, outbox: Outbox, clock: SharedClock) -> Self {
        Self {
            db,
            outbox,
            clock,
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

    /// Now in microseconds by the service clock.
    pub(crate) fn now_us(&self) -> i64 {
        self.clock.now().timestamp_micros()
    }
}

/// A database error as the caller sees it.
pub(crate) fn db_error(e: DbErr) -> ServiceError {
    ServiceError::internal(e)
}

/// A protobuf timestamp of microseconds.
pub(crate) fn timestamp(us: i64) -> Option<prost_types::Timestamp> {
    chrono::DateTime::from_timestamp_micros(us).map(winback_platform::time::to_timestamp)
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
