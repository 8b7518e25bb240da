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
    ///
    /// Consecutive events of one tenant and type share an outbox row, up to
    /// [`EVENTS_PER_ROW`] of them: a row costs every index of the outbox an insert, an event
    /// inside a row costs nothing more than its bytes (see [`RowEvents`]).
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
        let event = move |(tenant_id, occurred_at, payload): (String, DateTime<Utc>, Payload)| {
            let mut event = self.event(
                uuid::Uuid::now_v7().to_string(),
                &tenant_id,
                occurred_at,
                payload,
            );
            event.traceparent.clone_from(&traceparent);
            (event, occurred_at.timestamp_micros())
        };
        let mut rows = OutboxRows {
            events: events.map(event).peekable(),
        }
        .peekable();
        if backend == DbBackend::Postgres {
            // Column arrays and UNNEST: six parameters for any number of rows.
            return Box::new(std::iter::once_with(move || {
                let mut columns = (
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                );
                for row in rows {
                    columns.0.push(row.event_id);
                    columns.1.push(row.tenant_id);
                    columns.2.push(row.event_type.to_owned());
                    columns.3.push(row.occurred_at_us);
                    columns.4.push(row.payload);
                    columns.5.push(row.event_count);
                }
                statement(
                    backend,
                    "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload, event_count) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[], $6::bigint[])",
                    vec![
                        columns.0.into(),
                        columns.1.into(),
                        columns.2.into(),
                        columns.3.into(),
                        columns.4.into(),
                        columns.5.into(),
                    ],
                )
            }));
        }
        Box::new(std::iter::from_fn(move || {
            rows.peek()?;
            let values = rows.by_ref().take(ROWS_PER_STATEMENT).map(|row| {
                vec![
                    row.event_id.into(),
                    row.tenant_id.into(),
                    row.event_type.into(),
                    row.occurred_at_us.into(),
                    row.payload.into(),
                    row.event_count.into(),
                ]
            });
            Some(multi_row_insert(
                backend,
                "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload, event_count)",
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

/// The most events one outbox row holds. At ~200 bytes an event a full row is ~13 KB, which
/// PostgreSQL compresses and stores out of line in a few TOAST chunks.
pub const EVENTS_PER_ROW: usize = 64;

/// One outbox row: its first event's id, tenant, type and time, and its events.
struct OutboxRow {
    event_id: String,
    tenant_id: String,
    event_type: &'static str,
    occurred_at_us: i64,
    payload: Vec<u8>,
    event_count: i64,
}

/// Cuts a sequence of events into outbox rows: runs of one tenant and type, at most
/// [`EVENTS_PER_ROW`] long. A row of one event holds it encoded as it always was, so the
/// single-event appends and every row written before rows held many read the same.
/// Each event comes with the time it occurred, in microseconds.
struct OutboxRows<I: Iterator<Item = (Event, i64)>> {
    events: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = (Event, i64)>> Iterator for OutboxRows<I> {
    type Item = OutboxRow;

    fn next(&mut self) -> Option<OutboxRow> {
        let (first, occurred_at_us) = self.events.next()?;
        let event_type = first.payload.as_ref().map_or("", payload_type);
        let same_run = |(e, _): &(Event, i64)| {
            e.tenant_id == first.tenant_id
                && e.payload.as_ref().map_or("", payload_type) == event_type
        };
        let mut row = OutboxRow {
            event_id: first.event_id.clone(),
            tenant_id: first.tenant_id.clone(),
            event_type,
            occurred_at_us,
            payload: Vec::new(),
            event_count: 1,
        };
        if !self.events.peek().is_some_and(same_run) {
            row.payload = first.encode_to_vec();
            return Some(row);
        }
        let mut payload = first.encode_length_delimited_to_vec();
        while row.event_count < EVENTS_PER_ROW as i64 {
            let Some((event, _)) = self.events.next_if(same_run) else {
                break;
            };
            // Encoding into the row's buffer cannot fail: a Vec grows as needed.
            let _ = event.encode_length_delimited(&mut payload);
            row.event_count += 1;
        }
        row.payload = payload;
        Some(row)
    }
}

/// The events of a stored outbox row, in order: `payload` as [`OutboxRows`] wrote it.
pub(crate) fn row_events(
    payload: &[u8],
    event_count: i64,
) -> Result<Vec<Event>, prost::DecodeError> {
    if event_count <= 1 {
        return Ok(vec![Event::decode(payload)?]);
    }
    let mut rest = payload;
    let mut events = Vec::with_capacity(event_count as usize);
    while !rest.is_empty() {
        events.push(Event::decode_length_delimited(&mut rest)?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use winback_proto::events::{EngagementRecorded, PurchaseRecorded};

    use super::*;

    fn event(tenant: &str, payload: Payload) -> Event {
        Outbox::new(EventSource::Profiles).event(
            uuid::Uuid::now_v7().to_string(),
            tenant,
            Utc::now(),
            payload,
        )
    }

    fn purchase(tenant: &str, order: usize) -> Event {
        event(
            tenant,
            Payload::PurchaseRecorded(PurchaseRecorded {
                order_id: format!("o{order}"),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn rows_hold_runs_of_one_tenant_and_type_and_read_back_in_order() {
        let mut events: Vec<Event> = (0..EVENTS_PER_ROW + 3)
            .map(|i| purchase("t-a", i))
            .collect();
        events.push(purchase("t-b", 1000));
        events.push(event(
            "t-b",
            Payload::EngagementRecorded(EngagementRecorded::default()),
        ));
        events.push(purchase("t-b", 1001));
        events.push(purchase("t-b", 1002));

        let rows: Vec<OutboxRow> = OutboxRows {
            events: events.iter().map(|e| (e.clone(), 0)).peekable(),
        }
        .collect();
        let shape: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|r| (r.tenant_id.as_str(), r.event_type, r.event_count))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("t-a", "purchase_recorded", EVENTS_PER_ROW as i64),
                ("t-a", "purchase_recorded", 3),
                ("t-b", "purchase_recorded", 1),
                ("t-b", "engagement_recorded", 1),
                ("t-b", "purchase_recorded", 2),
            ]
        );
        // A row of one event is the event as single appends store it.
        assert_eq!(rows[2].payload, events[EVENTS_PER_ROW + 3].encode_to_vec());
        let read: Vec<Event> = rows
            .iter()
            .flat_map(|r| row_events(&r.payload, r.event_count).unwrap())
            .collect();
        assert_eq!(read, events);
        assert_eq!(rows[0].event_id, events[0].event_id);
    }
}
