//! The outbox workers: claim due messages (a lease, so a crashed worker's messages are
//! taken over when it runs out), hand each to its carrier, and record what happened. A
//! message is marked sent only after the provider accepted it.
//!
//! Sending and recording are separate: each claimed message is its own task (the
//! provider's limits decide how many run at once), and what the tasks settle goes to one
//! recorder that commits whatever has piled up in one transaction (group commit). A crash
//! can lose only the few milliseconds of outcomes not yet committed; those messages are
//! taken over after their lease and sent again — the one window where a provider without
//! idempotency keys can see a repeat (docs/delivery.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use winback_platform::ServiceError;
use winback_platform::clock::{next_move, wall_micros};
use winback_platform::db::{multi_row_insert, value_rows};
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::MessageStatus;

use crate::channels::{Failure, Outgoing, Route};
use crate::context::{Delivery, db_error};
use crate::domain::retry;
use crate::messages::{COLUMNS, MessageRow};
use crate::sending::status_event;
use crate::store::query;

/// Carriers by (tenant, channel), rebuilt when the settings change.
#[derive(Debug, Default, Clone)]
pub(crate) struct Carriers(Arc<Mutex<CarrierMap>>);

/// A carrier with the settings it was built from and when those were last read.
#[derive(Debug)]
struct CachedRoute {
    fingerprint: Vec<u8>,
    route: Arc<Route>,
    read_at: Instant,
}

type CarrierMap = HashMap<(String, i32), CachedRoute>;

/// How long a carrier is used before its settings are read again: a settings change takes
/// effect within this, and the hot path does not read settings per message.
const SETTINGS_TTL: Duration = Duration::from_secs(1);

/// Outcomes waiting for the recorder, at most (back-pressure on the senders).
const RECORDER_QUEUE: usize = 4_096;

/// How one attempt ended.
#[derive(Debug)]
enum Ending {
    /// A final status (sent, bounced, failed, suppressed).
    Done {
        status: MessageStatus,
        detail: String,
        provider_id: String,
        suppress: bool,
    },
    /// Back to the queue, due at `at_us`; `counted` false when no attempt was made.
    Retry {
        at_us: i64,
        reason: String,
        counted: bool,
    },
}

/// A claimed message and how its attempt ended.
#[derive(Debug)]
struct Settled {
    row: MessageRow,
    ending: Ending,
}

impl Delivery {
    /// Runs a worker until `shutdown`; then waits for the messages in flight and records them.
    pub(crate) async fn run_worker(self, shutdown: CancellationToken) {
        let idle = Duration::from_millis(self.config.poll_interval_ms);
        // A clock moved by hand (tests, the demo) makes delayed sends due at once.
        let mut moves = self.clock.moves();
        let batch = self.config.claim_batch.max(1) as usize;
        // Claimed messages in flight at most: a batch sending, a batch claimed ahead.
        let in_flight = Arc::new(Semaphore::new(batch * 2));
        let (settled, inbox) = mpsc::channel(RECORDER_QUEUE);
        let recorder = tokio::spawn(self.clone().run_recorder(inbox));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let free = in_flight.available_permits().min(batch);
            if free == 0 {
                // Wait for one to finish before claiming more.
                if let Ok(permit) = in_flight.acquire().await {
                    drop(permit);
                }
                continue;
            }
            let claimed = match self.claim(free).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery worker: claiming failed");
                    Vec::new()
                }
            };
            let n = claimed.len();
            for (row, suppressed) in claimed {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let worker = self.clone();
                let settled = settled.clone();
                tokio::spawn(async move {
                    let claimed_at = Instant::now();
                    let ending = worker.attempt(&row, suppressed, claimed_at).await;
                    // The recorder outlives the senders; a closed queue means shutdown.
                    let _ = settled.send(Settled { row, ending }).await;
                    drop(permit);
                });
            }
            if n > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
                () = next_move(&mut moves) => {}
            }
        }
        // Let the messages in flight finish and be recorded.
        let _ = in_flight
            .acquire_many(u32::try_from(batch * 2).unwrap_or(u32::MAX))
            .await;
        drop(settled);
        let _ = recorder.await;
    }

    /// Due queued messages and messages whose lease ran out (their worker died), each with
    /// the reason its contact must not get it, if it must not (read right before sending,
    /// so an unsubscribe since the message was queued wins).
    async fn claim(&self, limit: usize) -> Result<Vec<(MessageRow, Option<String>)>, ServiceError> {
        let now = self.now_us();
        // The lease is wall-clock time (the service clock may jump ahead of work in flight).
        let wall = wall_micros();
        let lease_until = wall + self.config.lease_ms as i64 * 1_000;
        let skip_locked = if self.db.get_database_backend() == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let _writer = self.writer_lock().await;
        let rows = query(
            &self.db,
            // Two index range scans on (status, next_attempt_us), not one OR that sorts every
            // due message on each claim (which made a claim O(queue length)); joined with
            // UPDATE … FROM, not a row-value IN, which SQLite answered with a table scan.
            &format!(
                "WITH due AS (
                   SELECT tenant_id AS p_tenant, message_id AS p_id FROM messages
                   WHERE status = 1 AND next_attempt_us <= $2
                   ORDER BY next_attempt_us LIMIT $3{skip_locked}),
                 expired AS (
                   SELECT tenant_id AS p_tenant, message_id AS p_id FROM messages
                   WHERE status = 2 AND lease_until_us < $4
                   LIMIT $3{skip_locked}),
                 picked AS (SELECT * FROM due UNION ALL SELECT * FROM expired)
                 UPDATE messages SET status = 2, lease_until_us = $1, attempts = attempts + 1
                 FROM picked WHERE messages.tenant_id = picked.p_tenant AND messages.message_id = picked.p_id
                 RETURNING tenant_id, {COLUMNS}"
            ),
            vec![
                lease_until.into(),
                now.into(),
                (limit as i64).into(),
                wall.into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let rows = rows
            .iter()
            .map(|r| {
                let tenant: String = r.try_get("", "tenant_id").map_err(db_error)?;
                MessageRow::from_row(&tenant, r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with_suppressions(rows).await
    }

    /// Pairs each message with its contact's suppression, read for the whole batch at once.
    async fn with_suppressions(
        &self,
        rows: Vec<MessageRow>,
    ) -> Result<Vec<(MessageRow, Option<String>)>, ServiceError> {
        let purpose_of = |r: &MessageRow| {
            MessagePurpose::try_from(r.purpose).unwrap_or(MessagePurpose::Advertising)
        };
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(String, i64, String)> = rows
            .iter()
            .map(|r| (r.tenant_id.clone(), i64::from(r.channel), r.contact.clone()))
            .collect();
        let suppressed = self.suppressions_of(&keys).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let key = (
                    row.tenant_id.clone(),
                    i64::from(row.channel),
                    row.contact.clone(),
                );
                let reason = suppressed.get(&key).and_then(|(reason, marketing_only)| {
                    crate::suppressions::applies(*marketing_only, purpose_of(&row))
                        .then(|| reason.clone())
                });
                (row, reason)
            })
            .collect())
    }

    /// One attempt at one message.
    async fn attempt(
        &self,
        row: &MessageRow,
        suppressed: Option<String>,
        claimed_at: Instant,
    ) -> Ending {
        if let Some(reason) = suppressed {
            return done(MessageStatus::Suppressed, format!("suppressed: {reason}"));
        }
        self.try_send(row, claimed_at).await
    }

    async fn try_send(&self, row: &MessageRow, claimed_at: Instant) -> Ending {
        let tenant = &row.tenant_id;
        let channel = Channel::try_from(row.channel).unwrap_or(Channel::Unspecified);
        let route = match self.carrier(tenant, channel).await {
            Ok(c) => c,
            Err(reason) => return done(MessageStatus::Failed, reason),
        };
        let Some(_permit) = route.limits.admit().await else {
            return done(MessageStatus::Failed, "the carrier is closed".into());
        };
        // Waiting for the provider's limits must not outlast the lease: past half of it,
        // the message goes back unsent rather than risk another worker taking it too.
        if claimed_at.elapsed() > Duration::from_millis(self.config.lease_ms / 2) {
            return Ending::Retry {
                at_us: self.now_us(),
                reason: "waited too long for the provider's rate limit".into(),
                counted: false,
            };
        }
        let outgoing = Outgoing {
            message: row,
            unsubscribe_url: self.link(tenant, &row.message_id, "u", ""),
            status_callback_url: self.public_url(&format!("/callbacks/twilio/{tenant}")),
            now_unix: self.clock.now().timestamp(),
        };
        match route.send(&outgoing).await {
            Ok(provider_id) => {
                winback_platform::metrics::message_sent(
                    tenant,
                    &channel
                        .as_str_name()
                        .trim_start_matches("CHANNEL_")
                        .to_lowercase(),
                );
                Ending::Done {
                    status: MessageStatus::Sent,
                    detail: String::new(),
                    provider_id,
                    suppress: false,
                }
            }
            Err(Failure::Permanent { reason, suppress }) => Ending::Done {
                status: if suppress {
                    MessageStatus::Bounced
                } else {
                    MessageStatus::Failed
                },
                detail: reason,
                provider_id: String::new(),
                suppress,
            },
            Err(Failure::Transient {
                reason,
                retry_after_ms,
            }) => {
                if row.attempts >= i64::from(self.config.max_attempts) {
                    done(
                        MessageStatus::Failed,
                        format!("gave up after {} attempts: {reason}", row.attempts),
                    )
                } else {
                    let jitter =
                        f64::from(uuid::Uuid::new_v4().as_u128() as u32) / f64::from(u32::MAX);
                    let delay = retry::delay_ms(
                        row.attempts as u32,
                        self.config.retry_base_ms,
                        self.config.retry_max_ms,
                        retry_after_ms,
                        jitter,
                    );
                    Ending::Retry {
                        at_us: self.now_us() + delay as i64 * 1_000,
                        reason,
                        counted: true,
                    }
                }
            }
        }
    }

    /// Records settled messages, committing whatever piled up while the last commit ran.
    async fn run_recorder(self, mut inbox: mpsc::Receiver<Settled>) {
        let mut batch = Vec::with_capacity(512);
        while inbox.recv_many(&mut batch, 512).await > 0 {
            let mut tries = 0;
            loop {
                match self.record(&batch).await {
                    Ok(()) => break,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::warn!(error = %e, tries, "delivery: recording outcomes failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                    }
                    Err(e) => {
                        // The messages stay leased and are retried when the lease runs out.
                        tracing::error!(error = %e, messages = batch.len(), "delivery: outcomes not recorded");
                        break;
                    }
                }
            }
            batch.clear();
        }
    }

    /// The status, the timeline step and the event of each settled message, at once.
    async fn record(&self, batch: &[Settled]) -> Result<(), DbErr> {
        let now = self.now_us();
        let at = self.clock.now();
        let (guard, txn) = self.begin_write().await?;
        let changed = self.update_settled(&txn, batch, now).await?;
        let mut steps = Vec::new();
        let mut events = Vec::new();
        for s in batch {
            let Ending::Done {
                status,
                detail,
                suppress,
                ..
            } = &s.ending
            else {
                continue;
            };
            if !changed.contains(&(s.row.tenant_id.as_str(), s.row.message_id.as_str())) {
                continue;
            }
            steps.push(vec![
                s.row.tenant_id.clone().into(),
                s.row.message_id.clone().into(),
                (*status as i32 as i64).into(),
                now.into(),
                detail.clone().into(),
            ]);
            events.push((
                s.row.tenant_id.clone(),
                at,
                status_event(&s.row, *status, detail),
            ));
            if *suppress {
                let channel = Channel::try_from(s.row.channel).unwrap_or(Channel::Unspecified);
                self.suppress(
                    &txn,
                    &s.row.tenant_id,
                    channel,
                    &s.row.contact,
                    detail,
                    &s.row.customer_id,
                    false,
                )
                .await
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            }
        }
        let backend = txn.get_database_backend();
        for chunk in steps.chunks(400) {
            txn.execute_raw(multi_row_insert(
                backend,
                "INSERT INTO message_timeline (tenant_id, message_id, status, at_us, detail)",
                chunk.iter().cloned(),
            ))
            .await?;
        }
        self.outbox.append_many(&txn, events).await?;
        txn.commit().await?;
        drop(guard);
        self.outbox.notify_committed();
        Ok(())
    }

    /// Writes each outcome to its message if the message is still leased (status 2);
    /// returns the (tenant, message) pairs that changed.
    async fn update_settled<'a>(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        batch: &'a [Settled],
        now: i64,
    ) -> Result<std::collections::HashSet<(&'a str, &'a str)>, DbErr> {
        // One row of new values per message: status, detail, provider id, next attempt,
        // and whether the attempt counts.
        let rows: Vec<NewValues<'_>> = batch
            .iter()
            .map(|s| match &s.ending {
                Ending::Done {
                    status,
                    detail,
                    provider_id,
                    ..
                } => (
                    s.row.tenant_id.as_str(),
                    s.row.message_id.as_str(),
                    *status as i32 as i64,
                    detail.as_str(),
                    provider_id.as_str(),
                    0,
                    0,
                ),
                Ending::Retry {
                    at_us,
                    reason,
                    counted,
                } => (
                    s.row.tenant_id.as_str(),
                    s.row.message_id.as_str(),
                    MessageStatus::Queued as i32 as i64,
                    reason.as_str(),
                    "",
                    *at_us,
                    i64::from(!counted),
                ),
            })
            .collect();
        const SET: &str = "status = u.status, lease_until_us = 0, last_error = u.detail,
               provider_message_id = CASE WHEN u.pid = '' THEN m.provider_message_id ELSE u.pid END,
               sent_at_us = CASE WHEN u.status = 3 THEN u.now ELSE m.sent_at_us END,
               next_attempt_us = CASE WHEN u.status = 1 THEN u.next ELSE m.next_attempt_us END,
               attempts = m.attempts - u.uncount";
        if txn.get_database_backend() == DbBackend::Postgres {
            // Column arrays and UNNEST: one statement for the whole batch.
            let col = |f: fn(&NewValues<'_>) -> String| rows.iter().map(f).collect::<Vec<String>>();
            let int = |f: fn(&NewValues<'_>) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
            let done = query(
                txn,
                &format!(
                    "UPDATE messages AS m SET {SET}
                     FROM (SELECT *, $8::bigint AS now FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
                           AS x(tenant_id, message_id, status, detail, pid, next, uncount)) AS u
                     WHERE m.tenant_id = u.tenant_id AND m.message_id = u.message_id AND m.status = 2
                     RETURNING m.tenant_id, m.message_id"
                ),
                vec![
                    col(|r| r.0.to_owned()).into(),
                    col(|r| r.1.to_owned()).into(),
                    int(|r| r.2).into(),
                    col(|r| r.3.to_owned()).into(),
                    col(|r| r.4.to_owned()).into(),
                    int(|r| r.5).into(),
                    int(|r| r.6).into(),
                    now.into(),
                ],
            )
            .await?;
            return Ok(changed_of(&rows, &done));
        }
        // SQLite: the same join against a VALUES list, 500 messages per statement.
        let mut returned = Vec::new();
        for chunk in rows.chunks(500) {
            let values: Vec<sea_orm::Value> = chunk
                .iter()
                .flat_map(|r| {
                    [
                        r.0.into(),
                        r.1.into(),
                        r.2.into(),
                        r.3.into(),
                        r.4.into(),
                        r.5.into(),
                        r.6.into(),
                        now.into(),
                    ]
                })
                .collect();
            let done = query(
                txn,
                &format!(
                    "UPDATE messages AS m SET {SET}
                     FROM (SELECT column1 AS tenant_id, column2 AS message_id, column3 AS status,
                             column4 AS detail, column5 AS pid, column6 AS next, column7 AS uncount,
                             column8 AS now
                           FROM (VALUES {})) AS u
                     WHERE m.tenant_id = u.tenant_id AND m.message_id = u.message_id AND m.status = 2
                     RETURNING tenant_id, message_id",
                    value_rows(1, 8, chunk.len())
                ),
                values,
            )
            .await?;
            returned.extend(done);
        }
        Ok(changed_of(&rows, &returned))
    }

    /// The tenant's carrier for a channel, built once per settings version and re-read at
    /// most once a second.
    async fn carrier(&self, tenant: &str, channel: Channel) -> Result<Arc<Route>, String> {
        let key = (tenant.to_owned(), channel as i32);
        {
            let carriers = self.carriers.0.lock().await;
            if let Some(cached) = carriers.get(&key)
                && cached.read_at.elapsed() < SETTINGS_TTL
            {
                return Ok(cached.route.clone());
            }
        }
        let settings = self
            .settings_for(tenant, channel)
            .await
            .map_err(|e| e.to_string())?;
        let fingerprint = prost::Message::encode_to_vec(&settings);
        let mut carriers = self.carriers.0.lock().await;
        if let Some(cached) = carriers.get_mut(&key)
            && cached.fingerprint == fingerprint
        {
            cached.read_at = Instant::now();
            return Ok(cached.route.clone());
        }
        let route = Arc::new(Route::build(
            &settings,
            tenant,
            &self.default_sink_dir,
            Duration::from_millis(self.config.provider_timeout_ms),
        )?);
        carriers.insert(
            key,
            CachedRoute {
                fingerprint,
                route: route.clone(),
                read_at: Instant::now(),
            },
        );
        Ok(route)
    }
}

/// A message's new values: tenant, message, status, detail, provider id, next attempt,
/// and 1 when the attempt does not count.
type NewValues<'a> = (&'a str, &'a str, i64, &'a str, &'a str, i64, i64);

/// The messages of `rows` whose update `returned` (tenant, message id) rows say was made.
fn changed_of<'a>(
    rows: &[NewValues<'a>],
    returned: &[sea_orm::QueryResult],
) -> std::collections::HashSet<(&'a str, &'a str)> {
    let done: std::collections::HashSet<(String, String)> = returned
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get::<String>("", "tenant_id").ok()?,
                r.try_get::<String>("", "message_id").ok()?,
            ))
        })
        .collect();
    rows.iter()
        .filter(|r| done.contains(&(r.0.to_owned(), r.1.to_owned())))
        .map(|r| (r.0, r.1))
        .collect()
}

fn done(status: MessageStatus, detail: String) -> Ending {
    Ending::Done {
        status,
        detail,
        provider_id: String::new(),
        suppress: false,
    }
}
