//! What every operation of the delivery service works with.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};

use winback_platform::ServiceError;
use winback_platform::clock::SharedClock;
use winback_platform::config::DeliveryConfig;
use winback_platform::db::{WriteGate, WriteGuard};
use winback_platform::events::Outbox;

use crate::domain::token::Signer;

/// The service's database, outbox, clock, settings and link signer.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    pub(crate) config: Arc<DeliveryConfig>,
    pub(crate) signer: Signer,
    /// Where the file sink writes when a tenant configured nothing (the embedded default).
    pub(crate) default_sink_dir: std::path::PathBuf,
    /// Wakes idle workers when a message is queued.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Carriers by tenant and channel.
    pub(crate) carriers: crate::worker::Carriers,
    /// Opens, clicks and reports waiting to commit together.
    pub(crate) reaction_groups: Arc<crate::reactions::ReactionGroups>,
    /// Seals provider secrets at rest.
    pub(crate) secrets: Arc<winback_platform::secrets::SecretBox>,
    /// The tenants' message quotas.
    pub(crate) quotas: winback_platform::quotas::Quotas,
    /// Writers queue here on SQLite.
    sqlite_writer: WriteGate,
}

impl Delivery {
    pub(crate) fn new(
        db: DatabaseConnection,
        outbox: Outbox,
        clock: SharedClock,
        config: DeliveryConfig,
        secret: &[u8],
        secrets: Arc<winback_platform::secrets::SecretBox>,
        default_sink_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            db,
            outbox,
            clock,
            config: Arc::new(config),
            signer: Signer::new(secret),
            default_sink_dir,
            wake: Arc::default(),
            carriers: crate::worker::Carriers::default(),
            reaction_groups: Arc::default(),
            secrets,
            quotas: winback_platform::quotas::Quotas::new(
                winback_platform::config::QuotaConfig::unlimited(),
            ),
            sqlite_writer: WriteGate::default(),
        }
    }

    /// Limits each tenant's messages per day by `quotas`.
    pub(crate) fn with_quotas(mut self, quotas: winback_platform::quotas::Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// `RESOURCE_EXHAUSTED` (retry at the next UTC midnight) when the tenant has used its
    /// messages for today. Checked before a call is taken, so one call can pass the limit
    /// by at most its own size; no query at all when the tenant has no limit.
    pub(crate) async fn check_daily_messages(&self, tenant: &str) -> Result<(), ServiceError> {
        if self.quotas.of(tenant).messages_per_day == 0 {
            return Ok(());
        }
        let now = self.clock.now();
        let since = winback_platform::quotas::start_of_day(now).timestamp_micros();
        let sent = crate::store::messages_created_since(&self.db, tenant, since).await?;
        self.quotas.check_messages(tenant, sent, now)
    }

    /// The SQLite writer lock (nothing on PostgreSQL). Keep it until the commit.
    pub(crate) async fn writer_lock(&self) -> WriteGuard {
        self.sqlite_writer.enter(&self.db).await
    }

    /// Begins a writing transaction. Keep the guard until the commit.
    pub(crate) async fn begin_write(&self) -> Result<(WriteGuard, DatabaseTransaction), DbErr> {
        self.sqlite_writer.begin(&self.db).await
    }

    /// Wakes the workers (a message was queued).
    pub(crate) fn wake_workers(&self) {
        self.wake.notify_waiters();
    }

    /// Now in microseconds by the service clock.
    pub(crate) fn now_us(&self) -> i64 {
        self.clock.now().timestamp_micros()
    }

    /// A public URL of the tracking server.
    pub(crate) fn public_url(&self, path: &str) -> String {
        format!("{}{path}", self.config.public_url.trim_end_matches('/'))
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

pub(crate) use winback_platform::paging::page_size;

/// The channel of a request, or INVALID_ARGUMENT naming `field`.
pub(crate) fn channel(
    value: i32,
    field: &str,
) -> Result<winback_proto::common::Channel, ServiceError> {
    match winback_proto::common::Channel::try_from(value) {
        Ok(c) if c != winback_proto::common::Channel::Unspecified => Ok(c),
        _ => Err(ServiceError::invalid(field, "a channel is required")),
    }
}

/// A `google.protobuf.Struct` as JSON.
pub(crate) fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Value::from(*n)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}
