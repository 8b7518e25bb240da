//! The read side of the event feed: events after a cursor, in commit-safe order, and the
//! `winback.events.v1.EventsService/Subscribe` server stream.
//!
//! On PostgreSQL a plain `seq > cursor` read would lose events: a transaction that took
//! sequence 5 may commit after one that took 6 was already served. So each row carries its
//! transaction id and the feed serves only rows of transactions older than the oldest
//! transaction still running (`pg_snapshot_xmin`), ordered by (transaction id, seq). No
//! transaction can later add a row below that horizon, so the order is final.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Value};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use winback_proto::events::events_service_server::EventsService;
use winback_proto::events::{Event, EventSource, SubscribeRequest, SubscribeResponse};

use super::cursor::Cursor;
use super::outbox::{Outbox, row_events};
use crate::auth::auth_context;
use crate::db::statement;
use crate::error::ServiceError;

/// Reads one source's outbox.
#[derive(Debug, Clone)]
pub struct FeedReader {
    db: DatabaseConnection,
    committed: Arc<Notify>,
}

/// Filters of a read.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only these event types; empty means all.
    pub types: Vec<String>,
}

impl FeedReader {
    /// A reader of the outbox in `db` written through `outbox`.
    pub fn new(db: DatabaseConnection, outbox: &Outbox) -> Self {
        Self {
            db,
            committed: outbox.committed_signal(),
        }
    }

    /// The database the outbox is in.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Notified after each commit that appended events.
    pub(crate) fn committed_signal(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Up to `limit` events after `after`, oldest first, each with its cursor set.
    ///
    /// A row may hold many events, so this reads twice: the event counts of the rows from
    /// the cursor's own row on, to find the last row the answer needs, then those rows'
    /// events. A consumer working through a backlog thus never fetches rows it will not
    /// serve.
    pub async fn read_after(
        &self,
        after: Cursor,
        filter: &FeedFilter,
        limit: u32,
    ) -> Result<Vec<Event>, DbErr> {
        let backend = self.db.get_database_backend();
        let wanted = i64::from(limit);
        // Events of the cursor's row up to the cursor's own were served already.
        let unserved = |tx_id: i64, seq: i64, event_count: i64| {
            if (tx_id, seq) == (after.tx_id, after.seq) {
                (event_count - after.index - 1).max(0)
            } else {
                event_count
            }
        };

        let (sql, mut values) = rows_from(backend, after, filter, None, "tx_id, seq, event_count");
        values.push((wanted + 1).into());
        let sql = format!("{sql} LIMIT ${}", values.len());
        let mut last = None;
        let mut counted = 0;
        for row in self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?
        {
            let (tx_id, seq): (i64, i64) = (row.try_get("", "tx_id")?, row.try_get("", "seq")?);
            counted += unserved(tx_id, seq, row.try_get("", "event_count")?);
            last = Some(Cursor::row(tx_id, seq));
            if counted >= wanted {
                break;
            }
        }
        if counted == 0 {
            return Ok(Vec::new());
        }

        let (sql, values) = rows_from(
            backend,
            after,
            filter,
            last,
            "tx_id, seq, event_count, payload",
        );
        let mut events = Vec::with_capacity(counted.min(wanted) as usize);
        for row in self
            .db
            .query_all_raw(statement(backend, &sql, values))
            .await?
        {
            let tx_id: i64 = row.try_get("", "tx_id")?;
            let seq: i64 = row.try_get("", "seq")?;
            let event_count: i64 = row.try_get("", "event_count")?;
            let payload: Vec<u8> = row.try_get("", "payload")?;
            let row_events = row_events(&payload, event_count)
                .map_err(|e| DbErr::Custom(format!("undecodable event at seq {seq}: {e}")))?;
            let skip = (event_count - unserved(tx_id, seq, event_count)) as usize;
            for (index, mut event) in row_events.into_iter().enumerate().skip(skip) {
                if events.len() as i64 == wanted {
                    return Ok(events);
                }
                event.cursor = Cursor {
                    tx_id,
                    seq,
                    index: index as i64,
                }
                .to_string();
                events.push(event);
            }
        }
        Ok(events)
    }
}

/// `SELECT columns` of the outbox rows from the row of `after` on (up to and including row
/// `until`), below the commit horizon on PostgreSQL, that pass `filter`, in feed order.
fn rows_from(
    backend: DbBackend,
    after: Cursor,
    filter: &FeedFilter,
    until: Option<Cursor>,
    columns: &str,
) -> (String, Vec<Value>) {
    let mut values: Vec<Value> = Vec::new();
    let mut sql = format!("SELECT {columns} FROM event_outbox WHERE ");
    if backend == DbBackend::Postgres {
        values.push(after.tx_id.into());
        values.push(after.seq.into());
        sql.push_str(
            "(tx_id, seq) >= ($1, $2) AND tx_id < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint)",
        );
        if let Some(until) = until {
            values.push(until.tx_id.into());
            values.push(until.seq.into());
            sql.push_str(" AND (tx_id, seq) <= ($3, $4)");
        }
    } else {
        values.push(after.seq.into());
        sql.push_str("seq >= $1");
        if let Some(until) = until {
            values.push(until.seq.into());
            sql.push_str(" AND seq <= $2");
        }
    }
    if let Some(tenant) = &filter.tenant_id {
        values.push(tenant.clone().into());
        sql.push_str(&format!(" AND tenant_id = ${}", values.len()));
    }
    if !filter.types.is_empty() {
        let mut placeholders = Vec::new();
        for t in &filter.types {
            values.push(t.clone().into());
            placeholders.push(format!("${}", values.len()));
        }
        sql.push_str(&format!(" AND event_type IN ({})", placeholders.join(", ")));
    }
    sql.push_str(if backend == DbBackend::Postgres {
        " ORDER BY tx_id, seq"
    } else {
        " ORDER BY seq"
    });
    (sql, values)
}

/// Serves `Subscribe` for the outboxes of the services in this process.
#[derive(Debug, Clone)]
pub struct EventsGrpc {
    feeds: Arc<HashMap<i32, FeedReader>>,
    poll_interval: Duration,
    batch_size: u32,
    shutdown: CancellationToken,
}

impl EventsGrpc {
    /// A server for `feeds`; streams end when `shutdown` is cancelled.
    pub fn new(
        feeds: impl IntoIterator<Item = (EventSource, FeedReader)>,
        poll_interval: Duration,
        batch_size: u32,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            feeds: Arc::new(feeds.into_iter().map(|(s, f)| (s as i32, f)).collect()),
            poll_interval,
            batch_size,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl EventsService for EventsGrpc {
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<SubscribeResponse>>, Status> {
        let ctx = auth_context(&request)?.clone();
        let req = request.into_inner();
        let tenant_id = if ctx.is_service() {
            (!req.tenant_id.is_empty()).then(|| req.tenant_id.clone())
        } else {
            Some(ctx.tenant()?.to_owned())
        };
        let Some(feed) = self.feeds.get(&req.source).cloned() else {
            return Err(
                ServiceError::invalid("source", "no such event source is served here").into(),
            );
        };
        let after: Cursor = req
            .after_cursor
            .parse()
            .map_err(|_| ServiceError::invalid("after_cursor", "malformed cursor"))?;
        let filter = FeedFilter {
            tenant_id,
            types: req.types,
        };
        let (tx, rx) = mpsc::channel(self.batch_size as usize);
        let (poll, batch, shutdown) = (self.poll_interval, self.batch_size, self.shutdown.clone());
        tokio::spawn(async move {
            let mut position = after;
            loop {
                // Register for the wake-up before reading, so a commit between the read and
                // the wait is not missed.
                let committed = feed.committed.notified();
                let events = match feed.read_after(position, &filter, batch).await {
                    Ok(events) => events,
                    Err(err) => {
                        tracing::error!(error = %err, "event feed read failed");
                        let _ = tx
                            .send(Err(Status::unavailable("event feed read failed")))
                            .await;
                        return;
                    }
                };
                let got = events.len();
                for event in events {
                    if let Ok(cursor) = event.cursor.parse() {
                        position = cursor;
                    }
                    if tx
                        .send(Ok(SubscribeResponse { event: Some(event) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if got as u32 == batch {
                    continue;
                }
                tokio::select! {
                    _ = committed => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
