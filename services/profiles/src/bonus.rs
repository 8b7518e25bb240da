//! Bonus balances from the loyalty system: lots of points, each with its own expiry.

use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use winback_platform::ServiceError;
use winback_proto::profiles::{BonusBalance, BonusLot};

use crate::context::{Profiles, micros, timestamp};
use crate::store::rows;

/// A stored lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Lot {
    points: i64,
    expires_at_us: Option<i64>,
}

/// The balance of the lots still valid at `now_us`.
fn balance(lots: &[Lot], now_us: i64) -> BonusBalance {
    let live: Vec<&Lot> = lots
        .iter()
        .filter(|l| l.expires_at_us.is_none_or(|e| e > now_us))
        .collect();
    let nearest = live.iter().filter_map(|l| l.expires_at_us).min();
    BonusBalance {
        points: live.iter().map(|l| l.points).sum(),
        nearest_expiry_at: nearest.and_then(timestamp),
        points_expiring: live
            .iter()
            .filter(|l| nearest.is_some() && l.expires_at_us == nearest)
            .map(|l| l.points)
            .sum(),
        lots: live
            .iter()
            .map(|l| BonusLot {
                points: l.points,
                expires_at: l.expires_at_us.and_then(timestamp),
            })
            .collect(),
    }
}

async fn load(
    conn: &impl ConnectionTrait,
    tenant: &str,
    customer_id: &str,
) -> Result<Vec<Lot>, ServiceError> {
    let found = rows::query(
        conn,
        "SELECT lots FROM bonus_balances WHERE tenant_id = $1 AND customer_id = $2",
        vec![tenant.into(), customer_id.into()],
    )
    .await?;
    match found.first() {
        Some(row) => serde_json::from_str(&row.try_get::<String>("", "lots")?)
            .map_err(ServiceError::internal),
        None => Ok(Vec::new()),
    }
}

impl Profiles {
    async fn save_bonus(
        &self,
        txn: &impl ConnectionTrait,
        tenant: &str,
        customer_id: &str,
        lots: Vec<Lot>,
    ) -> Result<BonusBalance, ServiceError> {
        let now_us = self.now_us();
        // Expired lots are dropped when the balance is next written.
        let lots: Vec<Lot> = lots
            .into_iter()
            .filter(|l| l.expires_at_us.is_none_or(|e| e > now_us))
            .collect();
        rows::exec(
            txn,
            "INSERT INTO bonus_balances (tenant_id, customer_id, lots) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, customer_id) DO UPDATE SET lots = excluded.lots",
            vec![
                tenant.into(),
                customer_id.into(),
                serde_json::to_string(&lots)
                    .map_err(ServiceError::internal)?
                    .into(),
            ],
        )
        .await?;
        let result = balance(&lots, now_us);
        let ids = [customer_id.to_owned()];
        let mut state = rows::facts_states(txn, tenant, &ids)
            .await?
            .remove(customer_id)
            .unwrap_or_default();
        state.bonus_points = result.points;
        state.bonus_nearest_expiry_us = result.nearest_expiry_at.as_ref().map(micros);
        state.updated_at_us = now_us;
        rows::save_facts(txn, tenant, &[(customer_id, state)]).await?;
        Ok(result)
    }

    fn lots_from(&self, field: &str, lots: &[BonusLot]) -> Result<Vec<Lot>, ServiceError> {
        let now_us = self.now_us();
        lots.iter()
            .enumerate()
            .map(|(i, l)| {
                if l.points <= 0 {
                    return Err(ServiceError::invalid(
                        format!("{field}[{i}].points"),
                        "must be positive",
                    ));
                }
                let expires_at_us = l.expires_at.as_ref().map(micros);
                if expires_at_us.is_some_and(|e| e <= now_us) {
                    return Err(ServiceError::invalid(
                        format!("{field}[{i}].expires_at"),
                        "is in the past",
                    ));
                }
                Ok(Lot {
                    points: l.points,
                    expires_at_us,
                })
            })
            .collect()
    }

    /// Replaces the balance with the given lots.
    pub(crate) async fn set_bonus(
        &self,
        tenant: &str,
        customer_id: &str,
        lots: &[BonusLot],
    ) -> Result<BonusBalance, ServiceError> {
        let lots = self.lots_from("lots", lots)?;
        self.customer(tenant, customer_id, "customer_id").await?;
        let (_writer, txn) = self.begin_write().await?;
        let result = self.save_bonus(&txn, tenant, customer_id, lots).await?;
        txn.commit().await?;
        Ok(result)
    }

    /// Adds or spends points; idempotent by adjustment id.
    pub(crate) async fn adjust_bonus(
        &self,
        tenant: &str,
        customer_id: &str,
        adjustment_id: &str,
        points: i64,
        expires_at: Option<&prost_types::Timestamp>,
    ) -> Result<BonusBalance, ServiceError> {
        if adjustment_id.is_empty() || adjustment_id.chars().count() > 128 {
            return Err(ServiceError::invalid(
                "adjustment_id",
                "must be 1 to 128 characters",
            ));
        }
        if points == 0 {
            return Err(ServiceError::invalid("points", "must not be zero"));
        }
        let added = if points > 0 {
            self.lots_from(
                "expires_at",
                &[BonusLot {
                    points,
                    expires_at: expires_at.copied(),
                }],
            )?
        } else {
            Vec::new()
        };
        self.customer(tenant, customer_id, "customer_id").await?;
        let (_writer, txn) = self.begin_write().await?;
        let done = rows::query(
            &txn,
            "SELECT customer_id, points FROM bonus_adjustments WHERE tenant_id = $1 AND adjustment_id = $2",
            vec![tenant.into(), adjustment_id.into()],
        )
        .await?;
        if let Some(row) = done.first() {
            if row.try_get::<String>("", "customer_id")? != customer_id
                || row.try_get::<i64>("", "points")? != points
            {
                return Err(ServiceError::already_exists_at(
                    "adjustment",
                    adjustment_id,
                    "adjustment_id",
                ));
            }
            let lots = load(&txn, tenant, customer_id).await?;
            return Ok(balance(&lots, self.now_us()));
        }
        let now_us = self.now_us();
        let mut lots: Vec<Lot> = load(&txn, tenant, customer_id)
            .await?
            .into_iter()
            .filter(|l| l.expires_at_us.is_none_or(|e| e > now_us))
            .collect();
        if points > 0 {
            lots.extend(added);
        } else {
            // Spend the points that expire first.
            let mut to_spend = -points;
            if lots.iter().map(|l| l.points).sum::<i64>() < to_spend {
                return Err(ServiceError::FailedPrecondition(
                    "points: not enough bonus points".into(),
                ));
            }
            lots.sort_by_key(|l| l.expires_at_us.unwrap_or(i64::MAX));
            for lot in &mut lots {
                let take = lot.points.min(to_spend);
                lot.points -= take;
                to_spend -= take;
            }
            lots.retain(|l| l.points > 0);
        }
        rows::exec(
            &txn,
            "INSERT INTO bonus_adjustments (tenant_id, adjustment_id, customer_id, points) VALUES ($1, $2, $3, $4)",
            vec![tenant.into(), adjustment_id.into(), customer_id.into(), points.into()],
        )
        .await?;
        let result = self.save_bonus(&txn, tenant, customer_id, lots).await?;
        txn.commit().await?;
        Ok(result)
    }
}
