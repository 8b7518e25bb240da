//! What comes back after a message went out: delivery reports, bounces, opens, clicks and
//! unsubscribes. Each changes the message once (a second open is not news), lands on its
//! timeline and becomes an event, in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend};
use tokio::sync::oneshot;
use winback_platform::ServiceError;
use winback_platform::db::{multi_row_insert, value_rows};
use winback_proto::common::Channel;
use winback_proto::delivery::MessageStatus;
use winback_proto::events::ContactUnsubscribed;
use winback_proto::events::event::Payload;

use crate::context::{Delivery, db_error};
use crate::messages::{COLUMNS, MessageRow, messages_where_in};
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

    /// Applies `group` in order in one transaction; whether each changed its message. The
    /// group's messages are read (locked on PostgreSQL) at once, the reactions applied to
    /// them in memory in arrival order, and the statuses, timeline steps and events written
    /// in a few multi-row statements.
    async fn apply_group(&self, group: &[Pending]) -> Result<Vec<bool>, ServiceError> {
        let now = self.now_us();
        let at = self.clock.now();
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        let mut messages = self.messages_of(&txn, group).await?;
        let read: HashMap<(String, String), i32> = messages
            .iter()
            .map(|(key, row)| (key.clone(), row.status))
            .collect();
        let mut changed = Vec::with_capacity(group.len());
        let mut timeline: Vec<Vec<sea_orm::Value>> = Vec::new();
        let mut events = Vec::new();
        let mut bounced = Vec::new();
        for p in group {
            let key = (p.tenant.clone(), p.message_id.clone());
            let Some(row) = messages.get_mut(&key) else {
                changed.push(false);
                continue;
            };
            let current = MessageStatus::try_from(row.status).unwrap_or(MessageStatus::Unspecified);
            let steps = steps(current, p.reaction);
            let Some(last) = steps.last() else {
                changed.push(false);
                continue;
            };
            for step in &steps {
                timeline.push(vec![
                    p.tenant.clone().into(),
                    p.message_id.clone().into(),
                    (*step as i32 as i64).into(),
                    now.into(),
                    p.detail.clone().into(),
                ]);
                events.push((p.tenant.clone(), at, status_event(row, *step, &p.detail)));
            }
            row.status = *last as i32;
            if let Reaction::Bounced { suppress: true } = p.reaction {
                bounced.push((row.clone(), p.detail.clone()));
            }
            changed.push(true);
        }
        let moved: Vec<(&(String, String), i32, i32)> = messages
            .iter()
            .filter_map(|(key, row)| {
                let was = *read.get(key)?;
                (was != row.status).then_some((key, was, row.status))
            })
            .collect();
        self.set_statuses(&txn, &moved).await?;
        let mut timeline = timeline.into_iter().peekable();
        while timeline.peek().is_some() {
            txn.execute_raw(multi_row_insert(
                txn.get_database_backend(),
                "INSERT INTO message_timeline (tenant_id, message_id, status, at_us, detail)",
                timeline.by_ref().take(500),
            ))
            .await
            .map_err(db_error)?;
        }
        self.outbox
            .append_many(&txn, events)
            .await
            .map_err(db_error)?;
        for (row, detail) in bounced {
            let channel = Channel::try_from(row.channel).unwrap_or(Channel::Unspecified);
            self.suppress(
                &txn,
                &row.tenant_id,
                channel,
                &row.contact,
                &detail,
                &row.customer_id,
                false,
            )
            .await?;
        }
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        if changed.iter().any(|c| *c) {
            self.outbox.notify_committed();
        }
        Ok(changed)
    }

    /// The group's messages by (tenant, message id), locked on PostgreSQL (in key order,
    /// like every writer of messages takes them).
    async fn messages_of(
        &self,
        txn: &DatabaseTransaction,
        group: &[Pending],
    ) -> Result<HashMap<(String, String), MessageRow>, ServiceError> {
        let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for p in group {
            ids.entry(p.tenant.as_str())
                .or_default()
                .insert(p.message_id.as_str());
        }
        let lock = match txn.get_database_backend() {
            DbBackend::Postgres => " ORDER BY message_id FOR UPDATE",
            _ => "",
        };
        let mut out = HashMap::new();
        for (tenant, ids) in ids {
            let ids: Vec<&str> = ids.into_iter().collect();
            for row in messages_where_in(txn, tenant, "message_id", &ids, lock).await? {
                out.insert((row.tenant_id.clone(), row.message_id.clone()), row);
            }
        }
        Ok(out)
    }

    /// Moves each message from the status it was read with to its new one. A message whose
    /// status changed underneath (nothing should: the rows are locked or the writer is
    /// single) fails the group, which its callers retry.
    async fn set_statuses(
        &self,
        txn: &DatabaseTransaction,
        moved: &[(&(String, String), i32, i32)],
    ) -> Result<(), ServiceError> {
        let mut updated = 0u64;
        for chunk in moved.chunks(300) {
            let values: Vec<sea_orm::Value> = chunk
                .iter()
                .flat_map(|((tenant, id), was, now)| {
                    [
                        tenant.clone().into(),
                        id.clone().into(),
                        i64::from(*was).into(),
                        i64::from(*now).into(),
                    ]
                })
                .collect();
            // The same join on both databases (a VALUES list's columns are column1… on both).
            updated += execute(
                txn,
                &format!(
                    "UPDATE messages SET status = u.next
                     FROM (SELECT column1 AS tenant_id, column2 AS message_id, column3 AS was,
                                  column4 AS next FROM (VALUES {}) AS v) AS u
                     WHERE messages.tenant_id = u.tenant_id AND messages.message_id = u.message_id
                       AND messages.status = u.was",
                    value_rows(1, 4, chunk.len())
                ),
                values,
            )
            .await
            .map_err(db_error)?;
        }
        if updated != moved.len() as u64 {
            return Err(ServiceError::Unavailable(
                "a message changed while its reactions were applied; retry".into(),
            ));
        }
        Ok(())
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
