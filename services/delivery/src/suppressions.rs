//! Contacts that must not be sent to: unsubscribes, bounces, complaints, manual entries.

use std::collections::HashMap;

use sea_orm::DbBackend;
use winback_platform::ServiceError;
use winback_proto::common::{Channel, MessagePurpose, PageResponse};
use winback_proto::delivery::{ListSuppressionsResponse, Suppression};
use winback_proto::events::ComplaintReceived;
use winback_proto::events::event::Payload;

use crate::context::{Delivery, channel, db_error, page_size, timestamp};
use crate::domain::contact;
use crate::store::{execute, query};

/// A suppressed contact's key: tenant, channel, contact.
pub(crate) type SuppressionKey = (String, i64, String);

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

    /// The suppressions of the (tenant, channel, contact) `keys` that have one: (reason,
    /// marketing only) by key, read in one statement (300 keys per statement on SQLite).
    pub(crate) async fn suppressions_of(
        &self,
        keys: &[SuppressionKey],
    ) -> Result<HashMap<SuppressionKey, (String, bool)>, ServiceError> {
        const SELECT: &str = "SELECT s.tenant_id, s.channel, s.contact, s.reason, s.marketing_only FROM suppressions s";
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut found = Vec::new();
        if self.db.get_database_backend() == DbBackend::Postgres {
            found = query(
                &self.db,
                &format!(
                    "{SELECT} JOIN UNNEST($1::text[], $2::bigint[], $3::text[]) AS w(tenant_id, channel, contact)
                     ON s.tenant_id = w.tenant_id AND s.channel = w.channel AND s.contact = w.contact"
                ),
                vec![
                    keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>().into(),
                    keys.iter().map(|k| k.1).collect::<Vec<_>>().into(),
                    keys.iter().map(|k| k.2.clone()).collect::<Vec<_>>().into(),
                ],
            )
            .await
            .map_err(db_error)?;
        } else {
            for chunk in keys.chunks(300) {
                let list: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                    .collect();
                let values = chunk
                    .iter()
                    .flat_map(|k| [k.0.clone().into(), k.1.into(), k.2.clone().into()])
                    .collect();
                found.extend(
                    query(
                        &self.db,
                        &format!(
                            "{SELECT} WHERE (s.tenant_id, s.channel, s.contact) IN (VALUES {})",
                            list.join(", ")
                        ),
                        values,
                    )
                    .await
                    .map_err(db_error)?,
                );
            }
        }
        let mut suppressed = HashMap::new();
        for r in &found {
            suppressed.insert(
                (
                    r.try_get("", "tenant_id").map_err(db_error)?,
                    r.try_get("", "channel").map_err(db_error)?,
                    r.try_get("", "contact").map_err(db_error)?,
                ),
                (
                    r.try_get("", "reason").map_err(db_error)?,
                    r.try_get::<i64>("", "marketing_only").map_err(db_error)? == 1,
                ),
            );
        }
        Ok(suppressed)
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
