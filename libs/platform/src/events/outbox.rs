//! The write side of the event feed: an event row written in the caller's own transaction,
//! so the event exists exactly when the change it reports does.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};
use tokio::sync::Notify;
use winback_proto::events::{Event, EventSource, event::Payload};

use crate::db::{execute_all, multi_row_insert, statement};

/// Writes events of one source service.
#[derive(Debug, Clone)]
pub struct Outbox {
    source: EventSource,
    committed: Arc<Notify>,
}

impl Outbox {
    /// An outbox for events of `source`.
    pub fn new(source: EventSource) -> Self {
        Self {
            source,
            committed: Arc::new(Notify::new()),
        }
    }

    /// The source service.
    pub fn source(&self) -> EventSource {
        self.source
    }

    /// Appends an event inside the caller's transaction and returns its id.
    pub async fn append<C: ConnectionTrait>(
        &self,
        txn: &C,
        tenant_id: &str,
        occurred_at: DateTime<Utc>,
        payload: Payload,
    ) -> Result<String, DbErr> {
        let event_id = uuid::Uuid::now_v7().to_string();
        let event_type = payload_type(&payload);
        let event = self.event(event_id.clone(), tenant_id, occurred_at, payload);
        txn.execute_raw(statement(
            txn.get_database_backend(),
            "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload) VALUES ($1, $2, $3, $4, $5)",
            vec![
                event_id.clone().into(),
                tenant_id.into(),
                event_type.into(),
                occurred_at.timestamp_micros().into(),
                event.encode_to_vec().into(),
            ],
        ))
        .await?;
        Ok(event_id)
    }

    /// Runs `change` (an `UPDATE` or `INSERT` with `$n` placeholders and no `RETURNING`)
    /// and appends `payload` only if it changed a row, atomically, and returns whether it
    /// did. On PostgreSQL this is one statement (`WITH changed AS (… RETURNING 1) INSERT …
    /// SELECT … FROM changed`), so a hot path pays one round trip and one commit; on SQLite,
    /// a transaction of two (the caller serialises writers). Call `notify_committed` after.
    pub async fn append_if_changed(
        &self,
        db: &DatabaseConnection,
        change: &str,
        values: Vec<sea_orm::Value>,
        tenant_id: &str,
        occurred_at: DateTime<Utc>,
        payload: Payload,
    ) -> Result<bool, DbErr> {
        let backend = db.get_database_backend();
        if backend == DbBackend::Postgres {
            let event_id = uuid::Uuid::now_v7().to_string();
            let event_type = payload_type(&payload);
            let first = values.len() + 1;
            let event = self.event(event_id.clone(), tenant_id, occurred_at, payload);
            let mut values = values;
            values.extend([
                event_id.into(),
                tenant_id.into(),
                event_type.into(),
                occurred_at.timestamp_micros().into(),
                event.encode_to_vec().into(),
            ]);
            let sql = format!(
                "WITH changed AS ({change} RETURNING 1) INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload) \
                 SELECT {} FROM changed",
                crate::db::placeholders(first, 5)
            );
            let done = db.execute_raw(statement(backend, &sql, values)).await?;
            return Ok(done.rows_affected() == 1);
        }
        let txn = db.begin().await?;
        let changed = txn
            .execute_raw(statement(backend, change, values))
            .await?
            .rows_affected();
        if changed != 1 {
            return Ok(false);
        }
        self.append(&txn, tenant_id, occurred_at, payload).await?;
        txn.commit().await?;
        Ok(true)
    }

    fn event(
        &self,
        event_id: String,
        tenant_id: &str,
        occurred_at: DateTime<Utc>,
        payload: Payload,
    ) -> Event {
        let event_type = payload_type(&payload);
        Event {
            event_id,
            cursor: String::new(),
            tenant_id: tenant_id.to_owned(),
            source: self.source as i32,
            r#type: event_type.to_owned(),
            occurred_at: Some(crate::time::to_timestamp(occurred_at)),
            traceparent: crate::telemetry::current_traceparent().unwrap_or_default(),
            payload: Some(payload),
        }
    }

    /// Appends many events inside the caller's transaction, a few hundred rows per statement.
    pub async fn append_many<C: ConnectionTrait>(
        &self,
        txn: &C,
        events: Vec<(String, DateTime<Utc>, Payload)>,
    ) -> Result<(), DbErr> {
        execute_all(
            txn,
            self.append_statements(txn.get_database_backend(), events),
        )
        .await
    }

    /// The statements that append `events`, each built (events encoded) only when the
    /// iterator reaches it: chained after other statements in [`execute_all`], the
    /// encoding runs while the statement before it executes.
    pub fn append_statements<'a>(
        &'a self,
        backend: DbBackend,
        events: impl IntoIterator<Item = (String, DateTime<Utc>, Payload), IntoIter: Send + 'a>,
    ) -> Box<dyn Iterator<Item = Statement> + Send + 'a> {
        const ROWS_PER_STATEMENT: usize = 400;
        let mut events = events.into_iter().peekable();
        if events.peek().is_none() {
            return Box::new(std::iter::empty());
        }
        let traceparent = crate::telemetry::current_traceparent().unwrap_or_default();
        let row = move |(tenant_id, occurred_at, payload): (String, DateTime<Utc>, Payload)| {
            let event_id = uuid::Uuid::now_v7().to_string();
            let event_type = payload_type(&payload);
            let mut event = self.event(event_id.clone(), &tenant_id, occurred_at, payload);
            event.traceparent.clone_from(&traceparent);
            let encoded = event.encode_to_vec();
            (
                event_id,
                tenant_id,
                event_type,
                occurred_at.timestamp_micros(),
                encoded,
            )
        };
        if backend == DbBackend::Postgres {
            // Column arrays and UNNEST: five parameters for any number of events.
            return Box::new(std::iter::once_with(move || {
                let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (id, tenant, kind, at, payload) in events.map(row) {
                    columns.0.push(id);
                    columns.1.push(tenant);
                    columns.2.push(kind.to_owned());
                    columns.3.push(at);
                    columns.4.push(payload);
                }
                statement(
                    backend,
                    "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[])",
                    vec![
                        columns.0.into(),
                        columns.1.into(),
                        columns.2.into(),
                        columns.3.into(),
                        columns.4.into(),
                    ],
                )
            }));
        }
        let mut rows = events.map(row).peekable();
        Box::new(std::iter::from_fn(move || {
            rows.peek()?;
            let values =
                rows.by_ref()
                    .take(ROWS_PER_STATEMENT)
                    .map(|(id, tenant, kind, at, payload)| {
                        vec![
                            id.into(),
                            tenant.into(),
                            kind.into(),
                            at.into(),
                            payload.into(),
                        ]
                    });
            Some(multi_row_insert(
                backend,
                "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload)",
                values,
            ))
        }))
    }

    /// Wakes the subscribers of this outbox; call after the transaction committed.
    /// (Subscribers also poll, so a missed wake-up only delays an event.)
    pub fn notify_committed(&self) {
        self.committed.notify_waiters();
    }

    pub(crate) fn committed_signal(&self) -> Arc<Notify> {
        self.committed.clone()
    }
}

/// The `type` of an event: the name of its payload field.
pub fn payload_type(payload: &Payload) -> &'static str {
    match payload {
        Payload::PurchaseRecorded(_) => "purchase_recorded",
        Payload::OrderAdjusted(_) => "order_adjusted",
        Payload::ConsentChanged(_) => "consent_changed",
        Payload::EngagementRecorded(_) => "engagement_recorded",
        Payload::CustomerErased(_) => "customer_erased",
        Payload::SegmentChanged(_) => "segment_changed",
        Payload::LifecycleChanged(_) => "lifecycle_changed",
        Payload::CouponIssued(_) => "coupon_issued",
        Payload::CouponRedeemed(_) => "coupon_redeemed",
        Payload::CouponReleased(_) => "coupon_released",
        Payload::CouponExpired(_) => "coupon_expired",
        Payload::MessageStatusChanged(_) => "message_status_changed",
        Payload::ContactUnsubscribed(_) => "contact_unsubscribed",
        Payload::ComplaintReceived(_) => "complaint_received",
        Payload::EnrolmentStarted(_) => "enrolment_started",
        Payload::EnrolmentEnded(_) => "enrolment_ended",
        Payload::StepExecuted(_) => "step_executed",
    }
}
