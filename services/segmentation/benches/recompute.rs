//! A full `Recompute` end to end: profiles streams a tenant's facts over gRPC, segmentation
//! fits the models, scores every customer and stores the scores — then a second run that
//! compares against the first.
//!
//! `cargo bench -p winback-segmentation --bench recompute -- [--customers N] [--db sqlite|postgres|both] [--write-csv PATH]`
//!
//! `--write-csv` also writes the facts for the DuckDB anchor (`scripts/duckdb_recompute.py`).
//!
//! The facts are written straight into profiles' facts table (ingesting a million
//! customers' orders through the API would measure profiles, not this); everything the
//! recompute reads goes through `StreamFacts`. Peak memory is the process's VmHWM, which
//! includes profiles and the seeding.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::Instant;

use harness::{Harness, at};
use prost::Message;
use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use winback_platform::db::statement;
use winback_platform::testing::TestDatabase;
use winback_proto::profiles::CustomerFacts;
use winback_proto::segmentation::RecomputeRequest;
use winback_scoring::nbd::{NbdModel, NbdParams};
use winback_scoring::simulate::{Rng, SimulatedCustomer};

fn arg(name: &str) -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Simulated facts of `n` customers as of day 400 of the harness clock.
fn facts(n: usize) -> impl Iterator<Item = CustomerFacts> {
    let params = NbdParams {
        r: 0.6,
        alpha: 60.0,
        a: 0.8,
        b: 2.5,
    };
    let mut rng = Rng::new(4);
    let now = at(400);
    (0..n).map(move |i| {
        let age = 1 + rng.below(1_000) as i64;
        let customer = SimulatedCustomer::draw(&mut rng, params);
        let mut days = 1;
        let mut last = 0i64;
        customer.purchases(&mut rng, NbdModel::BgNbd, age as f64, |t| {
            days += 1;
            last = t as i64;
        });
        let check = 1_000 + rng.below(9_000) as i64;
        let ts = |d: i64| {
            Some(winback_platform::time::to_timestamp(
                now - chrono::Duration::days(d),
            ))
        };
        CustomerFacts {
            customer_id: format!("c{i:08}"),
            first_purchase_at: ts(age),
            last_purchase_at: ts(age - last),
            purchase_days: days,
            order_count: days,
            currency: "RUB".into(),
            total_spent_minor: check * i64::from(days),
            average_check_minor: check,
            mean_interval_days: if days > 1 {
                last as f64 / f64::from(days - 1)
            } else {
                0.0
            },
            last_open_at: if rng.chance(0.5) {
                ts(rng.below(300) as i64)
            } else {
                None
            },
            consecutive_unopened: rng.below(25) as i32,
            ..Default::default()
        }
    })
}

/// Facts as profiles stores them: framed as an entry of `StreamFactsResponse.facts`
/// (field 1, length-delimited), so a page is the rows concatenated.
fn framed(f: &winback_proto::profiles::CustomerFacts) -> Vec<u8> {
    let mut out = vec![0x0A];
    out.extend(f.encode_length_delimited_to_vec());
    out
}

async fn seed(db: &TestDatabase, n: usize) {
    let profiles = winback_platform::db::connect(&db.url("profiles"), "profiles", 2)
        .await
        .unwrap();
    let backend = profiles.get_database_backend();
    let txn = profiles.begin().await.unwrap();
    let mut rows = facts(n).enumerate().peekable();
    while rows.peek().is_some() {
        let mut sql = String::from(
            "INSERT INTO facts (tenant_id, customer_id, tx_id, change_seq, state, framed) VALUES ",
        );
        let mut values: Vec<Value> = Vec::new();
        for (k, (i, f)) in rows.by_ref().take(500).enumerate() {
            let p = k * 6;
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            ));
            values.extend([
                "t-a".into(),
                f.customer_id.clone().into(),
                0i64.into(),
                (i as i64).into(),
                Vec::<u8>::new().into(),
                framed(&f).into(),
            ]);
        }
        txn.execute_raw(statement(backend, &sql, values))
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
}

/// The facts as the DuckDB anchor reads them (`scripts/duckdb_recompute.py`).
fn write_csv(path: &str, n: usize) {
    use std::io::Write;
    let now = at(400).timestamp();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "customer_id,days_since_last,purchase_days,total_spent").unwrap();
    for f in facts(n) {
        let last = f.last_purchase_at.map_or(0, |t| (now - t.seconds) / 86_400);
        writeln!(
            out,
            "{},{last},{},{}",
            f.customer_id, f.purchase_days, f.total_spent_minor
        )
        .unwrap();
    }
    println!("wrote {path}");
}

async fn run(label: &str, db: &TestDatabase, n: usize) {
    let mut h = Harness::start(db).await;
    let started = Instant::now();
    seed(db, n).await;
    let seed_s = started.elapsed().as_secs_f64();
    for run in ["first", "second"] {
        let started = Instant::now();
        let reply = h
            .segments
            .recompute(RecomputeRequest::default())
            .await
            .unwrap()
            .into_inner();
        let took = started.elapsed().as_secs_f64();
        assert_eq!(reply.customers_scored as usize, n);
        println!(
            "{label:>8} {run:>6} recompute: {n} customers in {took:.2} s ({:.0} customers/s), {} segment / {} lifecycle changes; peak RSS so far {:.0} MiB (seeded in {seed_s:.1} s)",
            n as f64 / took,
            reply.segment_changes,
            reply.lifecycle_changes,
            peak_rss_mib()
        );
    }
    // One customer in a hundred buys on day 400; only they are rescored.
    let changed = (n / 100).max(1);
    let step = n / changed;
    let orders: Vec<_> = (0..changed)
        .map(|k| {
            let id = format!("c{:08}", k * step);
            harness::order(&format!("{id}-new"), &id, 400, 5_000)
        })
        .collect();
    for batch in orders.chunks(1_000) {
        h.add_orders(batch.to_vec()).await;
    }
    let started = Instant::now();
    let reply = h
        .segments
        .recompute(RecomputeRequest {
            as_of: None,
            incremental: true,
        })
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed().as_secs_f64();
    assert!(reply.incremental);
    assert_eq!(reply.customers_scored as usize, changed);
    println!(
        "{label:>8} incremental recompute: {changed} changed of {n} customers in {took:.3} s, {} segment / {} lifecycle changes",
        reply.segment_changes, reply.lifecycle_changes
    );
    h.stop();
}

fn main() {
    let n: usize = arg("--customers").map_or(1_000_000, |v| v.parse().expect("--customers N"));
    let which = arg("--db").unwrap_or_else(|| "sqlite".into());
    // The recompute's own log line gives its phases (load, score, compare, store).
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "winback_segmentation=info".into()),
        )
        .init();
    if let Some(path) = arg("--write-csv") {
        write_csv(&path, n);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if which == "sqlite" || which == "both" {
            let db = TestDatabase::sqlite().await;
            run("sqlite", &db, n).await;
            db.cleanup().await;
        }
        if which == "postgres" || which == "both" {
            match TestDatabase::postgres().await {
                Some(db) => {
                    run("postgres", &db, n).await;
                    db.cleanup().await;
                }
                None => println!("postgres: SKIPPED (not reachable)"),
            }
        }
    });
}
