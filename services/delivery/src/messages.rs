//! Stored messages: the row, its timeline, and the reads (`GetMessage`, `ListMessages`).

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, QueryResult};
use winback_platform::ServiceError;
use winback_proto::common::{Money, PageResponse};
use winback_proto::delivery::{
    ListMessagesRequest, ListMessagesResponse, Message, MessageStatus, StatusChange,
};

use crate::context::{Delivery, db_error, page_size, timestamp};
use crate::store::query;

pub(crate) const COLUMNS: &str = "message_id, idempotency_key, channel, provider, customer_id, contact, template_id, purpose, status, \
     subject, body_text, body_html, body_json, metadata, attempts, provider_message_id, cost_minor, currency, sms_segments, \
     last_error, created_at_us, sent_at_us";

/// A stored message.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageRow {
    pub(crate) tenant_id: String,
    pub(crate) message_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) channel: i32,
    pub(crate) provider: String,
    pub(crate) customer_id: String,
    pub(crate) contact: String,
    pub(crate) template_id: String,
    pub(crate) purpose: i32,
    pub(crate) status: i32,
    pub(crate) subject: String,
    pub(crate) body_text: String,
    pub(crate) body_html: String,
    pub(crate) body_json: String,
    pub(crate) metadata: HashMap<String, String>,
    pub(crate) attempts: i64,
    pub(crate) provider_message_id: String,
    pub(crate) cost_minor: i64,
    pub(crate) currency: String,
    pub(crate) sms_segments: i64,
    #[allow(dead_code)] // stored for operators; not part of the API message yet
    pub(crate) last_error: String,
    pub(crate) created_at_us: i64,
    pub(crate) sent_at_us: i64,
}

impl MessageRow {
    pub(crate) fn from_row(tenant: &str, r: &QueryResult) -> Result<Self, ServiceError> {
        let s = |c: &str| r.try_get::<String>("", c).map_err(db_error);
        let i = |c: &str| r.try_get::<i64>("", c).map_err(db_error);
        Ok(Self {
            tenant_id: tenant.to_owned(),
            message_id: s("message_id")?,
            idempotency_key: s("idempotency_key")?,
            channel: i("channel")? as i32,
            provider: s("provider")?,
            customer_id: s("customer_id")?,
            contact: s("contact")?,
            template_id: s("template_id")?,
            purpose: i("purpose")? as i32,
            status: i("status")? as i32,
            subject: s("subject")?,
            body_text: s("body_text")?,
            body_html: s("body_html")?,
            body_json: s("body_json")?,
            metadata: serde_json::from_str(&s("metadata")?).unwrap_or_default(),
            attempts: i("attempts")?,
            provider_message_id: s("provider_message_id")?,
            cost_minor: i("cost_minor")?,
            currency: s("currency")?,
            sms_segments: i("sms_segments")?,
            last_error: s("last_error")?,
            created_at_us: i("created_at_us")?,
            sent_at_us: i("sent_at_us")?,
        })
    }

    /// The API form; `timeline` from `message_timeline`.
    pub(crate) fn to_proto(&self, timeline: Vec<StatusChange>) -> Message {
        Message {
            message_id: self.message_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            channel: self.channel,
            provider: self.provider.clone(),
            customer_id: self.customer_id.clone(),
            contact: self.contact.clone(),
            template_id: self.template_id.clone(),
            status: self.status,
            timeline,
            provider_message_id: self.provider_message_id.clone(),
            attempts: self.attempts as i32,
            cost: (!self.currency.is_empty()).then(|| Money {
                amount_minor: self.cost_minor,
                currency: self.currency.clone(),
            }),
            sms_segments: self.sms_segments as i32,
            metadata: self.metadata.clone(),
            created_at: timestamp(self.created_at_us),
            sent_at: (self.sent_at_us > 0)
                .then(|| timestamp(self.sent_at_us))
                .flatten(),
        }
    }
}

/// A status name as events carry it.
pub(crate) fn status_name(status: MessageStatus) -> &'static str {
    match status {
        MessageStatus::Unspecified => "unspecified",
        MessageStatus::Queued => "queued",
        MessageStatus::Sending => "sending",
        MessageStatus::Sent => "sent",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Opened => "opened",
        MessageStatus::Clicked => "clicked",
        MessageStatus::Bounced => "bounced",
        MessageStatus::Failed => "failed",
        MessageStatus::Suppressed => "suppressed",
    }
}

/// A tenant's messages whose `column` (`message_id`, `idempotency_key`) is one of `keys`,
/// 500 keys a statement; `tail` follows the key condition (a lock, on PostgreSQL).
pub(crate) async fn messages_where_in<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    column: &str,
    keys: &[&str],
    tail: &str,
) -> Result<Vec<MessageRow>, ServiceError> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut values: Vec<sea_orm::Value> = vec![tenant.into()];
        values.extend(chunk.iter().map(|k| (*k).into()));
        let rows = query(
            db,
            &format!(
                "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND {column} IN ({}){tail}",
                winback_platform::db::placeholders(2, chunk.len())
            ),
            values,
        )
        .await
        .map_err(db_error)?;
        for row in &rows {
            out.push(MessageRow::from_row(tenant, row)?);
        }
    }
    Ok(out)
}

impl Delivery {
    /// A message by id, with its timeline.
    pub(crate) async fn message(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<Message, ServiceError> {
        if message_id.is_empty() {
            return Err(ServiceError::invalid("message_id", "is required"));
        }
        let row = self
            .message_row(&self.db, tenant, message_id)
            .await?
            .ok_or_else(|| ServiceError::not_found_at("message", message_id, "message_id"))?;
        let timeline = self.timeline(tenant, message_id).await?;
        Ok(row.to_proto(timeline))
    }

    pub(crate) async fn message_row<C: ConnectionTrait>(
        &self,
        db: &C,
        tenant: &str,
        message_id: &str,
    ) -> Result<Option<MessageRow>, ServiceError> {
        let rows = query(
            db,
            &format!("SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND message_id = $2"),
            vec![tenant.into(), message_id.into()],
        )
        .await
        .map_err(db_error)?;
        rows.first()
            .map(|r| MessageRow::from_row(tenant, r))
            .transpose()
    }

    pub(crate) async fn timeline(
        &self,
        tenant: &str,
        message_id: &str,
    ) -> Result<Vec<StatusChange>, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT status, at_us, detail FROM message_timeline WHERE tenant_id = $1 AND message_id = $2 ORDER BY seq",
            vec![tenant.into(), message_id.into()],
        )
        .await
        .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| StatusChange {
                status: r.try_get::<i64>("", "status").unwrap_or(0) as i32,
                at: timestamp(r.try_get("", "at_us").unwrap_or(0)),
                detail: r.try_get("", "detail").unwrap_or_default(),
            })
            .collect())
    }

    pub(crate) async fn list_messages(
        &self,
        tenant: &str,
        r: ListMessagesRequest,
    ) -> Result<ListMessagesResponse, ServiceError> {
        let page = r.page.unwrap_or_default();
        let size = page_size(&page)?;
        // Metadata filters are applied after the read, so a page may come back short.
        let rows = query(
            &self.db,
            &format!(
                "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND ($2 = '' OR customer_id = $2)
                 AND ($3 = 0 OR status = $3) AND message_id > $4 ORDER BY message_id LIMIT $5"
            ),
            vec![
                tenant.into(),
                r.customer_id.clone().into(),
                i64::from(r.status).into(),
                page.page_token.clone().into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut messages = Vec::with_capacity(rows.len());
        let mut last = String::new();
        for (n, row) in rows.iter().enumerate() {
            if n as i64 == size {
                break;
            }
            let m = MessageRow::from_row(tenant, row)?;
            last.clone_from(&m.message_id);
            if r.metadata.iter().all(|(k, v)| m.metadata.get(k) == Some(v)) {
                messages.push(m.to_proto(Vec::new()));
            }
        }
        let next_page_token = if rows.len() as i64 > size {
            last
        } else {
            String::new()
        };
        Ok(ListMessagesResponse {
            messages,
            page: Some(PageResponse { next_page_token }),
        })
    }
}
