//! The campaign report: per campaign, variant, step and segment — reach and reactions as
//! distinct customers per funnel stage, returns of the treated against the holdout with the
//! uplift's 95 % interval, incremental returns and revenue (what the treated brought beyond
//! the holdout's rate) with their intervals and the incremental ROI as the headline, gross
//! revenue and ROI beside them, the check after return against the usual one, offer and
//! channel cost — and where the customers went after their chain.

use std::collections::BTreeMap;

use winback_platform::ServiceError;
use winback_platform::time::to_timestamp;
use winback_proto::campaigns::{Estimate, GetCampaignReportResponse, RateInterval, ReportFigures};
use winback_proto::common::Money;

use crate::context::{Campaigns, db_error};
use crate::domain::stats::{GroupSum, Interval, incremental_total, uplift, wilson};
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
    revenue_squares: f64,
    holdout_revenue: i64,
    holdout_revenue_squares: f64,
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
        self.revenue_squares += o.revenue_squares;
        self.holdout_revenue += o.holdout_revenue;
        self.holdout_revenue_squares += o.holdout_revenue_squares;
        self.usual_check_of_returned += o.usual_check_of_returned;
        self.offer_cost += o.offer_cost;
        self.channel_cost += o.channel_cost;
    }

    /// The holdout's figures taken from `holdout` (shared by every variant).
    fn with_holdout_of(&self, holdout: &Sums) -> Sums {
        Sums {
            held_out: holdout.held_out,
            holdout_returned: holdout.holdout_returned,
            holdout_revenue: holdout.holdout_revenue,
            holdout_revenue_squares: holdout.holdout_revenue_squares,
            ..self.clone()
        }
    }
}

fn rate(i: Interval) -> RateInterval {
    RateInterval {
        value: i.value,
        low: i.low,
        high: i.high,
    }
}

fn estimate(i: Interval) -> Estimate {
    Estimate {
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

fn share(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

/// Whether a slice is measured against a holdout (the whole campaign, a variant, a
/// segment) or not (a step: the holdout never reaches one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Holdout,
    None,
}

/// The figures of a slice.
fn figures(key: &str, name: &str, s: &Sums, currency: &str, control: Control) -> ReportFigures {
    let treated = wilson(s.returned as u64, s.enrolled as u64);
    let cost = s.offer_cost + s.channel_cost;
    let roi = |revenue: f64| {
        if cost > 0 {
            (revenue - cost as f64) / cost as f64
        } else {
            0.0
        }
    };
    let mut f = ReportFigures {
        key: key.to_owned(),
        name: name.to_owned(),
        enrolled: s.enrolled,
        held_out: s.held_out,
        touched: s.touched,
        delivered: s.delivered,
        opened: s.opened,
        clicked: s.clicked,
        returned: s.returned,
        holdout_returned: s.holdout_returned,
        return_rate: Some(rate(treated)),
        gross_revenue: money(s.revenue, currency),
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
        gross_roi: roi(s.revenue as f64),
        open_rate: share(s.opened, s.touched),
        click_rate: share(s.clicked, s.touched),
        ..ReportFigures::default()
    };
    if control == Control::Holdout && s.held_out > 0 {
        let held = wilson(s.holdout_returned as u64, s.held_out as u64);
        let lift = uplift(treated, held);
        let n = s.enrolled as f64;
        f.holdout_return_rate = Some(rate(held));
        f.uplift = Some(rate(lift));
        f.significant = s.enrolled > 0 && (lift.low > 0.0 || lift.high < 0.0);
        f.incremental_returns = Some(estimate(Interval {
            value: lift.value * n,
            low: lift.low * n,
            high: lift.high * n,
        }));
        f.holdout_revenue = money(s.holdout_revenue, currency);
        let revenue = incremental_total(
            GroupSum {
                n: s.enrolled as u64,
                sum: s.revenue as f64,
                sum_of_squares: s.revenue_squares,
            },
            GroupSum {
                n: s.held_out as u64,
                sum: s.holdout_revenue as f64,
                sum_of_squares: s.holdout_revenue_squares,
            },
        );
        if let Some(revenue) = revenue {
            f.incremental_revenue_minor = Some(estimate(revenue));
            f.incremental_roi = roi(revenue.value);
        }
    }
    f
}

fn int(r: &sea_orm::QueryResult, c: &str) -> Result<i64, ServiceError> {
    r.try_get::<Option<i64>>("", c)
        .map(Option::unwrap_or_default)
        .map_err(db_error)
}

fn float(r: &sea_orm::QueryResult, c: &str) -> Result<f64, ServiceError> {
    r.try_get::<Option<f64>>("", c)
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
        let values = || -> Vec<sea_orm::Value> { vec![tenant.into(), campaign_id.into()] };
        // One row per (variant, segment, holdout) group.
        let rows = query(
            &self.db,
            "SELECT e.variant, e.segment, CAST(CASE WHEN e.state = 2 THEN 1 ELSE 0 END AS BIGINT) AS held,
               COUNT(*) AS customers,
               CAST(SUM(CASE WHEN o.sent > 0 THEN 1 ELSE 0 END) AS BIGINT) AS touched,
               CAST(SUM(CASE WHEN r.delivered > 0 THEN 1 ELSE 0 END) AS BIGINT) AS delivered,
               CAST(SUM(CASE WHEN r.opened > 0 OR r.clicked > 0 THEN 1 ELSE 0 END) AS BIGINT) AS opened,
               CAST(SUM(CASE WHEN r.clicked > 0 THEN 1 ELSE 0 END) AS BIGINT) AS clicked,
               CAST(SUM(COALESCE(r.cost, 0)) AS BIGINT) AS channel_cost,
               CAST(SUM(CASE WHEN v.enrolment_id IS NULL THEN 0 ELSE 1 END) AS BIGINT) AS returned,
               CAST(SUM(COALESCE(v.value_minor, 0)) AS BIGINT) AS revenue,
               SUM(CAST(COALESCE(v.value_minor, 0) AS DOUBLE PRECISION) * COALESCE(v.value_minor, 0)) AS revenue_squares,
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
                s.holdout_revenue = int(r, "revenue")?;
                s.holdout_revenue_squares = float(r, "revenue_squares")?;
                holdout.add(&s);
            } else {
                s.enrolled = customers;
                s.returned = returned;
                s.revenue = int(r, "revenue")?;
                s.revenue_squares = float(r, "revenue_squares")?;
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
                figures(
                    name,
                    name,
                    &s.with_holdout_of(&holdout),
                    &currency,
                    Control::Holdout,
                )
            })
            .collect();
        let segments = segments
            .iter()
            .map(|(name, s)| figures(name, name, s, &currency, Control::Holdout))
            .collect();
        let campaign = self.campaign(tenant, campaign_id, "campaign_id").await?;
        let step_names: Vec<String> = match self.chain(tenant, &campaign.chain_id, "chain_id").await
        {
            Ok(chain) => chain.steps.into_iter().map(|s| s.name).collect(),
            Err(ServiceError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let steps = self
            .step_figures(tenant, campaign_id, &currency, &step_names)
            .await?;
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
            total: Some(figures("all", "all", &total, &currency, Control::Holdout)),
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
        names: &[String],
    ) -> Result<Vec<ReportFigures>, ServiceError> {
        let values = || -> Vec<sea_orm::Value> { vec![tenant.into(), campaign_id.into()] };
        let mut steps: BTreeMap<i64, Sums> = BTreeMap::new();
        let rows = query(
            &self.db,
            "SELECT o.step, COUNT(*) AS reached,
               CAST(SUM(CASE WHEN o.outcome = 'sent' THEN 1 ELSE 0 END) AS BIGINT) AS touched,
               CAST(SUM(CASE WHEN r.delivered > 0 THEN 1 ELSE 0 END) AS BIGINT) AS delivered,
               CAST(SUM(CASE WHEN r.opened > 0 OR r.clicked > 0 THEN 1 ELSE 0 END) AS BIGINT) AS opened,
               CAST(SUM(CASE WHEN r.clicked > 0 THEN 1 ELSE 0 END) AS BIGINT) AS clicked,
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
            .map(|(step, s)| {
                let key = format!("step:{step}");
                let name = usize::try_from(*step)
                    .ok()
                    .and_then(|i| names.get(i))
                    .filter(|n| !n.is_empty())
                    .map_or(key.as_str(), String::as_str);
                figures(&key, name, s, currency, Control::None)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1,000 treated of whom 100 came back spending 5,000 each; 100 held out of whom 2 came
    /// back spending 5,000 each; 50,000 of cost.
    fn campaign() -> Sums {
        Sums {
            enrolled: 1_000,
            held_out: 100,
            touched: 900,
            opened: 300,
            clicked: 90,
            returned: 100,
            holdout_returned: 2,
            revenue: 500_000,
            revenue_squares: 100.0 * 5_000.0 * 5_000.0,
            holdout_revenue: 10_000,
            holdout_revenue_squares: 2.0 * 5_000.0 * 5_000.0,
            offer_cost: 30_000,
            channel_cost: 20_000,
            ..Sums::default()
        }
    }

    #[test]
    fn the_headline_is_incremental_and_gross_stays_beside_it() {
        let f = figures("all", "all", &campaign(), "RUB", Control::Holdout);
        // What the treated would have spent at the holdout's 100 per customer: 100,000.
        let revenue = f.incremental_revenue_minor.unwrap();
        assert_eq!(revenue.value, 400_000.0);
        assert!(revenue.low > 0.0 && revenue.high > revenue.value);
        assert!(
            (f.incremental_roi - 7.0).abs() < 1e-12,
            "{}",
            f.incremental_roi
        );
        assert!((f.gross_roi - 9.0).abs() < 1e-12);
        assert!(f.significant);
        let returns = f.incremental_returns.unwrap();
        assert!((returns.value - 80.0).abs() < 1e-9);
        assert!((f.open_rate - 1.0 / 3.0).abs() < 1e-12 && (f.click_rate - 0.1).abs() < 1e-12);
    }

    #[test]
    fn an_uplift_whose_interval_includes_zero_is_not_significant() {
        let mut s = campaign();
        s.holdout_returned = 9;
        s.holdout_revenue = 45_000;
        s.holdout_revenue_squares = 9.0 * 5_000.0 * 5_000.0;
        let f = figures("all", "all", &s, "RUB", Control::Holdout);
        let lift = f.uplift.unwrap();
        assert!(lift.low < 0.0 && lift.high > 0.0, "{lift:?}");
        assert!(!f.significant);
    }

    #[test]
    fn a_step_has_no_holdout_figures() {
        let f = figures("step:0", "reminder", &campaign(), "RUB", Control::None);
        assert_eq!(f.name, "reminder");
        assert!(f.uplift.is_none() && f.holdout_return_rate.is_none());
        assert!(f.incremental_returns.is_none() && f.incremental_revenue_minor.is_none());
        assert!(!f.significant);
    }
}
