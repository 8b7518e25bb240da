//! The segmentation service through its gRPC client, on SQLite and PostgreSQL, reading
//! facts from a real profiles service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod incremental;
mod science;

use std::collections::BTreeMap;

use harness::{Harness, at, order, ts};
use tokio_stream::StreamExt;
use tonic::Code;
use winback_platform::db_test;
use winback_platform::error::field_violations;
use winback_proto::common::LifecycleState;
use winback_proto::segmentation::*;

/// A small shop at day 400: a champion buying every 10 days, a regular 40 days past a
/// 30-day rhythm, a one-visit customer from a year ago, a new customer from yesterday, a
/// prospect, and twenty others in between.
async fn shop(h: &mut Harness) {
    let mut ids: Vec<String> = ["champ", "sleepy", "onevisit", "fresh", "prospect"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    ids.extend((0..20).map(|i| format!("c{i:02}")));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    h.add_customers(&refs).await;
    let mut orders = Vec::new();
    for k in 0..20 {
        orders.push(order(&format!("champ-{k}"), "champ", 208 + 10 * k, 500_000));
    }
    for (k, day) in [300, 330, 360].into_iter().enumerate() {
        orders.push(order(&format!("sleepy-{k}"), "sleepy", day, 150_000));
    }
    orders.push(order("onevisit-0", "onevisit", 35, 90_000));
    orders.push(order("fresh-0", "fresh", 399, 120_000));
    for i in 0..20i64 {
        for k in 0..=(i % 5) {
            orders.push(order(
                &format!("c{i:02}-{k}"),
                &format!("c{i:02}"),
                100 + 7 * i + 30 * k,
                50_000 + 7_000 * i,
            ));
        }
    }
    h.add_orders(orders).await;
}

async fn members(h: &mut Harness, request: ListSegmentMembersRequest) -> Vec<CustomerScore> {
    let mut stream = h
        .segments
        .list_segment_members(request)
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        all.extend(chunk.unwrap().members);
    }
    all
}

async fn score(h: &mut Harness, id: &str) -> CustomerScore {
    h.segments
        .get_customer_score(GetCustomerScoreRequest {
            customer_id: id.into(),
            locale: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap()
}

db_test!(
    recompute_scores_every_customer_into_one_segment_and_state,
    |db| async move {
        let mut h = Harness::start(db).await;
        shop(&mut h).await;
        let run = h
            .segments
            .recompute(RecomputeRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(run.customers_scored, 25);
        assert_eq!(run.as_of, ts(at(400)));

        let champ = score(&mut h, "champ").await;
        assert_eq!(
            (champ.segment.as_str(), champ.r_score, champ.f_score),
            ("champions", 5, 5)
        );
        assert_eq!(champ.lifecycle_state, LifecycleState::Active as i32);
        assert_eq!(champ.frequency, 20);
        assert!(
            champ.p_alive > 0.5 && champ.clv.as_ref().unwrap().amount_minor > 0,
            "{champ:?}"
        );

        let sleepy = score(&mut h, "sleepy").await;
        assert_eq!(
            sleepy.lifecycle_state,
            LifecycleState::Sleeping as i32,
            "{sleepy:?}"
        );
        assert_eq!(
            (sleepy.expected_cycle_days, sleepy.days_overdue),
            (30.0, 10.0)
        );
        assert!(
            sleepy
                .reasons
                .iter()
                .any(|r| r.contains("overdue by 10 days (cycle 30 days +30 %)")),
            "{:?}",
            sleepy.reasons
        );

        let one_visit = score(&mut h, "onevisit").await;
        assert!(one_visit.one_visit);
        assert_eq!(
            one_visit.lifecycle_state,
            LifecycleState::NearlyLost as i32,
            "{one_visit:?}"
        );
        assert_eq!(score(&mut h, "fresh").await.segment, "new");

        let prospect = score(&mut h, "prospect").await;
        assert_eq!(
            (prospect.segment.as_str(), prospect.r_score),
            ("prospects", 0)
        );
        assert_eq!(prospect.lifecycle_state, LifecycleState::Prospect as i32);

        // Russian names come from the rule table.
        let ru = h
            .segments
            .get_customer_score(GetCustomerScoreRequest {
                customer_id: "champ".into(),
                locale: "ru".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .score
            .unwrap();
        assert_eq!(ru.segment_name, "Чемпионы");

        // The summary accounts for everybody exactly once.
        let summary = h
            .segments
            .get_segment_summary(GetSegmentSummaryRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            summary.segments.iter().map(|s| s.customers).sum::<i64>(),
            25
        );
        assert_eq!(
            summary.lifecycle.iter().map(|s| s.customers).sum::<i64>(),
            25
        );
        assert_eq!(summary.grid.len(), 25);
        assert_eq!(
            summary.grid.iter().map(|c| c.customers).sum::<i64>(),
            24,
            "prospects are outside the grid"
        );
        assert_eq!(summary.currency, "RUB");
        assert_eq!(summary.history.len(), 1);
        let champions = summary
            .segments
            .iter()
            .find(|s| s.segment == "champions")
            .unwrap();
        assert_eq!(champions.name, "Champions");

        // Every member listed once, with the filters applied.
        let all = members(
            &mut h,
            ListSegmentMembersRequest {
                chunk_size: 7,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(all.len(), 25);
        let sleeping = members(
            &mut h,
            ListSegmentMembersRequest {
                lifecycle_states: vec![LifecycleState::Sleeping as i32],
                ..Default::default()
            },
        )
        .await;
        assert!(sleeping.iter().any(|m| m.customer_id == "sleepy"));
        assert!(
            sleeping
                .iter()
                .all(|m| m.lifecycle_state == LifecycleState::Sleeping as i32)
        );
        let champions = members(
            &mut h,
            ListSegmentMembersRequest {
                segments: vec!["champions".into()],
                ..Default::default()
            },
        )
        .await;
        assert!(champions.iter().all(|m| m.segment == "champions") && !champions.is_empty());
        let likely_alive = members(
            &mut h,
            ListSegmentMembersRequest {
                min_p_alive: 0.5,
                ..Default::default()
            },
        )
        .await;
        assert!(likely_alive.iter().all(|m| m.p_alive >= 0.5));
        assert!(likely_alive.len() < 25);

        // Another tenant sees nothing of this one.
        let err = h
            .other_tenant
            .get_customer_score(GetCustomerScoreRequest {
                customer_id: "champ".into(),
                locale: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        h.stop();
    }
);

db_test!(
    recompute_emits_changes_only_for_customers_whose_values_changed,
    |db| async move {
        let mut h = Harness::start(db).await;
        shop(&mut h).await;
        // The first recompute is when every customer enters a segment and a state (an
        // imported history starts campaigns waiting for "entered sleeping").
        let first = h
            .segments
            .recompute(RecomputeRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!((first.segment_changes, first.lifecycle_changes), (25, 25));
        let entered = h.outbox_events().await;
        assert_eq!(
            entered
                .iter()
                .filter(|e| e.as_str() == "lifecycle_changed")
                .count(),
            25
        );
        assert_eq!(entered.len(), 50);
        let entries = h
            .segments
            .list_transitions(ListTransitionsRequest {
                customer_id: "sleepy".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .transitions;
        assert_eq!(
            (entries.len(), entries[0].from_state, entries[0].to_state),
            (
                1,
                LifecycleState::Unspecified as i32,
                LifecycleState::Sleeping as i32
            )
        );
        // Nothing changed: nothing emitted.
        let again = h
            .segments
            .recompute(RecomputeRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!((again.segment_changes, again.lifecycle_changes), (0, 0));
        assert_eq!(h.outbox_events().await.len(), 50);

        let before: BTreeMap<String, (String, i32)> =
            members(&mut h, ListSegmentMembersRequest::default())
                .await
                .into_iter()
                .map(|m| (m.customer_id, (m.segment, m.lifecycle_state)))
                .collect();
        // The sleeping regular comes back; a new customer arrives.
        h.add_customers(&["newcomer"]).await;
        h.add_orders(vec![
            order("sleepy-back", "sleepy", 400, 150_000),
            order("newcomer-0", "newcomer", 400, 70_000),
        ])
        .await;
        let third = h
            .segments
            .recompute(RecomputeRequest::default())
            .await
            .unwrap()
            .into_inner();
        let after: BTreeMap<String, (String, i32)> =
            members(&mut h, ListSegmentMembersRequest::default())
                .await
                .into_iter()
                .map(|m| (m.customer_id, (m.segment, m.lifecycle_state)))
                .collect();
        assert_eq!(
            score(&mut h, "sleepy").await.lifecycle_state,
            LifecycleState::Active as i32
        );

        let changed_segment: Vec<&String> = after
            .iter()
            .filter(|(id, v)| before.get(*id).map(|b| &b.0) != Some(&v.0))
            .map(|(id, _)| id)
            .collect();
        let changed_state: Vec<&String> = after
            .iter()
            .filter(|(id, v)| before.get(*id).map(|b| b.1) != Some(v.1))
            .map(|(id, _)| id)
            .collect();
        assert!(
            changed_state.contains(&&"sleepy".to_owned())
                && changed_segment.contains(&&"newcomer".to_owned())
        );
        assert_eq!(third.segment_changes, changed_segment.len() as i64);
        assert_eq!(third.lifecycle_changes, changed_state.len() as i64);

        let events = h.outbox_events().await;
        assert_eq!(
            events
                .iter()
                .filter(|e| e.as_str() == "segment_changed")
                .count(),
            25 + changed_segment.len()
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.as_str() == "lifecycle_changed")
                .count(),
            25 + changed_state.len()
        );

        // Transitions name exactly the changed customers.
        let transitions = h
            .segments
            .list_transitions(ListTransitionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .transitions;
        let mut changed: Vec<&String> = changed_segment
            .iter()
            .chain(&changed_state)
            .copied()
            .collect();
        changed.sort();
        changed.dedup();
        // Besides the 25 entries of the first recompute.
        assert_eq!(transitions.len(), 25 + changed.len());
        let sleepy = transitions
            .iter()
            .find(|t| t.customer_id == "sleepy")
            .unwrap();
        assert_eq!(
            (sleepy.from_state, sleepy.to_state),
            (
                LifecycleState::Sleeping as i32,
                LifecycleState::Active as i32
            )
        );
        assert_eq!(sleepy.recompute_id, third.recompute_id);
        let newcomer = transitions
            .iter()
            .find(|t| t.customer_id == "newcomer")
            .unwrap();
        assert_eq!(newcomer.from_segment, "");

        // Paging and the customer filter.
        let page = h
            .segments
            .list_transitions(ListTransitionsRequest {
                page: Some(winback_proto::common::PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.transitions.len(), 1);
        let next = page.page.unwrap().next_page_token;
        assert_eq!(next.is_empty(), transitions.len() == 1);
        let only = h
            .segments
            .list_transitions(ListTransitionsRequest {
                customer_id: "sleepy".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Its entry at the first recompute, and its return.
        assert_eq!(only.transitions.len(), 2);

        // Summary history keeps every run, newest first.
        let summary = h
            .segments
            .get_segment_summary(GetSegmentSummaryRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.history.len(), 3);
        assert_eq!(summary.history[0].recompute_id, third.recompute_id);
        h.stop();
    }
);

db_test!(policy_is_validated_stored_and_used, |db| async move {
    let mut h = Harness::start(db).await;
    let defaults = h
        .segments
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(defaults.sleeping_overdue_ratio, 0.3);
    assert_eq!(defaults.rule_table.as_ref().unwrap().rules.len(), 10);

    // Bad fields are named and nothing is stored.
    let bad = Policy {
        nearly_lost_cycles: 1.2,
        unopened_streak_dead: -3,
        ..defaults.clone()
    };
    let err = h
        .segments
        .update_policy(UpdatePolicyRequest { policy: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"policy.nearly_lost_cycles".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"policy.unopened_streak_dead".to_owned()),
        "{fields:?}"
    );
    let mut gappy = defaults.clone();
    gappy.rule_table.as_mut().unwrap().rules.truncate(9);
    let err = h
        .segments
        .update_policy(UpdatePolicyRequest {
            policy: Some(gappy),
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "policy.rule_table");
    let err = h
        .segments
        .update_policy(UpdatePolicyRequest { policy: None })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "policy");
    assert_eq!(
        h.segments
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .policy
            .unwrap(),
        defaults
    );

    // A beauty salon: one-visit customers sleep after 90 days.
    let beauty = Policy {
        niche: NichePreset::Beauty as i32,
        ..Policy::default()
    };
    let stored = h
        .segments
        .update_policy(UpdatePolicyRequest {
            policy: Some(beauty),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(stored.niche, NichePreset::Beauty as i32);
    assert_eq!(stored.sleeping_overdue_ratio, 0.3, "defaults filled in");
    h.add_customers(&["a", "b"]).await;
    h.add_orders(vec![
        order("a-0", "a", 310, 1_000),
        order("b-0", "b", 309, 1_000),
    ])
    .await;
    h.segments
        .recompute(RecomputeRequest::default())
        .await
        .unwrap();
    let a = score(&mut h, "a").await;
    let b = score(&mut h, "b").await;
    assert!((a.expected_cycle_days - 90.0 / 1.3).abs() < 1e-9);
    assert_eq!(
        a.lifecycle_state,
        LifecycleState::Active as i32,
        "exactly 90 days: still within"
    );
    assert_eq!(
        b.lifecycle_state,
        LifecycleState::Sleeping as i32,
        "91 days"
    );

    // The other tenant still has the defaults.
    let theirs = h
        .other_tenant
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(theirs.niche, NichePreset::Unspecified as i32);

    // ValidateRuleTable reports shadowed rules and gaps.
    let mut table = defaults.rule_table.clone().unwrap();
    table.rules.remove(5); // need attention: R3 F3
    table.rules.push(table.rules[0].clone());
    let report = h
        .segments
        .validate_rule_table(ValidateRuleTableRequest { table: Some(table) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.unreachable_rules, vec![9]);
    assert_eq!(
        report.uncovered_cells,
        vec![ScoreCell {
            recency: 3,
            frequency: 3,
            monetary: 0
        }]
    );
    let err = h
        .segments
        .validate_rule_table(ValidateRuleTableRequest {
            table: Some(SegmentRuleTable {
                rules: vec![SegmentRule {
                    segment: "x".into(),
                    recency: Some(ScoreRange { min: 3, max: 1 }),
                    ..Default::default()
                }],
                fallback_segment: String::new(),
            }),
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = field_violations(&err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"table.rules[0].recency".to_owned())
            && fields.contains(&"table.rules[0].frequency".to_owned()),
        "{fields:?}"
    );
    h.stop();
});

db_test!(fit_models_recovers_a_simulated_shop, |db| async move {
    use winback_scoring::nbd::{NbdModel, NbdParams};
    use winback_scoring::simulate::{Rng, SimulatedCustomer};
    let mut h = Harness::start(db).await;
    let truth = NbdParams {
        r: 1.2,
        alpha: 40.0,
        a: 0.6,
        b: 2.0,
    };
    let mut rng = Rng::new(7);
    let n = 600;
    let ids: Vec<String> = (0..n).map(|i| format!("s{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    h.add_customers(&refs).await;
    let mut orders = Vec::new();
    for id in &ids {
        let first = rng.below(300) as i64;
        orders.push(order(
            &format!("{id}-0"),
            id,
            first,
            10_000 + rng.below(5_000) as i64,
        ));
        let customer = SimulatedCustomer::draw(&mut rng, truth);
        let mut k = 0;
        let mut purchases = Vec::new();
        customer.purchases(&mut rng, NbdModel::BgNbd, (399 - first) as f64, |t| {
            purchases.push(t)
        });
        for t in purchases {
            k += 1;
            orders.push(order(
                &format!("{id}-{k}"),
                id,
                first + t.ceil() as i64,
                10_000 + rng.below(5_000) as i64,
            ));
        }
    }
    for batch in orders.chunks(900) {
        h.add_orders(batch.to_vec()).await;
    }
    let fit = h
        .segments
        .fit_models(FitModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let bg = fit.bg_nbd.unwrap();
    assert!(bg.converged, "{bg:?}");
    assert_eq!(bg.customers, n);
    assert!(bg.distinct_rows <= n);
    assert!(bg.r > 0.0 && bg.alpha > 0.0 && bg.a > 0.0 && bg.b > 0.0);
    assert!(fit.mbg_nbd.unwrap().log_likelihood.is_finite());
    assert!(["bg_nbd", "mbg_nbd"].contains(&fit.preferred_model.as_str()));
    let gg = fit.gamma_gamma.unwrap();
    assert!(gg.converged && gg.customers > 0);
    assert_eq!(fit.time_unit.unwrap().seconds, 86_400);
    // Weekly units: α in weeks.
    let weekly = h
        .segments
        .fit_models(FitModelsRequest {
            as_of: None,
            time_unit: Some(prost_types::Duration {
                seconds: 7 * 86_400,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!((weekly.bg_nbd.unwrap().alpha * 7.0 / bg.alpha - 1.0).abs() < 0.05);
    h.stop();
});

db_test!(bad_requests_and_callers_are_refused, |db| async move {
    let mut h = Harness::start(db).await;
    let err = h
        .segments
        .get_customer_score(GetCustomerScoreRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), field_violations(&err)[0].field.as_str()),
        (Code::InvalidArgument, "customer_id")
    );
    let err = h
        .segments
        .get_customer_score(GetCustomerScoreRequest {
            customer_id: "nobody".into(),
            locale: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .segments
        .recompute(RecomputeRequest {
            as_of: ts(at(500)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err)[0].field, "as_of");
    let mut stream_err = h
        .segments
        .list_segment_members(ListSegmentMembersRequest {
            min_p_alive: 0.9,
            max_p_alive: 0.5,
            chunk_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = field_violations(&stream_err)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"min_p_alive".to_owned()) && fields.contains(&"chunk_size".to_owned()),
        "{fields:?}"
    );
    stream_err = h
        .segments
        .list_transitions(ListTransitionsRequest {
            page: Some(winback_proto::common::PageRequest {
                page_size: 10,
                page_token: "garbage".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&stream_err)[0].field, "page.page_token");
    let err = h
        .segments
        .fit_models(FitModelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "no buyers to fit");

    // A read-only token may read but not recompute; no token at all is unauthenticated.
    let mut reader = h.segments_with_scopes(&["segmentation:read"]);
    reader.get_policy(GetPolicyRequest {}).await.unwrap();
    let err = reader
        .recompute(RecomputeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut anonymous =
        segmentation_service_client::SegmentationServiceClient::new(h.channel.clone());
    assert_eq!(
        anonymous
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    h.stop();
});

db_test!(
    a_policy_schedule_recomputes_by_the_service_clock,
    |db| async move {
        let mut h = Harness::start(db).await;
        shop(&mut h).await;
        let every = Policy {
            recompute_every: Some(prost_types::Duration {
                seconds: 3_600,
                nanos: 0,
            }),
            ..Policy::default()
        };
        h.segments
            .update_policy(UpdatePolicyRequest {
                policy: Some(every),
            })
            .await
            .unwrap();
        let runs = |h: &mut Harness| {
            let mut client = h.segments.clone();
            async move {
                client
                    .get_segment_summary(GetSegmentSummaryRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .history
                    .len()
            }
        };
        // No run yet: the schedule runs one within a check interval (5 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while runs(&mut h).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no scheduled recompute"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // Not due again until an hour passes on the service clock.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        assert_eq!(runs(&mut h).await, 1);
        h.clock.advance(chrono::Duration::hours(1));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while runs(&mut h).await < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "no second scheduled recompute"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        h.stop();
    }
);
