//! The whole job through gRPC, the way an integrator drives it, on SQLite and PostgreSQL:
//! a shop's history imported from CSV → segments recomputed → a win-back campaign with a
//! holdout → messages over real providers (email over SMTP to aiosmtpd, SMS to a
//! Twilio-shaped and push to an FCM-shaped HTTP server) → a customer redeems the coupon and
//! buys, which ends the chain; another unsubscribes with the one-click link and gets
//! nothing more → the campaign report equals what the test recomputes from the providers'
//! outboxes and the recorded events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use winback_e2e::{Authed, TestStack, percent_off_template, start_campaign};
use winback_platform::clock::Clock;
use winback_platform::db_test;
use winback_platform::testing::TestDatabase;
use winback_platform::time::{to_duration, to_timestamp};
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::*;
use winback_proto::common::{Channel, LifecycleState, Money, PageRequest};
use winback_proto::delivery::channel_settings::Provider;
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::delivery::{
    ChannelSettings, FcmSettings, ListMessagesRequest, MessageStatus, MessageTemplate,
    SetChannelSettingsRequest, SmtpSettings, TwilioSettings, UpsertTemplateRequest,
};
use winback_proto::events::event::Payload;
use winback_proto::events::events_service_client::EventsServiceClient;
use winback_proto::events::{EventSource, SubscribeRequest};
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::offers::{Cart, RedeemCouponRequest};
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{Order, RecordOrdersRequest};
use winback_proto::segmentation::RecomputeRequest;
use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient;
use winback_testkit::providers::{FCM_TOKEN, TWILIO_SID, TWILIO_TOKEN};
use winback_testkit::{Providers, SmtpSink, header_value};

/// What each message costs, in kopecks, as the channel settings say.
const EMAIL_COST: i64 = 50;
const SMS_COST: i64 = 400;
const PUSH_COST: i64 = 10;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn rub(minor: i64) -> Money {
    Money {
        amount_minor: minor,
        currency: "RUB".into(),
    }
}

/// The shop's history as CSV: 16 customers reachable by email (half in Moscow, half in
/// Vladivostok), 6 by SMS only, 6 by push only — all of them last bought a year ago — and 4
/// regulars who bought last week.
fn write_history(dir: &Path) -> HashMap<String, String> {
    let mut customers = String::from(
        "customer_id,name,email,phone,time_zone,push_platform,push_token,email_consent,sms_consent,push_consent\n",
    );
    let mut orders = String::from("order_id,customer_id,placed_at,total,currency\n");
    // Contact → customer, to read the HTTP providers' outboxes.
    let mut contacts = HashMap::new();
    let mut add = |id: String, columns: String, dates: &[&str]| {
        customers.push_str(&format!("{id},Customer {id},{columns}\n"));
        for (n, date) in dates.iter().enumerate() {
            orders.push_str(&format!("{id}-{n},{id},{date},{}.00,RUB\n", 2000 + 500 * n));
        }
    };
    let asleep = ["2025-01-10", "2025-02-12", "2025-03-10"];
    for i in 0..16 {
        let zone = if i % 2 == 0 {
            "Europe/Moscow"
        } else {
            "Asia/Vladivostok"
        };
        add(
            format!("e{i:02}"),
            format!("e{i:02}@example.com,,{zone},,,yes,,"),
            &asleep,
        );
    }
    for i in 0..6 {
        let phone = format!("+7916555{i:04}");
        contacts.insert(phone.clone(), format!("s{i:02}"));
        add(
            format!("s{i:02}"),
            format!(",{phone},Europe/Moscow,,,,yes,"),
            &asleep,
        );
    }
    for i in 0..6 {
        let token = format!("device-token-{i}");
        contacts.insert(token.clone(), format!("p{i:02}"));
        add(
            format!("p{i:02}"),
            format!(",,Europe/Moscow,android,{token},,,yes"),
            &asleep,
        );
    }
    for i in 0..4 {
        add(
            format!("r{i:02}"),
            format!("r{i:02}@example.com,,Europe/Moscow,,,yes,,"),
            &["2025-12-01", "2026-01-05", "2026-02-01", "2026-02-23"],
        );
    }
    std::fs::write(dir.join("customers.csv"), customers).unwrap();
    std::fs::write(dir.join("orders.csv"), orders).unwrap();
    contacts
}

/// One message as a provider received it.
#[derive(Debug, Clone)]
struct Received {
    customer: String,
    channel: Channel,
    step: i32,
    /// The stamp of an email (empty for the HTTP providers).
    headers: HashMap<String, String>,
}

/// The step a message's text names (every template starts with "Step N"), counted from 0
/// as campaigns count them.
fn step_in(text: &str) -> i32 {
    let at = text.find("Step ").expect("the text names its step");
    text[at + 5..at + 6].parse::<i32>().unwrap() - 1
}

struct Job {
    stack: TestStack,
    token: String,
    profiles: ProfilesServiceClient<Authed>,
    segmentation: SegmentationServiceClient<Authed>,
    campaigns: CampaignsServiceClient<Authed>,
    offers: OffersServiceClient<Authed>,
    delivery: DeliveryServiceClient<Authed>,
    sink: SmtpSink,
    providers: Providers,
    contacts: HashMap<String, String>,
    files: tempfile::TempDir,
}

impl Job {
    async fn start(db: &TestDatabase) -> Self {
        let files = tempfile::tempdir().unwrap();
        let sink = SmtpSink::start(files.path().join("smtp")).await;
        let providers = Providers::start().await;
        // The tracking server (opens, clicks, unsubscribes) on a port the links name.
        let tracking = winback_testkit::free_port();
        let stack = TestStack::start_with(db, |config| {
            config.delivery.tracking_listen = Some(tracking);
            config.delivery.public_url = format!("http://{tracking}");
        })
        .await;
        // Noon in Moscow on a Monday (19:00 in Vladivostok: outside quiet hours).
        stack
            .clock
            .advance(utc("2026-03-02T09:00:00Z") - stack.clock.now());
        let tenant = stack.tenant("home goods").await;
        let channel = stack.authed(&tenant.token);
        Self {
            profiles: ProfilesServiceClient::new(channel.clone()),
            segmentation: SegmentationServiceClient::new(channel.clone()),
            campaigns: CampaignsServiceClient::new(channel.clone()),
            offers: OffersServiceClient::new(channel.clone()),
            delivery: DeliveryServiceClient::new(channel),
            token: tenant.token,
            stack,
            sink,
            providers,
            contacts: HashMap::new(),
            files,
        }
    }

    /// The real providers, with what each message costs.
    async fn connect_providers(&mut self) {
        let settings = [
            (
                Channel::Email,
                Provider::Smtp(SmtpSettings {
                    host: "127.0.0.1".into(),
                    port: i32::from(self.sink.port),
                    security: "plain".into(),
                    from: "Home goods <news@shop.example>".into(),
                    pool_size: 4,
                    ..SmtpSettings::default()
                }),
                EMAIL_COST,
            ),
            (
                Channel::Sms,
                Provider::Twilio(TwilioSettings {
                    base_url: self.providers.url.clone(),
                    account_sid: TWILIO_SID.into(),
                    auth_token: TWILIO_TOKEN.into(),
                    from: "+15005550006".into(),
                }),
                SMS_COST,
            ),
            (
                Channel::Push,
                Provider::Fcm(FcmSettings {
                    base_url: self.providers.url.clone(),
                    project_id: "home-goods".into(),
                    access_token: FCM_TOKEN.into(),
                }),
                PUSH_COST,
            ),
        ];
        for (channel, provider, cost) in settings {
            self.delivery
                .set_channel_settings(SetChannelSettingsRequest {
                    settings: Some(ChannelSettings {
                        channel: channel as i32,
                        provider: Some(provider),
                        cost_per_message: Some(rub(cost)),
                        ..ChannelSettings::default()
                    }),
                })
                .await
                .unwrap();
        }
    }

    /// Templates on every channel, a 10 % coupon, and the three-step chain in a campaign for
    /// everyone asleep with a 25 % holdout. Returns the campaign.
    async fn campaign(&mut self) -> String {
        for (id, subject, text) in [
            (
                "reminder",
                "We missed you",
                "Step 1: we missed you, {{ customer.name }}.",
            ),
            (
                "offer",
                "A code for you",
                "Step 2: your code {{ coupon.code }}, {{ coupon.hours_left }} hours left.",
            ),
            (
                "last_chance",
                "Last day",
                "Step 3: last day for {{ coupon.code }}.",
            ),
        ] {
            for channel in [Channel::Email, Channel::Sms, Channel::Push] {
                self.delivery
                    .upsert_template(UpsertTemplateRequest {
                        template: Some(MessageTemplate {
                            template_id: id.into(),
                            channel: channel as i32,
                            subject: subject.into(),
                            text: text.into(),
                            ..MessageTemplate::default()
                        }),
                    })
                    .await
                    .unwrap();
            }
        }
        let offer = percent_off_template(&mut self.offers, 10, 20_000).await;
        let every_channel = |template: &str| {
            [Channel::Email, Channel::Sms, Channel::Push]
                .into_iter()
                .map(|channel| ChannelChoice {
                    channel: channel as i32,
                    template_id: template.into(),
                })
                .collect::<Vec<_>>()
        };
        let step = |name: &str, days: i64, template: &str| Step {
            name: name.into(),
            delay: Some(to_duration(chrono::Duration::days(days))),
            channels: every_channel(template),
            ..Step::default()
        };
        let chain = self
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(Chain {
                    name: "reminder, offer, last chance".into(),
                    steps: vec![
                        step("reminder", 0, "reminder"),
                        Step {
                            offer_template_id: offer,
                            ..step("offer", 3, "offer")
                        },
                        step("last_chance", 2, "last_chance"),
                    ],
                    ..Chain::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap()
            .chain_id;
        start_campaign(
            &mut self.campaigns,
            Campaign {
                name: "win back".into(),
                chain_id: chain,
                audience: Some(Audience {
                    lifecycle_states: vec![
                        LifecycleState::HotInactive as i32,
                        LifecycleState::Sleeping as i32,
                        LifecycleState::NearlyLost as i32,
                        LifecycleState::Dead as i32,
                    ],
                    ..Audience::default()
                }),
                holdout_percent: 25,
                winback: true,
                // A fixed split: the same customers are held out on every run, so the
                // figures checked below do not depend on the draw.
                assignment_seed: "whole-job".into(),
                ..Campaign::default()
            },
        )
        .await
    }

    fn advance_to(&self, at: &str) {
        let now = self.stack.clock.now();
        self.stack.clock.advance(utc(at) - now);
    }

    async fn enrolments(&mut self, campaign: &str) -> Vec<Enrolment> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .campaigns
                .list_enrolments(ListEnrolmentsRequest {
                    campaign_id: campaign.into(),
                    page: Some(PageRequest {
                        page_size: 100,
                        page_token: token,
                    }),
                    ..ListEnrolmentsRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            out.extend(page.enrolments);
            token = page.page.map(|p| p.next_page_token).unwrap_or_default();
            if token.is_empty() {
                return out;
            }
        }
    }

    /// Waits until every running enrolment has an outcome for `steps` steps.
    async fn settle(&mut self, campaign: &str, steps: usize) {
        for _ in 0..300 {
            let mut done = true;
            for e in self.enrolments(campaign).await {
                if e.state != EnrolmentState::Running as i32 {
                    continue;
                }
                // The list gives no steps; the enrolment itself does.
                let e = self
                    .campaigns
                    .get_enrolment(GetEnrolmentRequest {
                        enrolment_id: e.enrolment_id,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .enrolment
                    .unwrap();
                if e.steps.iter().filter(|s| s.executed_at.is_some()).count() < steps {
                    done = false;
                    break;
                }
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("step {steps} did not run");
    }

    /// Waits until every message delivery stored has left for its provider.
    async fn delivered(&mut self) {
        for _ in 0..300 {
            let messages = self
                .delivery
                .list_messages(ListMessagesRequest {
                    page: Some(PageRequest {
                        page_size: 1000,
                        page_token: String::new(),
                    }),
                    ..ListMessagesRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .messages;
            let waiting = messages.iter().any(|m| {
                m.status == MessageStatus::Queued as i32
                    || m.status == MessageStatus::Sending as i32
            });
            if !waiting && self.received().len() == messages.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let statuses: Vec<(i32, String)> = self
            .delivery
            .list_messages(ListMessagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .messages
            .into_iter()
            .map(|m| (m.status, m.contact))
            .collect();
        panic!(
            "delivery did not hand every message to its provider: {} received, {statuses:?}",
            self.received().len()
        );
    }

    /// Every message the providers received.
    fn received(&self) -> Vec<Received> {
        let mut out: Vec<Received> = self
            .sink
            .messages()
            .iter()
            .map(|email| {
                let headers: HashMap<String, String> = [
                    "X-Winback-Customer-Id",
                    "X-Winback-Campaign-Id",
                    "X-Winback-Variant",
                    "X-Winback-Step",
                    "X-Winback-Coupon-Code",
                    "X-Winback-Sent-At",
                    "X-Winback-Sent-At-Local",
                    "X-Winback-Channel",
                ]
                .into_iter()
                .map(|h| (h.to_owned(), header_value(email, h)))
                .collect();
                Received {
                    customer: headers["X-Winback-Customer-Id"].clone(),
                    channel: Channel::Email,
                    step: step_in(email),
                    headers,
                }
            })
            .collect();
        for accepted in self.providers.accepted() {
            out.push(Received {
                customer: self.contacts.get(&accepted.to).cloned().unwrap_or_default(),
                channel: if accepted.provider == "twilio" {
                    Channel::Sms
                } else {
                    Channel::Push
                },
                step: step_in(&accepted.text),
                headers: HashMap::new(),
            });
        }
        out
    }

    /// Every event of a feed so far, as any integrator's consumer reads it.
    async fn feed(&self, source: EventSource) -> Vec<Payload> {
        let mut events = EventsServiceClient::new(self.stack.authed(&self.token));
        let mut stream = events
            .subscribe(SubscribeRequest {
                source: source as i32,
                after_cursor: String::new(),
                types: vec![],
                tenant_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Ok(Ok(Some(reply))) =
            tokio::time::timeout(Duration::from_millis(500), stream.message()).await
        {
            out.extend(reply.event.and_then(|e| e.payload));
        }
        out
    }

    async fn report(&mut self, campaign: &str) -> GetCampaignReportResponse {
        self.campaigns
            .get_campaign_report(GetCampaignReportRequest {
                campaign_id: campaign.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// The report's figures as the test recomputes them from outboxes and events.
#[derive(Debug, PartialEq)]
struct Figures {
    enrolled: i64,
    held_out: i64,
    touched: i64,
    returned: i64,
    holdout_returned: i64,
    revenue: i64,
    holdout_revenue: i64,
    /// Revenue less what the treated would have spent at the holdout's revenue per customer.
    incremental_revenue: i64,
    offer_cost: i64,
    channel_cost: i64,
    /// Step → customers touched at that step.
    steps: BTreeMap<i32, i64>,
}

fn figures_of(report: &GetCampaignReportResponse) -> Figures {
    let total = report.total.clone().unwrap_or_default();
    let minor = |m: Option<Money>| m.map_or(0, |m| m.amount_minor);
    Figures {
        enrolled: total.enrolled,
        held_out: total.held_out,
        touched: total.touched,
        returned: total.returned,
        holdout_returned: total.holdout_returned,
        revenue: minor(total.gross_revenue),
        holdout_revenue: minor(total.holdout_revenue),
        incremental_revenue: total
            .incremental_revenue_minor
            .map_or(i64::MIN, |e| e.value.round() as i64),
        offer_cost: minor(total.offer_cost),
        channel_cost: minor(total.channel_cost),
        steps: report
            .steps
            .iter()
            .map(|s| {
                let step = s.key.trim_start_matches("step:").parse().unwrap();
                (step, s.touched)
            })
            .collect(),
    }
}

db_test!(
    imported_history_to_report_over_real_providers,
    |db| async move {
        let mut job = Job::start(db).await;
        let files = job.files.path().to_path_buf();
        job.contacts = write_history(&files);

        // Import, as `winback import` does it.
        let mut import_client =
            winback::import::client(&job.stack.stack.url(), &job.token).unwrap();
        let customers =
            winback::import::customers(&mut import_client, &files.join("customers.csv"))
                .await
                .unwrap();
        let orders = winback::import::orders(&mut import_client, &files.join("orders.csv"))
            .await
            .unwrap();
        assert_eq!(
            (customers.stored, customers.rejected.len()),
            (32, 0),
            "{customers:?}"
        );
        assert_eq!(
            (orders.stored, orders.rejected.len()),
            (100, 0),
            "{orders:?}"
        );

        job.connect_providers().await;
        let run = job
            .segmentation
            .recompute(RecomputeRequest {
                as_of: Some(to_timestamp(job.stack.clock.now())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(run.customers_scored, 32);
        let campaign = job.campaign().await;
        let enrolled = job
            .campaigns
            .enrol_audience(EnrolAudienceRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        // Everyone who last bought a year ago, and none of the regulars.
        assert_eq!(enrolled.enrolled + enrolled.held_out, 28, "{enrolled:?}");
        assert!(
            enrolled.held_out > 0 && enrolled.enrolled > 0,
            "{enrolled:?}"
        );
        let enrolments = job.enrolments(&campaign).await;
        assert!(enrolments.iter().all(|e| !e.customer_id.starts_with('r')));

        // Step 1 now; step 2 (with the coupon) three days later.
        job.settle(&campaign, 1).await;
        job.delivered().await;
        // One treated customer unsubscribes with their email's one-click link (RFC 8058).
        let first_email = job
            .sink
            .messages()
            .into_iter()
            .next()
            .expect("a step-1 email");
        let leaver = header_value(&first_email, "X-Winback-Customer-Id");
        let link = header_value(&first_email, "List-Unsubscribe");
        let link = link.trim_start_matches('<').trim_end_matches('>');
        let answer = reqwest::Client::new()
            .post(link)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{answer:?}");
        let mut stopped = false;
        for _ in 0..200 {
            let e = job
                .enrolments(&campaign)
                .await
                .into_iter()
                .find(|e| e.customer_id == leaver)
                .unwrap();
            if e.state != EnrolmentState::Running as i32 {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(stopped, "the unsubscribe stops {leaver}'s chain");
        job.advance_to("2026-03-05T09:00:00Z");
        job.settle(&campaign, 2).await;
        job.delivered().await;

        // A treated email customer uses the coupon their step-2 email carried, and buys.
        let offer_email = job
            .received()
            .into_iter()
            .find(|r| r.channel == Channel::Email && r.step == 1)
            .expect("an email of the offer step");
        let buyer = offer_email.customer.clone();
        let code = offer_email.headers["X-Winback-Coupon-Code"].clone();
        assert!(!code.is_empty(), "{offer_email:?}");
        job.advance_to("2026-03-05T15:00:00Z");
        let redeemed = job
            .offers
            .redeem_coupon(RedeemCouponRequest {
                code: code.clone(),
                customer_id: buyer.clone(),
                order_id: "back-1".into(),
                order: Some(Cart {
                    total: Some(rub(400_000)),
                    lines: vec![],
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(redeemed.discount.unwrap().amount_minor, 40_000);
        // And a held-out customer comes back on their own.
        let holdout = enrolments
            .iter()
            .find(|e| e.state == EnrolmentState::Holdout as i32)
            .unwrap()
            .customer_id
            .clone();
        let order = |id: &str, customer: &str, total: i64, coupon: &str| Order {
            order_id: id.into(),
            customer_id: customer.into(),
            placed_at: Some(to_timestamp(utc("2026-03-05T14:30:00Z"))),
            total: Some(rub(total)),
            coupon_code: coupon.into(),
            ..Order::default()
        };
        job.profiles
            .record_orders(RecordOrdersRequest {
                orders: vec![
                    order("back-1", &buyer, 400_000, &code),
                    order("back-2", &holdout, 250_000, ""),
                ],
            })
            .await
            .unwrap();
        // The purchase ends the buyer's chain.
        let mut ended = false;
        for _ in 0..200 {
            let e = job
                .enrolments(&campaign)
                .await
                .into_iter()
                .find(|e| e.customer_id == buyer)
                .unwrap();
            if e.state == EnrolmentState::Returned as i32 {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ended, "the purchase ends the chain");

        // Step 3 for everyone still in a chain.
        job.advance_to("2026-03-07T09:00:00Z");
        job.settle(&campaign, 3).await;
        job.delivered().await;

        let received = job.received();
        let events_campaigns = job.feed(EventSource::Campaigns).await;
        let events_profiles = job.feed(EventSource::Profiles).await;
        let events_offers = job.feed(EventSource::Offers).await;
        let mut treated = BTreeSet::new();
        let mut held = BTreeSet::new();
        for p in &events_campaigns {
            if let Payload::EnrolmentStarted(s) = p
                && s.campaign_id == campaign
            {
                if s.holdout {
                    held.insert(s.customer_id.clone());
                } else {
                    treated.insert(s.customer_id.clone());
                }
            }
        }
        // Nobody in the holdout got anything; the buyer got nothing after buying.
        for r in &received {
            assert!(
                !held.contains(&r.customer),
                "holdout {} got {r:?}",
                r.customer
            );
            assert!(treated.contains(&r.customer), "{r:?}");
            assert!(!(r.customer == buyer && r.step == 2), "{r:?}");
            assert!(
                !(r.customer == leaver && r.step > 0),
                "after unsubscribing: {r:?}"
            );
        }
        // No customer got two messages for one step.
        let mut per_step = BTreeSet::new();
        for r in &received {
            assert!(per_step.insert((r.customer.clone(), r.step)), "{r:?} twice");
        }
        // Every email is stamped: campaign, variant, step, coupon, UTC and local send time.
        for r in received.iter().filter(|r| r.channel == Channel::Email) {
            assert_eq!(r.headers["X-Winback-Campaign-Id"], campaign);
            assert_eq!(r.headers["X-Winback-Step"], r.step.to_string());
            assert!(!r.headers["X-Winback-Variant"].is_empty());
            assert_eq!(r.headers["X-Winback-Channel"], "email");
            assert_eq!(r.step == 0, r.headers["X-Winback-Coupon-Code"].is_empty());
            let offset = if r.customer[1..].parse::<u32>().unwrap() % 2 == 0 {
                "+03:00"
            } else {
                "+10:00"
            };
            assert!(r.headers["X-Winback-Sent-At"].ends_with('Z'), "{r:?}");
            assert!(
                r.headers["X-Winback-Sent-At-Local"].ends_with(offset),
                "{r:?}"
            );
        }
        // Each channel really carried messages.
        for channel in [Channel::Email, Channel::Sms, Channel::Push] {
            assert!(received.iter().any(|r| r.channel == channel), "{channel:?}");
        }

        // The figures, recomputed: returns are the first purchases after enrolment.
        let purchases: Vec<(String, i64)> = events_profiles
            .iter()
            .filter_map(|p| match p {
                Payload::PurchaseRecorded(p)
                    if p.placed_at
                        .as_ref()
                        .is_some_and(|t| t.seconds >= utc("2026-03-02T09:00:00Z").timestamp()) =>
                {
                    Some((
                        p.customer_id.clone(),
                        p.total.as_ref().map_or(0, |m| m.amount_minor),
                    ))
                }
                _ => None,
            })
            .collect();
        let returned: Vec<&(String, i64)> = purchases
            .iter()
            .filter(|(c, _)| treated.contains(c))
            .collect();
        let cost_of = |channel: Channel| match channel {
            Channel::Email => EMAIL_COST,
            Channel::Sms => SMS_COST,
            _ => PUSH_COST,
        };
        let mut steps: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for r in &received {
            steps.entry(r.step).or_default().insert(r.customer.clone());
        }
        let expected = Figures {
            enrolled: treated.len() as i64,
            held_out: held.len() as i64,
            touched: received
                .iter()
                .map(|r| r.customer.clone())
                .collect::<BTreeSet<_>>()
                .len() as i64,
            returned: returned.len() as i64,
            holdout_returned: purchases.iter().filter(|(c, _)| held.contains(c)).count() as i64,
            revenue: returned.iter().map(|(_, total)| total).sum(),
            holdout_revenue: purchases
                .iter()
                .filter(|(c, _)| held.contains(c))
                .map(|(_, total)| total)
                .sum(),
            incremental_revenue: 0,
            offer_cost: events_offers
                .iter()
                .filter_map(|p| match p {
                    Payload::CouponRedeemed(r) if r.campaign_id == campaign => {
                        r.discount.as_ref().map(|m| m.amount_minor)
                    }
                    _ => None,
                })
                .sum(),
            channel_cost: received.iter().map(|r| cost_of(r.channel)).sum(),
            steps: steps
                .into_iter()
                .map(|(step, customers)| (step, customers.len() as i64))
                .collect(),
        };
        let mut expected = expected;
        expected.incremental_revenue = (expected.revenue as f64
            - expected.enrolled as f64 * expected.holdout_revenue as f64 / expected.held_out as f64)
            .round() as i64;
        assert_eq!((expected.returned, expected.holdout_returned), (1, 1));
        // The seed holds out 5 of 28.
        assert_eq!((expected.held_out, expected.enrolled), (5, 23));
        assert_eq!((expected.revenue, expected.offer_cost), (400_000, 40_000));
        // Campaigns reads the last events a moment later.
        let mut figures = figures_of(&job.report(&campaign).await);
        for _ in 0..100 {
            if figures == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            figures = figures_of(&job.report(&campaign).await);
        }
        assert_eq!(figures, expected);
        // Funnel stages are distinct customers; an email accepted by the SMTP server is
        // delivered; steps carry the chain's names and no holdout figures.
        let report = job.report(&campaign).await;
        let total = report.total.clone().unwrap();
        let emailed: BTreeSet<&String> = received
            .iter()
            .filter(|r| r.channel == Channel::Email)
            .map(|r| &r.customer)
            .collect();
        assert!(total.delivered >= emailed.len() as i64, "{total:?}");
        assert!(total.opened <= total.touched && total.clicked <= total.opened);
        assert!(
            !total.significant,
            "1 return against 1 is no result: {total:?}"
        );
        for step in &report.steps {
            assert!(step.opened <= step.touched && step.delivered <= step.touched);
            assert!(step.uplift.is_none() && step.incremental_revenue_minor.is_none());
            assert!(
                !step.name.is_empty() && !step.name.starts_with("step:"),
                "{step:?}"
            );
        }
        job.stack.stop().await;
    }
);
