//! Events on NATS JetStream (`events.transport = "jetstream"`): each service relays its
//! transactional outbox to a stream of its own, and consumers read it through durable
//! JetStream consumers with explicit acks. The outbox stays the source of truth and the
//! consumer inbox keeps the effect exactly-once; JetStream carries the events between
//! processes and machines. See `docs/events.md`.
//!
//! * Streams: `<PREFIX>_<SOURCE>` (e.g. `WINBACK_PROFILES`), subjects
//!   `<prefix>.<source>.<tenant>.<event type>`, file storage, kept `max_age_hours`.
//! * The relay publishes each event with `Nats-Msg-Id` = the event id, so a relay that
//!   publishes a batch again (it crashed before storing its position, or two replicas of
//!   a service relay at once) adds nothing: JetStream drops the copy within the stream's
//!   duplicate window.
//! * Consumers: one durable consumer per consuming service (its replicas share it), so
//!   each event goes to one replica; the replica acknowledges after its transaction
//!   commits. Order is kept across replicas by the stream sequence: see
//!   `EventConsumer`'s in-turn check.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::{AckKind, Acker, PublishMessage};
use async_nats::jetstream::stream::{self, StorageType};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, TransactionTrait};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use winback_proto::events::{Event, EventSource};

use super::consumer::{EventTransport, Received, source_name};
use super::cursor::{Cursor, MalformedCursor};
use super::feed::{FeedFilter, FeedReader};
use crate::config::JetStreamConfig;
use crate::db::statement;

/// Why JetStream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// The NATS server could not be reached.
    #[error("connect to NATS at {url}: {reason}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// A JetStream call failed.
    #[error("JetStream: {0}")]
    Call(String),
}

fn call_error(e: impl std::fmt::Display) -> JetStreamError {
    JetStreamError::Call(e.to_string())
}

/// A connection to JetStream with the stack's stream naming.
#[derive(Clone)]
pub struct JetStream {
    context: Context,
    config: JetStreamConfig,
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream")
            .field("url", &self.config.url)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// The duplicate window of every stream: a relay that republishes within it adds nothing.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Unacknowledged events a consumer (all its replicas together) may hold at once.
const MAX_ACK_PENDING: i64 = 2_000;

/// The relay's row in the producing service's `event_cursor` table.
const RELAY: &str = "jetstream-relay";

impl JetStream {
    /// Connects to the server in `config`; the client reconnects by itself afterwards.
    pub async fn connect(config: &JetStreamConfig) -> Result<Self, JetStreamError> {
        let client = async_nats::ConnectOptions::new()
            .name("winback")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(config.url.as_str())
            .await
            .map_err(|e| JetStreamError::Connect {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            context: async_nats::jetstream::new(client),
            config: config.clone(),
        })
    }

    /// The stream of `source`'s events.
    pub fn stream_name(&self, source: EventSource) -> String {
        format!(
            "{}_{}",
            self.config.prefix.to_ascii_uppercase(),
            source_name(source).to_ascii_uppercase()
        )
    }

    /// The subject an event of `source` for `tenant` of `event_type` is published on.
    /// Characters a subject token cannot hold become `_` (the tenant is in the event too).
    pub fn subject(&self, source: EventSource, tenant: &str, event_type: &str) -> String {
        let token = |s: &str| -> String {
            let t: String = s
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if t.is_empty() { "_".into() } else { t }
        };
        format!(
            "{}.{}.{}.{}",
            self.config.prefix,
            source_name(source),
            token(tenant),
            token(event_type)
        )
    }

    /// Creates `source`'s stream unless it exists.
    pub async fn ensure_stream(
        &self,
        source: EventSource,
    ) -> Result<stream::Stream, JetStreamError> {
        self.context
            .get_or_create_stream(stream::Config {
                name: self.stream_name(source),
                subjects: vec![format!("{}.{}.>", self.config.prefix, source_name(source))],
                storage: StorageType::File,
                max_age: Duration::from_secs(self.config.max_age_hours * 3600),
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(call_error)
    }

    /// Deletes the streams of every source under this prefix (tests clean up with it).
    pub async fn delete_streams(&self) -> Result<(), JetStreamError> {
        for source in SOURCES {
            match self.context.delete_stream(self.stream_name(source)).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(call_error(e)),
            }
        }
        Ok(())
    }

    /// The first sequence `source`'s stream still holds (0 for an empty stream).
    pub async fn first_sequence(&self, source: EventSource) -> Result<u64, JetStreamError> {
        // One request: looking the stream up returns its state with it.
        let stream = self
            .context
            .get_stream(self.stream_name(source))
            .await
            .map_err(call_error)?;
        Ok(stream.cached_info().state.first_sequence)
    }

    /// Publishes `events` of `source`, each with its id as `Nats-Msg-Id`, and waits until
    /// JetStream has stored every one (or found it a duplicate).
    pub async fn publish(
        &self,
        source: EventSource,
        events: &[Event],
    ) -> Result<(), JetStreamError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let mut event = event.clone();
            event.cursor.clear();
            let subject = self.subject(source, &event.tenant_id, &event.r#type);
            let ack = self
                .context
                .send_publish(
                    subject,
                    PublishMessage::build()
                        .message_id(&event.event_id)
                        .payload(Bytes::from(event.encode_to_vec())),
                )
                .await
                .map_err(call_error)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(call_error)?;
        }
        Ok(())
    }

    /// A transport for the consumer called `consumer` (shared by its replicas).
    pub fn transport(&self, consumer: impl Into<String>) -> JetStreamTransport {
        JetStreamTransport {
            jetstream: self.clone(),
            consumer: consumer.into(),
        }
    }

    /// Relays `feed`'s outbox (events of `source`) to JetStream until `shutdown`.
    ///
    /// The relay's position is a row of the producing service's own `event_cursor`. On
    /// PostgreSQL a round locks that row (`FOR UPDATE SKIP LOCKED`), so of several
    /// replicas of a service one relays at a time and the others wait for the next
    /// round; the lock is held only while a batch is published. A round that fails
    /// before storing its position publishes the batch again: the ids make it a no-op.
    pub async fn relay(
        self,
        feed: FeedReader,
        source: EventSource,
        batch_size: u32,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        if let Err(e) = self.ensure_stream(source).await {
            tracing::warn!(source = source_name(source), error = %e, "JetStream stream not ready; the relay keeps trying");
        }
        // The position row is made once; a round only reads and moves it.
        let mut position_row = false;
        while !shutdown.is_cancelled() {
            let committed = feed.committed_signal().notified_owned();
            let round = async {
                if !position_row {
                    ensure_position_row(&feed, source).await?;
                    position_row = true;
                }
                self.relay_round(&feed, source, batch_size).await
            };
            let relayed = match round.await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(source = source_name(source), error = %e, "JetStream relay round failed; retrying");
                    0
                }
            };
            if relayed == batch_size as usize {
                continue;
            }
            tokio::select! {
                _ = committed => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One relay round: the next batch after the stored position, published, then the
    /// position moved. Returns how many events it relayed.
    async fn relay_round(
        &self,
        feed: &FeedReader,
        source: EventSource,
        batch_size: u32,
    ) -> Result<usize, RelayError> {
        let db = feed.db();
        if db.get_database_backend() == DbBackend::Postgres {
            let txn = db.begin().await?;
            let relayed = self.relay_batch(&txn, feed, source, batch_size).await?;
            txn.commit().await?;
            Ok(relayed)
        } else {
            // SQLite: one process owns the file, so there is no other relay to keep out,
            // and no read transaction held across the publish that could not upgrade.
            self.relay_batch(db, feed, source, batch_size).await
        }
    }

    async fn relay_batch(
        &self,
        conn: &impl ConnectionTrait,
        feed: &FeedReader,
        source: EventSource,
        batch_size: u32,
    ) -> Result<usize, RelayError> {
        let backend = conn.get_database_backend();
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let Some(row) = conn
            .query_one_raw(statement(
                backend,
                &format!(
                    "SELECT position FROM event_cursor WHERE consumer = $1 AND source = $2{lock}"
                ),
                vec![RELAY.into(), source_name(source).into()],
            ))
            .await?
        else {
            // Another replica is relaying this round.
            return Ok(0);
        };
        let position: Cursor = row
            .try_get::<String>("", "position")?
            .parse()
            .map_err(|e: MalformedCursor| DbErr::Custom(e.to_string()))?;
        let events = feed
            .read_after(position, &FeedFilter::default(), batch_size)
            .await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        self.publish(source, &events).await?;
        conn.execute_raw(statement(
            backend,
            "UPDATE event_cursor SET position = $3, updated_at_us = $4 WHERE consumer = $1 AND source = $2",
            vec![
                RELAY.into(),
                source_name(source).into(),
                last.cursor.clone().into(),
                chrono::Utc::now().timestamp_micros().into(),
            ],
        ))
        .await?;
        Ok(events.len())
    }
}

/// The relay's position row in the producing service's `event_cursor`, made if missing.
async fn ensure_position_row(feed: &FeedReader, source: EventSource) -> Result<(), DbErr> {
    let db = feed.db();
    db.execute_raw(statement(
        db.get_database_backend(),
        "INSERT INTO event_cursor (consumer, source, position, updated_at_us) VALUES ($1, $2, '', 0)
         ON CONFLICT (consumer, source) DO NOTHING",
        vec![RELAY.into(), source_name(source).into()],
    ))
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
}

const SOURCES: [EventSource; 5] = [
    EventSource::Profiles,
    EventSource::Segmentation,
    EventSource::Campaigns,
    EventSource::Offers,
    EventSource::Delivery,
];

/// Acknowledges one event received from JetStream.
pub struct Receipt {
    acker: Acker,
    /// The event's sequence number in its stream.
    pub sequence: u64,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Receipt {
    /// The event is handled (its transaction committed).
    pub async fn ack(&self) {
        if let Err(e) = self.acker.ack().await {
            // JetStream redelivers it after the ack wait; the inbox makes that harmless.
            tracing::debug!(sequence = self.sequence, error = %e, "ack failed");
        }
    }

    /// The event is not handled now: deliver it again after `delay`.
    pub async fn retry(&self, delay: Duration) {
        let delay = (!delay.is_zero()).then_some(delay);
        if let Err(e) = self.acker.ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(sequence = self.sequence, error = %e, "nak failed");
        }
    }
}

/// Reads one consuming service's durable JetStream consumer of a source's stream.
#[derive(Debug, Clone)]
pub struct JetStreamTransport {
    jetstream: JetStream,
    consumer: String,
}

impl EventTransport for JetStreamTransport {
    fn subscribe(
        &self,
        source: EventSource,
        _after_cursor: String,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Received, Status>>, Status>> {
        // The durable consumer keeps the position on the server; the consumer's stored
        // sequence only guards the order (events at or below it are redeliveries).
        Box::pin(async move {
            let unavailable =
                |e: &dyn std::fmt::Display| Status::unavailable(format!("JetStream: {e}"));
            let stream = self
                .jetstream
                .ensure_stream(source)
                .await
                .map_err(|e| unavailable(&e))?;
            let consumer = stream
                .get_or_create_consumer(
                    &self.consumer,
                    pull::Config {
                        durable_name: Some(self.consumer.clone()),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: Duration::from_millis(self.jetstream.config.ack_wait_ms),
                        deliver_policy: DeliverPolicy::All,
                        max_ack_pending: MAX_ACK_PENDING,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| unavailable(&e))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(500)
                .messages()
                .await
                .map_err(|e| unavailable(&e))?;
            let stream = messages
                .map_err(|e| Status::unavailable(format!("JetStream: {e}")))
                .and_then(|message| async move {
                    let sequence = message
                        .info()
                        .map_err(|e| Status::internal(format!("JetStream message info: {e}")))?
                        .stream_sequence;
                    let (message, acker) = message.split();
                    let mut event = Event::decode(message.payload.as_ref()).map_err(|e| {
                        Status::data_loss(format!("undecodable event at sequence {sequence}: {e}"))
                    })?;
                    event.cursor = sequence.to_string();
                    Ok(Received {
                        event,
                        receipt: Some(Receipt { acker, sequence }),
                    })
                })
                .boxed();
            Ok(stream)
        })
    }

    fn first_sequence(&self, source: EventSource) -> BoxFuture<'_, Result<u64, Status>> {
        Box::pin(async move {
            self.jetstream
                .first_sequence(source)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))
        })
    }
}
