//! The outbox workers: claim due messages (a lease, so a crashed worker's messages are
//! taken over when it runs out), hand each to its carrier, and record what happened. A
//! message is marked sent only after the provider accepted it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sea_orm::DbBackend;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use winback_platform::ServiceError;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::MessageStatus;

use crate::channels::{Failure, Outgoing, Route};
use crate::context::{Delivery, db_error};
use crate::domain::retry;
use crate::messages::{COLUMNS, MessageRow, record_step};
use crate::sending::status_event;
use crate::store::{execute, query};

/// Carriers by (tenant, channel), rebuilt when the settings change.
#[derive(Debug, Default, Clone)]
pub(crate) struct Carriers(Arc<Mutex<CarrierMap>>);

/// (tenant, channel) → (the settings it was built from, the carrier).
type CarrierMap = HashMap<(String, i32), (Vec<u8>, Arc<Route>)>;

impl Delivery {
    /// Runs a worker until `shutdown`.
    pub(crate) async fn run_worker(self, shutdown: CancellationToken) {
        let idle = Duration::from_millis(self.config.poll_interval_ms);
        loop {
            let worked = match self.work_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery worker: a round failed");
                    0
                }
            };
            if worked > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Claims and delivers one batch of due messages; returns how many it handled.
    pub(crate) async fn work_once(&self) -> Result<usize, ServiceError> {
        let claimed = self.claim().await?;
        let n = claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(64, |row| async move {
                if let Err(e) = self.deliver(row).await {
                    tracing::warn!(error = %e, "delivery worker: a message could not be recorded");
                }
            })
            .await;
        Ok(n)
    }

    /// Due queued messages and messages whose lease ran out (their worker died).
    async fn claim(&self) -> Result<Vec<MessageRow>, ServiceError> {
        let now = self.now_us();
        let lease_until = now + self.config.lease_ms as i64 * 1_000;
        let skip_locked = if self.db.get_database_backend() == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let _writer = self.writer_lock().await;
        let rows = query(
            &self.db,
            &format!(
                "UPDATE messages SET status = 2, lease_until_us = $1, attempts = attempts + 1
                 WHERE (tenant_id, message_id) IN (
                   SELECT tenant_id, message_id FROM messages
                   WHERE (status = 1 AND next_attempt_us <= $2) OR (status = 2 AND lease_until_us < $2)
                   ORDER BY next_attempt_us LIMIT $3{skip_locked})
                 RETURNING tenant_id, {COLUMNS}"
            ),
            vec![
                lease_until.into(),
                now.into(),
                i64::from(self.config.claim_batch).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let tenant: String = r.try_get("", "tenant_id").map_err(db_error)?;
                MessageRow::from_row(&tenant, r)
            })
            .collect()
    }

    async fn deliver(&self, row: MessageRow) -> Result<(), ServiceError> {
        let tenant = row.tenant_id.clone();
        let channel = Channel::try_from(row.channel).unwrap_or(Channel::Unspecified);
        let purpose = MessagePurpose::try_from(row.purpose).unwrap_or(MessagePurpose::Advertising);
        // An unsubscribe since the message was queued wins over the send.
        if let Some(reason) = self
            .suppressed(&self.db, &tenant, channel, &row.contact, purpose)
            .await?
        {
            return self
                .finish(
                    &row,
                    MessageStatus::Suppressed,
                    &format!("suppressed: {reason}"),
                    None,
                )
                .await;
        }
        let carrier = match self.carrier(&tenant, channel).await {
            Ok(c) => c,
            Err(reason) => {
                return self
                    .finish(&row, MessageStatus::Failed, &reason, None)
                    .await;
            }
        };
        let outgoing = Outgoing {
            message: &row,
            unsubscribe_url: self.link(&tenant, &row.message_id, "u", ""),
            status_callback_url: self.public_url(&format!("/callbacks/twilio/{tenant}")),
            now_unix: self.clock.now().timestamp(),
        };
        match carrier.send(&outgoing).await {
            Ok(provider_id) => {
                self.finish(&row, MessageStatus::Sent, "", Some(provider_id))
                    .await
            }
            Err(Failure::Permanent { reason, suppress }) => {
                if suppress {
                    self.suppress(
                        &self.db,
                        &tenant,
                        channel,
                        &row.contact,
                        &reason,
                        &row.customer_id,
                        false,
                    )
                    .await?;
                }
                let status = if suppress {
                    MessageStatus::Bounced
                } else {
                    MessageStatus::Failed
                };
                self.finish(&row, status, &reason, None).await
            }
            Err(Failure::Transient {
                reason,
                retry_after_ms,
            }) => {
                if row.attempts >= i64::from(self.config.max_attempts) {
                    return self
                        .finish(
                            &row,
                            MessageStatus::Failed,
                            &format!("gave up after {} attempts: {reason}", row.attempts),
                            None,
                        )
                        .await;
                }
                let jitter = f64::from(uuid::Uuid::new_v4().as_u128() as u32) / f64::from(u32::MAX);
                let delay = retry::delay_ms(
                    row.attempts as u32,
                    self.config.retry_base_ms,
                    self.config.retry_max_ms,
                    retry_after_ms,
                    jitter,
                );
                let _writer = self.writer_lock().await;
                execute(
                    &self.db,
                    "UPDATE messages SET status = 1, next_attempt_us = $3, lease_until_us = 0, last_error = $4
                     WHERE tenant_id = $1 AND message_id = $2 AND status = 2",
                    vec![
                        tenant.clone().into(),
                        row.message_id.clone().into(),
                        (self.now_us() + delay as i64 * 1_000).into(),
                        reason.into(),
                    ],
                )
                .await
                .map_err(db_error)?;
                Ok(())
            }
        }
    }

    /// Records the end of an attempt: the status, the timeline step and the event, at once.
    async fn finish(
        &self,
        row: &MessageRow,
        status: MessageStatus,
        detail: &str,
        provider_id: Option<String>,
    ) -> Result<(), ServiceError> {
        let now = self.now_us();
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        let changed = execute(
            &txn,
            "UPDATE messages SET status = $3, lease_until_us = 0, last_error = $4,
               provider_message_id = CASE WHEN $5 = '' THEN provider_message_id ELSE $5 END,
               sent_at_us = CASE WHEN $3 = 3 THEN $6 ELSE sent_at_us END
             WHERE tenant_id = $1 AND message_id = $2 AND status = 2",
            vec![
                row.tenant_id.clone().into(),
                row.message_id.clone().into(),
                (status as i32 as i64).into(),
                detail.into(),
                provider_id.unwrap_or_default().into(),
                now.into(),
            ],
        )
        .await
        .map_err(db_error)?;
        if changed == 1 {
            record_step(&txn, &row.tenant_id, &row.message_id, status, now, detail).await?;
            self.outbox
                .append(
                    &txn,
                    &row.tenant_id,
                    self.clock.now(),
                    status_event(row, status, detail),
                )
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        self.outbox.notify_committed();
        Ok(())
    }

    /// The tenant's carrier for a channel, built once per settings version.
    async fn carrier(&self, tenant: &str, channel: Channel) -> Result<Arc<Route>, String> {
        let settings = self
            .settings_for(tenant, channel)
            .await
            .map_err(|e| e.to_string())?;
        let fingerprint = prost::Message::encode_to_vec(&settings);
        let mut carriers = self.carriers.0.lock().await;
        let key = (tenant.to_owned(), channel as i32);
        if let Some((seen, carrier)) = carriers.get(&key)
            && *seen == fingerprint
        {
            return Ok(carrier.clone());
        }
        let carrier = Arc::new(Route::build(
            &settings,
            tenant,
            &self.default_sink_dir,
            Duration::from_millis(self.config.provider_timeout_ms),
        )?);
        carriers.insert(key, (fingerprint, carrier.clone()));
        Ok(carrier)
    }
}
