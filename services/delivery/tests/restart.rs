//! A delivery worker process killed (SIGKILL) mid-batch and started again: every message
//! is marked sent exactly once, and the receiver — deduplicating by `Idempotency-Key`, as
//! the webhook contract asks — takes each exactly once. The worker is the real
//! `winback-delivery` binary sharing the test's database; the API runs in the test with
//! its workers off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::providers::{HOOK_SECRET, Providers};
use harness::{Harness, free_port};
use tokio::process::{Child, Command};
use winback_platform::db_test;
use winback_platform::testing::TestDatabase;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::channel_settings::Provider;
use winback_proto::delivery::*;

/// Starts the delivery binary as a worker on the test's database.
fn start_worker(db: &TestDatabase, dir: &Path) -> Child {
    let keys = dir.join("keys");
    winback_platform::auth::ensure_key_pair(
        &keys.join("token.key.pem"),
        &keys.join("token.pub.pem"),
    )
    .unwrap();
    let tracking = free_port();
    Command::new(env!("CARGO_BIN_EXE_winback-delivery"))
        .env("WINBACK_LISTEN", free_port().to_string())
        .env("WINBACK_DATA_DIR", dir)
        .env("WINBACK_DATABASE__URL", &db.url_template)
        // Every replica opens the provider secrets with the same key (the test server's).
        .env(
            "WINBACK_AUTH__SECRETS_KEY_FILE",
            db.dir().join("keys/secrets.key"),
        )
        .env("WINBACK_DELIVERY__TRACKING_LISTEN", tracking.to_string())
        .env("WINBACK_DELIVERY__PUBLIC_URL", format!("http://{tracking}"))
        .env("WINBACK_DELIVERY__LEASE_MS", "1500")
        .env("WINBACK_DELIVERY__CLAIM_BATCH", "40")
        .env("WINBACK_DELIVERY__POLL_INTERVAL_MS", "20")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the winback-delivery binary")
}

async fn statuses(h: &mut Harness, ids: &[String]) -> Vec<Message> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            h.a.get_message(GetMessageRequest {
                message_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap(),
        );
    }
    out
}

const MESSAGES: usize = 200;

db_test!(
    a_worker_killed_mid_batch_and_restarted_sends_each_message_once,
    |db| async move {
        let p = Providers::start().await;
        p.set_latency(Duration::from_millis(25));
        let mut h = Harness::start_with(db, |d| d.workers = false).await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(MessageTemplate {
                template_id: "task".into(),
                channel: Channel::ManagerTask as i32,
                locale: "en".into(),
                text: "Call {{ customer.first_name }}".into(),
                json: "{}".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        h.a.set_channel_settings(SetChannelSettingsRequest {
            settings: Some(ChannelSettings {
                channel: Channel::ManagerTask as i32,
                provider: Some(Provider::Webhook(WebhookSettings {
                    url: format!("{}/hook", p.url),
                    secret: HOOK_SECRET.into(),
                })),
                concurrency: 4,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        let mut ids = Vec::new();
        for i in 0..MESSAGES {
            let m =
                h.a.send(SendRequest {
                    idempotency_key: format!("k{i}"),
                    channel: Channel::ManagerTask as i32,
                    template_id: "task".into(),
                    locale: "en".into(),
                    recipient: Some(Recipient {
                        customer_id: format!("c{i}"),
                        address: "manager-1".into(),
                        name: "Olga".into(),
                        ..Default::default()
                    }),
                    purpose: MessagePurpose::Service as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
            ids.push(m.message_id);
        }

        let mut first = start_worker(db, &db.dir().join("worker-1"));
        let mut waited = 0;
        while p.accepted().len() < MESSAGES / 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
            assert!(waited < 3_000, "the first worker never got going");
        }
        first.start_kill().unwrap();
        first.wait().await.unwrap();
        let at_kill = p.accepted().len();
        assert!(at_kill < MESSAGES, "killed too late to be mid-batch");

        // The claimed-but-unsent messages wait out their lease, then the next worker takes them.
        let _second = start_worker(db, &db.dir().join("worker-2"));
        let mut all_sent = false;
        for _ in 0..600 {
            let now = statuses(&mut h, &ids).await;
            if now.iter().all(|m| m.status == MessageStatus::Sent as i32) {
                all_sent = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(all_sent, "not every message was sent after the restart");
        for m in statuses(&mut h, &ids).await {
            let sent_steps = m
                .timeline
                .iter()
                .filter(|s| s.status == MessageStatus::Sent as i32)
                .count();
            assert_eq!(sent_steps, 1, "message {} marked sent twice", m.message_id);
        }
        let mut per_key: HashMap<String, usize> = HashMap::new();
        for a in p.accepted() {
            *per_key.entry(a.to).or_default() += 1;
        }
        assert_eq!(
            per_key.len(),
            MESSAGES,
            "every message reached the receiver"
        );
        // Only a request in flight at the kill, or accepted with its outcome still waiting
        // for the recorder's group commit, can arrive twice (the receiver drops it by its
        // Idempotency-Key): at most one per connection the provider allows (4) plus the
        // few outcomes of one commit interval (observed up to 5 in all on 2 cores).
        let repeats: usize = per_key.values().map(|n| n - 1).sum();
        assert!(
            repeats <= 4 + 12,
            "{repeats} repeats: more than the connections in flight and one commit interval"
        );
        eprintln!("killed after {at_kill} accepted; {repeats} in-flight repeats");
        h.stop();
    }
);
