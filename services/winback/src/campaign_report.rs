//! `winback campaign report`: a campaign's report as tables a person can read (or JSON):
//! the headline (incremental first, gross labelled as gross), each variant, step and
//! segment, and where customers went after. The demo's summary and report.html format
//! their figures with the same functions.

use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::grpc::CallCredentials;
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::{Estimate, GetCampaignReportResponse, RateInterval, ReportFigures};
use winback_proto::common::Money;

/// A campaigns client with a tenant's token.
pub type Client = CampaignsServiceClient<InterceptedService<Channel, CallCredentials>>;

/// The client for the stack at `addr`.
pub fn client(addr: &str, token: &str) -> Result<Client, tonic::Status> {
    let channel = winback_platform::grpc::lazy_channel(addr)
        .map_err(|e| tonic::Status::invalid_argument(format!("addr: {e}")))?;
    Ok(CampaignsServiceClient::with_interceptor(
        channel,
        CallCredentials::bearer(token)?,
    ))
}

/// An amount in major units with its currency, e.g. "1250.00 RUB".
pub fn money(m: &Option<Money>) -> String {
    let m = m.clone().unwrap_or_default();
    minor_units(m.amount_minor as f64, &m.currency)
}

fn minor_units(amount_minor: f64, currency: &str) -> String {
    format!("{:.2} {currency}", amount_minor / 100.0)
}

/// A rate in percent with its interval, e.g. "12.3 % [10.1; 14.8]"; "—" when unset.
pub fn percent(r: &Option<RateInterval>) -> String {
    match r {
        None => "—".into(),
        Some(r) => format!(
            "{:.1} % [{:.1}; {:.1}]",
            r.value * 100.0,
            r.low * 100.0,
            r.high * 100.0
        ),
    }
}

/// A difference of rates in percentage points, e.g. "+7.3 pp [+4.1; +10.5]"; "—" when
/// the slice has no holdout.
pub fn points(r: &Option<RateInterval>) -> String {
    match r {
        None => "—".into(),
        Some(r) => format!(
            "{:+.1} pp [{:+.1}; {:+.1}]",
            r.value * 100.0,
            r.low * 100.0,
            r.high * 100.0
        ),
    }
}

/// Incremental returns with their interval, e.g. "+412 [+230; +594]"; "—" without a holdout.
pub fn incremental_returns(f: &ReportFigures) -> String {
    match &f.incremental_returns {
        None => "—".into(),
        Some(e) => format!("{:+.0} [{:+.0}; {:+.0}]", e.value, e.low, e.high),
    }
}

fn currency(f: &ReportFigures) -> String {
    f.gross_revenue
        .as_ref()
        .map(|m| m.currency.clone())
        .unwrap_or_default()
}

/// Incremental revenue with its interval; "—" without a holdout.
pub fn incremental_revenue(f: &ReportFigures) -> String {
    match &f.incremental_revenue_minor {
        None => "—".into(),
        Some(e) => {
            let c = currency(f);
            format!(
                "{} [{}; {}]",
                minor_units(e.value, &c),
                minor_units(e.low, &c),
                minor_units(e.high, &c)
            )
        }
    }
}

/// The incremental ROI as a result ("17.70"), or why there is none: a slice without a
/// holdout ("—"), or an uplift whose interval includes 0 ("not significant").
pub fn incremental_roi(f: &ReportFigures) -> String {
    if f.incremental_revenue_minor.is_none() {
        "—".into()
    } else if !f.significant {
        "not significant".into()
    } else {
        format!("{:.2}", f.incremental_roi)
    }
}

/// The whole cost, offers and channels.
pub fn cost(f: &ReportFigures) -> Option<Money> {
    Some(Money {
        amount_minor: f.offer_cost.as_ref().map_or(0, |m| m.amount_minor)
            + f.channel_cost.as_ref().map_or(0, |m| m.amount_minor),
        currency: currency(f),
    })
}

/// The headline of a slice, labelled, in the order a reader wants it: what the campaign
/// caused first (incremental), then the gross figures, labelled as such.
pub fn headline(f: &ReportFigures) -> Vec<(&'static str, String)> {
    let significance = match (&f.uplift, f.significant) {
        (None, _) => "no holdout",
        (Some(_), true) => "significant",
        (Some(_), false) => "not significant: the interval includes 0",
    };
    vec![
        ("uplift (percentage points)", points(&f.uplift)),
        ("significance", significance.into()),
        ("incremental returns", incremental_returns(f)),
        ("incremental revenue", incremental_revenue(f)),
        ("incremental ROI", incremental_roi(f)),
        ("return rate, treated", percent(&f.return_rate)),
        ("return rate, holdout", percent(&f.holdout_return_rate)),
        ("gross revenue (every returner)", money(&f.gross_revenue)),
        ("gross ROI", format!("{:.2}", f.gross_roi)),
        ("cost (offers + channels)", money(&cost(f))),
        (
            "check after return / usual",
            format!(
                "{} / {}",
                money(&f.average_check_after_return),
                money(&f.usual_average_check)
            ),
        ),
    ]
}

/// One line of the headline: "uplift +7.3 pp [..], significant; incremental ROI 17.70 …".
pub fn summary_line(f: &ReportFigures) -> String {
    format!(
        "uplift {} ({}); incremental returns {}, revenue {}; incremental ROI {} (gross ROI {:.2})",
        points(&f.uplift),
        if f.significant {
            "significant"
        } else {
            "not significant"
        },
        incremental_returns(f),
        incremental_revenue(f),
        incremental_roi(f),
        f.gross_roi
    )
}

fn count_with_rate(count: i64, rate: f64) -> String {
    format!("{count} ({:.0} %)", rate * 100.0)
}

const COLUMNS: [(&str, usize); 14] = [
    ("slice", 16),
    ("treated", 8),
    ("holdout", 8),
    ("touched", 8),
    ("delivered", 9),
    ("opened (rate)", 14),
    ("clicked (rate)", 14),
    ("returned", 8),
    ("return rate [95% CI]", 22),
    ("uplift pp [95% CI]", 24),
    ("incr. returns", 20),
    ("incr. revenue", 40),
    ("incr. ROI", 16),
    ("gross ROI", 9),
];

fn line(cells: &[String]) -> String {
    let mut out = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        if i == 0 {
            out.push_str(&format!("{cell:<width$}"));
        } else {
            out.push_str(&format!(" {cell:>width$}"));
        }
    }
    out.push('\n');
    out
}

fn row(f: &ReportFigures) -> String {
    line(&[
        if f.name.is_empty() {
            f.key.clone()
        } else {
            f.name.clone()
        },
        f.enrolled.to_string(),
        f.held_out.to_string(),
        f.touched.to_string(),
        f.delivered.to_string(),
        count_with_rate(f.opened, f.open_rate),
        count_with_rate(f.clicked, f.click_rate),
        f.returned.to_string(),
        percent(&f.return_rate),
        points(&f.uplift),
        incremental_returns(f),
        incremental_revenue(f),
        incremental_roi(f),
        format!("{:.2}", f.gross_roi),
    ])
}

/// The report as text: the headline of the whole campaign, then tables per variant, step
/// and segment.
pub fn render(report: &GetCampaignReportResponse) -> String {
    let header = line(&COLUMNS.map(|(title, _)| title.to_owned()));
    let mut out = format!("Campaign {}\n\n", report.campaign_id);
    if let Some(total) = &report.total {
        for (label, value) in headline(total) {
            out.push_str(&format!("  {label:<32} {value}\n"));
        }
        out.push_str(&format!("\n{header}"));
        out.push_str(&row(total));
    }
    for (title, rows) in [
        ("variants", &report.variants),
        ("steps (no holdout of their own: —)", &report.steps),
        ("segments", &report.segments),
    ] {
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("\nBy {title}\n{header}"));
        for f in rows {
            out.push_str(&row(f));
        }
    }
    out.push_str(&format!(
        "\nAfter the chain: {} woke up, {} hot sleeping (opened, did not buy), {} deep sleep\n",
        report.woke_up, report.hot_sleeping, report.deep_sleep
    ));
    out
}

fn figures_json(f: &ReportFigures) -> serde_json::Value {
    let rate = |r: &Option<RateInterval>| {
        r.map_or(
            serde_json::Value::Null,
            |r| json!({"value": r.value, "low": r.low, "high": r.high}),
        )
    };
    let estimate = |e: &Option<Estimate>| {
        e.map_or(
            serde_json::Value::Null,
            |e| json!({"value": e.value, "low": e.low, "high": e.high}),
        )
    };
    let minor = |m: &Option<Money>| m.as_ref().map_or(0, |m| m.amount_minor);
    json!({
        "key": f.key, "name": f.name, "enrolled": f.enrolled, "held_out": f.held_out,
        "touched": f.touched, "delivered": f.delivered, "opened": f.opened,
        "clicked": f.clicked, "open_rate": f.open_rate, "click_rate": f.click_rate,
        "returned": f.returned, "holdout_returned": f.holdout_returned,
        "return_rate": rate(&f.return_rate), "holdout_return_rate": rate(&f.holdout_return_rate),
        "uplift_points": f.uplift.map(|r| {
            json!({"value": r.value * 100.0, "low": r.low * 100.0, "high": r.high * 100.0})
        }),
        "significant": f.significant,
        "incremental_returns": estimate(&f.incremental_returns),
        "incremental_revenue_minor": estimate(&f.incremental_revenue_minor),
        "incremental_roi": (f.incremental_revenue_minor.is_some() && f.significant).then_some(f.incremental_roi),
        "gross_revenue_minor": minor(&f.gross_revenue),
        "holdout_revenue_minor": f.holdout_revenue.as_ref().map(|m| m.amount_minor),
        "gross_roi": f.gross_roi,
        "average_check_after_return_minor": minor(&f.average_check_after_return),
        "usual_average_check_minor": minor(&f.usual_average_check),
        "offer_cost_minor": minor(&f.offer_cost), "channel_cost_minor": minor(&f.channel_cost),
        "currency": currency(f),
    })
}

/// The report as JSON.
pub fn to_json(report: &GetCampaignReportResponse) -> serde_json::Value {
    json!({
        "campaign_id": report.campaign_id,
        "total": report.total.as_ref().map(figures_json),
        "variants": report.variants.iter().map(figures_json).collect::<Vec<_>>(),
        "steps": report.steps.iter().map(figures_json).collect::<Vec<_>>(),
        "segments": report.segments.iter().map(figures_json).collect::<Vec<_>>(),
        "woke_up": report.woke_up,
        "hot_sleeping": report.hot_sleeping,
        "deep_sleep": report.deep_sleep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_without_a_holdout_show_a_dash_and_no_roi_is_claimed_without_significance() {
        let step = ReportFigures {
            key: "step:0".into(),
            name: "reminder".into(),
            ..ReportFigures::default()
        };
        assert_eq!(points(&step.uplift), "—");
        assert_eq!(incremental_roi(&step), "—");
        assert!(row(&step).starts_with("reminder"));
        let mut total = ReportFigures {
            uplift: Some(RateInterval {
                value: 0.02,
                low: -0.01,
                high: 0.05,
            }),
            incremental_revenue_minor: Some(Estimate {
                value: 10_000.0,
                low: -5_000.0,
                high: 25_000.0,
            }),
            incremental_roi: 3.5,
            ..ReportFigures::default()
        };
        assert_eq!(points(&total.uplift), "+2.0 pp [-1.0; +5.0]");
        assert_eq!(incremental_roi(&total), "not significant");
        total.significant = true;
        assert_eq!(incremental_roi(&total), "3.50");
        assert!(summary_line(&total).contains("incremental ROI 3.50"));
    }
}
