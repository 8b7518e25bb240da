//! `winback campaign report`: a campaign's report as tables a person can read (or JSON):
//! the whole campaign, each variant, step and segment, and where customers went after.

use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::grpc::CallCredentials;
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::{GetCampaignReportResponse, RateInterval, ReportFigures};
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

fn money(m: &Option<Money>) -> String {
    let m = m.clone().unwrap_or_default();
    format!(
        "{}.{:02} {}",
        m.amount_minor / 100,
        (m.amount_minor % 100).abs(),
        m.currency
    )
}

fn pct(r: &Option<RateInterval>) -> String {
    let r = (*r).unwrap_or_default();
    format!(
        "{:.1}% [{:.1}; {:.1}]",
        r.value * 100.0,
        r.low * 100.0,
        r.high * 100.0
    )
}

fn row(f: &ReportFigures) -> String {
    format!(
        "{:<14} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>8} {:>24} {:>24} {:>26} {:>16} {:>16} {:>16} {:>16} {:>7.2}\n",
        f.key,
        f.enrolled,
        f.held_out,
        f.touched,
        f.delivered,
        f.opened,
        f.clicked,
        f.returned,
        pct(&f.return_rate),
        pct(&f.holdout_return_rate),
        pct(&f.uplift),
        money(&f.revenue),
        money(&f.average_check_after_return),
        money(&f.usual_average_check),
        money(&Some(Money {
            amount_minor: f.offer_cost.as_ref().map_or(0, |m| m.amount_minor)
                + f.channel_cost.as_ref().map_or(0, |m| m.amount_minor),
            currency: f
                .offer_cost
                .as_ref()
                .map(|m| m.currency.clone())
                .unwrap_or_default(),
        })),
        f.roi
    )
}

/// The report as text tables.
pub fn render(report: &GetCampaignReportResponse) -> String {
    let header = format!(
        "{:<14} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>8} {:>24} {:>24} {:>26} {:>16} {:>16} {:>16} {:>16} {:>7}\n",
        "slice",
        "treated",
        "holdout",
        "touched",
        "delivered",
        "opened",
        "clicked",
        "returned",
        "return rate [95% CI]",
        "holdout rate [95% CI]",
        "uplift [95% CI]",
        "revenue",
        "check after",
        "usual check",
        "cost",
        "ROI"
    );
    let mut out = format!("Campaign {}\n\n{header}", report.campaign_id);
    if let Some(total) = &report.total {
        out.push_str(&row(total));
    }
    for (title, rows) in [
        ("variants", &report.variants),
        ("steps", &report.steps),
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
        let r = (*r).unwrap_or_default();
        json!({"value": r.value, "low": r.low, "high": r.high})
    };
    let minor = |m: &Option<Money>| m.as_ref().map_or(0, |m| m.amount_minor);
    json!({
        "key": f.key, "enrolled": f.enrolled, "held_out": f.held_out, "touched": f.touched,
        "delivered": f.delivered, "opened": f.opened, "clicked": f.clicked,
        "returned": f.returned, "holdout_returned": f.holdout_returned,
        "return_rate": rate(&f.return_rate), "holdout_return_rate": rate(&f.holdout_return_rate),
        "uplift": rate(&f.uplift), "revenue_minor": minor(&f.revenue),
        "average_check_after_return_minor": minor(&f.average_check_after_return),
        "usual_average_check_minor": minor(&f.usual_average_check),
        "offer_cost_minor": minor(&f.offer_cost), "channel_cost_minor": minor(&f.channel_cost),
        "currency": f.revenue.as_ref().map(|m| m.currency.clone()).unwrap_or_default(),
        "roi": f.roi, "incremental_returns": f.incremental_returns,
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
