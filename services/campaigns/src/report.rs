//! The campaign report: per campaign, variant, step and segment — reach, reactions, returns
//! of the treated against the holdout with the uplift's 95 % interval, revenue, the check
//! after return against the usual one, offer and channel cost, ROI — and where the
//! customers went after their chain.

use std::collections::BTreeMap;

use winback_platform::ServiceError;
use winback_platform::time::to_timestamp;
use winback_proto::campaigns::{GetCampaignReportResponse, RateInterval, ReportFigures};
use winback_proto::common::Money;

use crate::context::{Campaigns, db_error};
use crate::domain::stats::{Interval, uplift, wilson};
use crate::store::query;

/// Sums of one group of enrolments.
#[derive(Debug, Default, Clone)]
struct Sums {
    enrolled: i64,
    held_out: i64,
    touched: i64,
    delivered: i64,
    opened: i64,
    clicked: i64,
    returned: i64,
    holdout_returned: i64,
    revenue: i64,
    usual_check_of_returned: i64,
    offer_cost: i64,
    channel_cost: i64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.enrolled += o.enrolled;
        self.held_out += o.held_out;
        self.touched += o.touched;
        self.delivered += o.delivered;
        self.opened += o.opened;
        self.clicked += o.clicked;
        self.returned += o.returned;
        self.holdout_returned += o.holdout_returned;
        self.revenue += o.revenue;
        self.usual_check_of_returned += o.usual_check_of_returned;
        self.offer_cost += o.offer_cost;
        self.channel_cost += o.channel_cost;
    }
}

fn rate(i: Interval) -> RateInterval {
    RateInterval {
        value: i.value,
        low: i.low,
        high: i.high,
    }
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: currency.to_owned(),
    })
}

/// The figures of a slice; `with_holdout` is false for step slices (the holdout has no steps).
fn figures(key: &str, s: &Sums, currency: &str, with_holdout: bool) -> ReportFigures {
    let treated = wilson(s.returned as u64, s.enrolled as u64);
    let held = wilson(s.holdout_returned as u64, s.held_out as u64);
    let lift = if with_holdout {
        uplift(treated, held)
    } else {
        Interval {
            value: 0.0,
            low: 0.0,
            high: 0.0,
        }
    };
    let cost = s.offer_cost + s.channel_cost;
    ReportFigures {
        key: key.to_owned(),
        enrolled: s.enrolled,
        held_out: s.held_out,
        touched: s.touched,
        delivered: s.delivered,
        opened: s.opened,
        clicked: s.clicked,
        returned: s.returned,
        holdout_returned: s.holdout_returned,
        return_rate: Some(rate(treated)),
        holdout_return_rate: Some(rate(held)),
        uplift: Some(rate(lift)),
        revenue: money(s.revenue, currency),
        average_check_after_return: money(
            if s.returned > 0 {
                s.revenue / s.returned
            } else {
                0
            },
            currency,
        ),
        usual_average_check: money(
            if s.returned > 0 {
                s.usual_check_of_returned / s.returned
            } else {
                0
            },
            currency,
        ),
        offer_cost: money(s.offer_cost, currency),
        channel_cost: money(s.channel_cost, currency),
        roi: if cost > 0 {
            (s.revenue - cost) as f64 / cost as f64
        } else {
            0.0
        },
        incremental_returns: lift.value * s.enrolled as f64,
    }
}

fn int(r: &sea_orm::QueryResult, c: &str) -> Result<i64, ServiceError> {
    r.try_get::<Option<i64>>("", c)
        .map(Option::unwrap_or_default)
        .map_err(db_error)
}

impl Campaigns {
    /// The report of one campaign, computed from the stored outcomes, reactions and returns.
    pub(crate) async fn report(
        &self,
        tenant: &str,
        campaign_id: &str,
    ) -> Result<GetCampaignReportResponse, ServiceError> {
        self.campaign(tenant, campaign_id, "campaign_id").await?;
        let values = || -> Vec<sea_orm::Value> { vec![tenant.into(), campaign_id.into()] };
        // One row per (variant, segment, holdout) group.
        let rows = query(
            &self.db,
            "SELECT e.variant, e.segment, CAST(CASE WHEN e.state = 2 THEN 1 ELSE 0 END AS BIGINT) AS held,
               COUNT(*) AS customers,
               CAST(SUM(CASE WHEN o.sent > 0 THEN 1 ELSE 0 END) AS BIGINT) AS touched,
               CAST(SUM(COALESCE(r.delivered, 0)) AS BIGINT) AS delivered,
               CAST(SUM(COALESCE(r.opened, 0)) AS BIGINT) AS opened,
               CAST(SUM(COALESCE(r.clicked, 0)) AS BIGINT) AS clicked,
               CAST(SUM(COALESCE(r.cost, 0)) AS BIGINT) AS channel_cost,
               CAST(SUM(CASE WHEN v.enrolment_id IS NULL THEN 0 ELSE 1 END) AS BIGINT) AS returned,
               CAST(SUM(COALESCE(v.value_minor, 0)) AS BIGINT) AS revenue,
               CAST(SUM(CASE WHEN v.enrolment_id IS NULL THEN 0 ELSE e.usual_check_minor END) AS BIGINT) AS usual,
               CAST(SUM(COALESCE(d.discount, 0)) AS BIGINT) AS offer_cost,
               MAX(e.currency) AS currency
             FROM enrolments e
             LEFT JOIN (SELECT enrolment_id, COUNT(*) AS sent FROM step_outcomes
                        WHERE tenant_id = $1 AND outcome = 'sent' GROUP BY enrolment_id) o
                    ON o.enrolment_id = e.enrolment_id
             LEFT JOIN (SELECT enrolment_id, SUM(delivered) AS delivered, SUM(opened) AS opened,
                               SUM(clicked) AS clicked, SUM(cost_minor) AS cost
                        FROM step_reactions WHERE tenant_id = $1 GROUP BY enrolment_id) r
                    ON r.enrolment_id = e.enrolment_id
             LEFT JOIN conversions v ON v.tenant_id = e.tenant_id AND v.enrolment_id = e.enrolment_id
             -- Offers reports a redeemed code without the dashes it prints.
             LEFT JOIN (SELECT so.enrolment_id, SUM(x.discount_minor) AS discount
                        FROM step_outcomes so JOIN redemptions x
                          ON x.tenant_id = so.tenant_id AND x.code = REPLACE(so.coupon_code, '-', '')
                        WHERE so.tenant_id = $1 AND so.coupon_code <> '' GROUP BY so.enrolment_id) d
                    ON d.enrolment_id = e.enrolment_id
             WHERE e.tenant_id = $1 AND e.campaign_id = $2 AND e.state <> 6
             GROUP BY e.variant, e.segment, CASE WHEN e.state = 2 THEN 1 ELSE 0 END",
            values(),
        )
        .await
        .map_err(db_error)?;
        let mut currency = String::new();
        let mut total = Sums::default();
        let mut holdout = Sums::default();
        let mut variants: BTreeMap<String, Sums> = BTreeMap::new();
        let mut segments: BTreeMap<String, Sums> = BTreeMap::new();
        for r in &rows {
            let variant: String = r.try_get("", "variant").map_err(db_error)?;
            let segment: String = r.try_get("", "segment").map_err(db_error)?;
            let held = int(r, "held")? == 1;
            let c: Option<String> = r.try_get("", "currency").map_err(db_error)?;
            if currency.is_empty() {
                currency = c.unwrap_or_default();
            }
            let customers = int(r, "customers")?;
            let returned = int(r, "returned")?;
            let mut s = Sums {
                touched: int(r, "touched")?,
                delivered: int(r, "delivered")?,
                opened: int(r, "opened")?,
                clicked: int(r, "clicked")?,
                channel_cost: int(r, "channel_cost")?,
                offer_cost: int(r, "offer_cost")?,
                ..Sums::default()
            };
            if held {
                s.held_out = customers;
                s.holdout_returned = returned;
                holdout.add(&s);
            } else {
                s.enrolled = customers;
                s.returned = returned;
                s.revenue = int(r, "revenue")?;
                s.usual_check_of_returned = int(r, "usual")?;
                variants.entry(variant).or_default().add(&s);
            }
            total.add(&s);
            segments.entry(segment).or_default().add(&s);
        }
        // The holdout is shared: every variant is compared with all of it.
        let variants = variants
            .iter()
            .map(|(name, s)| {
                let mut s = s.clone();
                s.held_out = holdout.held_out;
                s.holdout_returned = holdout.holdout_returned;
                figures(name, &s, &currency, true)
            })
            .collect();
        let segments = segments
            .iter()
            .map(|(name, s)| figures(name, s, &currency, true))
            .collect();
        let steps = self.step_figures(tenant, campaign_id, &currency).await?;
        let moves = query(
            &self.db,
            "SELECT next_state, COUNT(*) AS n FROM enrolments
             WHERE tenant_id = $1 AND campaign_id = $2 AND state IN (1, 3, 4, 5) GROUP BY next_state",
            values(),
        )
        .await
        .map_err(db_error)?;
        let mut moved = BTreeMap::new();
        for r in &moves {
            let state: String = r.try_get("", "next_state").map_err(db_error)?;
            moved.insert(state, int(r, "n")?);
        }
        Ok(GetCampaignReportResponse {
            campaign_id: campaign_id.to_owned(),
            total: Some(figures("all", &total, &currency, true)),
            variants,
            steps,
            segments,
            woke_up: moved.get("active").copied().unwrap_or_default(),
            deep_sleep: moved.get("deep_sleep").copied().unwrap_or_default(),
            hot_sleeping: moved.get("hot_sleeping").copied().unwrap_or_default(),
            computed_at: Some(to_timestamp(self.now())),
        })
    }

    /// Per step: who reached it, who it touched, their reactions and cost, and the returns
    /// it was the last touch before.
    async fn step_figures(
        &self,
        tenant: &str,
        campaign_id: &str,
        currency: &str,
    ) -> Result<Vec<ReportFigures>, ServiceError> {
        let values = || -> Vec<sea_orm::Value> { vec![tenant.into(), campaign_id.into()] };
        let mut steps: BTreeMap<i64, Sums> = BTreeMap::new();
        let rows = query(
            &self.db,
            "SELECT o.step, COUNT(*) AS reached,
               CAST(SUM(CASE WHEN o.outcome = 'sent' THEN 1 ELSE 0 END) AS BIGINT) AS touched,
               CAST(SUM(COALESCE(r.delivered, 0)) AS BIGINT) AS delivered,
               CAST(SUM(COALESCE(r.opened, 0)) AS BIGINT) AS opened,
               CAST(SUM(COALESCE(r.clicked, 0)) AS BIGINT) AS clicked,
               CAST(SUM(COALESCE(r.cost_minor, 0)) AS BIGINT) AS channel_cost,
               CAST(SUM(COALESCE(x.discount_minor, 0)) AS BIGINT) AS offer_cost
             FROM step_outcomes o
             JOIN enrolments e ON e.tenant_id = o.tenant_id AND e.enrolment_id = o.enrolment_id
             LEFT JOIN step_reactions r ON r.tenant_id = o.tenant_id
                  AND r.enrolment_id = o.enrolment_id AND r.step = o.step
             LEFT JOIN redemptions x ON x.tenant_id = o.tenant_id AND x.code = REPLACE(o.coupon_code, '-', '')
                  AND o.coupon_code <> ''
             WHERE o.tenant_id = $1 AND e.campaign_id = $2 AND o.executed_at_us <> 0
             GROUP BY o.step",
            values(),
        )
        .await
        .map_err(db_error)?;
        for r in &rows {
            let s = steps.entry(int(r, "step")?).or_default();
            s.enrolled = int(r, "reached")?;
            s.touched = int(r, "touched")?;
            s.delivered = int(r, "delivered")?;
            s.opened = int(r, "opened")?;
            s.clicked = int(r, "clicked")?;
            s.channel_cost = int(r, "channel_cost")?;
            s.offer_cost = int(r, "offer_cost")?;
        }
        // A return belongs to the last touch sent before the purchase.
        let rows = query(
            &self.db,
            "SELECT last_step, COUNT(*) AS returned, CAST(SUM(value_minor) AS BIGINT) AS revenue,
               CAST(SUM(usual) AS BIGINT) AS usual
             FROM (SELECT v.value_minor, e.usual_check_minor AS usual,
                     (SELECT MAX(o.step) FROM step_outcomes o WHERE o.tenant_id = v.tenant_id
                        AND o.enrolment_id = v.enrolment_id AND o.outcome = 'sent'
                        AND o.executed_at_us <= v.placed_at_us) AS last_step
                   FROM conversions v
                   JOIN enrolments e ON e.tenant_id = v.tenant_id AND e.enrolment_id = v.enrolment_id
                   WHERE v.tenant_id = $1 AND e.campaign_id = $2 AND e.state <> 2) x
             WHERE last_step IS NOT NULL GROUP BY last_step",
            values(),
        )
        .await
        .map_err(db_error)?;
        for r in &rows {
            let s = steps.entry(int(r, "last_step")?).or_default();
            s.returned = int(r, "returned")?;
            s.revenue = int(r, "revenue")?;
            s.usual_check_of_returned = int(r, "usual")?;
        }
        Ok(steps
            .iter()
            .map(|(step, s)| figures(&format!("step:{step}"), s, currency, false))
            .collect())
    }
}
