//! Facts states learn the net spend of the first purchase day (`first_day_total_minor`), so
//! `CustomerFacts.repeat_spent_minor` can say what the repeat purchase days spent — the
//! input of the Gamma-Gamma model. States written before it have no such value: every
//! repeat buyer's order facts are rebuilt from their stored orders, a page of customers at a time,
//! and written back (with a change set, as any facts write). `down` has nothing to undo:
//! older code ignores the field.

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use sea_orm_migration::prelude::*;

use super::rows;

#[derive(Debug)]
pub(crate) struct FactsFirstDay;

impl MigrationName for FactsFirstDay {
    fn name(&self) -> &str {
        "m20261207_100000_facts_first_day"
    }
}

const PAGE: usize = 1_000;

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for FactsFirstDay {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let txn = db.begin().await?;
        let tenants: Vec<String> =
            rows::query(&txn, "SELECT DISTINCT tenant_id FROM facts", vec![])
                .await?
                .iter()
                .map(|r| r.try_get("", "tenant_id"))
                .collect::<Result<_, DbErr>>()?;
        for tenant in tenants {
            rebuild_tenant(&txn, &tenant).await?;
        }
        txn.commit().await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

async fn rebuild_tenant(conn: &impl ConnectionTrait, tenant: &str) -> Result<(), DbErr> {
    let mut after = String::new();
    loop {
        let page = rows::facts_states_page(conn, tenant, &after, PAGE).await?;
        let Some((last, _, _)) = page.last() else {
            return Ok(());
        };
        after = last.clone();
        let full = page.len() == PAGE;
        // A customer of one purchase day spent everything on it; the others are rebuilt.
        let mut one_day = Vec::new();
        let mut buyers = Vec::new();
        for (id, mut state, _) in page {
            match state.purchase_days.len() {
                0 => {}
                1 => {
                    state.first_day_total_minor = state.total_minor;
                    one_day.push((id, state));
                }
                _ => buyers.push((id, state)),
            }
        }
        rows::save_facts(conn, tenant, &one_day).await?;
        let ids: Vec<String> = buyers.iter().map(|(id, _)| id.clone()).collect();
        let mut orders = rows::order_facts_as_of(conn, tenant, &ids, i64::MAX).await?;
        let rebuilt: Vec<(String, crate::domain::facts::FactsState)> = buyers
            .into_iter()
            .map(|(id, mut state)| {
                state.recompute_orders(&orders.remove(&id).unwrap_or_default());
                (id, state)
            })
            .collect();
        rows::save_facts(conn, tenant, &rebuilt).await?;
        if !full {
            return Ok(());
        }
    }
}
