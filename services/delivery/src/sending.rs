//! `Send` and `SendBatch`: a message is checked, rendered and stored (queued) before any
//! provider is called; the workers deliver it. The same idempotency key never makes a
//! second message.

use std::collections::HashMap;

use futures::StreamExt;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use winback_platform::ServiceError;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::{
    ChannelSettings, Message, MessageStatus, MessageTemplate, SendRequest, SendResult, StatusChange,
};
use winback_proto::events::MessageStatusChanged;
use winback_proto::events::event::Payload;

use crate::context::{Delivery, channel, db_error, struct_to_json, timestamp};
use crate::domain::token::Tracked;
use crate::domain::{contact, render, sms};
use crate::messages::{COLUMNS, MessageRow, messages_where_in};
use crate::store::query;
use crate::suppressions::SuppressionKey;

/// Largest `SendBatch`.
pub(crate) const MAX_BATCH: usize = 1_000;

/// Sends of one batch checked and rendered side by side.
const SEND_BATCH_CONCURRENCY: usize = 16;

/// A send checked and rendered, ready to store.
#[derive(Debug)]
pub(crate) struct NewMessage {
    row: MessageRow,
    send_after_us: i64,
}

/// What checking a send found.
#[derive(Debug)]
enum Prepared {
    /// The key was used before: its message.
    Existing(Message),
    /// A new message to store.
    New(NewMessage),
}

/// What the sends of one `SendBatch` (or one `Send`, a batch of one) read once for all:
/// the messages their keys made before, their contacts' suppressions, and the templates
/// and channel settings (a batch uses one or two of each; read on first use).
#[derive(Debug)]
struct BatchLookups {
    existing: HashMap<String, MessageRow>,
    suppressions: HashMap<SuppressionKey, (String, bool)>,
    templates: Mutex<HashMap<(String, i32, String), MessageTemplate>>,
    settings: Mutex<HashMap<i32, ChannelSettings>>,
}

impl BatchLookups {
    async fn template(
        &self,
        delivery: &Delivery,
        tenant: &str,
        template_id: &str,
        channel: i32,
        locale: &str,
    ) -> Result<MessageTemplate, ServiceError> {
        let key = (template_id.to_owned(), channel, locale.to_owned());
        let mut templates = self.templates.lock().await;
        if let Some(t) = templates.get(&key) {
            return Ok(t.clone());
        }
        let t = delivery
            .template(tenant, template_id, channel, locale)
            .await?;
        templates.insert(key, t.clone());
        Ok(t)
    }

    async fn settings(
        &self,
        delivery: &Delivery,
        tenant: &str,
        ch: Channel,
    ) -> Result<ChannelSettings, ServiceError> {
        let mut settings = self.settings.lock().await;
        if let Some(s) = settings.get(&(ch as i32)) {
            return Ok(s.clone());
        }
        let s = delivery.settings_for(tenant, ch).await?;
        settings.insert(ch as i32, s.clone());
        Ok(s)
    }
}

/// The recipient's contact on `ch`, checked and normalised, with the field it came from.
fn checked_contact(
    ch: Channel,
    recipient: &winback_proto::delivery::Recipient,
) -> Result<(&'static str, String), ServiceError> {
    let (field, raw) = match ch {
        Channel::Email => ("recipient.email", &recipient.email),
        Channel::Sms => ("recipient.phone", &recipient.phone),
        Channel::Push => ("recipient.push_token", &recipient.push_token),
        _ => ("recipient.address", &recipient.address),
    };
    let contact = contact::check(ch, raw).map_err(|why| ServiceError::invalid(field, why))?;
    Ok((field, contact))
}

impl Delivery {
    /// Queues one message, or returns the message an earlier call with the key made.
    pub(crate) async fn send(&self, tenant: &str, r: SendRequest) -> Result<Message, ServiceError> {
        self.check_daily_messages(tenant).await?;
        // A batch of one: the same reads, the same checks.
        let lookups = self.batch_lookups(tenant, std::slice::from_ref(&r)).await?;
        match self.prepare(tenant, r, &lookups).await? {
            Prepared::Existing(message) => Ok(message),
            Prepared::New(new) => self
                .store(tenant, vec![new])
                .await?
                .pop()
                .unwrap_or_else(|| Err(ServiceError::internal("the send was not stored"))),
        }
    }

    /// Checks, renders and prices one send without storing it; a key used before gives
    /// back its message.
    async fn prepare(
        &self,
        tenant: &str,
        r: SendRequest,
        lookups: &BatchLookups,
    ) -> Result<Prepared, ServiceError> {
        if r.idempotency_key.trim().is_empty() || r.idempotency_key.len() > 200 {
            return Err(ServiceError::invalid(
                "idempotency_key",
                "an idempotency key of 1–200 characters is required",
            ));
        }
        let ch = channel(r.channel, "channel")?;
        let purpose = match MessagePurpose::try_from(r.purpose) {
            Ok(p) if p != MessagePurpose::Unspecified => p,
            _ => {
                return Err(ServiceError::invalid(
                    "purpose",
                    "advertising or service is required",
                ));
            }
        };
        let recipient = r.recipient.clone().unwrap_or_default();
        if recipient.customer_id.trim().is_empty() {
            return Err(ServiceError::invalid(
                "recipient.customer_id",
                "is required",
            ));
        }
        let (field, contact) = checked_contact(ch, &recipient)?;
        if r.metadata.len() > 32
            || r.metadata
                .iter()
                .any(|(k, v)| k.len() > 64 || v.len() > 256)
        {
            return Err(ServiceError::invalid(
                "metadata",
                "at most 32 entries of keys ≤ 64 and values ≤ 256 bytes",
            ));
        }
        if let Some(existing) = lookups.existing.get(&r.idempotency_key).cloned() {
            return Ok(Prepared::Existing(
                self.same_send(existing, ch, &recipient.customer_id).await?,
            ));
        }
        let t = lookups
            .template(self, tenant, &r.template_id, r.channel, &r.locale)
            .await?;
        let suppressed = lookups
            .suppressions
            .get(&(tenant.to_owned(), ch as i32 as i64, contact.clone()))
            .and_then(|(reason, marketing_only)| {
                crate::suppressions::applies(*marketing_only, purpose).then(|| reason.clone())
            });
        if let Some(reason) = suppressed {
            return Err(ServiceError::FailedPrecondition(format!(
                "{field}: the contact is suppressed on this channel ({reason})"
            )));
        }
        let message_id = uuid::Uuid::now_v7().to_string();
        let variables = self.variables(tenant, &message_id, &r, &recipient);
        let mut rendered = render::render(&t, &variables).map_err(|e| {
            ServiceError::invalid("variables", format!("template {}: {}", e.part, e.message))
        })?;
        if ch == Channel::Email && !rendered.html.is_empty() {
            rendered.html = self.track_html(tenant, &message_id, &rendered.html);
        }
        let size = sms::size(&rendered.text);
        let settings = lookups.settings(self, tenant, ch).await?;
        let segments = if ch == Channel::Sms {
            i64::from(size.segments)
        } else {
            0
        };
        let (cost, currency) = settings
            .cost_per_message
            .as_ref()
            .map_or((0, String::new()), |m| {
                (m.amount_minor * segments.max(1), m.currency.clone())
            });
        let now_us = self.now_us();
        let send_after_us = r
            .send_after
            .as_ref()
            .map_or(now_us, |t| {
                t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
            })
            .max(now_us);
        let row = MessageRow {
            tenant_id: tenant.to_owned(),
            message_id: message_id.clone(),
            idempotency_key: r.idempotency_key.clone(),
            channel: ch as i32,
            provider: crate::channels::provider_name(&settings).to_owned(),
            customer_id: recipient.customer_id.clone(),
            contact,
            template_id: r.template_id.clone(),
            purpose: purpose as i32,
            status: MessageStatus::Queued as i32,
            subject: rendered.subject,
            body_text: rendered.text,
            body_html: rendered.html,
            body_json: rendered.json,
            metadata: with_time_zone(&r.metadata, &recipient.time_zone),
            cost_minor: cost,
            currency,
            sms_segments: segments,
            created_at_us: now_us,
            ..Default::default()
        };
        Ok(Prepared::New(NewMessage { row, send_after_us }))
    }

    /// Stores prepared messages in one transaction (rows, first timeline steps, events).
    /// A key another call stored meanwhile gives back that call's message.
    async fn store(
        &self,
        tenant: &str,
        new: Vec<NewMessage>,
    ) -> Result<Vec<Result<Message, ServiceError>>, ServiceError> {
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        let backend = txn.get_database_backend();
        let mut inserted = std::collections::HashSet::new();
        // 20 values a row: 200 rows stay far below either backend's parameter limit.
        for chunk in new.chunks(200) {
            let mut stmt = winback_platform::db::multi_row_insert(
                backend,
                "INSERT INTO messages (tenant_id, message_id, idempotency_key, channel, provider, customer_id, contact, template_id,
                   purpose, status, subject, body_text, body_html, body_json, metadata, next_attempt_us, cost_minor, currency,
                   sms_segments, created_at_us)",
                chunk.iter().map(|n| {
                    let row = &n.row;
                    vec![
                        tenant.into(),
                        row.message_id.clone().into(),
                        row.idempotency_key.clone().into(),
                        i64::from(row.channel).into(),
                        row.provider.clone().into(),
                        row.customer_id.clone().into(),
                        row.contact.clone().into(),
                        row.template_id.clone().into(),
                        i64::from(row.purpose).into(),
                        i64::from(row.status).into(),
                        row.subject.clone().into(),
                        row.body_text.clone().into(),
                        row.body_html.clone().into(),
                        row.body_json.clone().into(),
                        serde_json::to_string(&row.metadata).unwrap_or_default().into(),
                        n.send_after_us.into(),
                        row.cost_minor.into(),
                        row.currency.clone().into(),
                        row.sms_segments.into(),
                        row.created_at_us.into(),
                    ]
                }),
            );
            stmt.sql.push_str(
                " ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING message_id",
            );
            for r in txn.query_all_raw(stmt).await.map_err(db_error)? {
                inserted.insert(r.try_get::<String>("", "message_id").map_err(db_error)?);
            }
        }
        let stored: Vec<&NewMessage> = new
            .iter()
            .filter(|n| inserted.contains(&n.row.message_id))
            .collect();
        for chunk in stored.chunks(500) {
            txn.execute_raw(winback_platform::db::multi_row_insert(
                backend,
                "INSERT INTO message_timeline (tenant_id, message_id, status, at_us, detail)",
                chunk.iter().map(|n| {
                    vec![
                        tenant.into(),
                        n.row.message_id.clone().into(),
                        i64::from(MessageStatus::Queued as i32).into(),
                        n.row.created_at_us.into(),
                        "".into(),
                    ]
                }),
            ))
            .await
            .map_err(db_error)?;
        }
        let now = self.clock.now();
        self.outbox
            .append_many(
                &txn,
                stored
                    .iter()
                    .map(|n| {
                        (
                            tenant.to_owned(),
                            now,
                            status_event(&n.row, MessageStatus::Queued, ""),
                        )
                    })
                    .collect(),
            )
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        if !stored.is_empty() {
            self.outbox.notify_committed();
            self.wake_workers();
        }
        let mut out = Vec::with_capacity(new.len());
        for n in new {
            if inserted.contains(&n.row.message_id) {
                // The row as stored, with the one step it has: no need to read it back.
                let at = timestamp(n.row.created_at_us);
                out.push(Ok(n.row.to_proto(vec![StatusChange {
                    status: MessageStatus::Queued as i32,
                    at,
                    detail: String::new(),
                }])));
                continue;
            }
            // A concurrent call (or an earlier send of this batch) with the same key won.
            let channel = Channel::try_from(n.row.channel).unwrap_or_default();
            out.push(match self.by_key(tenant, &n.row.idempotency_key).await {
                Ok(Some(existing)) => self.same_send(existing, channel, &n.row.customer_id).await,
                Ok(None) => Err(ServiceError::internal("the racing send vanished")),
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// Each send on its own: one bad send does not stop the others.
    pub(crate) async fn send_batch(
        &self,
        tenant: &str,
        sends: Vec<SendRequest>,
    ) -> Result<Vec<SendResult>, ServiceError> {
        if sends.is_empty() || sends.len() > MAX_BATCH {
            return Err(ServiceError::invalid("sends", "1–1000 sends"));
        }
        self.check_daily_messages(tenant).await?;
        // What every send reads is read once for the batch; the checks and renders then
        // run side by side (reads only) and the new messages are stored in one transaction.
        let lookups = self.batch_lookups(tenant, &sends).await?;
        let prepared: Vec<Result<Prepared, ServiceError>> = futures::stream::iter(
            sends
                .into_iter()
                .map(|send| self.prepare(tenant, send, &lookups)),
        )
        .buffered(SEND_BATCH_CONCURRENCY)
        .collect()
        .await;
        let mut slots: Vec<Option<Result<Message, ServiceError>>> =
            Vec::with_capacity(prepared.len());
        let mut new = Vec::new();
        let mut new_slots = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(Prepared::Existing(message)) => slots.push(Some(Ok(message))),
                Ok(Prepared::New(n)) => {
                    slots.push(None);
                    new.push(n);
                    new_slots.push(i);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        if !new.is_empty() {
            for (i, stored) in new_slots.into_iter().zip(self.store(tenant, new).await?) {
                slots[i] = Some(stored);
            }
        }
        let results = slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| match slot {
                Some(Ok(message)) => SendResult {
                    message: Some(message),
                    error_code: 0,
                    error: String::new(),
                },
                Some(Err(e)) => {
                    let status = tonic::Status::from(e);
                    SendResult {
                        message: None,
                        error_code: status.code() as i32,
                        error: format!("sends[{i}]: {}", status.message()),
                    }
                }
                None => SendResult {
                    message: None,
                    error_code: tonic::Code::Internal as i32,
                    error: format!("sends[{i}]: not stored"),
                },
            })
            .collect();
        Ok(results)
    }

    /// The messages the batch's keys made before and its contacts' suppressions, each
    /// read in one statement (or one per 500 keys).
    async fn batch_lookups(
        &self,
        tenant: &str,
        sends: &[SendRequest],
    ) -> Result<BatchLookups, ServiceError> {
        let keys: Vec<&str> = sends.iter().map(|s| s.idempotency_key.as_str()).collect();
        let existing = messages_where_in(&self.db, tenant, "idempotency_key", &keys, "")
            .await?
            .into_iter()
            .map(|row| (row.idempotency_key.clone(), row))
            .collect();
        // Sends that fail their checks are refused in `prepare`; their contacts need no look.
        let contacts: Vec<SuppressionKey> = sends
            .iter()
            .filter_map(|s| {
                let ch = channel(s.channel, "channel").ok()?;
                let (_, contact) =
                    checked_contact(ch, s.recipient.as_ref().unwrap_or(&Default::default()))
                        .ok()?;
                Some((tenant.to_owned(), ch as i32 as i64, contact))
            })
            .collect();
        Ok(BatchLookups {
            existing,
            suppressions: self.suppressions_of(&contacts).await?,
            templates: Mutex::default(),
            settings: Mutex::default(),
        })
    }

    async fn by_key(&self, tenant: &str, key: &str) -> Result<Option<MessageRow>, ServiceError> {
        let rows = query(
            &self.db,
            &format!(
                "SELECT {COLUMNS} FROM messages WHERE tenant_id = $1 AND idempotency_key = $2"
            ),
            vec![tenant.into(), key.into()],
        )
        .await
        .map_err(db_error)?;
        rows.first()
            .map(|r| MessageRow::from_row(tenant, r))
            .transpose()
    }

    /// A retried send: the same message, unless the key was used for something else.
    async fn same_send(
        &self,
        existing: MessageRow,
        ch: Channel,
        customer_id: &str,
    ) -> Result<Message, ServiceError> {
        if existing.channel != ch as i32 || existing.customer_id != customer_id {
            return Err(ServiceError::already_exists_at(
                "message",
                &existing.idempotency_key,
                "idempotency_key",
            ));
        }
        let timeline = self
            .timeline(&existing.tenant_id, &existing.message_id)
            .await?;
        Ok(existing.to_proto(timeline))
    }

    /// The caller's variables plus what delivery knows: the customer's id and name, the
    /// message id and the unsubscribe link. The caller's values win.
    fn variables(
        &self,
        tenant: &str,
        message_id: &str,
        r: &SendRequest,
        recipient: &winback_proto::delivery::Recipient,
    ) -> Value {
        let mut vars = r
            .variables
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_else(|| json!({}));
        let unsubscribe = self.link(tenant, message_id, "u", "");
        if let Some(map) = vars.as_object_mut() {
            let customer = map.entry("customer").or_insert_with(|| json!({}));
            if let Some(c) = customer.as_object_mut() {
                c.entry("customer_id")
                    .or_insert_with(|| json!(recipient.customer_id));
                if !recipient.name.is_empty() {
                    c.entry("name").or_insert_with(|| json!(recipient.name));
                    let first = recipient.name.split_whitespace().next().unwrap_or_default();
                    c.entry("first_name").or_insert_with(|| json!(first));
                }
            }
            map.entry("unsubscribe_url")
                .or_insert_with(|| json!(unsubscribe));
            map.insert("message_id".into(), json!(message_id));
        }
        vars
    }

    /// A signed tracking link: `o` open pixel, `c` click to `url`, `u` unsubscribe.
    pub(crate) fn link(&self, tenant: &str, message_id: &str, kind: &str, url: &str) -> String {
        let token = self.signer.sign(&Tracked {
            kind: kind.into(),
            tenant_id: tenant.into(),
            message_id: message_id.into(),
            url: url.into(),
        });
        let path = match kind {
            "o" => format!("/o/{token}.gif"),
            other => format!("/{other}/{token}"),
        };
        self.public_url(&path)
    }

    /// Rewrites `href="http…"` links through the click redirect (the unsubscribe link is
    /// left as it is) and adds the open pixel.
    fn track_html(&self, tenant: &str, message_id: &str, html: &str) -> String {
        let unsubscribe_prefix = self.public_url("/u/");
        let mut out = String::with_capacity(html.len() + 256);
        let mut rest = html;
        while let Some(at) = rest.find("href=\"") {
            let (before, after) = rest.split_at(at + 6);
            out.push_str(before);
            let end = after.find('"').unwrap_or(after.len());
            // The template engine escaped the attribute (`&amp;`, `&#x2f;`); browsers read
            // it unescaped, and so must the redirect.
            let url = unescape_attribute(&after[..end]);
            if url.starts_with(&unsubscribe_prefix) {
                out.push_str(&url);
            } else if url.starts_with("http://") || url.starts_with("https://") {
                out.push_str(&self.link(tenant, message_id, "c", &url));
            } else {
                out.push_str(&after[..end]);
            }
            rest = &after[end..];
        }
        out.push_str(rest);
        let pixel = format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">",
            self.link(tenant, message_id, "o", "")
        );
        match out.rfind("</body>") {
            Some(at) => out.insert_str(at, &pixel),
            None => out.push_str(&pixel),
        }
        out
    }
}

/// An HTML attribute value as the browser reads it (the entities minijinja writes).
fn unescape_attribute(value: &str) -> String {
    value
        .replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The `message_status_changed` event of a message.
pub(crate) fn status_event(row: &MessageRow, status: MessageStatus, reason: &str) -> Payload {
    Payload::MessageStatusChanged(MessageStatusChanged {
        message_id: row.message_id.clone(),
        customer_id: row.customer_id.clone(),
        channel: row.channel,
        status: crate::messages::status_name(status).into(),
        idempotency_key: row.idempotency_key.clone(),
        metadata: row.metadata.clone(),
        reason: reason.into(),
        cost: (!row.currency.is_empty()).then(|| winback_proto::common::Money {
            amount_minor: row.cost_minor,
            currency: row.currency.clone(),
        }),
    })
}

/// The caller's metadata plus the recipient's time zone (`time_zone`, unless the caller set
/// one), so whoever reads the message later can tell the local time it went out.
fn with_time_zone(metadata: &HashMap<String, String>, zone: &str) -> HashMap<String, String> {
    let mut out = metadata.clone();
    if !zone.trim().is_empty() {
        out.entry("time_zone".to_owned())
            .or_insert_with(|| zone.trim().to_owned());
    }
    out
}
