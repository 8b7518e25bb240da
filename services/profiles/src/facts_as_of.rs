//! `StreamFacts` as of a past time: each customer's facts rebuilt from what was stored at
//! or before it — orders placed (net of the refunds made by then, without those cancelled
//! by then) and engagement events (opens, clicks and sends from delivery's feed included).
//! Contact details, consent, bonus balances and suppressions are taken as they are now:
//! they carry no history here. This is the backtest path ("who would we have targeted on
//! 1 March?"): it reads every order of the tenant, so it is far slower than the stored
//! facts, and segmentation only asks for it when an as-of time is given.

use tokio::sync::mpsc;
use tonic::Status;

use crate::context::Profiles;
use crate::domain::facts::FactsState;
use crate::engagement::apply_stored;
use crate::facts_frame::framed_facts;
use crate::facts_route::EncodedChunk;
use crate::store::rows::{self, StoredEngagement};

/// Customers rebuilt per round of queries.
const PAGE: usize = 1_000;

/// A customer's facts state as it stood at `as_of_us`, from their orders and engagement at
/// or before it; `None` when they had neither and were created after it.
pub(crate) fn state_as_of(
    mut state: FactsState,
    created_at_us: Option<i64>,
    orders: &[crate::domain::facts::OrderFact],
    engagement: &[StoredEngagement],
    as_of_us: i64,
) -> Option<FactsState> {
    if orders.is_empty() && engagement.is_empty() && created_at_us.is_none_or(|c| c > as_of_us) {
        return None;
    }
    state.recompute_orders(orders);
    state.clear_engagement();
    for event in engagement {
        apply_stored(&mut state, &event.kind, event.at_us, &event.detail);
    }
    state.updated_at_us = state.updated_at_us.min(as_of_us);
    Some(state)
}

impl Profiles {
    /// The whole tenant as of `as_of_us`, by customer id, in chunks of `chunk` (no cursor:
    /// changes since a past time are not a position in the change feed).
    pub(crate) async fn send_as_of(
        &self,
        tenant: &str,
        as_of_us: i64,
        chunk: usize,
        tx: &mpsc::Sender<Result<EncodedChunk, Status>>,
    ) -> Result<(), Status> {
        let internal = |e: sea_orm::DbErr| Status::from(winback_platform::ServiceError::from(e));
        let mut after = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut in_chunk = 0usize;
        let mut sent_any = false;
        loop {
            let page = rows::facts_states_page(&self.db, tenant, &after, PAGE)
                .await
                .map_err(internal)?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = last.clone();
            let ids: Vec<String> = page.iter().map(|(id, _, _)| id.clone()).collect();
            let mut orders = rows::order_facts_as_of(&self.db, tenant, &ids, as_of_us)
                .await
                .map_err(internal)?;
            let mut engagement = rows::engagement_as_of(&self.db, tenant, &ids, as_of_us)
                .await
                .map_err(internal)?;
            let full = page.len() == PAGE;
            for (id, state, created_at_us) in page {
                let orders = orders.remove(&id).unwrap_or_default();
                let engagement = engagement.remove(&id).unwrap_or_default();
                let Some(then) = state_as_of(state, created_at_us, &orders, &engagement, as_of_us)
                else {
                    continue;
                };
                pending.extend(framed_facts(&then.render(&id)));
                in_chunk += 1;
                if in_chunk == chunk {
                    sent_any = true;
                    let message = EncodedChunk::from_framed(&std::mem::take(&mut pending), "");
                    in_chunk = 0;
                    if tx.send(Ok(message)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            if !full {
                break;
            }
        }
        if in_chunk > 0 || !sent_any {
            let _ = tx.send(Ok(EncodedChunk::from_framed(&pending, ""))).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::facts::OrderFact;

    const DAY: i64 = 86_400_000_000;

    fn order(id: &str, day: i64, total: i64) -> OrderFact {
        OrderFact {
            order_id: id.into(),
            placed_at_us: day * DAY,
            total_minor: total,
            category_spend: Vec::new(),
        }
    }

    fn event(kind: &str, day: i64, detail: &str) -> StoredEngagement {
        StoredEngagement {
            kind: kind.into(),
            at_us: day * DAY,
            detail: detail.into(),
        }
    }

    #[test]
    fn a_state_as_of_equals_the_state_built_from_that_history_alone() {
        let orders = [order("o1", 10, 1_000), order("o2", 40, 3_000)];
        let engagement = [
            event("message_sent", 20, ""),
            event("message_sent", 25, ""),
            event("cart_abandoned", 30, "4500"),
            event("message_opened", 32, ""),
            event("message_sent", 35, ""),
        ];
        // What the live path built from this history, then more that came later.
        let mut live = FactsState {
            has_email: true,
            ..FactsState::default()
        };
        for o in &orders {
            live.apply_order(o);
        }
        for e in &engagement {
            apply_stored(&mut live, &e.kind, e.at_us, &e.detail);
        }
        let mut later = live.clone();
        later.apply_order(&order("o3", 90, 9_000));
        apply_stored(&mut later, "message_opened", 95 * DAY, "");
        let then = state_as_of(later, Some(0), &orders, &engagement, 50 * DAY).unwrap();
        assert_eq!(then.render("c"), live.render("c"));
        assert_eq!(then.consecutive_unopened, 1);
        assert_eq!(then.last_cart_value_minor, 4_500);
    }

    #[test]
    fn a_customer_with_nothing_by_then_and_created_later_is_left_out() {
        let state = FactsState::default();
        assert!(state_as_of(state.clone(), Some(60 * DAY), &[], &[], 50 * DAY).is_none());
        assert!(state_as_of(state.clone(), None, &[], &[], 50 * DAY).is_none());
        // A prospect who signed up before then stays in, as a prospect.
        let prospect = state_as_of(state, Some(10 * DAY), &[], &[], 50 * DAY).unwrap();
        assert_eq!(prospect.render("p").purchase_days, 0);
    }
}
