//! Sustained sending rate of the outbox workers: email over SMTP into Postfix's
//! `smtp-sink`, and SMS over HTTP into a local Twilio-shaped server, on SQLite and
//! PostgreSQL. Also runs Postfix's own `smtp-source` into the same sink for the raw rate
//! of this machine, and prints the ratio.
//!
//! `cargo bench -p winback-delivery --bench throughput -- [--messages N] [--db sqlite|postgres|both] [--channel email|http|both] [--pool P]`
//!
//! Needs `smtp-sink` and `smtp-source` (Debian's `postfix`) for the email part.
//! N messages are queued first (due an hour ahead on the service clock), then the clock
//! moves and the time until the last one is marked sent is the measured span.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::providers::{Providers, TWILIO_SID, TWILIO_TOKEN};
use harness::{Harness, free_port};
use sea_orm::ConnectionTrait;
use winback_platform::clock::Clock;
use winback_platform::testing::TestDatabase;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::channel_settings::Provider;
use winback_proto::delivery::*;

fn arg(name: &str) -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    argv.windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

/// A text of about 1.5 KB, like a short marketing email.
fn body() -> String {
    "Мы скучаем! Вот ваш код на скидку 10% до пятницы. ".repeat(20)
}

async fn queue(h: &mut Harness, channel: Channel, n: usize) {
    let due = h.clock.now().timestamp() + 3_600;
    let mut sent = 0;
    while sent < n {
        let sends = (sent..(sent + 1_000).min(n))
            .map(|i| SendRequest {
                idempotency_key: format!("{}-{i}", channel as i32),
                channel: channel as i32,
                template_id: "bench".into(),
                locale: "ru".into(),
                recipient: Some(Recipient {
                    customer_id: format!("c{i}"),
                    email: format!("customer{i}@example.ru"),
                    phone: format!("+7916{i:07}"),
                    name: "Анна".into(),
                    ..Default::default()
                }),
                purpose: MessagePurpose::Advertising as i32,
                send_after: Some(prost_types::Timestamp {
                    seconds: due,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        sent += sends.len();
        h.a.send_batch(SendBatchRequest { sends }).await.unwrap();
    }
}

/// Moves the clock past the due time and waits until every message is sent.
async fn drain(h: &Harness, db: &TestDatabase, channel: Channel, n: usize) -> f64 {
    let conn = winback_platform::db::connect(&db.url("delivery"), "delivery", 2)
        .await
        .unwrap();
    let started = Instant::now();
    h.clock.advance(chrono::Duration::hours(2));
    loop {
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                format!(
                    "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM messages WHERE status = 3 AND channel = {}",
                    channel as i32
                ),
            ))
            .await
            .unwrap()
            .unwrap();
        let done: i64 = row.try_get("", "n").unwrap();
        if done as usize >= n {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn template(h: &mut Harness, channel: Channel) {
    h.a.upsert_template(UpsertTemplateRequest {
        template: Some(MessageTemplate {
            template_id: "bench".into(),
            channel: channel as i32,
            locale: "ru".into(),
            subject: "Мы скучаем, {{ customer.first_name }}".into(),
            text: body(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

fn smtp_sink() -> (std::process::Child, u16) {
    let port = free_port().port();
    let child = std::process::Command::new("smtp-sink")
        .args(["-u", "nobody", &format!("127.0.0.1:{port}"), "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink (apt-get install postfix)");
    std::thread::sleep(Duration::from_millis(300));
    (child, port)
}

async fn email(label: &str, db: &TestDatabase, n: usize, pool: i32) -> f64 {
    let (mut sink, port) = smtp_sink();
    let mut h = Harness::start_with(db, |d| d.claim_batch = 500).await;
    template(&mut h, Channel::Email).await;
    h.a.set_channel_settings(SetChannelSettingsRequest {
        settings: Some(ChannelSettings {
            channel: Channel::Email as i32,
            provider: Some(Provider::Smtp(SmtpSettings {
                host: "127.0.0.1".into(),
                port: i32::from(port),
                security: "plain".into(),
                from: "news@bakery.example".into(),
                pool_size: pool,
                ..Default::default()
            })),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    queue(&mut h, Channel::Email, n).await;
    let secs = drain(&h, db, Channel::Email, n).await;
    let rate = n as f64 / secs;
    println!(
        "{label:<10} email → smtp-sink    {n} in {secs:.2} s = {rate:>7.0} emails/s (pool {pool})"
    );
    h.stop();
    sink.kill().ok();
    rate
}

async fn http(label: &str, db: &TestDatabase, n: usize) -> f64 {
    let p = Providers::start().await;
    let mut h = Harness::start_with(db, |d| d.claim_batch = 500).await;
    template(&mut h, Channel::Sms).await;
    h.a.set_channel_settings(SetChannelSettingsRequest {
        settings: Some(ChannelSettings {
            channel: Channel::Sms as i32,
            provider: Some(Provider::Twilio(TwilioSettings {
                base_url: p.url.clone(),
                account_sid: TWILIO_SID.into(),
                auth_token: TWILIO_TOKEN.into(),
                from: "+15005550006".into(),
            })),
            concurrency: 128,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    queue(&mut h, Channel::Sms, n).await;
    let secs = drain(&h, db, Channel::Sms, n).await;
    let rate = n as f64 / secs;
    assert_eq!(p.accepted().len(), n);
    println!("{label:<10} sms → Twilio-shaped  {n} in {secs:.2} s = {rate:>7.0} sends/s");
    h.stop();
    rate
}

/// Postfix's own client into the same kind of sink: the machine's raw SMTP rate.
fn smtp_source(n: usize) -> f64 {
    let (mut sink, port) = smtp_sink();
    let started = Instant::now();
    let status = std::process::Command::new("smtp-source")
        .args([
            "-s",
            "100",
            "-m",
            &n.to_string(),
            "-l",
            "1500",
            "-f",
            "news@bakery.example",
            "-t",
            "customer@example.ru",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .status()
        .expect("smtp-source (apt-get install postfix)");
    let secs = started.elapsed().as_secs_f64();
    sink.kill().ok();
    assert!(status.success());
    let rate = n as f64 / secs;
    println!(
        "smtp-source → smtp-sink          {n} in {secs:.2} s = {rate:>7.0} emails/s (100 sessions)"
    );
    rate
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--messages").map_or(20_000, |v| v.parse().unwrap());
    let pool: i32 = arg("--pool").map_or(200, |v| v.parse().unwrap());
    let which = arg("--db").unwrap_or_else(|| "both".into());
    let channel = arg("--channel").unwrap_or_else(|| "both".into());
    let raw = (channel != "http").then(|| smtp_source(n));
    let mut dbs = Vec::new();
    if which != "postgres" {
        dbs.push(("sqlite", TestDatabase::sqlite().await));
    }
    if which != "sqlite" {
        match TestDatabase::postgres().await {
            Some(db) => dbs.push(("postgres", db)),
            None => println!("*** PostgreSQL not reachable: its figures are SKIPPED ***"),
        }
    }
    for (label, db) in &dbs {
        if channel != "http" {
            let rate = email(label, db, n, pool).await;
            if let Some(raw) = raw {
                println!("{label:<10} ratio to smtp-source: {:.2}", rate / raw);
            }
        }
        if channel != "email" {
            http(label, db, n).await;
        }
    }
}
