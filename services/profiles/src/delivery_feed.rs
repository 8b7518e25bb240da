//! What profiles learns from delivery's events (ARCHITECTURE.md: delivery → profiles): a
//! sent message counts towards "unopened in a row", an open or a click is engagement, a
//! contact delivery suppressed (hard bounce, STOP, unregistered token) is marked on the
//! channel, and an unsubscribe or complaint is a refusal of advertising on that channel,
//! kept in the consent history like any other. Each event is handled in the consumer's
//! transaction, so the change, the inbox row and the cursor commit together.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;
use sea_orm::DatabaseTransaction;
use winback_platform::config::Peer;
use winback_platform::events::{EventConsumer, EventHandler, HandlerError};
use winback_platform::host::ServiceContext;
use winback_platform::time::from_timestamp;
use winback_proto::common::MessagePurpose;
use winback_proto::events::event::Payload;
use winback_proto::events::{Event, EventSource};

use crate::consent::{ConsentChange, ConsentWrites};
use crate::context::Profiles;
use crate::domain::facts::FactsState;
use crate::store::rows;

/// The handler of delivery's feed.
#[derive(Debug, Clone)]
struct DeliveryReactions {
    profiles: Profiles,
}

/// What one event changes.
enum Change {
    Sent,
    Opened,
    Clicked,
    Suppressed(i32),
    Refused { channel: i32, source: &'static str },
}

fn other(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Other(e.to_string())
}

/// What `event` changes for which customer; `None` for events profiles does not keep.
fn change_of(event: &Event) -> Option<(&str, Change)> {
    let (customer, change) = match &event.payload {
        Some(Payload::MessageStatusChanged(m)) => {
            let change = match m.status.as_str() {
                "sent" => Change::Sent,
                "opened" => Change::Opened,
                "clicked" => Change::Clicked,
                "bounced" | "suppressed" => Change::Suppressed(m.channel),
                _ => return None,
            };
            (&m.customer_id, change)
        }
        Some(Payload::ContactUnsubscribed(u)) => (
            &u.customer_id,
            Change::Refused {
                channel: u.channel,
                source: "unsubscribe_link",
            },
        ),
        Some(Payload::ComplaintReceived(c)) => (
            &c.customer_id,
            Change::Refused {
                channel: c.channel,
                source: "complaint",
            },
        ),
        _ => return None,
    };
    (!customer.is_empty()).then_some((customer.as_str(), change))
}

impl DeliveryReactions {
    /// Applies `events` of one tenant in order: the customers' facts are read once (locked),
    /// changed in memory event by event, and written once.
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        events: &[&Event],
    ) -> Result<(), HandlerError> {
        let changes: Vec<(&str, Change, i64, &str)> = events
            .iter()
            .filter_map(|event| {
                let (customer, change) = change_of(event)?;
                let at_us = event
                    .occurred_at
                    .as_ref()
                    .and_then(from_timestamp)
                    .unwrap_or_else(|| self.profiles.clock.now())
                    .timestamp_micros();
                Some((customer, change, at_us, event.event_id.as_str()))
            })
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<String> = changes.iter().map(|(c, _, _, _)| (*c).to_owned()).collect();
        ids.sort_unstable();
        ids.dedup();
        // A customer profiles does not know (or erased) has nothing to update.
        let mut states: HashMap<String, FactsState> = rows::facts_states(txn, tenant, &ids)
            .await?
            .into_iter()
            .filter(|(_, state)| !state.erased)
            .collect();
        let mut changed: Vec<String> = Vec::new();
        let mut refusals = ConsentWrites::default();
        let now = self.profiles.clock.now();
        // Sends, opens and clicks are kept as engagement events too, so facts can be
        // rebuilt as of a past time (`facts_as_of`).
        let mut engagement_rows = Vec::new();
        for (customer, change, at_us, event_id) in changes {
            let Some(state) = states.get_mut(customer) else {
                continue;
            };
            let kept = match change {
                Change::Sent => Some("message_sent"),
                Change::Opened => Some("message_opened"),
                Change::Clicked => Some("message_clicked"),
                _ => None,
            };
            if let Some(kind) = kept {
                engagement_rows.push(vec![
                    tenant.into(),
                    format!("delivery:{event_id}").into(),
                    customer.into(),
                    kind.into(),
                    at_us.into(),
                    String::new().into(),
                ]);
            }
            match change {
                Change::Sent => state.apply_sent(at_us),
                Change::Opened => state.apply_open(at_us),
                Change::Clicked => {
                    state.apply_open(at_us);
                    state.last_click_us = Some(state.last_click_us.map_or(at_us, |c| c.max(at_us)));
                }
                Change::Suppressed(channel) => {
                    if !state.suppressed_channels.contains(&channel) {
                        state.suppressed_channels.push(channel);
                    }
                }
                Change::Refused { channel, source } => {
                    refusals.add(
                        now,
                        tenant,
                        customer,
                        state,
                        &[ConsentChange {
                            channel,
                            purpose: MessagePurpose::Advertising as i32,
                            granted: false,
                            source: source.to_owned(),
                            at_us,
                        }],
                        false,
                    );
                }
            }
            changed.push(customer.to_owned());
        }
        changed.sort_unstable();
        changed.dedup();
        let updated_at_us = self.profiles.clock.now().timestamp_micros();
        let writes: Vec<(String, FactsState)> = changed
            .into_iter()
            .filter_map(|id| {
                let mut state = states.remove(&id)?;
                state.updated_at_us = updated_at_us;
                Some((id, state))
            })
            .collect();
        refusals.write(&self.profiles, txn).await.map_err(other)?;
        rows::insert_many(
            txn,
            "INSERT INTO engagement_events (tenant_id, event_id, customer_id, kind, occurred_at_us, detail)",
            "ON CONFLICT DO NOTHING",
            engagement_rows,
        )
        .await?;
        rows::save_facts(txn, tenant, &writes).await?;
        Ok(())
    }
}

impl EventHandler for DeliveryReactions {
    fn handle<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { self.apply(txn, &event.tenant_id, &[event]).await })
    }

    fn handle_all<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            // Tenants are independent; within one the events keep their order.
            let mut by_tenant: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
            for event in events {
                by_tenant.entry(&event.tenant_id).or_default().push(event);
            }
            for (tenant, events) in by_tenant {
                self.apply(txn, tenant, &events).await?;
            }
            Ok(())
        })
    }
}

/// Starts the consumer of delivery's events (it resumes where it stopped).
pub(crate) fn start(profiles: &Profiles, ctx: &ServiceContext) {
    let (profiles, ctx) = (profiles.clone(), ctx.clone());
    tokio::spawn(async move {
        let transport = match ctx.event_transport(Peer::Delivery, "profiles").await {
            Ok(transport) => transport,
            Err(e) => {
                tracing::warn!(error = %e, "profiles reads no delivery events");
                return;
            }
        };
        let consumer = EventConsumer::new(
            "profiles",
            EventSource::Delivery,
            profiles.db.clone(),
            transport,
            Arc::new(DeliveryReactions {
                profiles: profiles.clone(),
            }),
        )
        .with_retry_delay(std::time::Duration::from_millis(200))
        .with_write_gate(profiles.sqlite_writer.clone());
        consumer.run(ctx.shutdown.clone()).await;
    });
}
