//! Ingest and facts-stream throughput of the profiles service, through gRPC on loopback.
//!
//! `cargo bench -p winback-profiles --bench ingest -- [--customers N] [--orders N] [--db sqlite|postgres|both] [--stream-runs K]`
//!
//! Creates N customers, streams the orders through `StreamOrders` in chunks of 1000 (each
//! chunk one transaction: orders, facts, events), then reads every customer's facts with
//! `StreamFacts` (K times, 1 by default: each run's time is printed, the rate line has the
//! fastest). Prints the rates (and, with `WINBACK_STATEMENT_PROFILE=1`, the statements
//! the service ran).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::Instant;

use harness::{Harness, customer, order};
use tokio_stream::StreamExt;
use winback_platform::db::statement_profile;
use winback_platform::testing::TestDatabase;
use winback_proto::profiles::{StreamFactsRequest, StreamOrdersRequest, UpsertCustomersRequest};

struct Args {
    customers: usize,
    orders: usize,
    db: String,
    stream_runs: usize,
}

fn args() -> Args {
    let mut out = Args {
        customers: 100_000,
        orders: 200_000,
        db: "both".into(),
        stream_runs: 1,
    };
    let argv: Vec<String> = std::env::args().collect();
    for pair in argv.windows(2) {
        match pair[0].as_str() {
            "--customers" => out.customers = pair[1].parse().expect("--customers N"),
            "--orders" => out.orders = pair[1].parse().expect("--orders N"),
            "--db" => out.db = pair[1].clone(),
            "--stream-runs" => out.stream_runs = pair[1].parse().expect("--stream-runs K"),
            _ => {}
        }
    }
    out
}

async fn run(label: &str, db: &TestDatabase, args: &Args) {
    let mut h = Harness::start(db).await;
    let started = Instant::now();
    for chunk in (0..args.customers).collect::<Vec<_>>().chunks(1000) {
        let customers = chunk
            .iter()
            .map(|i| customer(&format!("c{i:07}")))
            .collect();
        h.a.upsert_customers(UpsertCustomersRequest {
            update_mask: None,
            customers,
        })
        .await
        .unwrap();
    }
    let upsert_s = started.elapsed().as_secs_f64();

    let n = args.customers;
    let chunks: Vec<StreamOrdersRequest> = (0..args.orders)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| StreamOrdersRequest {
            orders: chunk
                .iter()
                .map(|&i| {
                    order(
                        &format!("o{i:08}"),
                        &format!("c{:07}", (i * 7919) % n),
                        (i % 365) as i64,
                        1000 + (i % 5000) as i64,
                    )
                })
                .collect(),
            skip_invalid: false,
        })
        .collect();
    let started = Instant::now();
    let reply =
        h.a.stream_orders(tokio_stream::iter(chunks))
            .await
            .unwrap()
            .into_inner();
    let ingest_s = started.elapsed().as_secs_f64();
    assert_eq!(reply.recorded as usize, args.orders);

    let mut runs = Vec::new();
    let mut streamed = 0usize;
    for _ in 0..args.stream_runs.max(1) {
        let started = Instant::now();
        let mut stream =
            h.a.stream_facts(StreamFactsRequest {
                changed_since_cursor: String::new(),
                chunk_size: 5000,
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner();
        streamed = 0;
        while let Some(chunk) = stream.next().await {
            streamed += chunk.unwrap().facts.len();
        }
        runs.push(started.elapsed().as_secs_f64());
        assert_eq!(streamed, args.customers);
    }
    let stream_s = runs.iter().copied().fold(f64::INFINITY, f64::min);
    if runs.len() > 1 {
        let each: Vec<String> = runs.iter().map(|s| format!("{s:.2}")).collect();
        println!("{label:>8}: StreamFacts runs (s): {}", each.join(", "));
    }

    println!(
        "{label:>8}: customers {n:>9} upserted in {upsert_s:6.2} s ({:>8.0}/s) | orders {:>9} streamed in {ingest_s:6.2} s ({:>8.0} orders/s) | StreamFacts {streamed:>9} in {stream_s:5.2} s ({:>9.0}/s)",
        n as f64 / upsert_s,
        args.orders,
        args.orders as f64 / ingest_s,
        streamed as f64 / stream_s,
    );
    if statement_profile::enabled() {
        print!("{}", statement_profile::report(12));
    }
    h.stop();
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if args.db == "sqlite" || args.db == "both" {
            let db = TestDatabase::sqlite().await;
            run("sqlite", &db, &args).await;
            db.cleanup().await;
        }
        if args.db == "postgres" || args.db == "both" {
            match TestDatabase::postgres().await {
                Some(db) => {
                    run("postgres", &db, &args).await;
                    db.cleanup().await;
                }
                None => println!("postgres: SKIPPED (not reachable)"),
            }
        }
    });
}
