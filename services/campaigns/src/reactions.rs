//! What campaigns does with the other services' events, each inside the consumer's
//! transaction (effect, inbox and cursor commit together):
//! * profiles: a purchase is a return (the chain stops, the return is attributed, the
//!   holdout's too); consent changes update the reach, a refusal or unsubscribe stops the
//!   chain; an erasure stops it and forgets the contacts; cart and product-view engagement
//!   are triggers.
//! * segmentation: entering a target segment or lifecycle state queues an enrolment.
//! * delivery: message statuses feed conditions and reports; unsubscribes and complaints
//!   stop chains at once.
//! * offers: redemptions are the offer cost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement};
use winback_platform::config::Peer;
use winback_platform::events::{EventConsumer, EventHandler, HandlerError};
use winback_platform::time::from_timestamp;
use winback_proto::campaigns::{CampaignState, EnrolmentState, Trigger};
use winback_proto::common::{Channel, LifecycleState, MessagePurpose};
use winback_proto::events::event::Payload;
use winback_proto::events::{EnrolmentEnded, Event, EventSource};

use crate::campaigns::audience;
use crate::context::Campaigns;
use crate::domain::plan::consent_bit;
use crate::store::{execute, query, query_in};
use winback_platform::db::multi_row_insert;

/// The handler of every feed campaigns reads.
#[derive(Debug, Clone)]
pub(crate) struct Reactions {
    pub(crate) campaigns: Campaigns,
}

fn other(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Other(e.to_string())
}

impl EventHandler for Reactions {
    fn handle<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let tenant = event.tenant_id.as_str();
            let at = event
                .occurred_at
                .as_ref()
                .and_then(from_timestamp)
                .unwrap_or_else(|| self.campaigns.now());
            match &event.payload {
                Some(Payload::PurchaseRecorded(p)) => {
                    let placed = p.placed_at.as_ref().and_then(from_timestamp).unwrap_or(at);
                    let (value, currency) = p
                        .total
                        .as_ref()
                        .map_or((0, String::new()), |m| (m.amount_minor, m.currency.clone()));
                    self.purchase(
                        txn,
                        tenant,
                        &p.customer_id,
                        &p.order_id,
                        placed,
                        value,
                        &currency,
                        at,
                    )
                    .await
                }
                Some(Payload::OrderAdjusted(a)) if a.cancelled => {
                    execute(
                        txn,
                        "DELETE FROM conversions WHERE tenant_id = $1 AND order_id = $2",
                        vec![tenant.into(), a.order_id.clone().into()],
                    )
                    .await?;
                    Ok(())
                }
                Some(Payload::ConsentChanged(c)) => {
                    let channel = Channel::try_from(c.channel).unwrap_or_default();
                    let purpose = MessagePurpose::try_from(c.purpose).unwrap_or_default();
                    if c.do_not_contact
                        || matches!(c.source.as_str(), "unsubscribe_link" | "complaint")
                            && !c.granted
                    {
                        return self
                            .stop(txn, tenant, &c.customer_id, "refused_contact", at)
                            .await;
                    }
                    let bit = consent_bit(channel, purpose);
                    let sql = if c.granted {
                        "UPDATE enrolments SET consent_bits = (consent_bits | $3)
                         WHERE tenant_id = $1 AND customer_id = $2 AND state = 1"
                    } else {
                        "UPDATE enrolments SET consent_bits = (consent_bits & ~$3)
                         WHERE tenant_id = $1 AND customer_id = $2 AND state = 1"
                    };
                    execute(
                        txn,
                        sql,
                        vec![tenant.into(), c.customer_id.clone().into(), bit.into()],
                    )
                    .await?;
                    Ok(())
                }
                Some(Payload::CustomerErased(e)) => {
                    self.stop(txn, tenant, &e.customer_id, "erased", at).await?;
                    execute(
                        txn,
                        "UPDATE enrolments SET name = '', email = '', phone = '', push_token = ''
                         WHERE tenant_id = $1 AND customer_id = $2",
                        vec![tenant.into(), e.customer_id.clone().into()],
                    )
                    .await?;
                    Ok(())
                }
                Some(Payload::EngagementRecorded(e)) => {
                    let trigger = match e.kind.as_str() {
                        "cart_abandoned" => Trigger::CartAbandoned,
                        "product_viewed" => Trigger::ProductViewed,
                        _ => return Ok(()),
                    };
                    self.queue(txn, tenant, &e.customer_id, "", trigger, None, at, |_| true)
                        .await
                }
                Some(Payload::SegmentChanged(s)) if s.segment != s.previous_segment => {
                    let segment = s.segment.clone();
                    self.queue(
                        txn,
                        tenant,
                        &s.customer_id,
                        &s.segment,
                        Trigger::SegmentEntered,
                        None,
                        at,
                        move |c| audience(c).segments.contains(&segment),
                    )
                    .await
                }
                Some(Payload::LifecycleChanged(l)) if l.state != l.previous_state => {
                    let score = Some((l.p_alive, l.clv.as_ref().map_or(0, |m| m.amount_minor)));
                    let state = l.state;
                    self.queue(
                        txn,
                        tenant,
                        &l.customer_id,
                        "",
                        Trigger::SegmentEntered,
                        score,
                        at,
                        move |c| audience(c).lifecycle_states.contains(&state),
                    )
                    .await?;
                    // Missing one's own cycle: active → hot inactive.
                    if l.previous_state == LifecycleState::Active as i32
                        && l.state == LifecycleState::HotInactive as i32
                    {
                        self.queue(
                            txn,
                            tenant,
                            &l.customer_id,
                            "",
                            Trigger::MissedCycle,
                            score,
                            at,
                            |_| true,
                        )
                        .await?;
                    }
                    Ok(())
                }
                Some(Payload::MessageStatusChanged(m)) => self.message_status(txn, tenant, m).await,
                Some(Payload::ContactUnsubscribed(u)) => {
                    self.stop(txn, tenant, &u.customer_id, "unsubscribed", at)
                        .await
                }
                Some(Payload::ComplaintReceived(c)) => {
                    self.stop(txn, tenant, &c.customer_id, "complained", at)
                        .await
                }
                Some(Payload::CouponRedeemed(r)) if !r.campaign_id.is_empty() => {
                    execute(
                        txn,
                        "INSERT INTO redemptions (tenant_id, code, campaign_id, customer_id, order_id, discount_minor)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, code) DO UPDATE SET
                         order_id = excluded.order_id, discount_minor = excluded.discount_minor",
                        vec![
                            tenant.into(),
                            r.code.clone().into(),
                            r.campaign_id.clone().into(),
                            r.customer_id.clone().into(),
                            r.order_id.clone().into(),
                            r.discount.as_ref().map_or(0, |m| m.amount_minor).into(),
                        ],
                    )
                    .await?;
                    Ok(())
                }
                Some(Payload::CouponReleased(r)) => {
                    execute(
                        txn,
                        "DELETE FROM redemptions WHERE tenant_id = $1 AND code = $2",
                        vec![tenant.into(), r.code.clone().into()],
                    )
                    .await?;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }

    fn handle_all<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            // Purchases and consent changes of customers in no campaign change nothing, and
            // no event handled here enrols anyone (requests are queued for the workers): one
            // lookup for the batch spares a query per event of a bulk load.
            let enrolled = self.enrolled_among(txn, events).await?;
            let mut reactions = StepReactions::default();
            for event in events {
                if let Some(customer) = enrolment_subject(event)
                    && !enrolled.contains(&(event.tenant_id.as_str(), customer))
                {
                    continue;
                }
                match &event.payload {
                    // Statuses only raise flags and add costs: they commute, so a batch's are
                    // summed and written at the end.
                    Some(Payload::MessageStatusChanged(m)) => reactions.add(&event.tenant_id, m),
                    _ => self.handle(txn, event).await?,
                }
            }
            reactions.write(txn).await
        })
    }
}

/// A batch's message statuses per (tenant, enrolment, step): sent, delivered, opened and
/// clicked flags and the cost.
#[derive(Debug, Default)]
struct StepReactions {
    rows: BTreeMap<(String, String, i64), [i64; 5]>,
}

impl StepReactions {
    fn add(&mut self, tenant: &str, m: &winback_proto::events::MessageStatusChanged) {
        let Some((enrolment, step, column, cost)) = step_reaction(m) else {
            return;
        };
        let row = self
            .rows
            .entry((tenant.to_owned(), enrolment.to_owned(), step))
            .or_default();
        let flag = match column {
            "sent" => 0,
            "delivered" => 1,
            "opened" => 2,
            _ => 3,
        };
        row[flag] = 1;
        // For SMTP the server's acceptance (250 after DATA) is the delivery: no receipt
        // comes later.
        if column == "sent" && m.channel == Channel::Email as i32 {
            row[1] = 1;
        }
        row[4] += cost;
    }

    async fn write(self, txn: &DatabaseTransaction) -> Result<(), HandlerError> {
        let rows: Vec<Vec<sea_orm::Value>> = self
            .rows
            .into_iter()
            .map(|((tenant, enrolment, step), [s, d, o, c, cost])| {
                vec![
                    tenant.into(),
                    enrolment.into(),
                    step.into(),
                    s.into(),
                    d.into(),
                    o.into(),
                    c.into(),
                    cost.into(),
                ]
            })
            .collect();
        for chunk in rows.chunks(500) {
            let insert = multi_row_insert(
                txn.get_database_backend(),
                "INSERT INTO step_reactions (tenant_id, enrolment_id, step, sent, delivered, opened, clicked, cost_minor)",
                chunk.iter().cloned(),
            );
            let sql = format!(
                "{} ON CONFLICT (tenant_id, enrolment_id, step) DO UPDATE SET
                   sent = CASE WHEN excluded.sent = 1 THEN 1 ELSE step_reactions.sent END,
                   delivered = CASE WHEN excluded.delivered = 1 THEN 1 ELSE step_reactions.delivered END,
                   opened = CASE WHEN excluded.opened = 1 THEN 1 ELSE step_reactions.opened END,
                   clicked = CASE WHEN excluded.clicked = 1 THEN 1 ELSE step_reactions.clicked END,
                   cost_minor = step_reactions.cost_minor + excluded.cost_minor",
                insert.sql
            );
            txn.execute_raw(Statement::from_sql_and_values(
                txn.get_database_backend(),
                sql,
                insert.values.map(|v| v.0).unwrap_or_default(),
            ))
            .await?;
        }
        Ok(())
    }
}

/// The customer of a purchase or consent change: events that change nothing for a
/// customer in no campaign.
fn enrolment_subject(event: &Event) -> Option<&str> {
    match &event.payload {
        Some(Payload::PurchaseRecorded(p)) => Some(&p.customer_id),
        Some(Payload::ConsentChanged(c)) => Some(&c.customer_id),
        _ => None,
    }
}

/// What a status says about its step: (enrolment, step, column, cost); `None` when the
/// message is not a chain step's or the status is not kept.
fn step_reaction(
    m: &winback_proto::events::MessageStatusChanged,
) -> Option<(&str, i64, &'static str, i64)> {
    let enrolment = m.metadata.get("enrolment_id")?;
    let step = m.metadata.get("step")?.parse::<i64>().ok()?;
    let (column, cost) = match m.status.as_str() {
        "sent" => ("sent", m.cost.as_ref().map_or(0, |c| c.amount_minor)),
        "delivered" => ("delivered", 0),
        "opened" => ("opened", 0),
        "clicked" => ("clicked", 0),
        _ => return None,
    };
    Some((enrolment, step, column, cost))
}

impl Reactions {
    /// The (tenant, customer) pairs of `events`' purchases and consent changes that have an
    /// enrolment a purchase or consent change could touch.
    async fn enrolled_among<'e>(
        &self,
        txn: &DatabaseTransaction,
        events: &'e [&'e Event],
    ) -> Result<HashSet<(&'e str, &'e str)>, HandlerError> {
        let mut by_tenant: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for event in events {
            if let Some(customer) = enrolment_subject(event) {
                by_tenant
                    .entry(&event.tenant_id)
                    .or_default()
                    .push(customer.to_owned());
            }
        }
        let mut found: HashMap<&str, HashSet<String>> = HashMap::new();
        for (tenant, mut customers) in by_tenant {
            customers.sort_unstable();
            customers.dedup();
            let rows = query_in(
                txn,
                "SELECT DISTINCT customer_id FROM enrolments
                 WHERE tenant_id = $1 AND state IN (1, 2, 3, 4, 5) AND customer_id IN ({list})",
                vec![tenant.into()],
                &customers,
            )
            .await?;
            let in_campaigns = found.entry(tenant).or_default();
            for row in rows {
                in_campaigns.insert(row.try_get("", "customer_id")?);
            }
        }
        Ok(events
            .iter()
            .filter_map(|event| {
                let tenant = event.tenant_id.as_str();
                let customer = enrolment_subject(event)?;
                found
                    .get(tenant)
                    .is_some_and(|in_campaigns| in_campaigns.contains(customer))
                    .then_some((tenant, customer))
            })
            .collect())
    }

    /// A purchase: the first one inside an enrolment's measurement window is its return;
    /// a running chain stops there.
    #[allow(clippy::too_many_arguments)]
    async fn purchase(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &str,
        order_id: &str,
        placed: DateTime<Utc>,
        value: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Result<(), HandlerError> {
        // Most purchases are by customers in no campaign: one indexed lookup, no policy read.
        let rows = query(
            txn,
            "SELECT e.enrolment_id, e.campaign_id, e.state, e.enrolled_at_us FROM enrolments e
             WHERE e.tenant_id = $1 AND e.customer_id = $2 AND e.state IN (1, 2, 3, 4, 5)
               AND e.enrolled_at_us <= $3
               AND NOT EXISTS (SELECT 1 FROM conversions v WHERE v.tenant_id = e.tenant_id
                               AND v.enrolment_id = e.enrolment_id)",
            vec![
                tenant.into(),
                customer.into(),
                placed.timestamp_micros().into(),
            ],
        )
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let policy = self.campaigns.policy(tenant).await.map_err(other)?;
        let since = (placed - policy.measurement_window()).timestamp_micros();
        let mut within = Vec::with_capacity(rows.len());
        for row in rows {
            if row.try_get::<i64>("", "enrolled_at_us")? >= since {
                within.push(row);
            }
        }
        let rows = within;
        let mut events = Vec::new();
        for row in &rows {
            let id: String = row.try_get("", "enrolment_id")?;
            let campaign: String = row.try_get("", "campaign_id")?;
            let state: i64 = row.try_get("", "state")?;
            execute(
                txn,
                "INSERT INTO conversions (tenant_id, enrolment_id, customer_id, order_id, placed_at_us, value_minor, currency)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                vec![
                    tenant.into(),
                    id.clone().into(),
                    customer.into(),
                    order_id.into(),
                    placed.timestamp_micros().into(),
                    value.into(),
                    currency.into(),
                ],
            )
            .await?;
            if state == i64::from(EnrolmentState::Running as i32) {
                execute(
                    txn,
                    "UPDATE enrolments SET state = $3, ended_at_us = $4, end_reason = 'purchase',
                        next_state = 'active', due_at_us = 0
                     WHERE tenant_id = $1 AND enrolment_id = $2",
                    vec![
                        tenant.into(),
                        id.clone().into(),
                        i64::from(EnrolmentState::Returned as i32).into(),
                        at.timestamp_micros().into(),
                    ],
                )
                .await?;
                events.push((
                    tenant.to_owned(),
                    at,
                    Payload::EnrolmentEnded(EnrolmentEnded {
                        enrolment_id: id,
                        campaign_id: campaign,
                        customer_id: customer.to_owned(),
                        reason: crate::domain::outcomes::end_reason("purchase"),
                        next_state: crate::domain::outcomes::after_chain_state("active"),
                    }),
                ));
            } else if state == i64::from(EnrolmentState::Completed as i32) {
                // Came back after the chain, inside the window: woke up after all.
                execute(
                    txn,
                    "UPDATE enrolments SET next_state = 'active' WHERE tenant_id = $1 AND enrolment_id = $2",
                    vec![tenant.into(), id.into()],
                )
                .await?;
            }
        }
        self.campaigns.outbox.append_many(txn, events).await?;
        Ok(())
    }

    /// Stops every running chain of `customer` at once.
    async fn stop(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), HandlerError> {
        let rows = query(
            txn,
            "UPDATE enrolments SET state = $3, ended_at_us = $4, end_reason = $5, due_at_us = 0,
                 next_state = 'sleeping'
             WHERE tenant_id = $1 AND customer_id = $2 AND state = 1
             RETURNING enrolment_id, campaign_id",
            vec![
                tenant.into(),
                customer.into(),
                i64::from(EnrolmentState::Stopped as i32).into(),
                at.timestamp_micros().into(),
                reason.into(),
            ],
        )
        .await?;
        let mut events = Vec::new();
        for row in &rows {
            events.push((
                tenant.to_owned(),
                at,
                Payload::EnrolmentEnded(EnrolmentEnded {
                    enrolment_id: row.try_get("", "enrolment_id")?,
                    campaign_id: row.try_get("", "campaign_id")?,
                    customer_id: customer.to_owned(),
                    reason: crate::domain::outcomes::end_reason(reason),
                    next_state: crate::domain::outcomes::after_chain_state("sleeping"),
                }),
            ));
        }
        self.campaigns.outbox.append_many(txn, events).await?;
        Ok(())
    }

    /// Queues `customer` for every active campaign that listens to `trigger` and whose
    /// audience `matches`.
    #[allow(clippy::too_many_arguments)]
    async fn queue(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        customer: &str,
        segment: &str,
        trigger: Trigger,
        score: Option<(f64, i64)>,
        at: DateTime<Utc>,
        matches: impl Fn(&winback_proto::campaigns::Campaign) -> bool,
    ) -> Result<(), HandlerError> {
        let active = self
            .campaigns
            .campaigns_in(tenant, &[CampaignState::Active])
            .await
            .map_err(other)?;
        for c in active {
            if !audience(&c).triggers.contains(&(trigger as i32)) || !matches(&c) {
                continue;
            }
            let (p_alive, clv) = score.unwrap_or((-1.0, 0));
            execute(
                txn,
                "INSERT INTO enrolment_requests (tenant_id, campaign_id, customer_id, segment,
                    trigger_kind, p_alive, clv_minor, requested_at_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                vec![
                    tenant.into(),
                    c.campaign_id.into(),
                    customer.into(),
                    segment.into(),
                    i64::from(trigger as i32).into(),
                    p_alive.into(),
                    clv.into(),
                    at.timestamp_micros().into(),
                ],
            )
            .await?;
        }
        self.campaigns.wake.notify_waiters();
        Ok(())
    }

    /// A message status: sent (with its cost), delivered, opened, clicked.
    async fn message_status(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        m: &winback_proto::events::MessageStatusChanged,
    ) -> Result<(), HandlerError> {
        let mut reactions = StepReactions::default();
        reactions.add(tenant, m);
        reactions.write(txn).await
    }
}

/// Starts one consumer per source campaigns reads, each resuming where it stopped.
pub(crate) fn start_consumers(campaigns: &Campaigns) {
    let handler = Arc::new(Reactions {
        campaigns: campaigns.clone(),
    });
    for (source, peer) in [
        (EventSource::Profiles, Peer::Profiles),
        (EventSource::Segmentation, Peer::Segmentation),
        (EventSource::Delivery, Peer::Delivery),
        (EventSource::Offers, Peer::Offers),
    ] {
        let (campaigns, handler) = (campaigns.clone(), handler.clone());
        tokio::spawn(async move {
            let host = &campaigns.host;
            let transport = match host.event_transport(peer, "campaigns").await {
                Ok(transport) => transport,
                Err(e) => {
                    tracing::error!(error = %e, ?source, "campaigns cannot read these events");
                    return;
                }
            };
            let consumer = EventConsumer::new(
                "campaigns",
                source,
                campaigns.db.clone(),
                transport,
                handler,
            )
            .with_retry_delay(std::time::Duration::from_millis(200))
            .with_write_gate(campaigns.sqlite_writer.clone());
            consumer.run(host.shutdown.clone()).await;
        });
    }
}
