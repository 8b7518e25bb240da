//! Engagement events: opens, clicks, visits, carts, views, searches, support, complaints,
//! surveys. Idempotent by event id; each batch updates the facts in the same transaction.
//! A complaint or survey answer meaning "do not contact me" records a refusal everywhere.

use std::collections::{HashMap, HashSet};

use winback_platform::ServiceError;
use winback_proto::events::EngagementRecorded;
use winback_proto::events::event::Payload;
use winback_proto::profiles::EngagementEvent;
use winback_proto::profiles::engagement_event::Kind;

use crate::consent::{ConsentWrites, refuse_everything};
use crate::context::{Profiles, micros};
use crate::domain::facts::FactsState;
use crate::domain::validate::{self, MAX_BATCH, MAX_CLOCK_SKEW, Violations};
use crate::store::rows;

/// The name of an engagement kind, as stored and as events carry it.
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::MessageOpened(_) => "message_opened",
        Kind::MessageClicked(_) => "message_clicked",
        Kind::SiteVisited(_) => "site_visited",
        Kind::CartAbandoned(_) => "cart_abandoned",
        Kind::ProductViewed(_) => "product_viewed",
        Kind::Searched(_) => "searched",
        Kind::SavedToFavourites(_) => "saved_to_favourites",
        Kind::BackInStockInterest(_) => "back_in_stock_interest",
        Kind::SupportContacted(_) => "support_contacted",
        Kind::Complained(_) => "complained",
        Kind::SurveyAnswered(_) => "survey_answered",
        Kind::MessageSent(_) => "message_sent",
    }
}

/// What is kept of an event beside its kind: the free text the customer typed (personal
/// data: blanked on erase), and an abandoned cart's value in minor units (so facts can be
/// replayed as of a past time).
fn detail(kind: &Kind) -> String {
    match kind {
        Kind::Searched(s) => s.query.clone(),
        Kind::Complained(c) => c.text.clone(),
        Kind::SurveyAnswered(s) => format!("{}: {}", s.question, s.answer),
        Kind::SupportContacted(s) => s.topic.clone(),
        Kind::ProductViewed(p) => format!("{} {}", p.sku, p.category),
        Kind::CartAbandoned(c) => c
            .value
            .as_ref()
            .map(|m| m.amount_minor.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Folds one event into the facts.
fn apply(state: &mut FactsState, kind: &Kind, at_us: i64) {
    let cart_value = match kind {
        Kind::CartAbandoned(cart) => cart.value.as_ref().map_or(0, |m| m.amount_minor),
        _ => 0,
    };
    apply_named(state, kind_name(kind), at_us, cart_value);
}

/// Folds one event, named as stored, into the facts (the replay of facts as of a past
/// time reads the stored rows: `detail` holds a cart's value).
pub(crate) fn apply_stored(state: &mut FactsState, kind: &str, at_us: i64, detail: &str) {
    let cart_value = if kind == "cart_abandoned" {
        detail.parse().unwrap_or(0)
    } else {
        0
    };
    apply_named(state, kind, at_us, cart_value);
}

fn apply_named(state: &mut FactsState, kind: &str, at_us: i64, cart_value_minor: i64) {
    let max = |slot: &mut Option<i64>| *slot = Some(slot.map_or(at_us, |t| t.max(at_us)));
    match kind {
        "message_opened" => state.apply_open(at_us),
        "message_clicked" => {
            max(&mut state.last_click_us);
            state.apply_open(at_us);
        }
        "message_sent" => state.apply_sent(at_us),
        "site_visited" => max(&mut state.last_visit_us),
        "cart_abandoned" => {
            if state.last_cart_us.is_none_or(|t| at_us >= t) {
                state.last_cart_value_minor = cart_value_minor;
            }
            max(&mut state.last_cart_us);
        }
        "product_viewed" => max(&mut state.last_product_view_us),
        "support_contacted" | "complained" => max(&mut state.last_support_us),
        _ => {}
    }
}

impl Profiles {
    /// Records engagement events; returns (recorded, duplicates).
    pub(crate) async fn record_engagement(
        &self,
        tenant: &str,
        events: Vec<EngagementEvent>,
    ) -> Result<(i32, i32), ServiceError> {
        let now = self.clock.now();
        let mut v = Violations::default();
        if events.is_empty() || events.len() > MAX_BATCH {
            v.add("events", format!("must hold 1 to {MAX_BATCH} events"));
        }
        for (i, e) in events.iter().enumerate() {
            validate::id(&mut v, &format!("events[{i}].event_id"), &e.event_id);
            validate::id(&mut v, &format!("events[{i}].customer_id"), &e.customer_id);
            match &e.occurred_at {
                None => v.add(format!("events[{i}].occurred_at"), "is required"),
                Some(ts) if micros(ts) > (now + MAX_CLOCK_SKEW).timestamp_micros() => {
                    v.add(format!("events[{i}].occurred_at"), "is in the future");
                }
                Some(_) => {}
            }
            match &e.kind {
                None => v.add(format!("events[{i}].kind"), "is required"),
                Some(Kind::CartAbandoned(cart)) if cart.value.is_some() => {
                    validate::money(
                        &mut v,
                        &format!("events[{i}].cart_abandoned.value"),
                        cart.value.as_ref(),
                    );
                }
                Some(_) => {}
            }
        }
        if !v.is_empty() {
            return Err(ServiceError::InvalidArgument(v.0));
        }
        let (_writer, txn) = self.begin_write().await?;
        let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        let known = rows::existing_ids(&txn, "engagement_events", "event_id", tenant, &ids).await?;
        let customer_ids: Vec<String> = events
            .iter()
            .map(|e| e.customer_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let customers = rows::customers(&txn, tenant, &customer_ids).await?;
        if let Some((i, e)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| !customers.contains_key(&e.customer_id))
        {
            return Err(ServiceError::not_found_at(
                "customer",
                &e.customer_id,
                format!("events[{i}].customer_id"),
            ));
        }
        let mut states: HashMap<String, FactsState> =
            rows::facts_states(&txn, tenant, &customer_ids).await?;

        let mut fresh: Vec<&EngagementEvent> = Vec::new();
        let mut seen = HashSet::new();
        for e in &events {
            if !known.contains(&e.event_id)
                && seen.insert(e.event_id.as_str())
                && !customers[&e.customer_id].erased
            {
                fresh.push(e);
            }
        }
        let duplicates = (events.len() - fresh.len()) as i32;
        // Apply in time order, so streaks and "last" values mean what they say.
        fresh.sort_by_key(|e| e.occurred_at.as_ref().map(micros).unwrap_or_default());

        let mut rows_out = Vec::new();
        let mut out_events = Vec::new();
        let mut touched = HashSet::new();
        let mut refusals = ConsentWrites::default();
        for e in &fresh {
            let Some(kind) = &e.kind else { continue };
            let at_us = e.occurred_at.as_ref().map(micros).unwrap_or_default();
            let state = states.entry(e.customer_id.clone()).or_default();
            apply(state, kind, at_us);
            state.updated_at_us = now.timestamp_micros();
            touched.insert(e.customer_id.clone());
            let refusal = match kind {
                Kind::Complained(c) if c.do_not_contact => Some("complaint"),
                Kind::SurveyAnswered(s) if s.do_not_contact => Some("survey"),
                _ => None,
            };
            if let Some(source) = refusal {
                let changes = refuse_everything(source, at_us);
                refusals.add(now, tenant, &e.customer_id, state, &changes, true);
            }
            rows_out.push(vec![
                tenant.into(),
                e.event_id.clone().into(),
                e.customer_id.clone().into(),
                kind_name(kind).into(),
                at_us.into(),
                detail(kind).into(),
            ]);
            let (message_id, value) = match kind {
                Kind::MessageOpened(m) => (m.message_id.clone(), None),
                Kind::MessageClicked(m) => (m.message_id.clone(), None),
                Kind::MessageSent(m) => (m.message_id.clone(), None),
                Kind::CartAbandoned(c) => (String::new(), c.value.clone()),
                _ => (String::new(), None),
            };
            out_events.push((
                tenant.to_owned(),
                now,
                Payload::EngagementRecorded(EngagementRecorded {
                    customer_id: e.customer_id.clone(),
                    kind: kind_name(kind).to_owned(),
                    message_id,
                    value,
                }),
            ));
        }
        rows::insert_many(
            &txn,
            "INSERT INTO engagement_events (tenant_id, event_id, customer_id, kind, occurred_at_us, detail)",
            "",
            rows_out,
        )
        .await?;
        refusals.write(self, &txn).await?;
        rows::save_touched_facts(&txn, tenant, &states, &touched).await?;
        self.outbox.append_many(&txn, out_events).await?;
        txn.commit().await?;
        self.outbox.notify_committed();
        Ok((fresh.len() as i32, duplicates))
    }
}
