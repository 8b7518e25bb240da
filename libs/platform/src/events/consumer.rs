//! The consuming side of the event feed. A consumer keeps its cursor in its own database
//! and hands each event once to an idempotent handler: the handler's effect, the inbox row
//! (event id) and the cursor move are committed in one transaction. Delivery is
//! at-least-once (a restart resumes from the stored cursor), the effect exactly-once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::Channel;
use winback_proto::events::events_service_client::EventsServiceClient;
use winback_proto::events::{Event, EventSource, SubscribeRequest};

use super::jetstream::Receipt;
use crate::db::{WriteGate, multi_row_insert, placeholders, statement};
use crate::grpc::client::CallCredentials;

/// Events already received that one transaction takes at most.
const MAX_BATCH: usize = 500;

/// How soon an event another replica's turn came before is offered again.
const OUT_OF_TURN_DELAY: Duration = Duration::from_millis(50);

/// Inbox rows per lookup and per insert statement (3 values a row, well under SQLite's
/// parameter limit).
const INBOX_ROWS_PER_INSERT: usize = 500;

/// What a handler may fail with; the event is retried later, never skipped.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The database refused.
    #[error(transparent)]
    Db(#[from] DbErr),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Reacts to events. Runs inside the consumer's transaction: write the effect through
/// `txn` and it commits together with the cursor.
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event.
    fn handle<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Handles `events` in their order, in one transaction, as if one by one. A handler
    /// that can read and write a whole batch at once overrides this (a backlog of
    /// thousands of events is then a few statements, not a few per event); on failure the
    /// consumer retries the events one by one, so the failing one is named.
    fn handle_all<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            for event in events {
                self.handle(txn, event).await?;
            }
            Ok(())
        })
    }
}

/// An event as a transport hands it over.
#[derive(Debug)]
pub struct Received {
    /// The event, its `cursor` set to its position in the transport.
    pub event: Event,
    /// How to acknowledge it, for a transport that wants acks (JetStream): its `cursor`
    /// is then the stream sequence, and the consumer takes events strictly in turn.
    pub receipt: Option<Receipt>,
}

/// A source of event streams: the gRPC feed of a service (`GrpcEventTransport`), or NATS
/// JetStream (`JetStreamTransport`).
pub trait EventTransport: Send + Sync + 'static {
    /// Events of `source` after `after_cursor`, as a stream that stays open.
    fn subscribe(
        &self,
        source: EventSource,
        after_cursor: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Received, Status>>, Status>>;

    /// For a transport of stream sequences: the first one `source`'s stream still holds
    /// (a consumer further behind lost the events in between to retention).
    fn first_sequence(&self, _source: EventSource) -> BoxFuture<'_, Result<u64, Status>> {
        Box::pin(async { Ok(0) })
    }
}

/// The gRPC event feed of a service.
#[derive(Debug, Clone)]
pub struct GrpcEventTransport {
    channel: Channel,
    credentials: CallCredentials,
    tenant_id: Option<String>,
}

impl GrpcEventTransport {
    /// Reads the feed at `channel` with `credentials` (a service token reads every tenant
    /// unless `tenant_id` narrows it).
    pub fn new(channel: Channel, credentials: CallCredentials, tenant_id: Option<String>) -> Self {
        Self {
            channel,
            credentials,
            tenant_id,
        }
    }
}

impl EventTransport for GrpcEventTransport {
    fn subscribe(
        &self,
        source: EventSource,
        after_cursor: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Received, Status>>, Status>> {
        Box::pin(async move {
            let mut client = EventsServiceClient::with_interceptor(
                self.channel.clone(),
                self.credentials.clone(),
            );
            let response = client
                .subscribe(SubscribeRequest {
                    source: source as i32,
                    after_cursor,
                    types: Vec::new(),
                    tenant_id: self.tenant_id.clone().unwrap_or_default(),
                })
                .await?;
            let stream = response
                .into_inner()
                .filter_map(|item| async move {
                    match item {
                        Ok(resp) => resp.event.map(|event| {
                            Ok(Received {
                                event,
                                receipt: None,
                            })
                        }),
                        Err(status) => Some(Err(status)),
                    }
                })
                .boxed();
            Ok(stream)
        })
    }
}

/// Keeps one consumer's position in one source's feed and feeds its handler.
pub struct EventConsumer {
    name: String,
    source: EventSource,
    db: DatabaseConnection,
    transport: Arc<dyn EventTransport>,
    handler: Arc<dyn EventHandler>,
    retry_delay: Duration,
    writer: WriteGate,
}

impl std::fmt::Debug for EventConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventConsumer")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a consumer stopped handling an event.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The handler failed; the transaction was rolled back.
    #[error("handler failed on event {event_id}: {source}")]
    Handler {
        /// The event (the events of the batch, comma-separated, when a batch failed).
        event_id: String,
        /// Why.
        source: HandlerError,
    },
    /// The consumer's own bookkeeping failed.
    #[error(transparent)]
    Db(#[from] DbErr),
    /// The transport could not answer.
    #[error("event transport: {0}")]
    Transport(#[from] Status),
}

impl EventConsumer {
    /// A consumer called `name` (unique per consuming service) of `source`'s feed.
    pub fn new(
        name: impl Into<String>,
        source: EventSource,
        db: DatabaseConnection,
        transport: Arc<dyn EventTransport>,
        handler: Arc<dyn EventHandler>,
    ) -> Self {
        Self {
            name: name.into(),
            source,
            db,
            transport,
            handler,
            retry_delay: Duration::from_millis(500),
            writer: WriteGate::default(),
        }
    }

    /// Enters the consuming service's `gate` around each transaction, so on SQLite its
    /// writers and this consumer queue instead of failing to upgrade a read transaction.
    pub fn with_write_gate(mut self, gate: WriteGate) -> Self {
        self.writer = gate;
        self
    }

    /// Sets the wait before reconnecting or retrying a failed event.
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// The stored cursor ("" before the first event).
    pub async fn cursor(&self) -> Result<String, DbErr> {
        let row = self
            .db
            .query_one_raw(statement(
                self.db.get_database_backend(),
                "SELECT position FROM event_cursor WHERE consumer = $1 AND source = $2",
                vec![self.name.clone().into(), source_name(self.source).into()],
            ))
            .await?;
        match row {
            Some(row) => row.try_get("", "position"),
            None => Ok(String::new()),
        }
    }

    /// Handles one event: effect, inbox and cursor in one transaction. Returns false when the
    /// event was handled before (a redelivery), in which case only the cursor moves.
    pub async fn handle(&self, event: &Event) -> Result<bool, ConsumerError> {
        Ok(self.handle_batch(std::slice::from_ref(event)).await? > 0)
    }

    /// Runs until `shutdown`: subscribes from the stored cursor, handles every event,
    /// reconnects after a broken stream, retries a failed event after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.run_once(&shutdown).await {
                tracing::warn!(consumer = %self.name, error = %err, "event consumer interrupted; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.retry_delay) => {}
            }
        }
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let cursor = self.cursor().await.map_err(ConsumerError::Db)?;
        let mut stream = self.transport.subscribe(self.source, cursor).await?;
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    hand_back(&mut stream).await;
                    return Ok(());
                }
                item = stream.next() => item,
            };
            let first = match item {
                Some(Ok(received)) => received,
                Some(Err(status)) => return Err(status.into()),
                None => return Ok(()),
            };
            // Whatever else has already arrived goes into the same transaction: a backlog
            // (a consumer catching up on a bulk import) commits once per batch, not per event.
            let mut batch = vec![first];
            let mut ended = None;
            while batch.len() < MAX_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(Ok(received))) => batch.push(received),
                    Some(Some(Err(status))) => {
                        ended = Some(Err(status));
                        break;
                    }
                    Some(None) => {
                        ended = Some(Ok(()));
                        break;
                    }
                    None => break,
                }
            }
            if batch.iter().any(|r| r.receipt.is_some()) {
                self.take_in_turn(batch, shutdown).await;
            } else {
                let events: Vec<Event> = batch.into_iter().map(|r| r.event).collect();
                self.handle_fed(&events, shutdown).await?;
            }
            if shutdown.is_cancelled() {
                // A batch that failed while stopping was not (all) handled: nothing after
                // it may be, or the stored cursor would pass over it.
                hand_back(&mut stream).await;
                return Ok(());
            }
            match ended {
                Some(Err(status)) => return Err(status.into()),
                Some(Ok(())) => return Ok(()),
                None => {}
            }
        }
    }

    /// Events from a feed: as one batch, or one by one when the batch fails.
    async fn handle_fed(
        &self,
        events: &[Event],
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        if events.len() == 1 {
            self.handle(&events[0]).await?;
        } else if self.handle_batch(events).await.is_err() {
            // One of them failed and the batch rolled back: one by one now, so the ones
            // before the failing event are kept and the failing one is named (unless the
            // consumer is stopping; the stored cursor resumes it).
            for event in events {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                self.handle(event).await?;
            }
        }
        Ok(())
    }

    /// Events from JetStream: handled in turn, acknowledged after the commit; a failed
    /// batch is retried one by one and the failing event (with every later one) handed
    /// back to JetStream to come again after the retry delay.
    async fn take_in_turn(&self, batch: Vec<Received>, shutdown: &CancellationToken) {
        if batch.len() > 1 {
            match self.handle_in_turn(&batch).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::debug!(consumer = %self.name, error = %err, "batch failed; one by one")
                }
            }
        }
        for (i, received) in batch.iter().enumerate() {
            let stopping = shutdown.is_cancelled();
            let result = if stopping {
                Ok(())
            } else {
                self.handle_in_turn(std::slice::from_ref(received)).await
            };
            if stopping || result.is_err() {
                if let Err(err) = result {
                    tracing::warn!(consumer = %self.name, error = %err, "event consumer interrupted; retrying");
                }
                for later in &batch[i..] {
                    if let Some(receipt) = &later.receipt {
                        receipt.retry(self.retry_delay).await;
                    }
                }
                return;
            }
        }
    }

    /// Handles the events of `batch` that are next in turn in one transaction, then
    /// acknowledges them (and any already handled), and hands the rest back for later.
    ///
    /// Replicas of a consuming service share one durable JetStream consumer, so each may
    /// hold a part of the stream. The stored sequence (locked for the transaction on
    /// PostgreSQL) decides whose turn it is: only the event right after it may be handled
    /// next, so events take effect in stream order whichever replica got them.
    async fn handle_in_turn(&self, batch: &[Received]) -> Result<(), ConsumerError> {
        let (_writer, txn) = self.writer.begin(&self.db).await?;
        let backend = txn.get_database_backend();
        let key = || {
            vec![
                self.name.clone().into(),
                format!("{}.jetstream", source_name(self.source)).into(),
            ]
        };
        txn.execute_raw(statement(
            backend,
            "INSERT INTO event_cursor (consumer, source, position, updated_at_us) VALUES ($1, $2, '', 0)
             ON CONFLICT (consumer, source) DO NOTHING",
            key(),
        ))
        .await?;
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let stored: Option<u64> = txn
            .query_one_raw(statement(
                backend,
                &format!(
                    "SELECT position FROM event_cursor WHERE consumer = $1 AND source = $2{lock}"
                ),
                key(),
            ))
            .await?
            .map(|row| row.try_get::<String>("", "position"))
            .transpose()?
            .and_then(|p| p.parse().ok());
        let sequence = |r: &Received| r.receipt.as_ref().map_or(0, |receipt| receipt.sequence);

        let (done, pending): (Vec<&Received>, Vec<&Received>) = batch
            .iter()
            .partition(|r| stored.is_some_and(|s| sequence(r) <= s));
        let mut expected = match (stored, pending.first()) {
            (_, None) => 0,
            // The first event this consumer takes is the first the stream holds: events
            // further on may reach another replica first.
            (None, Some(_)) => self.transport.first_sequence(self.source).await?.max(1),
            (Some(s), Some(first)) if sequence(first) > s + 1 => {
                // A gap: another replica holds the events in between, unless retention
                // removed them.
                let kept_from = self.transport.first_sequence(self.source).await?;
                if kept_from > s + 1 {
                    tracing::warn!(consumer = %self.name, after = s, kept_from, "events lost to the stream's retention");
                    kept_from
                } else {
                    s + 1
                }
            }
            (Some(s), Some(_)) => s + 1,
        };
        let mut in_turn = Vec::new();
        let mut later = Vec::new();
        for r in pending {
            if later.is_empty() && sequence(r) == expected {
                in_turn.push(r);
                expected += 1;
            } else {
                later.push(r);
            }
        }
        let events: Vec<&Event> = in_turn.iter().map(|r| &r.event).collect();
        if let Some(last) = in_turn.last() {
            self.apply(&txn, &events).await?;
            let mut values = key();
            values.push(sequence(last).to_string().into());
            values.push(chrono::Utc::now().timestamp_micros().into());
            txn.execute_raw(statement(
                backend,
                "UPDATE event_cursor SET position = $3, updated_at_us = $4 WHERE consumer = $1 AND source = $2",
                values,
            ))
            .await?;
        }
        txn.commit().await?;
        for r in done.into_iter().chain(in_turn) {
            if let Some(receipt) = &r.receipt {
                receipt.ack().await;
            }
        }
        for r in later {
            if let Some(receipt) = &r.receipt {
                receipt.retry(OUT_OF_TURN_DELAY).await;
            }
        }
        Ok(())
    }

    /// Handles `events` in one transaction: every effect, the inbox rows and the last
    /// cursor commit together, or nothing does. Returns how many were new (not redeliveries,
    /// not repeated within `events`).
    pub async fn handle_batch(&self, events: &[Event]) -> Result<usize, ConsumerError> {
        let (_writer, txn) = self.writer.begin(&self.db).await?;
        let backend = txn.get_database_backend();
        let all: Vec<&Event> = events.iter().collect();
        let handled = self.apply(&txn, &all).await?;
        if let Some(last) = events.last() {
            let now_us = chrono::Utc::now().timestamp_micros();
            txn.execute_raw(statement(
                backend,
                "INSERT INTO event_cursor (consumer, source, position, updated_at_us) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (consumer, source) DO UPDATE SET position = excluded.position, updated_at_us = excluded.updated_at_us",
                vec![
                    self.name.clone().into(),
                    source_name(self.source).into(),
                    last.cursor.clone().into(),
                    now_us.into(),
                ],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(handled)
    }

    /// Inside `txn`: the effects of the events not handled before (nor repeated within
    /// `events`) and their inbox rows. Returns how many that was; a handler failure is
    /// returned as such and the caller's transaction must not commit.
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        events: &[&Event],
    ) -> Result<usize, ConsumerError> {
        let backend = txn.get_database_backend();
        let now_us = chrono::Utc::now().timestamp_micros();
        // The inbox is read once for the whole batch and written once: a backlog of
        // thousands of events cost two statements per event before.
        let mut seen = self.already_handled(txn, events).await?;
        let fresh: Vec<&Event> = events
            .iter()
            .copied()
            .filter(|e| seen.insert(e.event_id.as_str()))
            .collect();
        let result = match fresh.as_slice() {
            [] => Ok(()),
            [one] => self.handler.handle(txn, one).await,
            all => self.handler.handle_all(txn, all).await,
        };
        if let Err(source) = result {
            return Err(ConsumerError::Handler {
                event_id: fresh
                    .iter()
                    .map(|e| e.event_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            });
        }
        let handled: Vec<&str> = fresh.iter().map(|e| e.event_id.as_str()).collect();
        for chunk in handled.chunks(INBOX_ROWS_PER_INSERT) {
            txn.execute_raw(multi_row_insert(
                backend,
                "INSERT INTO event_inbox (consumer, event_id, handled_at_us)",
                chunk.iter().map(|id| {
                    vec![
                        self.name.clone().into(),
                        (*id).to_owned().into(),
                        now_us.into(),
                    ]
                }),
            ))
            .await?;
        }
        Ok(handled.len())
    }

    /// The ids among `events` this consumer has handled before.
    async fn already_handled<'e>(
        &self,
        txn: &DatabaseTransaction,
        events: &[&'e Event],
    ) -> Result<HashSet<&'e str>, DbErr> {
        let backend = txn.get_database_backend();
        let mut seen = HashSet::new();
        for chunk in events.chunks(INBOX_ROWS_PER_INSERT) {
            let mut values: Vec<sea_orm::Value> = vec![self.name.clone().into()];
            values.extend(chunk.iter().map(|e| e.event_id.clone().into()));
            let rows = txn
                .query_all_raw(statement(
                    backend,
                    &format!(
                        "SELECT event_id FROM event_inbox WHERE consumer = $1 AND event_id IN ({})",
                        placeholders(2, chunk.len())
                    ),
                    values,
                ))
                .await?;
            let ids: HashSet<String> = rows
                .iter()
                .map(|r| r.try_get::<String>("", "event_id"))
                .collect::<Result<_, _>>()?;
            seen.extend(
                chunk
                    .iter()
                    .map(|e| e.event_id.as_str())
                    .filter(|id| ids.contains(*id)),
            );
        }
        Ok(seen)
    }
}

/// On shutdown: events a transport with acks already handed over but this consumer has not
/// taken go back at once, rather than after the ack wait.
async fn hand_back(stream: &mut BoxStream<'static, Result<Received, Status>>) {
    while let Some(Some(Ok(received))) = stream.next().now_or_never() {
        if let Some(receipt) = &received.receipt {
            receipt.retry(Duration::ZERO).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("event stream: {0}")]
    Stream(#[from] Status),
}

/// The stored name of a source.
pub fn source_name(source: EventSource) -> &'static str {
    match source {
        EventSource::Unspecified => "unspecified",
        EventSource::Profiles => "profiles",
        EventSource::Segmentation => "segmentation",
        EventSource::Campaigns => "campaigns",
        EventSource::Offers => "offers",
        EventSource::Delivery => "delivery",
    }
}
