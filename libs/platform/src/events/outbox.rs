//! The write side of the event feed: an event row written in the caller's own transaction,
//! so the event exists exactly when the change it reports does.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::{ConnectionTrait, DbErr};
use tokio::sync::Notify;
use winback_proto::events::{Event, EventSource, event::Payload};

use crate::db::{multi_row_insert, statement};

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
        let event = Event {
            event_id: event_id.clone(),
            cursor: String::new(),
            tenant_id: tenant_id.to_owned(),
            source: self.source as i32,
            r#type: event_type.to_owned(),
            occurred_at: Some(crate::time::to_timestamp(occurred_at)),
            traceparent: crate::telemetry::current_traceparent().unwrap_or_default(),
            payload: Some(payload),
        };
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

    /// Appends many events inside the caller's transaction, a few hundred rows per statement.
    pub async fn append_many<C: ConnectionTrait>(
        &self,
        txn: &C,
        events: Vec<(String, DateTime<Utc>, Payload)>,
    ) -> Result<(), DbErr> {
        const ROWS_PER_STATEMENT: usize = 400;
        let traceparent = crate::telemetry::current_traceparent().unwrap_or_default();
        let backend = txn.get_database_backend();
        let mut rows = events
            .into_iter()
            .map(|(tenant_id, occurred_at, payload)| {
                let event_id = uuid::Uuid::now_v7().to_string();
                let event_type = payload_type(&payload);
                let event = Event {
                    event_id: event_id.clone(),
                    cursor: String::new(),
                    tenant_id: tenant_id.clone(),
                    source: self.source as i32,
                    r#type: event_type.to_owned(),
                    occurred_at: Some(crate::time::to_timestamp(occurred_at)),
                    traceparent: traceparent.clone(),
                    payload: Some(payload),
                };
                vec![
                    event_id.into(),
                    tenant_id.into(),
                    event_type.into(),
                    occurred_at.timestamp_micros().into(),
                    event.encode_to_vec().into(),
                ]
            })
            .peekable();
        while rows.peek().is_some() {
            txn.execute_raw(multi_row_insert(
                backend,
                "INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at_us, payload)",
                rows.by_ref().take(ROWS_PER_STATEMENT),
            ))
            .await?;
        }
        Ok(())
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
