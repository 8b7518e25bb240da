//! The real `winback up` process aborted between issuing a step's coupon and sending its
//! message (`campaigns.crash_point = after_coupon`), then started again: the step runs
//! once more with the same `enrolment:step` keys, so the customer has one coupon and one
//! message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::grpc::CallCredentials;
use winback_platform::time::to_duration;
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::*;
use winback_proto::common::{Channel as Medium, MessagePurpose, Money};
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::delivery::{ListMessagesRequest, MessageTemplate, UpsertTemplateRequest};
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::offers::{
    CreateOfferTemplateRequest, ListCouponsRequest, OfferKind, OfferTemplate,
};
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{
    ConsentRecord, Customer, RecordConsentRequest, UpsertCustomersRequest,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `winback up` (with the crash point when asked) and waits until it serves.
async fn up(data_dir: &std::path::Path, port: u16, crash: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_winback"));
    command
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("WINBACK_DELIVERY__TRACKING_LISTEN", "127.0.0.1:0")
        // A crashed worker's lease runs out quickly.
        .env("WINBACK_CAMPAIGNS__LEASE_MS", "1000")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if crash {
        command.env("WINBACK_CAMPAIGNS__CRASH_POINT", "after_coupon");
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("winback is serving") {
                return;
            }
        }
        panic!("winback up exited before serving");
    })
    .await
    .expect("winback up serves within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

type Authed = InterceptedService<Channel, CallCredentials>;

async fn authed(port: u16, token: &str) -> Authed {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    InterceptedService::new(channel, CallCredentials::bearer(token).unwrap())
}

#[tokio::test]
async fn a_crash_between_coupon_and_send_still_gives_one_coupon_and_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = up(dir.path(), port, true).await;
    let created = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["tenant", "create", "crash", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(created.status.success());
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let channel = authed(port, &token).await;

    DeliveryServiceClient::new(channel.clone())
        .upsert_template(UpsertTemplateRequest {
            template: Some(MessageTemplate {
                template_id: "offer".into(),
                channel: Medium::Email as i32,
                subject: "For you".into(),
                text: "Code {{ coupon.code }}".into(),
                ..MessageTemplate::default()
            }),
        })
        .await
        .unwrap();
    let offer = OffersServiceClient::new(channel.clone())
        .create_offer_template(CreateOfferTemplateRequest {
            request_id: String::new(),
            template: Some(OfferTemplate {
                name: "10 %".into(),
                kind: OfferKind::PercentOff as i32,
                percent_off: 10,
                valid_for: Some(to_duration(chrono::Duration::hours(72))),
                estimated_cost: Some(Money {
                    amount_minor: 10_000,
                    currency: "RUB".into(),
                }),
                ..OfferTemplate::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap()
        .template_id;
    let mut profiles = ProfilesServiceClient::new(channel.clone());
    profiles
        .upsert_customers(UpsertCustomersRequest {
            update_mask: None,
            customers: vec![Customer {
                customer_id: "c-1".into(),
                email: "c1@example.com".into(),
                time_zone: "UTC".into(),
                ..Customer::default()
            }],
        })
        .await
        .unwrap();
    profiles
        .record_consent(RecordConsentRequest {
            request_id: String::new(),
            customer_id: "c-1".into(),
            consent: Some(ConsentRecord {
                channel: Medium::Email as i32,
                purpose: MessagePurpose::Advertising as i32,
                granted: true,
                source: "signup_form".into(),
                recorded_at: None,
            }),
            do_not_contact: false,
        })
        .await
        .unwrap();
    let mut campaigns = CampaignsServiceClient::new(channel.clone());
    // The wall clock runs this test: no quiet hours.
    campaigns
        .update_policy(UpdatePolicyRequest {
            policy: Some(ContactPolicy {
                quiet_hours_start: "00:00".into(),
                quiet_hours_end: "00:00".into(),
                ..ContactPolicy::default()
            }),
        })
        .await
        .unwrap();
    let chain = campaigns
        .create_chain(CreateChainRequest {
            request_id: String::new(),
            chain: Some(Chain {
                name: "offer now".into(),
                steps: vec![Step {
                    name: "offer".into(),
                    channels: vec![ChannelChoice {
                        channel: Medium::Email as i32,
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
    let campaign = campaigns
        .create_campaign(CreateCampaignRequest {
            request_id: String::new(),
            campaign: Some(Campaign {
                name: "crash".into(),
                chain_id: chain.chain_id,
                audience: Some(Audience {
                    triggers: vec![Trigger::CartAbandoned as i32],
                    ..Audience::default()
                }),
                ..Campaign::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap()
        .campaign_id;
    campaigns
        .activate_campaign(ActivateCampaignRequest {
            campaign_id: campaign.clone(),
        })
        .await
        .unwrap();
    let decision = campaigns
        .enrol_customers(EnrolCustomersRequest {
            campaign_id: campaign,
            customer_ids: vec!["c-1".into()],
            trigger: Trigger::CartAbandoned as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .decisions
        .remove(0);
    // The worker issues the coupon, then the process aborts.
    let status = tokio::time::timeout(Duration::from_secs(30), first.wait())
        .await
        .expect("the crash point aborts the process")
        .unwrap();
    assert!(!status.success(), "aborted: {status}");
    let coupons_after_crash = ListCouponsRequest {
        customer_id: "c-1".into(),
        ..ListCouponsRequest::default()
    };

    let mut second = up(dir.path(), port, false).await;
    let channel = authed(port, &token).await;
    let mut offers = OffersServiceClient::new(channel.clone());
    let issued = offers
        .list_coupons(coupons_after_crash.clone())
        .await
        .unwrap()
        .into_inner()
        .coupons;
    assert_eq!(issued.len(), 1, "the coupon was issued before the crash");
    let mut campaigns = CampaignsServiceClient::new(channel.clone());
    let mut sent = None;
    for _ in 0..200 {
        let e = campaigns
            .get_enrolment(GetEnrolmentRequest {
                enrolment_id: decision.enrolment_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .enrolment
            .unwrap();
        if let Some(step) = e
            .steps
            .into_iter()
            .find(|s| s.outcome == winback_proto::common::StepResult::Sent as i32)
        {
            sent = Some(step);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let step = sent.expect("the step runs again after the restart");
    let coupons = offers
        .list_coupons(coupons_after_crash)
        .await
        .unwrap()
        .into_inner()
        .coupons;
    assert_eq!(coupons.len(), 1, "one coupon");
    assert_eq!(coupons[0].code, issued[0].code);
    assert_eq!(step.coupon_code, issued[0].code);
    let messages = DeliveryServiceClient::new(channel)
        .list_messages(ListMessagesRequest {
            customer_id: "c-1".into(),
            ..ListMessagesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(messages.len(), 1, "one message");
    assert_eq!(messages[0].message_id, step.message_id);
    second.kill().await.unwrap();
}
