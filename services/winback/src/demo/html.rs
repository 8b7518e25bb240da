//! `report.html`: one self-contained page (inline SVG, no scripts, no network) with the
//! segment sizes, the recency × frequency heatmap, the chain's funnel per step and the
//! return rate of the treated against the holdout over time.

use winback_proto::campaigns::{GetCampaignReportResponse, ReportFigures};
use winback_proto::segmentation::GetSegmentSummaryResponse;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn bars(rows: &[(String, f64)], unit: &str) -> String {
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9);
    let height = rows.len() * 24 + 10;
    let mut svg = format!("<svg width=\"640\" height=\"{height}\" role=\"img\">");
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = i * 24 + 5;
        let w = (value / max * 380.0).max(1.0);
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"200\" y=\"{y}\" width=\"{w:.1}\" height=\"18\" fill=\"#3b7dd8\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}{unit}</text>",
            y + 14,
            escape(label),
            205.0 + w,
            y + 14,
            if unit == "%" { format!("{value:.1}") } else { format!("{value:.0}") }
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn heatmap(summary: &GetSegmentSummaryResponse) -> String {
    let max = summary
        .grid
        .iter()
        .map(|c| c.customers)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut svg = String::from("<svg width=\"340\" height=\"330\" role=\"img\">");
    for cell in &summary.grid {
        let x = 40 + (cell.f_score - 1) * 58;
        let y = 10 + (5 - cell.r_score) * 58;
        let shade = (cell.customers as f64 / max * 200.0) as u8;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{y}\" width=\"56\" height=\"56\" fill=\"rgb({},{},{})\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            240 - shade,
            240 - shade / 2,
            255,
            x + 28,
            y + 32,
            cell.customers
        ));
    }
    svg.push_str("<text x=\"180\" y=\"325\" font-size=\"12\" text-anchor=\"middle\">frequency score →</text><text x=\"12\" y=\"160\" font-size=\"12\" transform=\"rotate(-90 12 160)\" text-anchor=\"middle\">recency score →</text></svg>");
    svg
}

fn funnel(steps: &[ReportFigures]) -> String {
    let mut html = String::from(
        "<table><tr><th>step</th><th>reached</th><th>touched</th><th>delivered</th><th>opened (rate)</th><th>clicked (rate)</th><th>returned after it (rate)</th><th>uplift</th></tr>",
    );
    let share = |n: i64, of: i64| {
        if of > 0 {
            format!("{n} ({:.0} %)", n as f64 / of as f64 * 100.0)
        } else {
            n.to_string()
        }
    };
    for s in steps {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(if s.name.is_empty() { &s.key } else { &s.name }),
            s.enrolled,
            s.touched,
            s.delivered,
            share(s.opened, s.touched),
            share(s.clicked, s.touched),
            share(s.returned, s.enrolled),
            crate::campaign_report::points(&s.uplift),
        ));
    }
    html.push_str("</table>");
    let rows: Vec<(String, f64)> = steps
        .iter()
        .flat_map(|s| {
            [
                (format!("{} touched", s.name), s.touched as f64),
                (format!("{} opened", s.name), s.opened as f64),
                (format!("{} clicked", s.name), s.clicked as f64),
            ]
        })
        .collect();
    html + &bars(&rows, "")
}

fn lines(timeline: &[(i64, f64, f64)]) -> String {
    let days = timeline.last().map_or(1, |t| t.0).max(1) as f64;
    let top = timeline
        .iter()
        .map(|t| t.1.max(t.2))
        .fold(0.0, f64::max)
        .max(0.01);
    let point = |d: i64, v: f64| {
        format!(
            "{:.1},{:.1}",
            40.0 + d as f64 / days * 560.0,
            250.0 - v / top * 230.0
        )
    };
    let treated: Vec<String> = timeline.iter().map(|t| point(t.0, t.1)).collect();
    let held: Vec<String> = timeline.iter().map(|t| point(t.0, t.2)).collect();
    format!(
        "<svg width=\"640\" height=\"280\" role=\"img\"><line x1=\"40\" y1=\"250\" x2=\"600\" y2=\"250\" stroke=\"#999\"/><line x1=\"40\" y1=\"20\" x2=\"40\" y2=\"250\" stroke=\"#999\"/>\
<polyline fill=\"none\" stroke=\"#3b7dd8\" stroke-width=\"2\" points=\"{}\"/><polyline fill=\"none\" stroke=\"#d8763b\" stroke-width=\"2\" points=\"{}\"/>\
<text x=\"45\" y=\"15\" font-size=\"12\">{:.1} %</text><text x=\"560\" y=\"270\" font-size=\"12\">day {}</text>\
<text x=\"420\" y=\"40\" font-size=\"12\" fill=\"#3b7dd8\">treated</text><text x=\"420\" y=\"56\" font-size=\"12\" fill=\"#d8763b\">holdout</text></svg>",
        treated.join(" "),
        held.join(" "),
        top * 100.0,
        days as i64
    )
}

/// The page.
pub fn page(
    summary: &GetSegmentSummaryResponse,
    report: &GetCampaignReportResponse,
    timeline: &[(i64, f64, f64)],
) -> String {
    let segments: Vec<(String, f64)> = summary
        .segments
        .iter()
        .map(|s| (s.name.clone(), s.customers as f64))
        .collect();
    let total = report.total.clone().unwrap_or_default();
    let headline: String = crate::campaign_report::headline(&total)
        .into_iter()
        .map(|(label, value)| {
            format!(
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(label),
                escape(&value)
            )
        })
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Winback demo report</title>\
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{text-align:left}}h2{{margin-top:2em}}</style></head><body>\
<h1>Winback demo report</h1>\
<h2>Segments</h2>{}\
<h2>Recency × frequency</h2>{}\
<h2>Win-back campaign: {} treated, {} held out</h2><table>{}</table>\
<p>Incremental figures compare the treated with the holdout; gross figures count every \
returner, including those who would have come back anyway. Uplift is in percentage points.</p>\
<p>After the chain: {} woke up, {} hot sleeping, {} deep sleep.</p>\
<h2>Funnel per step</h2>{}\
<h2>Return rate over time</h2>{}\
</body></html>",
        bars(&segments, ""),
        heatmap(summary),
        total.enrolled,
        total.held_out,
        headline,
        report.woke_up,
        report.hot_sleeping,
        report.deep_sleep,
        funnel(&report.steps),
        lines(timeline)
    )
}
