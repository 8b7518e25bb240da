//! Contacts that must not be sent to: unsubscribes, bounces, complaints, manual entries.

use winback_platform::ServiceError;
use winback_proto::common::{Channel, MessagePurpose, PageResponse};
use winback_proto::delivery::{ListSuppressionsResponse, Suppression};
use winback_proto::events::ComplaintReceived;
use winback_proto::events::event::Payload;

use crate::context::{Delivery, channel, db_error, page_size, timestamp};
use crate::domain::contact;
use crate::store::{execute, query};

/// Most suppressions one `AddSuppressions` call takes.
pub(crate) const MAX_SUPPRESSION_BATCH: usize = 1000;

impl Delivery {
    pub(crate) async fn add_suppression(
        &self,
        tenant: &str,
        s: Suppression,
    ) -> Result<Suppression, ServiceError> {
        self.store_suppressions(tenant, vec![s], false)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("no suppression"))
    }

    /// Suppresses many contacts in one transaction, all or none.
    pub(crate) async fn add_suppressions(
        &self,
        tenant: &str,
        list: Vec<Suppression>,
    ) -> Result<Vec<Suppression>, ServiceError> {
        if list.is_empty() || list.len() > MAX_SUPPRESSION_BATCH {
            return Err(ServiceError::invalid(
                "suppressions",
                format!("must hold 1 to {MAX_SUPPRESSION_BATCH} suppressions"),
            ));
        }
        self.store_suppressions(tenant, list, true).await
    }

    async fn store_suppressions(
        &self,
        tenant: &str,
        list: Vec<Suppression>,
        batch: bool,
    ) -> Result<Vec<Suppression>, ServiceError> {
        let field = |i: usize, name: &str| {
            if batch {
                format!("suppressions[{i}].{name}")
            } else {
                format!("suppression.{name}")
            }
        };
        let mut checked = Vec::with_capacity(list.len());
        for (i, s) in list.into_iter().enumerate() {
            let ch = channel(s.channel, &field(i, "channel"))?;
            let normalized = contact::check(ch, &s.contact)
                .map_err(|why| ServiceError::invalid(field(i, "contact"), why))?;
            let reason = if s.reason.trim().is_empty() {
                "manual".to_owned()
            } else {
                s.reason.clone()
            };
            checked.push((ch, normalized, reason, s));
        }
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        for (ch, normalized, reason, s) in &checked {
            let added = self
                .suppress(
                    &txn,
                    tenant,
                    *ch,
                    normalized,
                    reason,
                    &s.customer_id,
                    s.marketing_only,
                )
                .await?;
            // A spam complaint (from a feedback loop or support) is news for campaigns and
            // profiles, not just a row here.
            if added && reason == "complaint" {
                self.outbox
                    .append(
                        &txn,
                        tenant,
                        self.clock.now(),
                        Payload::ComplaintReceived(ComplaintReceived {
                            customer_id: s.customer_id.clone(),
                            channel: *ch as i32,
                            message_id: String::new(),
                        }),
                    )
                    .await
                    .map_err(db_error)?;
            }
        }
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        self.outbox.notify_committed();
        let created_at = timestamp(self.now_us());
        Ok(checked
            .into_iter()
            .map(|(_, contact, reason, s)| Suppression {
                contact,
                reason,
                created_at,
                ..s
            })
            .collect())
    }

    /// Records a suppression (keeps the first reason if the contact is already suppressed);
    /// true when it is new.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn suppress<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        ch: Channel,
        contact: &str,
        reason: &str,
        customer_id: &str,
        marketing_only: bool,
    ) -> Result<bool, ServiceError> {
        let added = execute(
            db,
            "INSERT INTO suppressions (tenant_id, channel, contact, reason, customer_id, marketing_only, created_at_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, channel, contact) DO NOTHING",
            vec![
                tenant.into(),
                (ch as i32 as i64).into(),
                contact.into(),
                reason.into(),
                customer_id.into(),
                i64::from(marketing_only).into(),
                self.now_us().into(),
            ],
        )
        .await
        .map_err(db_error)?;
        Ok(added == 1)
    }

    pub(crate) async fn remove_suppression(
        &self,
        tenant: &str,
        channel_value: i32,
        contact_value: &str,
    ) -> Result<bool, ServiceError> {
        let ch = channel(channel_value, "channel")?;
        let normalized = contact::check(ch, contact_value)
            .map_err(|why| ServiceError::invalid("contact", why))?;
        let _writer = self.writer_lock().await;
        let n = execute(
            &self.db,
            "DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND contact = $3",
            vec![tenant.into(), (ch as i32 as i64).into(), normalized.into()],
        )
        .await
        .map_err(db_error)?;
        Ok(n > 0)
    }

    /// Why `contact` must not get a message of `purpose`, if it must not.
    pub(crate) async fn suppressed<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        ch: Channel,
        contact: &str,
        purpose: MessagePurpose,
    ) -> Result<Option<String>, ServiceError> {
        let rows = query(
            db,
            "SELECT reason, marketing_only FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND contact = $3",
            vec![tenant.into(), (ch as i32 as i64).into(), contact.into()],
        )
        .await
        .map_err(db_error)?;
        Ok(rows.first().and_then(|r| {
            let marketing_only = r.try_get::<i64>("", "marketing_only").unwrap_or(0) == 1;
            applies(marketing_only, purpose)
                .then(|| r.try_get::<String>("", "reason").unwrap_or_default())
        }))
    }

    pub(crate) async fn list_suppressions(
        &self,
        tenant: &str,
        channel_value: i32,
        page: winback_proto::common::PageRequest,
    ) -> Result<ListSuppressionsResponse, ServiceError> {
        let size = page_size(&page)?;
        let rows = query(
            &self.db,
            "SELECT channel, contact, reason, customer_id, marketing_only, created_at_us FROM suppressions
             WHERE tenant_id = $1 AND ($2 = 0 OR channel = $2) AND (CAST(channel AS TEXT) || '/' || contact) > $3
             ORDER BY channel, contact LIMIT $4",
            vec![
                tenant.into(),
                i64::from(channel_value).into(),
                page.page_token.clone().into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut out: Vec<Suppression> = rows
            .iter()
            .map(|r| Suppression {
                channel: r.try_get::<i64>("", "channel").unwrap_or(0) as i32,
                contact: r.try_get("", "contact").unwrap_or_default(),
                reason: r.try_get("", "reason").unwrap_or_default(),
                customer_id: r.try_get("", "customer_id").unwrap_or_default(),
                created_at: timestamp(r.try_get("", "created_at_us").unwrap_or(0)),
                marketing_only: r.try_get::<i64>("", "marketing_only").unwrap_or(0) == 1,
            })
            .collect();
        let next_page_token = if out.len() as i64 > size {
            out.truncate(size as usize);
            out.last()
                .map(|s| format!("{}/{}", s.channel, s.contact))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListSuppressionsResponse {
            suppressions: out,
            page: Some(PageResponse { next_page_token }),
        })
    }
}

/// Whether a suppression stops a message of `purpose`: a marketing-only one (an
/// unsubscribe) still lets service messages through.
pub(crate) fn applies(marketing_only: bool, purpose: MessagePurpose) -> bool {
    !(marketing_only && purpose == MessagePurpose::Service)
}
