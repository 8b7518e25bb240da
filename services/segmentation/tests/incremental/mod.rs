//! Incremental recompute: only the customers whose facts changed are rescored, against the
//! last run's models and boundaries; the others keep their scores; reads, summaries and
//! the next full run see the patches.

use std::collections::BTreeMap;

use tokio_stream::StreamExt;
use tonic::Code;
use winback_platform::db_test;
use winback_proto::profiles::EraseCustomerRequest;
use winback_proto::segmentation::*;

use crate::harness::{Harness, at, order, ts};

/// Forty customers with one to five orders each, the last between day 100 and 390.
async fn shop(h: &mut Harness) {
    let ids: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    h.add_customers(&refs).await;
    let mut orders = Vec::new();
    for i in 0..40i64 {
        for k in 0..=(i % 5) {
            orders.push(order(
                &format!("c{i:02}-{k}"),
                &format!("c{i:02}"),
                100 + 7 * i - 20 * k,
                40_000 + 3_000 * i,
            ));
        }
    }
    h.add_orders(orders).await;
}

async fn recompute(h: &mut Harness, incremental: bool) -> RecomputeResponse {
    h.segments
        .recompute(RecomputeRequest {
            as_of: None,
            incremental,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn all_members(h: &mut Harness) -> BTreeMap<String, CustomerScore> {
    let mut stream = h
        .segments
        .list_segment_members(ListSegmentMembersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut all = BTreeMap::new();
    while let Some(chunk) = stream.next().await {
        for m in chunk.unwrap().members {
            assert!(
                all.insert(m.customer_id.clone(), m).is_none(),
                "listed twice"
            );
        }
    }
    all
}

async fn summary(h: &mut Harness) -> GetSegmentSummaryResponse {
    h.segments
        .get_segment_summary(GetSegmentSummaryRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// Segment sizes and the R×F grid as counted from the members themselves.
fn counted(members: &BTreeMap<String, CustomerScore>) -> (BTreeMap<String, i64>, [i64; 25]) {
    let mut sizes = BTreeMap::new();
    let mut grid = [0i64; 25];
    for m in members.values() {
        *sizes.entry(m.segment.clone()).or_default() += 1;
        if m.r_score > 0 {
            grid[((m.r_score - 1) * 5 + (m.f_score - 1)) as usize] += 1;
        }
    }
    (sizes, grid)
}

fn summarised(s: &GetSegmentSummaryResponse) -> (BTreeMap<String, i64>, [i64; 25]) {
    let sizes = s
        .segments
        .iter()
        .filter(|x| x.customers > 0)
        .map(|x| (x.segment.clone(), x.customers))
        .collect();
    let mut grid = [0i64; 25];
    for c in &s.grid {
        grid[((c.r_score - 1) * 5 + (c.f_score - 1)) as usize] = c.customers;
    }
    (sizes, grid)
}

db_test!(
    an_incremental_recompute_rescores_only_changed_customers,
    |db| async move {
        let mut h = Harness::start(db).await;
        shop(&mut h).await;

        // Nothing to build on yet: the first incremental request runs in full.
        let first = recompute(&mut h, true).await;
        assert!(!first.incremental);
        assert_eq!(first.customers_scored, 40);
        // A full stream's cursor on PostgreSQL starts below every transaction still open
        // when it began (other tests' too), so the import may be served once more as
        // changes: drain that, the same facts on the same day scoring the same.
        let mut drained = false;
        for _ in 0..100 {
            let run = recompute(&mut h, true).await;
            assert!(run.incremental, "{run:?}");
            if run.customers_scored == 0 {
                drained = true;
                break;
            }
            assert_eq!((run.segment_changes, run.lifecycle_changes), (0, 0));
        }
        assert!(drained);
        let before = all_members(&mut h).await;

        // A day later: c03 buys again, c40 is new, c20 is erased.
        h.clock.set(at(401));
        h.add_customers(&["c40"]).await;
        h.add_orders(vec![
            order("c03-new", "c03", 401, 900_000),
            order("c40-0", "c40", 401, 70_000),
        ])
        .await;
        h.profiles
            .erase_customer(EraseCustomerRequest {
                customer_id: "c20".into(),
                reason: "test".into(),
            })
            .await
            .unwrap();

        // On PostgreSQL profiles serves a change once every transaction that could still
        // commit before it has (other tests' transactions can hold it back a moment): the
        // changes may take more than one incremental run to arrive, never less or twice.
        let (mut rescored, mut segment_changes) = (0, 0);
        let mut after = BTreeMap::new();
        for _ in 0..100 {
            let run = recompute(&mut h, true).await;
            assert!(run.incremental, "{run:?}");
            rescored += run.customers_scored;
            segment_changes += run.segment_changes;
            after = all_members(&mut h).await;
            if rescored >= 2 && !after.contains_key("c20") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(rescored >= 2, "c03 and c40 rescored");
        assert_eq!(after.len(), 40, "one erased, one new");
        assert!(!after.contains_key("c20"));
        let c03 = &after["c03"];
        assert_eq!((c03.recency_days, c03.frequency), (0.0, 5));
        assert_eq!(c03.r_score, 5);
        assert_eq!(after["c40"].frequency, 1);
        // The rescored customers' scores are as of now; the others keep theirs, from the
        // full run (only the import served again could have been rescored besides).
        assert_eq!((c03.as_of, after["c40"].as_of), (ts(at(401)), ts(at(401))));
        for (id, m) in &before {
            if !["c03", "c20"].contains(&id.as_str()) && after[id].as_of == m.as_of {
                assert_eq!(&after[id], m, "{id} changed");
            }
        }
        // Reads of one customer see the patches.
        let read = h
            .segments
            .get_customer_score(GetCustomerScoreRequest {
                customer_id: "c03".into(),
                locale: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .score
            .unwrap();
        assert_eq!(&read, c03);
        assert_eq!(read.as_of, ts(at(401)));
        let erased = h
            .segments
            .get_customer_score(GetCustomerScoreRequest {
                customer_id: "c20".into(),
                locale: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(erased.code(), Code::NotFound);
        // The summary is the members counted, with the new and erased customers.
        assert_eq!(summarised(&summary(&mut h).await), counted(&after));
        // Changes of the rescored customers are events: c40 enters its segment and state.
        assert!(segment_changes >= 1);
        let transitions = h
            .segments
            .list_transitions(ListTransitionsRequest {
                customer_id: "c40".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .transitions;
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].from_segment, "");

        // Nothing changed since: an incremental run rescores nobody.
        let idle = recompute(&mut h, true).await;
        assert!(idle.incremental);
        assert_eq!(
            (
                idle.customers_scored,
                idle.segment_changes,
                idle.lifecycle_changes
            ),
            (0, 0, 0)
        );

        // The next full run folds the patches in: same customers, the summary still exact.
        let full = recompute(&mut h, false).await;
        assert!(!full.incremental);
        assert_eq!(full.customers_scored, 40);
        let folded = all_members(&mut h).await;
        assert_eq!(
            folded.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        assert_eq!(summarised(&summary(&mut h).await), counted(&folded));
        assert_eq!(folded["c03"].frequency, 5);

        // A backtest cannot be incremental.
        let err = h
            .segments
            .recompute(RecomputeRequest {
                as_of: ts(at(300)),
                incremental: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("incremental"), "{err:?}");
        h.stop();
    }
);
