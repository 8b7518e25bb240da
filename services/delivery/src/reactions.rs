//! What comes back after a message went out: delivery reports, bounces, opens, clicks and
//! unsubscribes. Each changes the message once (a second open is not news), lands on its
//! timeline and becomes an event, in one transaction.

use sea_orm::DatabaseTransaction;
use tokio::sync::oneshot;
use winback_platform::ServiceError;
use winback_proto::common::Channel;
use winback_proto::delivery::MessageStatus;
use winback_proto::events::ContactUnsubscribed;
use winback_proto::events::event::Payload;

use crate::context::{Delivery, db_error};
use crate::messages::{COLUMNS, MessageRow, record_step};
use crate::sending::status_event;
use crate::store::{execute, query};

/// A reaction to a message that went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    Delivered,
    Opened,
    Clicked,
    /// Not delivered after all; `suppress` when the contact itself is bad.
    Bounced {
        suppress: bool,
    },
}

impl Reaction {
    fn status(self) -> MessageStatus {
        match self {
            Self::Delivered => MessageStatus::Delivered,
            Self::Opened => MessageStatus::Opened,
            Self::Clicked => MessageStatus::Clicked,
            Self::Bounced { .. } => MessageStatus::Bounced,
        }
    }
}

/// The steps a reaction moves a message through from `current`, in order; empty when it
/// is no news (a second open, a delivery report after the click, anything after a bounce).
/// A click implies an open (images are often blocked, so the pixel never loaded).
fn steps(current: MessageStatus, reaction: Reaction) -> Vec<MessageStatus> {
    use MessageStatus as S;
    let went_out = matches!(current, S::Sent | S::Delivered | S::Opened | S::Clicked);
    if !went_out {
        return Vec::new();
    }
    match reaction {
        Reaction::Bounced { .. } if matches!(current, S::Sent | S::Delivered) => vec![S::Bounced],
        Reaction::Bounced { .. } => Vec::new(),
        Reaction::Clicked if (current as i32) < S::Opened as i32 => vec![S::Opened, S::Clicked],
        r if (current as i32) < r.status() as i32 => vec![r.status()],
        _ => Vec::new(),
    }
}

/// A reaction waiting for its group's commit, and where its outcome goes.
#[derive(Debug)]
struct Pending {
    tenant: String,
    message_id: String,
    reaction: Reaction,
    detail: String,
    outcome: oneshot::Sender<Result<bool, ServiceError>>,
}

/// Reactions arriving together commit together (group commit): opens and clicks come in
/// bursts after a send, and one transaction per pixel kept the single SQLite writer busy
/// with commits. Whoever finds no commit running leads: it takes every reaction queued so
/// far, applies them in arrival order in one transaction and hands each its outcome; the
/// ones arriving meanwhile wait for the next leader.
#[derive(Debug, Default)]
pub(crate) struct ReactionGroups {
    queue: std::sync::Mutex<Vec<Pending>>,
    leader: tokio::sync::Mutex<()>,
}

impl Delivery {
    /// Applies a reaction to a message; returns whether anything changed.
    pub(crate) async fn react(
        &self,
        tenant: &str,
        message_id: &str,
        reaction: Reaction,
        detail: &str,
    ) -> Result<bool, ServiceError> {
        let (outcome, mut answer) = oneshot::channel();
        self.reaction_groups
            .queue
            .lock()
            .map_err(|_| ServiceError::internal("reaction queue poisoned"))?
            .push(Pending {
                tenant: tenant.to_owned(),
                message_id: message_id.to_owned(),
                reaction,
                detail: detail.to_owned(),
                outcome,
            });
        let lead = self.reaction_groups.leader.lock().await;
        // The previous leader may have committed this one already.
        if let Ok(result) = answer.try_recv() {
            return result;
        }
        let group = std::mem::take(
            &mut *self
                .reaction_groups
                .queue
                .lock()
                .map_err(|_| ServiceError::internal("reaction queue poisoned"))?,
        );
        // On a task of its own: a leader whose caller goes away (a closed connection drops
        // the handler) must not take the others' reactions with it.
        let delivery = self.clone();
        let committing = tokio::spawn(async move {
            match delivery.apply_group(&group).await {
                Ok(changed) => {
                    for (p, changed) in group.into_iter().zip(changed) {
                        let _ = p.outcome.send(Ok(changed));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for p in group {
                        let _ = p.outcome.send(Err(ServiceError::internal(why.clone())));
                    }
                }
            }
        });
        let _ = committing.await;
        drop(lead);
        answer
            .await
            .unwrap_or_else(|_| Err(ServiceError::internal("the reaction was not recorded")))
    }

    /// Applies `group` in order in one transaction; whether each changed its message.
    async fn apply_group(&self, group: &[Pending]) -> Result<Vec<bool>, ServiceError> {
        let now = self.now_us();
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        let mut changed = Vec::with_capacity(group.len());
        for p in group {
            changed.push(
                self.apply_reaction(&txn, now, &p.tenant, &p.message_id, p.reaction, &p.detail)
                    .await?,
            );
        }
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        if changed.iter().any(|c| *c) {
            self.outbox.notify_committed();
        }
        Ok(changed)
    }

    /// One reaction inside the group's transaction: the message's status, its timeline
    /// steps and their events.
    async fn apply_reaction(
        &self,
        txn: &DatabaseTransaction,
        now: i64,
        tenant: &str,
        message_id: &str,
        reaction: Reaction,
        detail: &str,
    ) -> Result<bool, ServiceError> {
        let Some(row) = self.message_row(txn, tenant, message_id).await? else {
            return Ok(false);
        };
        let current = MessageStatus::try_from(row.status).unwrap_or(MessageStatus::Unspecified);
        let steps = steps(current, reaction);
        let Some(last) = steps.last() else {
            return Ok(false);
        };
        let changed = execute(
            txn,
            "UPDATE messages SET status = $3 WHERE tenant_id = $1 AND message_id = $2 AND status = $4",
            vec![
                tenant.into(),
                message_id.into(),
                (*last as i32 as i64).into(),
                i64::from(row.status).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        if changed == 0 {
            return Ok(false);
        }
        for step in &steps {
            record_step(txn, tenant, message_id, *step, now, detail).await?;
            self.outbox
                .append(
                    txn,
                    tenant,
                    self.clock.now(),
                    status_event(&row, *step, detail),
                )
                .await
                .map_err(db_error)?;
        }
        if let Reaction::Bounced { suppress: true } = reaction {
            let channel = Channel::try_from(row.channel).unwrap_or(Channel::Unspecified);
            self.suppress(
                txn,
                tenant,
                channel,
                &row.contact,
                detail,
                &row.customer_id,
                false,
            )
            .await?;
        }
        Ok(true)
    }

    /// The message a provider's id stands for.
    pub(crate) async fn message_by_provider_id(
        &self,
        tenant: &str,
        provider_message_id: &str,
    ) -> Result<Option<MessageRow>, ServiceError> {
        let rows = query(
            &self.db,
            &format!(
                "SELECT {COLUMNS} FROM messages WHERE provider_message_id = $2 AND tenant_id = $1"
            ),
            vec![tenant.into(), provider_message_id.into()],
        )
        .await
        .map_err(db_error)?;
        rows.first()
            .map(|r| MessageRow::from_row(tenant, r))
            .transpose()
    }

    /// The contact of a message stops getting marketing on its channel, at once (the
    /// workers check suppressions right before each send). Returns false when it was
    /// already unsubscribed; the event is emitted once.
    pub(crate) async fn unsubscribe(
        &self,
        tenant: &str,
        message_id: &str,
        method: &str,
    ) -> Result<Option<bool>, ServiceError> {
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        let Some(row) = self.message_row(&txn, tenant, message_id).await? else {
            return Ok(None);
        };
        let channel = Channel::try_from(row.channel).unwrap_or(Channel::Unspecified);
        let added = execute(
            &txn,
            "INSERT INTO suppressions (tenant_id, channel, contact, reason, customer_id, marketing_only, created_at_us)
             VALUES ($1, $2, $3, 'unsubscribed', $4, 1, $5) ON CONFLICT (tenant_id, channel, contact) DO NOTHING",
            vec![
                tenant.into(),
                i64::from(row.channel).into(),
                row.contact.clone().into(),
                row.customer_id.clone().into(),
                self.now_us().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        if added == 1 {
            self.outbox
                .append(
                    &txn,
                    tenant,
                    self.clock.now(),
                    Payload::ContactUnsubscribed(ContactUnsubscribed {
                        customer_id: row.customer_id.clone(),
                        channel: channel as i32,
                        contact: row.contact.clone(),
                        method: method.into(),
                        message_id: message_id.into(),
                    }),
                )
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        self.outbox.notify_committed();
        Ok(Some(added == 1))
    }

    /// Records a provider callback as applied; false when it was seen before (a replay).
    pub(crate) async fn first_sighting(
        &self,
        provider: &str,
        callback_id: &str,
    ) -> Result<bool, ServiceError> {
        let _writer = self.writer_lock().await;
        let n = execute(
            &self.db,
            "INSERT INTO seen_callbacks (provider, callback_id, at_us) VALUES ($1, $2, $3)
             ON CONFLICT (provider, callback_id) DO NOTHING",
            vec![provider.into(), callback_id.into(), self.now_us().into()],
        )
        .await
        .map_err(db_error)?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageStatus as S;

    #[test]
    fn reactions_move_a_message_forward_once() {
        assert_eq!(steps(S::Sent, Reaction::Opened), vec![S::Opened]);
        assert_eq!(steps(S::Opened, Reaction::Opened), vec![]);
        assert_eq!(
            steps(S::Sent, Reaction::Clicked),
            vec![S::Opened, S::Clicked]
        );
        assert_eq!(steps(S::Opened, Reaction::Clicked), vec![S::Clicked]);
        assert_eq!(steps(S::Clicked, Reaction::Delivered), vec![]);
        assert_eq!(steps(S::Sent, Reaction::Delivered), vec![S::Delivered]);
        let bounce = Reaction::Bounced { suppress: true };
        assert_eq!(steps(S::Delivered, bounce), vec![S::Bounced]);
        assert_eq!(steps(S::Opened, bounce), vec![]);
        assert_eq!(steps(S::Bounced, Reaction::Opened), vec![]);
        assert_eq!(steps(S::Queued, Reaction::Opened), vec![], "not out yet");
    }
}
