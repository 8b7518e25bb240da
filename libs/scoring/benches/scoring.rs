//! Scoring and fitting speed on a simulated shop.
//!
//! `cargo bench -p winback-scoring --bench scoring -- [--customers N] [--write-csv PATH]`
//!
//! Prints customers scored per second on one core (RFM, segment, cycle, lifecycle,
//! P(alive), expected purchases, CLV), and the time of the BG/NBD, MBG/NBD and
//! Gamma-Gamma fits. `--write-csv` also writes the simulated (x, t_x, T, m) rows for the
//! side-by-side comparison with the Python `lifetimes` package (`scripts/lifetimes_compare.py`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::Instant;

use winback_scoring::nbd::{NbdData, NbdModel, NbdParams};
use winback_scoring::score::{CustomerInput, ScoringPolicy, TenantModels, score_tenant};
use winback_scoring::segments::RuleTable;
use winback_scoring::simulate::{Rng, SimulatedCustomer};

fn main() {
    let mut customers = 1_000_000usize;
    let mut csv = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--customers" => {
                customers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--customers N")
            }
            "--write-csv" => csv = args.next(),
            _ => {} // cargo passes --bench
        }
    }
    let started = Instant::now();
    let inputs = simulated_shop(customers, 2026);
    println!(
        "simulated {customers} customers in {:.2?}",
        started.elapsed()
    );

    if let Some(path) = csv {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(out, "frequency,recency,T,monetary_value").unwrap();
        for c in &inputs {
            let o = c.observation(1.0);
            writeln!(out, "{},{},{},{}", o.x, o.t_x, o.t, c.average_check).unwrap();
        }
        println!("wrote {path}");
    }

    let observations: Vec<_> = inputs.iter().map(|c| c.observation(1.0)).collect();
    let started = Instant::now();
    let data = NbdData::new(&observations).unwrap();
    let compress = started.elapsed();
    for model in [NbdModel::BgNbd, NbdModel::MbgNbd] {
        let started = Instant::now();
        let fit = data.fit(model);
        println!(
            "{} fit: {:.2?} (+{compress:.2?} compression) on {} customers, {} distinct rows, {} iterations, converged {}: r={:.4} α={:.4} a={:.4} b={:.4} LL={:.2}",
            model.key(),
            started.elapsed(),
            fit.customers,
            fit.distinct_rows,
            fit.iterations,
            fit.converged,
            fit.params.r,
            fit.params.alpha,
            fit.params.a,
            fit.params.b,
            fit.log_likelihood
        );
    }
    let started = Instant::now();
    let models = TenantModels::fit(&inputs, 1.0).unwrap();
    println!(
        "all models fitted in {:.2?}; gamma-gamma {:?}",
        started.elapsed(),
        models.gamma_gamma
    );

    let lookup = RuleTable::default_grid().compile().unwrap();
    let policy = ScoringPolicy::default();
    // Warm-up, then the best of three.
    let _ = score_tenant(
        &inputs[..inputs.len().min(10_000)],
        &lookup,
        &policy,
        Some(&models),
    );
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let scored = score_tenant(&inputs, &lookup, &policy, Some(&models));
        best = best.min(started.elapsed().as_secs_f64());
        assert_eq!(scored.scores.len(), inputs.len());
    }
    let started = Instant::now();
    let _ = score_tenant(&inputs, &lookup, &policy, None);
    println!(
        "  of which without the models (RFM, segment, lifecycle): {:.3} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "scored {customers} customers in {:.3} s on one core: {:.0} customers/s",
        best,
        customers as f64 / best
    );
}

/// A shop simulated from BG/NBD in days, with a spread of spend.
fn simulated_shop(n: usize, seed: u64) -> Vec<CustomerInput> {
    let params = NbdParams {
        r: 0.6,
        alpha: 60.0,
        a: 0.8,
        b: 2.5,
    };
    let mut rng = Rng::new(seed);
    let mut spend_rng = Rng::new(seed ^ 0x5EED);
    (0..n)
        .map(|_| {
            let age = (30 + rng.below(1_065)) as f64;
            let customer = SimulatedCustomer::draw(&mut rng, params);
            let mut days = 1u32;
            let mut last = 0.0f64;
            let scale = rng.gamma(3.0, 1.0 / 1_000.0);
            let mut total = rng.gamma(6.0, 6.0 / scale).round();
            customer.purchases(&mut rng, NbdModel::BgNbd, age, |t| {
                days += 1;
                last = t.floor();
                total += spend_rng.gamma(6.0, 6.0 / scale).round();
            });
            CustomerInput {
                purchase_days: days,
                days_since_first: age,
                days_since_last: age - last,
                total_spent: total,
                average_check: total / f64::from(days),
                repeat_average_check: if days > 1 {
                    total / f64::from(days)
                } else {
                    0.0
                },
                mean_interval_days: if days > 1 {
                    last / f64::from(days - 1)
                } else {
                    0.0
                },
                days_since_engagement: if rng.chance(0.5) {
                    rng.below(400) as f64
                } else {
                    f64::INFINITY
                },
                consecutive_unopened: rng.below(30) as u32,
            }
        })
        .collect()
}
