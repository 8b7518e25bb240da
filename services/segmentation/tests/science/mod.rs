//! The published models, exactly, from raw transactions imported through the API: CDNOW's
//! 2,357-customer sample (Fader, Hardie & Lee 2005; `fixtures/CDNOW_sample.txt`, as shipped
//! with the `lifetimes` package: master id, sample id, date, CDs, dollars), fitted as of the
//! end of its 39-week calibration period; and as-of fits equal to fits on the truncated
//! history.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use tokio_stream::StreamExt;
use winback_platform::db_test;
use winback_proto::common::Money;
use winback_proto::profiles::engagement_event::Kind;
use winback_proto::profiles::{
    Customer, EngagementEvent, MessageOpened, Order, OrderLine, RecordEngagementRequest,
    RecordOrdersRequest, UpsertCustomersRequest,
};
use winback_proto::segmentation::*;

use crate::harness::{Harness, Profiles, Segments, ts};

const CDNOW: &str = include_str!("../fixtures/CDNOW_sample.txt");

/// The last day of CDNOW's calibration period (weeks 1–39 of 1997), to its last second.
fn calibration_end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1997, 9, 30, 23, 59, 59).unwrap()
}

struct Transaction {
    customer: String,
    placed_at: DateTime<Utc>,
    cents: i64,
}

fn transactions() -> Vec<Transaction> {
    CDNOW
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let day = NaiveDate::parse_from_str(f[2], "%Y%m%d").unwrap();
            let dollars: f64 = f[4].parse().unwrap();
            Transaction {
                customer: format!("c{}", f[1]),
                placed_at: day.and_hms_opt(12, 0, 0).unwrap().and_utc(),
                cents: (dollars * 100.0).round() as i64,
            }
        })
        .collect()
}

async fn import(profiles: &mut Profiles, history: &[Transaction]) {
    let mut ids: Vec<&str> = history.iter().map(|t| t.customer.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    for batch in ids.chunks(1000) {
        let customers = batch
            .iter()
            .map(|id| Customer {
                customer_id: (*id).into(),
                email: format!("{id}@example.com"),
                ..Default::default()
            })
            .collect();
        profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers,
            })
            .await
            .unwrap();
    }
    let orders: Vec<Order> = history
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let money = Some(Money {
                amount_minor: t.cents,
                currency: "USD".into(),
            });
            Order {
                order_id: format!("{}-{}-{i}", t.customer, t.placed_at.timestamp()),
                customer_id: t.customer.clone(),
                placed_at: ts(t.placed_at),
                total: money.clone(),
                lines: vec![OrderLine {
                    sku: "cd".into(),
                    category: "music".into(),
                    quantity: 1,
                    unit_price: money,
                }],
                store: "cdnow".into(),
                coupon_code: String::new(),
            }
        })
        .collect();
    for batch in orders.chunks(1000) {
        profiles
            .record_orders(RecordOrdersRequest {
                orders: batch.to_vec(),
            })
            .await
            .unwrap();
    }
}

fn weekly() -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 7 * 86_400,
        nanos: 0,
    })
}

fn close(name: &str, got: f64, published: f64, tolerance: f64) {
    assert!(
        (got - published).abs() <= tolerance,
        "{name}: got {got}, published {published}"
    );
}

db_test!(
    cdnow_fitted_as_of_its_calibration_end_gives_the_published_parameters,
    |db| async move {
        let mut h = Harness::start(db).await;
        import(&mut h.profiles, &transactions()).await;
        let fit = h
            .segments
            .fit_models(FitModelsRequest {
                as_of: ts(calibration_end()),
                time_unit: weekly(),
                horizon: weekly().map(|w| prost_types::Duration {
                    seconds: 39 * w.seconds,
                    nanos: 0,
                }),
                // FHL 2005's worked example: x = 2, t_x = 30.43, T = 38.86 weeks.
                probes: vec![HistoryProbe {
                    x: 2,
                    t_x: 30.43,
                    t: 38.86,
                }],
            })
            .await
            .unwrap()
            .into_inner();
        // BG/NBD (FHL 2005, table 1): r 0.243, α 4.414, a 0.793, b 2.426; LL −9582.4.
        let bg = fit.bg_nbd.unwrap();
        assert!(bg.converged && bg.problem.is_empty(), "{bg:?}");
        assert_eq!(bg.customers, 2357);
        close("r", bg.r, 0.243, 0.0006);
        close("α", bg.alpha, 4.414, 0.0006);
        close("a", bg.a, 0.793, 0.0006);
        close("b", bg.b, 2.426, 0.0006);
        close("LL", bg.log_likelihood, -9582.4, 0.06);
        // Expected purchases in the next 39 weeks of the worked example: 1.226.
        close(
            "E[Y(39) | 2, 30.43, 38.86]",
            bg.probes[0].conditional_expected_purchases,
            1.226,
            0.0006,
        );
        assert!(bg.expected_purchases_horizon > 0.0);
        // Gamma-Gamma (FHL 2005, "RFM and CLV"): p 6.25, q 3.74, γ 15.44 dollars, on the
        // 946 customers with a repeat purchase day.
        let gg = fit.gamma_gamma.unwrap();
        assert!(gg.converged, "{gg:?}");
        assert_eq!(gg.customers, 946);
        close("p", gg.p, 6.25, 0.006);
        close("q", gg.q, 3.74, 0.006);
        close("γ", gg.gamma / 100.0, 15.44, 0.006);
        h.stop();
    }
);

async fn all_members(segments: &mut Segments) -> BTreeMap<String, CustomerScore> {
    let mut stream = segments
        .list_segment_members(ListSegmentMembersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut all = BTreeMap::new();
    while let Some(chunk) = stream.next().await {
        for m in chunk.unwrap().members {
            all.insert(m.customer_id.clone(), m);
        }
    }
    all
}

fn opened(id: &str, customer: &str, at: DateTime<Utc>) -> EngagementEvent {
    EngagementEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        occurred_at: ts(at),
        kind: Some(Kind::MessageOpened(MessageOpened {
            message_id: format!("m-{id}"),
            ..Default::default()
        })),
    }
}

db_test!(
    a_fit_and_a_recompute_as_of_a_past_day_equal_those_on_the_history_cut_there,
    |db| async move {
        let mut h = Harness::start(db).await;
        let cut = calibration_end();
        let history = transactions();
        let (before, _): (Vec<&Transaction>, Vec<&Transaction>) =
            history.iter().partition(|t| t.placed_at <= cut);
        let truncated: Vec<Transaction> = before
            .iter()
            .map(|t| Transaction {
                customer: t.customer.clone(),
                placed_at: t.placed_at,
                cents: t.cents,
            })
            .collect();
        // Tenant t-a holds the whole history, t-b only what had happened by the cut.
        import(&mut h.profiles, &history).await;
        import(&mut h.other_profiles, &truncated).await;
        // Engagement on both sides of the cut (only the earlier in t-b's history).
        let early = Utc.with_ymd_and_hms(1997, 9, 1, 10, 0, 0).unwrap();
        let late = Utc.with_ymd_and_hms(1998, 1, 5, 10, 0, 0).unwrap();
        let events = vec![opened("e1", "c0001", early), opened("e2", "c0002", early)];
        let mut later = events.clone();
        later.push(opened("e3", "c0001", late));
        later.push(opened("e4", "c0003", late));
        h.profiles
            .record_engagement(RecordEngagementRequest { events: later })
            .await
            .unwrap();
        h.other_profiles
            .record_engagement(RecordEngagementRequest { events })
            .await
            .unwrap();

        // As of the cut, on the whole history …
        let as_of = h
            .segments
            .fit_models(FitModelsRequest {
                as_of: ts(cut),
                time_unit: weekly(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let run = h
            .segments
            .recompute(RecomputeRequest {
                as_of: ts(cut),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // … equals now, on the history cut there, with the clock at the cut.
        h.clock.set(cut);
        let truncated_fit = h
            .other_tenant
            .fit_models(FitModelsRequest {
                as_of: None,
                time_unit: weekly(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let truncated_run = h
            .other_tenant
            .recompute(RecomputeRequest {
                as_of: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(as_of.bg_nbd, truncated_fit.bg_nbd);
        assert_eq!(as_of.mbg_nbd, truncated_fit.mbg_nbd);
        assert_eq!(as_of.gamma_gamma, truncated_fit.gamma_gamma);
        assert_eq!(run.customers_scored, truncated_run.customers_scored);
        let full = all_members(&mut h.segments).await;
        let cut_history = all_members(&mut h.other_tenant).await;
        assert_eq!(full.len(), 2357);
        assert_eq!(full, cut_history);
        // A customer whose next purchase came after the cut is not recency 0 then.
        let c1 = &full["c0001"];
        assert!(c1.recency_days > 0.0, "{c1:?}");
        h.stop();
    }
);

db_test!(as_of_times_from_1970_on_are_accepted, |db| async move {
    let mut h = Harness::start(db).await;
    import(&mut h.profiles, &transactions()[..20]).await;
    let old = Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap();
    let run = h
        .segments
        .recompute(RecomputeRequest {
            as_of: ts(old),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Nobody had bought or been created by then.
    assert_eq!(run.customers_scored, 0);
    let err = h
        .segments
        .recompute(RecomputeRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        winback_platform::error::field_violations(&err)[0].field,
        "as_of"
    );
    h.stop();
});

db_test!(
    a_fit_that_cannot_converge_says_why_and_scoring_falls_back_to_the_cycle_rule,
    |db| async move {
        let mut h = Harness::start(db).await;
        // Nobody ever came back: the purchase models cannot be identified.
        let day = |d: i64| crate::harness::at(d);
        let history: Vec<Transaction> = (0..60)
            .map(|i| Transaction {
                customer: format!("c{i:02}"),
                placed_at: day(400 - 5 - 6 * i),
                cents: 10_000,
            })
            .collect();
        import(&mut h.profiles, &history).await;
        let fit = h
            .segments
            .fit_models(FitModelsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let bg = fit.bg_nbd.unwrap();
        assert!(!bg.converged, "{bg:?}");
        assert!(bg.problem.contains("repeat purchase"), "{}", bg.problem);
        assert_eq!(fit.preferred_model, "cycle_rule");
        h.segments
            .recompute(RecomputeRequest::default())
            .await
            .unwrap();
        let members = all_members(&mut h.segments).await;
        // Bought 5 days ago: alive, whatever the models did.
        let recent = &members["c00"];
        assert_eq!(recent.recency_days, 5.0);
        assert!(recent.p_alive > 0.99, "{recent:?}");
        assert!(members.values().all(|m| m.p_alive > 0.0 && m.f_score == 1));

        // The policy chooses the model; bad frequency thresholds are named.
        let mut policy = h
            .segments
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .policy
            .unwrap();
        assert_eq!(policy.frequency_thresholds, vec![2, 3, 4, 6]);
        policy.frequency_thresholds = vec![3, 2, 4, 6];
        let err = h
            .segments
            .update_policy(UpdatePolicyRequest {
                policy: Some(policy.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(
            winback_platform::error::field_violations(&err)[0].field,
            "policy.frequency_thresholds"
        );
        policy.frequency_thresholds = vec![];
        policy.scoring_model = ScoringModel::MbgNbd as i32;
        h.segments
            .update_policy(UpdatePolicyRequest {
                policy: Some(policy),
            })
            .await
            .unwrap();
        import(
            &mut h.profiles,
            &[
                Transaction {
                    customer: "c01".into(),
                    placed_at: day(398),
                    cents: 5_000,
                },
                Transaction {
                    customer: "c02".into(),
                    placed_at: day(399),
                    cents: 5_000,
                },
            ],
        )
        .await;
        let fit = h
            .segments
            .fit_models(FitModelsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mbg = fit.mbg_nbd.unwrap();
        let expected = if mbg.converged {
            "mbg_nbd"
        } else {
            "cycle_rule"
        };
        assert_eq!(fit.preferred_model, expected, "{mbg:?}");
        h.stop();
    }
);
