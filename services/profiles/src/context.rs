//! What every operation of the profiles service works with.

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};

use winback_platform::clock::SharedClock;
use winback_platform::db::{WriteGate, WriteGuard};
use winback_platform::events::Outbox;

/// The service's database, outbox and clock.
#[derive(Debug, Clone)]
pub(crate) struct Profiles {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    /// Writers (and the delivery-feed consumer) queue here on SQLite.
    pub(crate) sqlite_writer: WriteGate,
}

impl Profiles {
    /// The service on `db`.
    pub(crate) fn new(db: DatabaseConnection, outbox: Outbox, clock: SharedClock) -> Self {
        Self {
            db,
            outbox,
            clock,
            sqlite_writer: WriteGate::default(),
        }
    }

    /// Begins a transaction that will write facts. Keep the guard until the commit.
    pub(crate) async fn begin_write(&self) -> Result<(WriteGuard, DatabaseTransaction), DbErr> {
        self.sqlite_writer.begin(&self.db).await
    }

    /// Now, in microseconds since the epoch, by the service clock.
    pub(crate) fn now_us(&self) -> i64 {
        self.clock.now().timestamp_micros()
    }
}

/// Microseconds of a protobuf timestamp.
pub(crate) fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds.saturating_mul(1_000_000) + i64::from(ts.nanos / 1000)
}

/// A protobuf timestamp of microseconds.
pub(crate) fn timestamp(us: i64) -> Option<prost_types::Timestamp> {
    chrono::DateTime::from_timestamp_micros(us).map(winback_platform::time::to_timestamp)
}
