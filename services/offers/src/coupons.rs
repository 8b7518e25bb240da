//! Coupons: issue (idempotent, one or a batch), read, validate, redeem (atomic and
//! one-time, idempotent by order), release, expire, and budget usage.

use chrono::DateTime;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Value};
use std::sync::Arc;
use winback_platform::ServiceError;

use winback_proto::common::{Money, PageResponse};
use winback_proto::events::event::Payload;
use winback_proto::events::{CouponExpired, CouponIssued, CouponRedeemed, CouponReleased};
use winback_proto::offers::{
    Budget, Cart, Coupon, CouponRecipient, CouponState, GetBudgetUsageResponse, IneligibleReason,
    ListCouponsRequest, ListCouponsResponse, OfferTemplate, RedeemCouponResponse,
    SweepExpiredCouponsResponse, ValidateCouponResponse,
};
use winback_proto::profiles::GetFactsRequest;

use crate::context::{Offers, db_error, page_size, timestamp};
use crate::domain::code::Code;
use crate::domain::template;
use crate::fraud::Presenter;
use crate::store::{execute, query};
use winback_platform::db::{multi_row_insert, placeholders};

/// Largest batch issue.
pub(crate) const MAX_BATCH: usize = 10_000;
/// Rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 500;

const COLUMNS: &str = "code, customer_id, template_id, campaign_id, ladder_id, rung, state, issued_at_us, expires_at_us, \
                       currency, estimated_cost_minor, real_cost_minor, order_id, idempotency_key";

/// A stored coupon.
#[derive(Debug, Clone)]
pub(crate) struct CouponRow {
    code: String,
    customer_id: String,
    template_id: String,
    campaign_id: String,
    ladder_id: String,
    rung: i64,
    state: i64,
    issued_at_us: i64,
    expires_at_us: i64,
    currency: String,
    estimated_cost_minor: i64,
    real_cost_minor: i64,
    order_id: String,
    idempotency_key: String,
}

impl CouponRow {
    fn from_row(r: &QueryResult) -> Result<Self, ServiceError> {
        let get_s = |c: &str| r.try_get::<String>("", c).map_err(db_error);
        let get_i = |c: &str| r.try_get::<i64>("", c).map_err(db_error);
        Ok(Self {
            code: get_s("code")?,
            customer_id: get_s("customer_id")?,
            template_id: get_s("template_id")?,
            campaign_id: get_s("campaign_id")?,
            ladder_id: get_s("ladder_id")?,
            rung: get_i("rung")?,
            state: get_i("state")?,
            issued_at_us: get_i("issued_at_us")?,
            expires_at_us: get_i("expires_at_us")?,
            currency: get_s("currency")?,
            estimated_cost_minor: get_i("estimated_cost_minor")?,
            real_cost_minor: get_i("real_cost_minor")?,
            order_id: get_s("order_id")?,
            idempotency_key: get_s("idempotency_key")?,
        })
    }

    fn values(&self) -> Vec<Value> {
        vec![
            self.code.clone().into(),
            self.customer_id.clone().into(),
            self.template_id.clone().into(),
            self.campaign_id.clone().into(),
            self.ladder_id.clone().into(),
            self.rung.into(),
            self.state.into(),
            self.issued_at_us.into(),
            self.expires_at_us.into(),
            self.currency.clone().into(),
            self.estimated_cost_minor.into(),
            self.real_cost_minor.into(),
            self.order_id.clone().into(),
            self.idempotency_key.clone().into(),
        ]
    }

    fn money(&self, minor: i64) -> Option<Money> {
        Some(Money {
            amount_minor: minor,
            currency: self.currency.clone(),
        })
    }

    /// The API form; `now_us` for the state and the time left.
    pub(crate) fn to_proto(&self, now_us: i64) -> Coupon {
        let expired = self.state == CouponState::Expired as i64
            || (self.state == CouponState::Active as i64 && self.expires_at_us <= now_us);
        let state = if expired {
            CouponState::Expired
        } else if self.state == CouponState::Redeemed as i64 {
            CouponState::Redeemed
        } else {
            CouponState::Active
        };
        let left_us = (self.expires_at_us - now_us).max(0);
        Coupon {
            code: Code::parse(&self.code).map_or_else(|_| self.code.clone(), |c| c.to_string()),
            customer_id: self.customer_id.clone(),
            template_id: self.template_id.clone(),
            campaign_id: self.campaign_id.clone(),
            state: state as i32,
            issued_at: timestamp(self.issued_at_us),
            expires_at: timestamp(self.expires_at_us),
            time_left: Some(prost_types::Duration {
                seconds: left_us / 1_000_000,
                nanos: ((left_us % 1_000_000) * 1000) as i32,
            }),
            estimated_cost: self.money(self.estimated_cost_minor),
            real_cost: (self.state == CouponState::Redeemed as i64)
                .then(|| self.money(self.real_cost_minor))
                .flatten(),
            order_id: self.order_id.clone(),
            ladder_id: self.ladder_id.clone(),
            rung: self.rung as i32,
        }
    }
}

/// Where a coupon is issued from.
#[derive(Debug, Clone, Default)]
pub(crate) struct IssueFrom {
    pub(crate) template_id: String,
    pub(crate) campaign_id: String,
    pub(crate) ladder_id: String,
}

fn ineligible(reason: IneligibleReason) -> ServiceError {
    let name = reason
        .as_str_name()
        .trim_start_matches("INELIGIBLE_REASON_")
        .to_ascii_lowercase();
    ServiceError::FailedPrecondition(format!("coupon not usable: {name}"))
}

impl Offers {
    /// Issues coupons of one template to `recipients` (all or none). A recipient whose
    /// idempotency key was used before gets that coupon back.
    pub(crate) async fn issue(
        &self,
        tenant: &str,
        from: IssueFrom,
        recipients: Vec<CouponRecipient>,
        field: &str,
    ) -> Result<Vec<Coupon>, ServiceError> {
        if recipients.is_empty() || recipients.len() > MAX_BATCH {
            return Err(ServiceError::invalid(field, "1–10000 recipients"));
        }
        for (i, r) in recipients.iter().enumerate() {
            let at = |f: &str| {
                if recipients.len() == 1 && field == "customer_id" {
                    f.to_owned()
                } else {
                    format!("{field}[{i}].{f}")
                }
            };
            if r.customer_id.trim().is_empty() {
                return Err(ServiceError::invalid(at("customer_id"), "is required"));
            }
            if r.idempotency_key.trim().is_empty() || r.idempotency_key.len() > 200 {
                return Err(ServiceError::invalid(
                    at("idempotency_key"),
                    "an idempotency key of 1–200 characters is required",
                ));
            }
        }
        let t = self
            .template(tenant, &from.template_id, "template_id")
            .await?;
        let rung = if from.ladder_id.is_empty() {
            0
        } else {
            let ladder = self.ladder(tenant, &from.ladder_id, "ladder_id").await?;
            ladder
                .template_ids
                .iter()
                .position(|id| *id == from.template_id)
                .ok_or_else(|| {
                    ServiceError::invalid("ladder_id", "the template is not a rung of this ladder")
                })? as i64
        };
        let now_us = self.now_us();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let existing = coupons_by_keys(
            &txn,
            tenant,
            recipients
                .iter()
                .map(|r| r.idempotency_key.clone())
                .collect(),
        )
        .await?;
        let mut out: Vec<Option<CouponRow>> = vec![None; recipients.len()];
        let mut fresh = Vec::new();
        for (i, r) in recipients.iter().enumerate() {
            match existing
                .iter()
                .find(|c| c.idempotency_key == r.idempotency_key)
            {
                Some(c) if c.customer_id == r.customer_id && c.template_id == from.template_id => {
                    out[i] = Some(c.clone())
                }
                Some(_) => {
                    return Err(ServiceError::already_exists_at(
                        "coupon",
                        &r.idempotency_key,
                        format!("{field}[{i}].idempotency_key"),
                    ));
                }
                None => fresh.push(i),
            }
        }
        if !fresh.is_empty() {
            if t.archived {
                return Err(ServiceError::FailedPrecondition(format!(
                    "offer template {} is archived",
                    t.template_id
                )));
            }
            let expires_at_us = template::expiry(&t, now_us / 1_000_000) * 1_000_000;
            if expires_at_us <= now_us {
                return Err(ServiceError::FailedPrecondition(format!(
                    "offer template {} has expired",
                    t.template_id
                )));
            }
            self.check_per_customer_limit(&txn, tenant, &t, &recipients, &fresh, field)
                .await?;
            let estimated = t.estimated_cost.as_ref().map_or(0, |m| m.amount_minor);
            reserve_budget(
                &txn,
                tenant,
                &t,
                fresh.len() as i64,
                estimated * fresh.len() as i64,
            )
            .await?;
            let currency = template::currency(&t);
            let mut rows = Vec::with_capacity(fresh.len());
            for &i in &fresh {
                let code = Code::generate(&t.code_prefix)
                    .map_err(|_| ServiceError::internal("the system random generator failed"))?;
                let row = CouponRow {
                    code: code.canonical().to_owned(),
                    customer_id: recipients[i].customer_id.clone(),
                    template_id: t.template_id.clone(),
                    campaign_id: from.campaign_id.clone(),
                    ladder_id: from.ladder_id.clone(),
                    rung,
                    state: CouponState::Active as i64,
                    issued_at_us: now_us,
                    expires_at_us,
                    currency: currency.clone(),
                    estimated_cost_minor: estimated,
                    real_cost_minor: 0,
                    order_id: String::new(),
                    idempotency_key: recipients[i].idempotency_key.clone(),
                };
                out[i] = Some(row.clone());
                rows.push(row);
            }
            insert_coupons(&txn, tenant, &rows).await?;
            if !from.campaign_id.is_empty() {
                add_usage(
                    &txn,
                    tenant,
                    &format!("campaign:{}", from.campaign_id),
                    rows.len() as i64,
                    0,
                    estimated * rows.len() as i64,
                    0,
                )
                .await?;
            }
            let now = DateTime::from_timestamp_micros(now_us).unwrap_or_default();
            let events = rows
                .iter()
                .map(|c| {
                    (
                        tenant.to_owned(),
                        now,
                        Payload::CouponIssued(CouponIssued {
                            code: c.code.clone(),
                            customer_id: c.customer_id.clone(),
                            template_id: c.template_id.clone(),
                            campaign_id: c.campaign_id.clone(),
                            estimated_cost: c.money(c.estimated_cost_minor),
                            expires_at: timestamp(c.expires_at_us),
                        }),
                    )
                })
                .collect();
            self.outbox
                .append_many(&txn, events)
                .await
                .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        self.outbox.notify_committed();
        Ok(out
            .into_iter()
            .flatten()
            .map(|c| c.to_proto(now_us))
            .collect())
    }

    async fn check_per_customer_limit<C: ConnectionTrait>(
        &self,
        txn: &C,
        tenant: &str,
        t: &OfferTemplate,
        recipients: &[CouponRecipient],
        fresh: &[usize],
        field: &str,
    ) -> Result<(), ServiceError> {
        let limit = i64::from(
            t.conditions
                .as_ref()
                .map_or(1, |c| c.per_customer_limit.max(1)),
        );
        let customers: Vec<String> = fresh
            .iter()
            .map(|&i| recipients[i].customer_id.clone())
            .collect();
        let mut held: std::collections::HashMap<String, i64> = Default::default();
        let postgres = txn.get_database_backend() == DbBackend::Postgres;
        // PostgreSQL takes the whole list as one array parameter.
        let chunk_size = if postgres {
            MAX_BATCH
        } else {
            ROWS_PER_STATEMENT
        };
        for chunk in customers.chunks(chunk_size) {
            let mut values: Vec<Value> = vec![tenant.into(), t.template_id.clone().into()];
            let listed = if postgres {
                values.push(chunk.to_vec().into());
                "= ANY($3)".to_owned()
            } else {
                values.extend(chunk.iter().map(|c| Value::from(c.clone())));
                format!("IN ({})", placeholders(3, chunk.len()))
            };
            let sql = format!(
                "SELECT customer_id, COUNT(*) AS n FROM coupons WHERE tenant_id = $1 AND template_id = $2 AND customer_id {listed} GROUP BY customer_id"
            );
            for row in query(txn, &sql, values).await.map_err(db_error)? {
                held.insert(
                    row.try_get("", "customer_id").map_err(db_error)?,
                    row.try_get("", "n").map_err(db_error)?,
                );
            }
        }
        for &i in fresh {
            let n = held.entry(recipients[i].customer_id.clone()).or_insert(0);
            *n += 1;
            if *n > limit {
                let at = if field == "customer_id" {
                    "customer_id".to_owned()
                } else {
                    format!("{field}[{i}].customer_id")
                };
                return Err(ServiceError::FailedPrecondition(format!(
                    "{at}: customer {} already holds {limit} coupon(s) of this template",
                    recipients[i].customer_id
                )));
            }
        }
        Ok(())
    }

    /// A coupon by the code as typed.
    pub(crate) async fn coupon(&self, tenant: &str, typed: &str) -> Result<Coupon, ServiceError> {
        let code = Code::parse(typed).map_err(|e| ServiceError::invalid("code", e.to_string()))?;
        let row = find(&self.db, tenant, code.canonical(), false)
            .await?
            .ok_or_else(|| ServiceError::not_found_at("coupon", typed, "code"))?;
        Ok(row.to_proto(self.now_us()))
    }

    /// Coupons by filter, by code.
    pub(crate) async fn list_coupons(
        &self,
        tenant: &str,
        r: ListCouponsRequest,
    ) -> Result<ListCouponsResponse, ServiceError> {
        let page = r.page.unwrap_or_default();
        let size = page_size(&page)?;
        let state = CouponState::try_from(r.state)
            .map_err(|_| ServiceError::invalid("state", "unknown coupon state"))?;
        let now_us = self.now_us();
        // Expiry is by the clock: an active coupon past its time lists as expired.
        let state_sql = match state {
            CouponState::Unspecified => "TRUE",
            CouponState::Active => "(state = 1 AND expires_at_us > $5)",
            CouponState::Redeemed => "state = 2",
            CouponState::Expired => "(state = 3 OR (state = 1 AND expires_at_us <= $5))",
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND ($2 = '' OR customer_id = $2) AND ($3 = '' OR campaign_id = $3)
               AND code > $4 AND {state_sql} AND $5 = $5 ORDER BY code LIMIT $6"
        );
        let rows = query(
            &self.db,
            &sql,
            vec![
                tenant.into(),
                r.customer_id.into(),
                r.campaign_id.into(),
                page.page_token.into(),
                now_us.into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut coupons = rows
            .iter()
            .map(CouponRow::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = crate::templates::next_token(&mut coupons, size, |c| c.code.clone());
        Ok(ListCouponsResponse {
            coupons: coupons.iter().map(|c| c.to_proto(now_us)).collect(),
            page: Some(PageResponse { next_page_token }),
        })
    }

    /// Whether the presenter can use the code on the cart, and for what discount.
    pub(crate) async fn validate(
        &self,
        tenant: &str,
        typed: &str,
        who: &Presenter,
        cart: &Cart,
    ) -> Result<ValidateCouponResponse, ServiceError> {
        if who.customer_id.trim().is_empty() {
            return Err(ServiceError::invalid("customer_id", "is required"));
        }
        let presented = match Code::parse(typed) {
            Ok(code) => self.presented(tenant, code.canonical(), who).await?,
            Err(_) => Presented {
                locked_until_us: self.locked_until(tenant, who).await?,
                coupon: None,
            },
        };
        if let Some(until) = presented.locked_until_us {
            return Ok(ValidateCouponResponse {
                eligible: false,
                reason: IneligibleReason::Locked as i32,
                discount: None,
                locked_until: timestamp(until),
            });
        }
        let Some((coupon, t)) = presented.coupon else {
            self.record_failure(tenant, who, typed, "failed_attempt")
                .await?;
            return Ok(reason(IneligibleReason::Unknown));
        };
        match self.check(tenant, &coupon, &t, who, cart, None).await? {
            Ok(discount) => Ok(ValidateCouponResponse {
                eligible: true,
                reason: 0,
                discount: coupon.money(discount),
                locked_until: None,
            }),
            Err(r) => {
                if r == IneligibleReason::NotOwner {
                    self.record_failure(tenant, who, typed, "not_owner").await?;
                }
                Ok(reason(r))
            }
        }
    }

    /// Everything but the lock: owner, state, expiry, conditions, budget. Records nothing
    /// (the caller records failures once it holds no write lock).
    async fn check(
        &self,
        tenant: &str,
        coupon: &CouponRow,
        t: &OfferTemplate,
        who: &Presenter,
        cart: &Cart,
        redeeming_order: Option<&str>,
    ) -> Result<Result<i64, IneligibleReason>, ServiceError> {
        if coupon.customer_id != who.customer_id {
            return Ok(Err(IneligibleReason::NotOwner));
        }
        if coupon.state == CouponState::Redeemed as i64 {
            if redeeming_order.is_some_and(|o| o == coupon.order_id) {
                return Ok(Ok(coupon.real_cost_minor));
            }
            return Ok(Err(IneligibleReason::AlreadyUsed));
        }
        if coupon.state == CouponState::Expired as i64 || coupon.expires_at_us <= self.now_us() {
            return Ok(Err(IneligibleReason::Expired));
        }
        if let Some(total) = &cart.total {
            winback_platform::money::check_currency("cart.total", total)
                .map_err(|v| ServiceError::InvalidArgument(vec![v]))?;
        }
        if let Some(total) = &cart.total
            && !coupon.currency.is_empty()
            && total.currency != coupon.currency
        {
            return Err(ServiceError::invalid(
                "cart.total.currency",
                format!("the coupon is in {}", coupon.currency),
            ));
        }
        let discount = match template::discount_on(t, cart) {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(max) = t
            .budget
            .as_ref()
            .and_then(|b| b.max_discount.as_ref())
            .filter(|m| m.amount_minor > 0)
        {
            let usage = usage(&self.db, tenant, &format!("template:{}", t.template_id)).await?;
            if usage.3 + template::real_cost(t, discount) > max.amount_minor {
                return Ok(Err(IneligibleReason::BudgetSpent));
            }
        }
        if t.conditions.as_ref().is_some_and(|c| c.first_order_only)
            && self.bought_since_issue(tenant, coupon).await?
        {
            return Ok(Err(IneligibleReason::NotFirstOrder));
        }
        Ok(Ok(discount))
    }

    /// Redeems the code on an order: exactly one of any number of racing redemptions wins.
    ///
    /// The hot path is two round trips: one read (lockout, coupon and template together)
    /// and one conditional write that flips the coupon and appends its event atomically.
    pub(crate) async fn redeem(
        &self,
        tenant: &str,
        typed: &str,
        who: &Presenter,
        order_id: &str,
        order: &Cart,
    ) -> Result<RedeemCouponResponse, ServiceError> {
        if who.customer_id.trim().is_empty() {
            return Err(ServiceError::invalid("customer_id", "is required"));
        }
        if order_id.trim().is_empty() {
            return Err(ServiceError::invalid("order_id", "is required"));
        }
        if order.total.as_ref().is_none_or(|m| m.amount_minor < 0) {
            return Err(ServiceError::invalid(
                "order.total",
                "a non-negative order total is required",
            ));
        }
        let code = match Code::parse(typed) {
            Ok(code) => code,
            Err(e) => {
                if let Some(until) = self.locked_until(tenant, who).await? {
                    return Err(locked_out(until, self.now_us()));
                }
                self.record_failure(tenant, who, typed, "failed_attempt")
                    .await?;
                return Err(ServiceError::invalid("code", e.to_string()));
            }
        };
        let presented = self.presented(tenant, code.canonical(), who).await?;
        if let Some(until) = presented.locked_until_us {
            return Err(locked_out(until, self.now_us()));
        }
        let Some((seen, t)) = presented.coupon else {
            self.record_failure(tenant, who, typed, "failed_attempt")
                .await?;
            return Err(ServiceError::not_found_at("coupon", typed, "code"));
        };
        let discount = match self
            .check(tenant, &seen, &t, who, order, Some(order_id))
            .await?
        {
            Ok(d) => d,
            Err(reason) => return Err(self.refuse(tenant, who, typed, reason).await),
        };
        let now_us = self.now_us();
        if seen.state == CouponState::Redeemed as i64 {
            // The same order again: the same answer.
            return Ok(RedeemCouponResponse {
                coupon: Some(seen.to_proto(now_us)),
                discount: seen.money(discount),
            });
        }
        let cost = template::real_cost(&t, discount);
        let payload = Payload::CouponRedeemed(CouponRedeemed {
            code: seen.code.clone(),
            customer_id: seen.customer_id.clone(),
            template_id: seen.template_id.clone(),
            campaign_id: seen.campaign_id.clone(),
            order_id: order_id.to_owned(),
            order_value: order.total.clone(),
            discount: seen.money(cost),
        });
        // Only a still-active, unexpired coupon flips: on PostgreSQL racing redemptions
        // queue on the row and re-check the condition; on SQLite the writer lock queues them.
        // Redemption totals are summed from the coupons when asked for: a running-total row
        // here would make every redemption of a template queue on one row lock.
        let won = {
            let _writer = self.writer_lock().await;
            self.outbox
                .append_if_changed(
                    &self.db,
                    "UPDATE coupons SET state = 2, order_id = $3, real_cost_minor = $4 \
                     WHERE tenant_id = $1 AND code = $2 AND state = 1 AND expires_at_us > $5",
                    vec![
                        tenant.into(),
                        seen.code.clone().into(),
                        order_id.into(),
                        cost.into(),
                        now_us.into(),
                    ],
                    tenant,
                    self.clock.now(),
                    payload,
                )
                .await
                .map_err(db_error)?
        };
        if won {
            self.outbox.notify_committed();
            winback_platform::metrics::coupon_redeemed(tenant);
            let redeemed = CouponRow {
                state: CouponState::Redeemed as i64,
                order_id: order_id.to_owned(),
                real_cost_minor: cost,
                ..seen
            };
            return Ok(RedeemCouponResponse {
                coupon: Some(redeemed.to_proto(now_us)),
                discount: redeemed.money(discount),
            });
        }
        // Lost a race, or the coupon changed since it was read: answer from what it is now.
        let coupon = find(&self.db, tenant, code.canonical(), false)
            .await?
            .unwrap_or(seen);
        if coupon.state == CouponState::Redeemed as i64 && coupon.order_id == order_id {
            return Ok(RedeemCouponResponse {
                coupon: Some(coupon.to_proto(now_us)),
                discount: coupon.money(coupon.real_cost_minor),
            });
        }
        let reason = if coupon.state == CouponState::Redeemed as i64 {
            IneligibleReason::AlreadyUsed
        } else {
            IneligibleReason::Expired
        };
        Err(self.refuse(tenant, who, typed, reason).await)
    }

    /// The presenter's lockout and the coupon in one query, and the coupon's template
    /// (its terms never change after creation, so they are cached).
    async fn presented(
        &self,
        tenant: &str,
        code: &str,
        who: &Presenter,
    ) -> Result<Presented, ServiceError> {
        let [customer, source] = who.subjects();
        let rows = query(
            &self.db,
            &format!(
                "SELECT {COLUMNS}, (SELECT MAX(locked_until_us) FROM attempt_counters \
                 WHERE tenant_id = $1 AND subject IN ($3, $4)) AS locked_until_us \
                 FROM coupons WHERE tenant_id = $1 AND code = $2"
            ),
            vec![tenant.into(), code.into(), customer.into(), source.into()],
        )
        .await
        .map_err(db_error)?;
        let Some(row) = rows.first() else {
            return Ok(Presented {
                locked_until_us: self.locked_until(tenant, who).await?,
                coupon: None,
            });
        };
        let now = self.now_us();
        let locked_until_us = row
            .try_get::<Option<i64>>("", "locked_until_us")
            .map_err(db_error)?
            .filter(|&u| u > now);
        let coupon = CouponRow::from_row(row)?;
        let terms = self.terms(tenant, &coupon.template_id).await?;
        Ok(Presented {
            locked_until_us,
            coupon: Some((coupon, terms)),
        })
    }

    /// Whether the customer bought anything after the coupon was issued (for offers valid
    /// only on the first order after the offer), asked of profiles.
    async fn bought_since_issue(
        &self,
        tenant: &str,
        coupon: &CouponRow,
    ) -> Result<bool, ServiceError> {
        let mut profiles = self.profiles.client(tenant)?;
        let reply = profiles
            .get_facts(GetFactsRequest {
                customer_id: coupon.customer_id.clone(),
            })
            .await;
        match reply {
            Ok(reply) => Ok(reply
                .into_inner()
                .facts
                .and_then(|f| f.last_purchase_at)
                .is_some_and(|t| {
                    t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000 > coupon.issued_at_us
                })),
            // A customer profiles has never seen has bought nothing.
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(ServiceError::Unavailable(format!(
                "profiles.GetFacts (needed for a first-order-only offer): {}",
                status.message()
            ))),
        }
    }

    /// The error for an ineligible redemption, after recording what fraud control should see:
    /// a code presented by someone other than its owner counts as a failed attempt; the
    /// owner presenting a used coupon again is only recorded.
    async fn refuse(
        &self,
        tenant: &str,
        who: &Presenter,
        typed: &str,
        reason: IneligibleReason,
    ) -> ServiceError {
        let recorded = match reason {
            IneligibleReason::NotOwner => {
                self.record_failure(tenant, who, typed, "not_owner").await
            }
            IneligibleReason::AlreadyUsed => self.record_signal(tenant, who, typed, "reuse").await,
            _ => Ok(()),
        };
        match recorded {
            Ok(()) => ineligible(reason),
            Err(e) => e,
        }
    }

    /// Gives a coupon back after its order was cancelled (idempotent).
    pub(crate) async fn release(
        &self,
        tenant: &str,
        typed: &str,
        order_id: &str,
    ) -> Result<Coupon, ServiceError> {
        let code = Code::parse(typed).map_err(|e| ServiceError::invalid("code", e.to_string()))?;
        if order_id.trim().is_empty() {
            return Err(ServiceError::invalid("order_id", "is required"));
        }
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let coupon = find(&txn, tenant, code.canonical(), true)
            .await?
            .ok_or_else(|| ServiceError::not_found_at("coupon", typed, "code"))?;
        let now_us = self.now_us();
        if coupon.state != CouponState::Redeemed as i64 {
            return Ok(coupon.to_proto(now_us));
        }
        if coupon.order_id != order_id {
            return Err(ServiceError::invalid(
                "order_id",
                "the coupon was redeemed on another order",
            ));
        }
        execute(
            &txn,
            "UPDATE coupons SET state = 1, order_id = '', real_cost_minor = 0 WHERE tenant_id = $1 AND code = $2",
            vec![tenant.into(), coupon.code.clone().into()],
        )
        .await
        .map_err(db_error)?;
        let payload = Payload::CouponReleased(CouponReleased {
            code: coupon.code.clone(),
            customer_id: coupon.customer_id.clone(),
            order_id: order_id.to_owned(),
        });
        self.outbox
            .append(&txn, tenant, self.clock.now(), payload)
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        self.outbox.notify_committed();
        let released = CouponRow {
            state: CouponState::Active as i64,
            order_id: String::new(),
            real_cost_minor: 0,
            ..coupon
        };
        Ok(released.to_proto(now_us))
    }

    /// Marks active coupons past their expiry as expired and reports them.
    pub(crate) async fn sweep(
        &self,
        tenant: &str,
        limit: i32,
    ) -> Result<SweepExpiredCouponsResponse, ServiceError> {
        if !(0..=100_000).contains(&limit) {
            return Err(ServiceError::invalid(
                "limit",
                "must be between 0 and 100000",
            ));
        }
        let limit = if limit == 0 { 10_000 } else { i64::from(limit) };
        let now_us = self.now_us();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let rows = query(
            &txn,
            &format!("SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND state = 1 AND expires_at_us <= $2 ORDER BY expires_at_us LIMIT $3"),
            vec![tenant.into(), now_us.into(), limit.into()],
        )
        .await
        .map_err(db_error)?;
        let expired = rows
            .iter()
            .map(CouponRow::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for chunk in expired.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE coupons SET state = 3 WHERE tenant_id = $1 AND state = 1 AND code IN ({})",
                placeholders(2, chunk.len())
            );
            let mut values: Vec<Value> = vec![tenant.into()];
            values.extend(chunk.iter().map(|c| Value::from(c.code.clone())));
            execute(&txn, &sql, values).await.map_err(db_error)?;
        }
        let now = self.clock.now();
        let events = expired
            .iter()
            .map(|c| {
                (
                    tenant.to_owned(),
                    now,
                    Payload::CouponExpired(CouponExpired {
                        code: c.code.clone(),
                        customer_id: c.customer_id.clone(),
                        campaign_id: c.campaign_id.clone(),
                    }),
                )
            })
            .collect();
        self.outbox
            .append_many(&txn, events)
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        self.outbox.notify_committed();
        Ok(SweepExpiredCouponsResponse {
            expired: expired.len() as i64,
            codes: expired.iter().map(|c| c.to_proto(now_us).code).collect(),
        })
    }

    /// Usage of a template's budget, or of a campaign's coupons.
    pub(crate) async fn budget_usage(
        &self,
        tenant: &str,
        template_id: &str,
        campaign_id: &str,
    ) -> Result<GetBudgetUsageResponse, ServiceError> {
        let (scope, budget, currency) = match (template_id.is_empty(), campaign_id.is_empty()) {
            (false, true) => {
                let t = self.template(tenant, template_id, "template_id").await?;
                (
                    format!("template:{template_id}"),
                    t.budget.clone().unwrap_or_default(),
                    template::currency(&t),
                )
            }
            (true, false) => (
                format!("campaign:{campaign_id}"),
                Budget::default(),
                String::new(),
            ),
            _ => {
                return Err(ServiceError::invalid(
                    "template_id",
                    "give template_id or campaign_id",
                ));
            }
        };
        let (issued, redeemed, estimated, real) = usage(&self.db, tenant, &scope).await?;
        let currency = if currency.is_empty() {
            campaign_currency(&self.db, tenant, campaign_id).await?
        } else {
            currency
        };
        let money = |minor| {
            Some(Money {
                amount_minor: minor,
                currency: currency.clone(),
            })
        };
        Ok(GetBudgetUsageResponse {
            budget: Some(budget),
            coupons_issued: issued,
            coupons_redeemed: redeemed,
            estimated_cost: money(estimated),
            real_cost: money(real),
        })
    }
}

/// What a redemption reads before it writes.
#[derive(Debug, Default)]
struct Presented {
    /// The end of the presenter's lockout, if locked now.
    locked_until_us: Option<i64>,
    /// The coupon and its template, if the code exists for the tenant.
    coupon: Option<(CouponRow, Arc<OfferTemplate>)>,
}

/// A lockout: RESOURCE_EXHAUSTED with RetryInfo saying when it ends.
fn locked_out(until_us: i64, now_us: i64) -> ServiceError {
    ServiceError::QuotaExceeded {
        limit: "failed_attempts",
        description: format!(
            "too many failed attempts: locked until {}",
            DateTime::from_timestamp_micros(until_us)
                .unwrap_or_default()
                .to_rfc3339()
        ),
        retry_after: std::time::Duration::from_micros(
            u64::try_from(until_us - now_us).unwrap_or_default(),
        ),
    }
}

fn reason(r: IneligibleReason) -> ValidateCouponResponse {
    ValidateCouponResponse {
        eligible: false,
        reason: r as i32,
        discount: None,
        locked_until: None,
    }
}

async fn find<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    code: &str,
    for_update: bool,
) -> Result<Option<CouponRow>, ServiceError> {
    let lock = if for_update && db.get_database_backend() == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let rows = query(
        db,
        &format!("SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND code = $2{lock}"),
        vec![tenant.into(), code.into()],
    )
    .await
    .map_err(db_error)?;
    rows.first().map(CouponRow::from_row).transpose()
}

async fn coupons_by_keys<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    keys: Vec<String>,
) -> Result<Vec<CouponRow>, ServiceError> {
    let mut out = Vec::new();
    if db.get_database_backend() == DbBackend::Postgres {
        // One statement with an array parameter, however big the batch.
        let sql = format!(
            "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND idempotency_key = ANY($2)"
        );
        for row in query(db, &sql, vec![tenant.into(), keys.into()])
            .await
            .map_err(db_error)?
        {
            out.push(CouponRow::from_row(&row)?);
        }
        return Ok(out);
    }
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND idempotency_key IN ({})",
            placeholders(2, chunk.len())
        );
        let mut values: Vec<Value> = vec![tenant.into()];
        values.extend(chunk.iter().map(|k| Value::from(k.clone())));
        for row in query(db, &sql, values).await.map_err(db_error)? {
            out.push(CouponRow::from_row(&row)?);
        }
    }
    Ok(out)
}

async fn insert_coupons<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    rows: &[CouponRow],
) -> Result<(), ServiceError> {
    let backend = db.get_database_backend();
    if backend == DbBackend::Postgres {
        // Column arrays and UNNEST: one statement of fifteen parameters for the whole batch.
        let text = |f: fn(&CouponRow) -> &String| -> Value {
            rows.iter().map(|r| f(r).clone()).collect::<Vec<_>>().into()
        };
        let int =
            |f: fn(&CouponRow) -> i64| -> Value { rows.iter().map(f).collect::<Vec<_>>().into() };
        let values = vec![
            tenant.into(),
            text(|r| &r.code),
            text(|r| &r.customer_id),
            text(|r| &r.template_id),
            text(|r| &r.campaign_id),
            text(|r| &r.ladder_id),
            int(|r| r.rung),
            int(|r| r.state),
            int(|r| r.issued_at_us),
            int(|r| r.expires_at_us),
            text(|r| &r.currency),
            int(|r| r.estimated_cost_minor),
            int(|r| r.real_cost_minor),
            text(|r| &r.order_id),
            text(|r| &r.idempotency_key),
        ];
        execute(
            db,
            &format!(
                "INSERT INTO coupons (tenant_id, {COLUMNS}) SELECT $1, * FROM UNNEST(\
                 $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], \
                 $9::bigint[], $10::bigint[], $11::text[], $12::bigint[], $13::bigint[], $14::text[], $15::text[])"
            ),
            values,
        )
        .await
        .map_err(db_error)?;
        return Ok(());
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = chunk.iter().map(|row| {
            let mut values: Vec<Value> = vec![tenant.into()];
            values.extend(row.values());
            values
        });
        let head = format!("INSERT INTO coupons (tenant_id, {COLUMNS})");
        db.execute_raw(multi_row_insert(backend, &head, values))
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

/// Adds to a scope's running totals.
async fn add_usage<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    scope: &str,
    issued: i64,
    redeemed: i64,
    estimated: i64,
    real: i64,
) -> Result<(), ServiceError> {
    execute(
        db,
        "INSERT INTO budget_usage (tenant_id, scope, issued, redeemed, estimated_minor, real_minor) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, scope) DO UPDATE SET issued = budget_usage.issued + excluded.issued,
           redeemed = budget_usage.redeemed + excluded.redeemed,
           estimated_minor = budget_usage.estimated_minor + excluded.estimated_minor,
           real_minor = budget_usage.real_minor + excluded.real_minor",
        vec![tenant.into(), scope.into(), issued.into(), redeemed.into(), estimated.into(), real.into()],
    )
    .await
    .map_err(db_error)
    .map(|_| ())
}

/// (issued, redeemed, estimated, real) of a scope ("template:<id>" or "campaign:<id>"):
/// issue totals from the running-total row, redemption totals summed from the coupons.
async fn usage<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    scope: &str,
) -> Result<(i64, i64, i64, i64), ServiceError> {
    let rows = query(
        db,
        "SELECT issued, estimated_minor FROM budget_usage WHERE tenant_id = $1 AND scope = $2",
        vec![tenant.into(), scope.into()],
    )
    .await
    .map_err(db_error)?;
    let (issued, estimated) = rows.first().map_or((0, 0), |r| {
        (
            r.try_get("", "issued").unwrap_or(0),
            r.try_get("", "estimated_minor").unwrap_or(0),
        )
    });
    let (column, id) = match scope.split_once(':') {
        Some(("campaign", id)) => ("campaign_id", id),
        Some((_, id)) => ("template_id", id),
        None => ("template_id", scope),
    };
    let rows = query(
        db,
        &format!(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(real_cost_minor), 0) AS BIGINT) AS real FROM coupons
             WHERE tenant_id = $1 AND {column} = $2 AND state = 2"
        ),
        vec![tenant.into(), id.into()],
    )
    .await
    .map_err(db_error)?;
    let (redeemed, real) = rows.first().map_or((0, 0), |r| {
        (
            r.try_get::<i64>("", "n").unwrap_or(0),
            r.try_get::<i64>("", "real").unwrap_or(0),
        )
    });
    Ok((issued, redeemed, estimated, real))
}

async fn campaign_currency<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    campaign_id: &str,
) -> Result<String, ServiceError> {
    let rows = query(
        db,
        "SELECT currency FROM coupons WHERE tenant_id = $1 AND campaign_id = $2 LIMIT 1",
        vec![tenant.into(), campaign_id.into()],
    )
    .await
    .map_err(db_error)?;
    Ok(rows
        .first()
        .and_then(|r| r.try_get("", "currency").ok())
        .unwrap_or_default())
}

/// Takes `coupons` coupons worth `estimated` from the template's budget, or refuses.
/// The usage row is locked (PostgreSQL) or the writer lock is held (SQLite), so two
/// batches cannot both take the last coupons.
async fn reserve_budget<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    t: &OfferTemplate,
    coupons: i64,
    estimated: i64,
) -> Result<(), ServiceError> {
    let scope = format!("template:{}", t.template_id);
    add_usage(db, tenant, &scope, 0, 0, 0, 0).await?;
    let budget = t.budget.clone().unwrap_or_default();
    let max_discount = budget.max_discount.as_ref().map_or(0, |m| m.amount_minor);
    let changed = execute(
        db,
        "UPDATE budget_usage SET issued = issued + $3, estimated_minor = estimated_minor + $4
         WHERE tenant_id = $1 AND scope = $2 AND ($5 = 0 OR issued + $3 <= $5) AND ($6 = 0 OR estimated_minor + $4 <= $6)",
        vec![tenant.into(), scope.into(), coupons.into(), estimated.into(), budget.max_coupons.into(), max_discount.into()],
    )
    .await
    .map_err(db_error)?;
    if changed == 1 {
        Ok(())
    } else {
        Err(ServiceError::ResourceExhausted(format!(
            "the budget of offer template {} is spent",
            t.template_id
        )))
    }
}
