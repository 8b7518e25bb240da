//! `winback segments` and `winback models fit`: the segmentation service's summary and
//! model fits as tables a person can read, or JSON for machines. The demo prints the same
//! tables.

use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::grpc::CallCredentials;
use winback_proto::common::LifecycleState;
use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient;
use winback_proto::segmentation::{FitModelsResponse, GetSegmentSummaryResponse, NbdFit};

/// A segmentation client with a tenant's token.
pub type Client = SegmentationServiceClient<InterceptedService<Channel, CallCredentials>>;

/// The client for the stack at `addr`.
pub fn client(addr: &str, token: &str) -> Result<Client, tonic::Status> {
    let channel = winback_platform::grpc::lazy_channel(addr)
        .map_err(|e| tonic::Status::invalid_argument(format!("addr: {e}")))?;
    Ok(SegmentationServiceClient::with_interceptor(
        channel,
        CallCredentials::bearer(token)?,
    ))
}

/// Name of a lifecycle state as printed.
pub fn state_name(state: i32) -> &'static str {
    match LifecycleState::try_from(state).unwrap_or(LifecycleState::Unspecified) {
        LifecycleState::Active => "active",
        LifecycleState::HotInactive => "hot inactive",
        LifecycleState::Sleeping => "sleeping",
        LifecycleState::NearlyLost => "nearly lost",
        LifecycleState::Dead => "dead",
        LifecycleState::Prospect => "prospect",
        LifecycleState::Unspecified => "unknown",
    }
}

fn money(minor: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, (minor % 100).abs())
}

/// The segment table, the lifecycle table and the R×F grid.
pub fn render_summary(summary: &GetSegmentSummaryResponse) -> String {
    let mut out = String::new();
    let width = summary
        .segments
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    out.push_str(&format!(
        "{:<width$}  {:>10}  {:>6}\n",
        "Segment", "Customers", "Share"
    ));
    for s in &summary.segments {
        out.push_str(&format!(
            "{:<width$}  {:>10}  {:>5.1}%\n",
            s.name,
            s.customers,
            s.share * 100.0
        ));
    }
    out.push_str(&format!(
        "\n{:<14}  {:>10}  {:>6}\n",
        "Lifecycle", "Customers", "Share"
    ));
    for s in &summary.lifecycle {
        out.push_str(&format!(
            "{:<14}  {:>10}  {:>5.1}%\n",
            state_name(s.state),
            s.customers,
            s.share * 100.0
        ));
    }
    out.push_str("\nRecency × frequency: customers (average monetary)\n");
    out.push_str(&format!("{:>4}", ""));
    for f in 1..=5 {
        out.push_str(&format!("  {:>22}", format!("F{f}")));
    }
    out.push('\n');
    for r in (1..=5).rev() {
        out.push_str(&format!("{:>4}", format!("R{r}")));
        for f in 1..=5 {
            let cell = summary
                .grid
                .iter()
                .find(|c| c.r_score == r && c.f_score == f);
            let text = cell.map_or_else(String::new, |c| {
                format!(
                    "{} ({})",
                    c.customers,
                    money(c.average_monetary_minor, &summary.currency)
                )
            });
            out.push_str(&format!("  {text:>22}"));
        }
        out.push('\n');
    }
    out
}

/// The summary as JSON.
pub fn summary_json(summary: &GetSegmentSummaryResponse) -> Value {
    json!({
        "currency": summary.currency,
        "segments": summary.segments.iter().map(|s| json!({
            "segment": s.segment, "name": s.name, "customers": s.customers, "share": s.share,
        })).collect::<Vec<_>>(),
        "lifecycle": summary.lifecycle.iter().map(|s| json!({
            "state": state_name(s.state), "customers": s.customers, "share": s.share,
        })).collect::<Vec<_>>(),
        "grid": summary.grid.iter().map(|c| json!({
            "r": c.r_score, "f": c.f_score, "customers": c.customers,
            "average_monetary_minor": c.average_monetary_minor,
        })).collect::<Vec<_>>(),
        "history": summary.history.iter().map(|h| json!({
            "recompute_id": h.recompute_id,
            "as_of": h.as_of.as_ref().map(ToString::to_string),
            "segments": h.segments.iter().map(|s| json!({"segment": s.segment, "customers": s.customers})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn nbd_json(fit: Option<&NbdFit>) -> Value {
    fit.map_or(Value::Null, |f| {
        json!({
            "r": f.r, "alpha": f.alpha, "a": f.a, "b": f.b,
            "log_likelihood": f.log_likelihood, "customers": f.customers,
            "distinct_rows": f.distinct_rows, "converged": f.converged,
            "problem": (!f.problem.is_empty()).then_some(&f.problem),
        })
    })
}

/// The fits as JSON.
pub fn fit_json(fit: &FitModelsResponse) -> Value {
    json!({
        "bg_nbd": nbd_json(fit.bg_nbd.as_ref()),
        "mbg_nbd": nbd_json(fit.mbg_nbd.as_ref()),
        "gamma_gamma": fit.gamma_gamma.as_ref().map_or(Value::Null, |g| json!({
            "p": g.p, "q": g.q, "gamma": g.gamma, "log_likelihood": g.log_likelihood,
            "customers": g.customers, "converged": g.converged,
            "problem": (!g.problem.is_empty()).then_some(&g.problem),
        })),
        "preferred_model": fit.preferred_model,
        "time_unit_days": fit.time_unit.as_ref().map_or(1.0, |d| d.seconds as f64 / 86_400.0),
        "took_ms": fit.took.as_ref().map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos / 1_000_000)),
    })
}

/// The fits as a table.
pub fn render_fit(fit: &FitModelsResponse) -> String {
    let unit = fit
        .time_unit
        .as_ref()
        .map_or(1.0, |d| d.seconds as f64 / 86_400.0);
    let mut out = format!(
        "Time unit: {unit} day(s); preferred model: {}\n\n",
        fit.preferred_model
    );
    out.push_str(&format!(
        "{:<8} {:>9} {:>11} {:>9} {:>9} {:>16} {:>10} {:>9} {:>9}\n",
        "Model", "r", "alpha", "a", "b", "log-likelihood", "customers", "rows", "converged"
    ));
    for (name, f) in [("BG/NBD", &fit.bg_nbd), ("MBG/NBD", &fit.mbg_nbd)] {
        if let Some(f) = f {
            out.push_str(&format!(
                "{name:<8} {:>9.4} {:>11.4} {:>9.4} {:>9.4} {:>16.2} {:>10} {:>9} {:>9}\n",
                f.r, f.alpha, f.a, f.b, f.log_likelihood, f.customers, f.distinct_rows, f.converged
            ));
        }
    }
    match &fit.gamma_gamma {
        Some(g) => out.push_str(&format!(
            "\nGamma-Gamma: p = {:.4}, q = {:.4}, γ = {:.2} (minor units); log-likelihood {:.2}; {} repeat customers; converged {}\n",
            g.p, g.q, g.gamma, g.log_likelihood, g.customers, g.converged
        )),
        None => out.push_str("\nGamma-Gamma: not enough repeat customers\n"),
    }
    let problems = [
        ("BG/NBD", fit.bg_nbd.as_ref().map(|f| &f.problem)),
        ("MBG/NBD", fit.mbg_nbd.as_ref().map(|f| &f.problem)),
        ("Gamma-Gamma", fit.gamma_gamma.as_ref().map(|g| &g.problem)),
    ];
    for (name, problem) in problems {
        if let Some(problem) = problem.filter(|p| !p.is_empty()) {
            out.push_str(&format!("{name} not converged: {problem}\n"));
        }
    }
    if fit.preferred_model == "cycle_rule" {
        out.push_str(
            "Scoring uses the cycle rule: P(alive) 1 within the expected cycle, then e^(-overdue/cycle)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use winback_proto::segmentation::{GridCell, SegmentSize};

    #[test]
    fn the_grid_prints_recency_rows_from_best_to_worst() {
        let summary = GetSegmentSummaryResponse {
            segments: vec![SegmentSize {
                segment: "champions".into(),
                name: "Champions".into(),
                customers: 3,
                share: 0.5,
            }],
            grid: vec![
                GridCell {
                    r_score: 5,
                    f_score: 5,
                    customers: 3,
                    average_monetary_minor: 123_456,
                },
                GridCell {
                    r_score: 1,
                    f_score: 1,
                    customers: 2,
                    average_monetary_minor: 100,
                },
            ],
            currency: "RUB".into(),
            ..Default::default()
        };
        let text = render_summary(&summary);
        assert!(
            text.lines()
                .any(|l| l.starts_with("Champions") && l.ends_with(" 3   50.0%")),
            "{text}"
        );
        let r5 = text.lines().position(|l| l.starts_with("  R5")).unwrap();
        let r1 = text.lines().position(|l| l.starts_with("  R1")).unwrap();
        assert!(r5 < r1);
        assert!(text.contains("3 (1234.56 RUB)"));
        assert_eq!(summary_json(&summary)["grid"][0]["customers"], 3);
    }
}
