//! Campaign steps executed end to end on the embedded stack: timer → coupon (offers) →
//! send into the delivery outbox → outcome recorded. N running enrolments are seeded due
//! at once (straight into the campaigns tables, as enrolment would leave them); the bench
//! times until every step has its outcome. Delivery's own workers are off, so the figure is
//! campaigns' path, not the carriers'.
//!
//! `cargo bench -p winback-e2e --bench campaign_steps -- --steps 20000 [--sqlite]`
//! (PostgreSQL at 127.0.0.1:5432 unless `--sqlite`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use winback_e2e::{TestStack, percent_off_template};
use winback_platform::clock::Clock;
use winback_platform::db::multi_row_insert;
use winback_platform::testing::TestDatabase;
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::*;
use winback_proto::common::Channel;
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::delivery::{MessageTemplate, UpsertTemplateRequest};
use winback_proto::offers::offers_service_client::OffersServiceClient;

/// Writes running enrolments straight into the campaigns tables, as enrolment leaves them:
/// variant A of the bench chain, email with advertising consent, in UTC.
struct Seeder<'a> {
    db: &'a sea_orm::DatabaseConnection,
    tenant: &'a str,
    campaign: &'a str,
    chain: &'a str,
    now_us: i64,
    consent: i64,
}

impl Seeder<'_> {
    /// Enrolments with these ids (also their customers' ids), due at `due_us`.
    async fn seed(&self, ids: impl Iterator<Item = String>, due_us: i64) {
        let ids: Vec<String> = ids.collect();
        let backend = sea_orm::ConnectionTrait::get_database_backend(self.db);
        for chunk in ids.chunks(1000) {
            let rows = chunk.iter().map(|id| {
                vec![
                    self.tenant.into(),
                    id.clone().into(),
                    self.campaign.into(),
                    id.clone().into(),
                    "A".into(),
                    self.chain.into(),
                    1i64.into(),
                    0i64.into(),
                    1i64.into(),
                    "".into(),
                    2i64.into(),
                    self.now_us.into(),
                    due_us.into(),
                    self.now_us.into(),
                    format!("{id}@example.com").into(),
                    "UTC".into(),
                    self.consent.into(),
                ]
            });
            sea_orm::ConnectionTrait::execute_raw(
                self.db,
                multi_row_insert(
                    backend,
                    "INSERT INTO enrolments (tenant_id, enrolment_id, campaign_id, customer_id, variant,
                       chain_id, state, skip_reason, winback, segment, trigger_kind, enrolled_at_us,
                       due_at_us, anchor_us, email, time_zone, consent_bits)",
                    rows,
                ),
            )
            .await
            .unwrap();
        }
    }
}

/// Resident memory of this process (the whole stack runs in it), in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let steps: usize = arg("--steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let sqlite = std::env::args().any(|a| a == "--sqlite");
    let db = if sqlite {
        TestDatabase::sqlite().await
    } else {
        TestDatabase::postgres()
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (or pass --sqlite)")
    };
    let stack = TestStack::start_with(&db, |c| {
        c.delivery.workers = false;
        c.database.max_connections = 10;
        c.campaigns.poll_interval_ms = arg("--poll-ms").and_then(|s| s.parse().ok()).unwrap_or(50);
        c.campaigns.workers = arg("--workers").and_then(|s| s.parse().ok()).unwrap_or(4);
        c.campaigns.claim_batch = arg("--batch").and_then(|s| s.parse().ok()).unwrap_or(500);
    })
    .await;
    // Noon UTC: no quiet hours for customers in UTC.
    stack.clock.advance(chrono::Duration::hours(12));
    let tenant = stack.tenant("bench").await;
    let channel = stack.authed(&tenant.token);
    let mut delivery = DeliveryServiceClient::new(channel.clone());
    delivery
        .upsert_template(UpsertTemplateRequest {
            template: Some(MessageTemplate {
                template_id: "offer".into(),
                channel: Channel::Email as i32,
                subject: "For you".into(),
                text: "Code {{ coupon.code }}".into(),
                ..MessageTemplate::default()
            }),
        })
        .await
        .unwrap();
    let offer =
        percent_off_template(&mut OffersServiceClient::new(channel.clone()), 10, 10_000).await;
    let mut campaigns = CampaignsServiceClient::new(channel);
    let chain = campaigns
        .create_chain(CreateChainRequest {
            request_id: String::new(),
            chain: Some(Chain {
                name: "one offer".into(),
                steps: vec![Step {
                    name: "offer".into(),
                    channels: vec![ChannelChoice {
                        channel: Channel::Email as i32,
                        template_id: "offer".into(),
                    }],
                    offer_template_id: offer,
                    ..Step::default()
                }],
                ..Chain::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .chain
        .unwrap();
    // Created paused-equivalent (draft), seeded, then activated: the clock starts there.
    let campaign = campaigns
        .create_campaign(CreateCampaignRequest {
            request_id: String::new(),
            campaign: Some(Campaign {
                name: "bench".into(),
                chain_id: chain.chain_id.clone(),
                audience: Some(Audience {
                    triggers: vec![Trigger::CartAbandoned as i32],
                    ..Audience::default()
                }),
                winback: true,
                ..Campaign::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    let url = stack
        .config
        .database
        .url_for("campaigns", &stack.config.data_dir);
    let cdb = winback_platform::db::connect(&url, "campaigns", 2)
        .await
        .unwrap();
    let backend = sea_orm::ConnectionTrait::get_database_backend(&cdb);
    let now_us = stack.clock.now().timestamp_micros();
    let seeder = Seeder {
        db: &cdb,
        tenant: &tenant.tenant_id,
        campaign: &campaign.campaign_id,
        chain: &chain.chain_id,
        now_us,
        consent: 1i64 << (Channel::Email as i64 * 2 + i64::from(false)),
    };
    let seeding = Instant::now();
    seeder
        .seed((0..steps).map(|i| format!("e-{i:08}")), now_us)
        .await;
    eprintln!(
        "seeded {steps} due steps in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    // Enrolments waiting far in the future: the workers must not hold them in memory.
    let idle: usize = arg("--idle").and_then(|s| s.parse().ok()).unwrap_or(0);
    let far = now_us + 365 * 86_400 * 1_000_000;
    seeder
        .seed((0..idle).map(|i| format!("i-{i:08}")), far)
        .await;
    if idle > 0 && !sqlite {
        // What autovacuum does after a bulk load; without it the planner works from the
        // statistics of an empty table.
        sea_orm::ConnectionTrait::execute_unprepared(&cdb, "ANALYZE enrolments")
            .await
            .unwrap();
    }
    let rss_before = rss_mib();
    let started = Instant::now();
    campaigns
        .activate_campaign(ActivateCampaignRequest {
            campaign_id: campaign.campaign_id.clone(),
        })
        .await
        .unwrap();
    let count_sql = winback_platform::db::statement(
        backend,
        "SELECT COUNT(*) AS n FROM step_outcomes WHERE outcome = 'sent'",
        vec![],
    );
    let mut last = 0i64;
    loop {
        let row = sea_orm::ConnectionTrait::query_one_raw(&cdb, count_sql.clone())
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        if n as usize >= steps {
            break;
        }
        if n != last {
            last = n;
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("only {n} of {steps} steps ran in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    if idle > 0 {
        println!(
            "{idle} waiting enrolments held: process RSS {:.0} MiB before the run, {:.0} MiB after",
            rss_before,
            rss_mib()
        );
    }
    println!(
        "{} campaign steps (coupon + send into the delivery outbox) on {}: {:.2} s, {:.0} steps/s",
        steps,
        if sqlite { "SQLite" } else { "PostgreSQL" },
        secs,
        steps as f64 / secs
    );
    // Steady load: `--rate` steps fall due per second for `--seconds`, 1/10 of them every
    // 100 ms (each group due a little after the one before, as a real timeline is, so the
    // workers' oldest-first order is the groups' order); each tick's lag is from falling due to its last step's outcome committed
    // (an upper bound of "due → started").
    let rate: usize = arg("--rate").and_then(|s| s.parse().ok()).unwrap_or(0);
    let seconds: usize = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10);
    if rate > 0 {
        let per_tick = (rate / 10).max(1);
        let mut pending: std::collections::VecDeque<(usize, Instant)> = Default::default();
        let mut lags: Vec<f64> = Vec::new();
        let mut unstarted: std::collections::VecDeque<(usize, Instant)> = Default::default();
        let mut start_lags: Vec<f64> = Vec::new();
        let steady = Instant::now();
        let mut tick = 0usize;
        while tick < seconds * 10 || !pending.is_empty() || !unstarted.is_empty() {
            if tick < seconds * 10 && steady.elapsed() >= Duration::from_millis(100 * tick as u64) {
                seeder
                    .seed(
                        (0..per_tick).map(|i| format!("r{tick:05}-{i:05}")),
                        now_us - 1_000_000_000 + tick as i64 * 1_000,
                    )
                    .await;
                pending.push_back((tick, Instant::now()));
                unstarted.push_back((tick, Instant::now()));
                tick += 1;
            }
            // Started: claimed by a worker (leased) or already past the step.
            while let Some((t, at)) = unstarted.front().copied() {
                let row = sea_orm::ConnectionTrait::query_one_raw(
                    &cdb,
                    winback_platform::db::statement(
                        backend,
                        "SELECT COUNT(*) AS n FROM enrolments WHERE enrolment_id >= $1 AND enrolment_id < $2
                           AND (lease_until_us > 0 OR next_step > 0)",
                        vec![format!("r{t:05}-").into(), format!("r{t:05}.").into()],
                    ),
                )
                .await
                .unwrap()
                .unwrap();
                let n: i64 = row.try_get("", "n").unwrap();
                if (n as usize) < per_tick {
                    break;
                }
                start_lags.push(at.elapsed().as_secs_f64());
                unstarted.pop_front();
            }
            while let Some((t, at)) = pending.front().copied() {
                let row = sea_orm::ConnectionTrait::query_one_raw(
                    &cdb,
                    winback_platform::db::statement(
                        backend,
                        "SELECT COUNT(*) AS n FROM step_outcomes WHERE outcome = 'sent' AND enrolment_id >= $1 AND enrolment_id < $2",
                        vec![format!("r{t:05}-").into(), format!("r{t:05}.").into()],
                    ),
                )
                .await
                .unwrap()
                .unwrap();
                let n: i64 = row.try_get("", "n").unwrap();
                if (n as usize) < per_tick {
                    break;
                }
                lags.push(at.elapsed().as_secs_f64());
                pending.pop_front();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lags.sort_by(f64::total_cmp);
        start_lags.sort_by(f64::total_cmp);
        let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "steady {rate} steps/s for {seconds} s: due → started (the last of each 100 ms group claimed) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            at(&start_lags, 0.5) * 1000.0,
            at(&start_lags, 0.99) * 1000.0,
            at(&start_lags, 1.0) * 1000.0
        );
        let pick = |q: f64| at(&lags, q);
        println!(
            "steady {rate} steps/s for {seconds} s: due → outcome committed p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pick(0.5) * 1000.0,
            pick(0.99) * 1000.0,
            pick(1.0) * 1000.0
        );
    }
    stack.stop().await;
    db.cleanup().await;
}
