//! Batch issue throughput and `RedeemCoupon` latency under a fixed request rate, through
//! gRPC on loopback.
//!
//! `cargo bench -p winback-offers --bench coupons -- [--coupons N] [--rate R] [--seconds S] [--db sqlite|postgres|both]`
//!
//! Issues N coupons in batches of 10,000 (`IssueCoupons`), then redeems them at R requests
//! per second for S seconds from an open-loop load generator (each request starts on its
//! own schedule, whatever the earlier ones are doing) and prints the latency percentiles.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Harness, cart, percent_off};
use winback_platform::testing::TestDatabase;
use winback_proto::offers::{
    CouponRecipient, GetOfferTemplateRequest, IssueCouponsRequest, OfferConditions, OfferTemplate,
    RedeemCouponRequest,
};

fn arg(name: &str) -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

async fn run(label: &str, db: &TestDatabase, coupons: usize, rate: u64, seconds: u64) {
    let mut h = Harness::start(db).await;
    let t = h
        .template(OfferTemplate {
            conditions: Some(OfferConditions {
                per_customer_limit: 1,
                ..Default::default()
            }),
            ..percent_off(10)
        })
        .await;
    let started = Instant::now();
    let mut issued = Vec::with_capacity(coupons);
    for batch in 0..coupons.div_ceil(10_000) {
        let recipients = (batch * 10_000..((batch + 1) * 10_000).min(coupons))
            .map(|i| CouponRecipient {
                customer_id: format!("c{i:08}"),
                idempotency_key: format!("k{i:08}"),
            })
            .collect();
        let reply =
            h.a.issue_coupons(IssueCouponsRequest {
                template_id: t.clone(),
                recipients,
                campaign_id: "bench".into(),
                ladder_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        issued.extend(reply.coupons.into_iter().map(|c| (c.code, c.customer_id)));
    }
    let issue_s = started.elapsed().as_secs_f64();

    // Unloaded latency, one call at a time: a cheap read (the gRPC, auth and runtime floor)
    // and a redemption.
    let mut client = h.a.clone();
    let mut floor = Vec::new();
    for _ in 0..200 {
        let sent = Instant::now();
        client
            .get_offer_template(GetOfferTemplateRequest {
                template_id: t.clone(),
            })
            .await
            .unwrap();
        floor.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let mut sequential = Vec::new();
    for (i, (code, customer)) in issued.drain(..200.min(issued.len())).enumerate() {
        let sent = Instant::now();
        client
            .redeem_coupon(RedeemCouponRequest {
                code,
                customer_id: customer,
                order_id: format!("warm-{i}"),
                order: cart(100_000),
            })
            .await
            .unwrap();
        sequential.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{label:>8}: one at a time: GetOfferTemplate median {:.2} ms, RedeemCoupon median {:.2} ms",
        median(&mut floor),
        median(&mut sequential)
    );

    let total = (rate * seconds) as usize;
    assert!(
        total <= issued.len(),
        "issue at least rate × seconds coupons"
    );
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for (i, (code, customer)) in issued.into_iter().take(total).enumerate() {
        let mut client = h.a.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let sent = Instant::now();
            let reply = client
                .redeem_coupon(RedeemCouponRequest {
                    code,
                    customer_id: customer,
                    order_id: format!("o{i}"),
                    order: cart(100_000),
                })
                .await;
            (
                sent.elapsed(),
                reply
                    .err()
                    .map(|e| format!("{:?} {}", e.code(), e.message())),
            )
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failures = 0;
    let mut first_failure = None;
    for task in tasks {
        let (latency, error) = task.await.unwrap();
        latencies.push(latency);
        if let Some(error) = error {
            failures += 1;
            first_failure.get_or_insert(error);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    println!(
        "{label:>8}: issued {coupons} coupons in {issue_s:.2} s ({:.0}/s) | redeemed {total} at {rate}/s over {wall:.1} s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {failures} failed{}",
        coupons as f64 / issue_s,
        pct(0.50),
        pct(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        first_failure
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
    );
    h.stop();
}

fn main() {
    let coupons: usize = arg("--coupons").map_or(100_000, |v| v.parse().expect("--coupons N"));
    let rate: u64 = arg("--rate").map_or(1_000, |v| v.parse().expect("--rate R"));
    let seconds: u64 = arg("--seconds").map_or(10, |v| v.parse().expect("--seconds S"));
    let which = arg("--db").unwrap_or_else(|| "both".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if which == "sqlite" || which == "both" {
            let db = TestDatabase::sqlite().await;
            run("sqlite", &db, coupons, rate, seconds).await;
            db.cleanup().await;
        }
        if which == "postgres" || which == "both" {
            match TestDatabase::postgres().await {
                Some(db) => {
                    run("postgres", &db, coupons, rate, seconds).await;
                    db.cleanup().await;
                }
                None => println!("postgres: SKIPPED (not reachable)"),
            }
        }
    });
}
