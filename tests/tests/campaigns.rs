//! Win-back chains end to end on the embedded stack, driven by a manual clock: profiles,
//! offers and delivery are the real services; a 9-day chain runs in seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::Code;
use winback_e2e::{Authed, TestStack, percent_off_template, start_campaign};
use winback_platform::clock::Clock;
use winback_platform::db_test;
use winback_platform::testing::TestDatabase;
use winback_platform::time::{to_duration, to_timestamp};
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::*;
use winback_proto::common::{Channel, LifecycleState, MessagePurpose, Money, PageRequest};
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::delivery::{ListMessagesRequest, MessageTemplate, UpsertTemplateRequest};
use winback_proto::offers::ListCouponsRequest;
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{
    ConsentRecord, Customer, Order, RecordConsentRequest, RecordOrdersRequest,
    UpsertCustomersRequest,
};

/// A shop on the stack: its clients, templates, an offer and a three-step chain.
struct Shop {
    stack: TestStack,
    tenant_id: String,
    campaigns: CampaignsServiceClient<Authed>,
    delivery: DeliveryServiceClient<Authed>,
    profiles: ProfilesServiceClient<Authed>,
    offers: OffersServiceClient<Authed>,
    offer_template_id: String,
}

/// A step outcome as the lower-case word of its enum value (`STEP_RESULT_SENT` → "sent").
fn word(outcome: i32) -> String {
    winback_proto::common::StepResult::try_from(outcome)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("STEP_RESULT_")
                .to_lowercase()
        })
        .unwrap_or_default()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn email(template: &str) -> ChannelChoice {
    ChannelChoice {
        channel: Channel::Email as i32,
        template_id: template.into(),
    }
}

impl Shop {
    async fn open(db: &TestDatabase) -> Self {
        let stack = TestStack::start(db).await;
        let tenant = stack.tenant("shop").await;
        let channel = stack.authed(&tenant.token);
        let mut shop = Self {
            campaigns: CampaignsServiceClient::new(channel.clone()),
            delivery: DeliveryServiceClient::new(channel.clone()),
            profiles: ProfilesServiceClient::new(channel.clone()),
            offers: OffersServiceClient::new(channel),
            tenant_id: tenant.tenant_id,
            stack,
            offer_template_id: String::new(),
        };
        // Noon in Moscow on a Monday.
        shop.set_clock("2026-03-02T09:00:00Z");
        for (id, text) in [
            ("reminder", "We missed you, {{ customer.name }}"),
            (
                "offer",
                "Your code {{ coupon.code }}, {{ coupon.hours_left }} h",
            ),
            ("last_chance", "24 hours left for {{ coupon.code }}"),
        ] {
            for channel in [Channel::Email, Channel::Sms] {
                shop.delivery
                    .upsert_template(UpsertTemplateRequest {
                        template: Some(MessageTemplate {
                            template_id: id.into(),
                            channel: channel as i32,
                            subject: "Hello".into(),
                            text: text.into(),
                            ..MessageTemplate::default()
                        }),
                    })
                    .await
                    .unwrap();
            }
        }
        shop.offer_template_id = percent_off_template(&mut shop.offers, 10, 20_000).await;
        shop
    }

    fn set_clock(&self, at: &str) {
        let now = self.stack.clock.now();
        self.stack.clock.advance(utc(at) - now);
    }

    fn now(&self) -> DateTime<Utc> {
        self.stack.clock.now()
    }

    /// Customers with an email and advertising consent for email, in `zone`.
    async fn customers(&mut self, ids: &[String], zone: &str) {
        self.profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: ids
                    .iter()
                    .map(|id| Customer {
                        customer_id: id.clone(),
                        name: format!("Customer {id}"),
                        email: format!("{id}@example.com"),
                        time_zone: zone.into(),
                        ..Customer::default()
                    })
                    .collect(),
            })
            .await
            .unwrap();
        for id in ids {
            self.profiles
                .record_consent(RecordConsentRequest {
                    request_id: String::new(),
                    customer_id: id.clone(),
                    consent: Some(ConsentRecord {
                        channel: Channel::Email as i32,
                        purpose: MessagePurpose::Advertising as i32,
                        granted: true,
                        source: "signup_form".into(),
                        recorded_at: Some(to_timestamp(self.now())),
                    }),
                    do_not_contact: false,
                })
                .await
                .unwrap();
        }
    }

    /// Reminder now, 10 % off 3 days later, "24 hours left" 2 days after that.
    fn classic_chain(&self) -> Chain {
        let step = |name: &str, days: i64, template: &str| Step {
            name: name.into(),
            delay: Some(to_duration(chrono::Duration::days(days))),
            channels: vec![email(template)],
            ..Step::default()
        };
        Chain {
            name: "classic".into(),
            steps: vec![
                step("reminder", 0, "reminder"),
                Step {
                    offer_template_id: self.offer_template_id.clone(),
                    ..step("offer", 3, "offer")
                },
                step("last_chance", 2, "last_chance"),
            ],
            ..Chain::default()
        }
    }

    /// Creates and activates a win-back campaign for sleeping customers.
    async fn campaign(&mut self, chain: Chain, holdout_percent: i32) -> String {
        let chain = self
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(chain),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap();
        start_campaign(
            &mut self.campaigns,
            Campaign {
                name: "win back".into(),
                chain_id: chain.chain_id,
                audience: Some(Audience {
                    lifecycle_states: vec![LifecycleState::Sleeping as i32],
                    ..Audience::default()
                }),
                holdout_percent,
                winback: true,
                ..Campaign::default()
            },
        )
        .await
    }

    async fn enrol(&mut self, campaign_id: &str, ids: &[String]) -> Vec<EnrolmentDecision> {
        self.campaigns
            .enrol_customers(EnrolCustomersRequest {
                campaign_id: campaign_id.into(),
                customer_ids: ids.to_vec(),
                trigger: Trigger::SegmentEntered as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .decisions
    }

    async fn enrolment(&mut self, id: &str) -> Enrolment {
        self.campaigns
            .get_enrolment(GetEnrolmentRequest {
                enrolment_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .enrolment
            .unwrap()
    }

    /// Waits until every enrolment in `ids` has recorded `steps` outcomes that are final.
    async fn settle(&mut self, ids: &[String], steps: usize) {
        for _ in 0..200 {
            let mut done = true;
            for id in ids {
                let e = self.enrolment(id).await;
                let finals = e.steps.iter().filter(|s| s.executed_at.is_some()).count();
                let ended = e.state != EnrolmentState::Running as i32;
                if finals < steps && !ended {
                    done = false;
                }
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("steps did not run");
    }

    async fn messages_of(&mut self, customer: &str) -> Vec<winback_proto::delivery::Message> {
        self.delivery
            .list_messages(ListMessagesRequest {
                customer_id: customer.into(),
                page: Some(PageRequest {
                    page_size: 100,
                    page_token: String::new(),
                }),
                ..ListMessagesRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages
    }

    /// The email as the file sink wrote it (the embedded default carrier).
    fn sent_email(&self, message_id: &str) -> Option<String> {
        let name = format!("{message_id}.eml");
        let mut dirs = vec![self.stack.config.data_dir.join("outbox")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.file_name().is_some_and(|n| n == name.as_str()) {
                    return std::fs::read_to_string(path).ok();
                }
            }
        }
        None
    }

    async fn report(&mut self, campaign_id: &str) -> GetCampaignReportResponse {
        self.campaigns
            .get_campaign_report(GetCampaignReportRequest {
                campaign_id: campaign_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until `check` holds on the enrolment (events travel between services).
    async fn wait_for(&mut self, id: &str, check: impl Fn(&Enrolment) -> bool) -> Enrolment {
        for _ in 0..200 {
            let e = self.enrolment(id).await;
            if check(&e) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("enrolment {id} never reached the expected state");
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

db_test!(
    a_chain_runs_to_its_end_and_the_holdout_gets_nothing,
    |db| async move {
        let mut shop = Shop::open(db).await;
        let customers = ids("c", 12);
        shop.customers(&customers, "Europe/Moscow").await;
        let chain = shop.classic_chain();
        let campaign = shop.campaign(chain, 50).await;
        let decisions = shop.enrol(&campaign, &customers).await;
        let treated: Vec<&EnrolmentDecision> = decisions.iter().filter(|d| !d.holdout).collect();
        let held: Vec<&EnrolmentDecision> = decisions.iter().filter(|d| d.holdout).collect();
        assert_eq!(treated.len() + held.len(), 12);
        assert!(!treated.is_empty() && !held.is_empty(), "{decisions:?}");
        // The split is stable: enrolling again assigns nobody anew (they are in a chain now).
        let again = shop.enrol(&campaign, &customers).await;
        for d in &again {
            let first = decisions
                .iter()
                .find(|x| x.customer_id == d.customer_id)
                .unwrap();
            if first.holdout {
                continue;
            }
            assert_eq!(d.skip_reason, SkipReason::AlreadyInChain as i32);
        }
        let running: Vec<String> = treated.iter().map(|d| d.enrolment_id.clone()).collect();
        shop.settle(&running, 1).await;
        // Day 3 (noon Moscow): the offer with a coupon; day 5: the last chance.
        shop.set_clock("2026-03-05T09:00:00Z");
        shop.settle(&running, 2).await;
        shop.set_clock("2026-03-07T09:00:00Z");
        shop.settle(&running, 3).await;
        for d in &treated {
            let e = shop.enrolment(&d.enrolment_id).await;
            let outcomes: Vec<String> = e.steps.iter().map(|s| word(s.outcome)).collect();
            assert_eq!(outcomes, ["sent", "sent", "sent"], "{e:?}");
            assert!(e.steps[0].coupon_code.is_empty());
            assert!(!e.steps[1].coupon_code.is_empty());
            let messages = shop.messages_of(&d.customer_id).await;
            assert_eq!(messages.len(), 3, "one message per step");
            // The reminder names the coupon the offer gave.
            assert!(
                messages
                    .iter()
                    .filter_map(|m| shop.sent_email(&m.message_id))
                    .any(|body| body.contains(&e.steps[1].coupon_code)
                        && body.contains("24 hours left")),
                "{messages:?}"
            );
        }
        for d in &held {
            assert!(
                shop.messages_of(&d.customer_id).await.is_empty(),
                "the holdout receives nothing"
            );
            let coupons = shop
                .offers
                .list_coupons(ListCouponsRequest {
                    customer_id: d.customer_id.clone(),
                    ..ListCouponsRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(coupons.coupons.is_empty());
        }
        // After the grace the chain ends; nobody reacted: deep sleep.
        shop.set_clock("2026-03-10T10:00:00Z");
        for d in &treated {
            shop.wait_for(&d.enrolment_id, |e| {
                e.state == EnrolmentState::Completed as i32
            })
            .await;
        }
        let report = shop.report(&campaign).await;
        let total = report.total.unwrap();
        assert_eq!(total.enrolled as usize, treated.len());
        assert_eq!(total.held_out as usize, held.len());
        assert_eq!(total.touched as usize, treated.len());
        assert_eq!(report.deep_sleep as usize, treated.len());
        assert_eq!(report.steps.len(), 3);
        shop.stack.stop().await;
    }
);

db_test!(
    a_purchase_mid_chain_stops_it_and_counts_as_a_return,
    |db| async move {
        let mut shop = Shop::open(db).await;
        let customers = ids("p", 1);
        shop.customers(&customers, "Europe/Moscow").await;
        let chain = shop.classic_chain();
        let campaign = shop.campaign(chain, 0).await;
        let d = shop.enrol(&campaign, &customers).await.remove(0);
        assert!(!d.holdout);
        shop.settle(std::slice::from_ref(&d.enrolment_id), 1).await;
        shop.set_clock("2026-03-03T09:00:00Z");
        shop.profiles
            .record_orders(RecordOrdersRequest {
                orders: vec![Order {
                    order_id: "o-1".into(),
                    customer_id: "p-0".into(),
                    placed_at: Some(to_timestamp(shop.now())),
                    total: Some(Money {
                        amount_minor: 250_000,
                        currency: "RUB".into(),
                    }),
                    ..Order::default()
                }],
            })
            .await
            .unwrap();
        let e = shop
            .wait_for(&d.enrolment_id, |e| {
                e.state == EnrolmentState::Returned as i32
            })
            .await;
        assert_eq!(e.steps.len(), 1);
        // The rest of the chain's time passes: nothing more is sent.
        shop.set_clock("2026-03-12T09:00:00Z");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(shop.messages_of("p-0").await.len(), 1);
        let report = shop.report(&campaign).await;
        let total = report.total.unwrap();
        assert_eq!(total.returned, 1);
        assert_eq!(total.gross_revenue.unwrap().amount_minor, 250_000);
        assert_eq!(report.woke_up, 1);
        assert_eq!(
            report.steps[0].returned, 1,
            "the return belongs to the reminder"
        );
        shop.stack.stop().await;
    }
);

db_test!(
    quiet_hours_hold_in_the_customers_own_zone,
    |db| async move {
        let mut shop = Shop::open(db).await;
        // 22:00 in Vladivostok (UTC+10) while it is noon in Moscow.
        shop.set_clock("2026-03-02T12:00:00Z");
        let customers = ids("q", 1);
        shop.customers(&customers, "Asia/Vladivostok").await;
        let chain = shop.classic_chain();
        let campaign = shop.campaign(chain, 0).await;
        let d = shop.enrol(&campaign, &customers).await.remove(0);
        let e = shop
            .wait_for(&d.enrolment_id, |e| {
                e.steps
                    .first()
                    .is_some_and(|s| word(s.outcome) == "deferred_quiet_hours")
            })
            .await;
        assert!(e.steps[0].executed_at.is_none());
        // One second before 09:00 local: still waiting.
        shop.set_clock("2026-03-02T22:59:59Z");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(shop.messages_of("q-0").await.is_empty());
        // 09:00 local: sent.
        shop.set_clock("2026-03-02T23:00:00Z");
        let e = shop
            .wait_for(&d.enrolment_id, |e| {
                e.steps.first().is_some_and(|s| word(s.outcome) == "sent")
            })
            .await;
        assert_eq!(
            e.steps[0].executed_at.as_ref().unwrap().seconds,
            utc("2026-03-02T23:00:00Z").timestamp()
        );
        shop.stack.stop().await;
    }
);

db_test!(
    a_refusal_of_contact_stops_the_chain_at_once,
    |db| async move {
        let mut shop = Shop::open(db).await;
        let customers = ids("u", 1);
        shop.customers(&customers, "Europe/Moscow").await;
        let chain = shop.classic_chain();
        let campaign = shop.campaign(chain, 0).await;
        let d = shop.enrol(&campaign, &customers).await.remove(0);
        shop.settle(std::slice::from_ref(&d.enrolment_id), 1).await;
        shop.profiles
            .record_consent(RecordConsentRequest {
                request_id: String::new(),
                customer_id: "u-0".into(),
                consent: Some(ConsentRecord {
                    channel: Channel::Email as i32,
                    purpose: MessagePurpose::Advertising as i32,
                    granted: false,
                    source: "survey".into(),
                    recorded_at: Some(to_timestamp(shop.now())),
                }),
                do_not_contact: true,
            })
            .await
            .unwrap();
        shop.wait_for(&d.enrolment_id, |e| {
            e.state == EnrolmentState::Stopped as i32
        })
        .await;
        shop.set_clock("2026-03-12T09:00:00Z");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(shop.messages_of("u-0").await.len(), 1);
        // A new campaign skips the customer with the reason recorded.
        let mut other = shop.classic_chain();
        other.name = "other".into();
        let chain = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(other),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap();
        let second = start_campaign(
            &mut shop.campaigns,
            Campaign {
                name: "service flow".into(),
                chain_id: chain.chain_id,
                audience: Some(Audience {
                    triggers: vec![Trigger::BonusExpiring as i32],
                    ..Audience::default()
                }),
                ..Campaign::default()
            },
        )
        .await;
        let d = shop.enrol(&second, &customers).await.remove(0);
        assert_eq!(d.skip_reason, SkipReason::RefusedContact as i32);
        shop.stack.stop().await;
    }
);

db_test!(
    bad_input_is_refused_naming_the_field_and_nothing_is_stored,
    |db| async move {
        let mut shop = Shop::open(db).await;
        // Six touches.
        let mut chain = shop.classic_chain();
        let extra = chain.steps[0].clone();
        chain.steps.extend([extra.clone(), extra.clone(), extra]);
        let err = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(chain),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("chain.steps"), "{}", err.message());
        // A reminder after its coupon expired.
        let mut chain = shop.classic_chain();
        chain.steps[2].delay = Some(to_duration(chrono::Duration::days(4)));
        let err = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(chain),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("chain.steps[2].delay"),
            "{}",
            err.message()
        );
        // An unknown template.
        let mut chain = shop.classic_chain();
        chain.steps[1].channels[0].template_id = "nope".into();
        let err = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(chain),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.message()
                .contains("chain.steps[1].channels[0].template_id"),
            "{}",
            err.message()
        );
        let listed = shop
            .campaigns
            .list_chains(ListChainsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.chains.is_empty(), "nothing stored");
        // An unknown chain, then an unknown segment.
        let err = shop
            .campaigns
            .create_campaign(CreateCampaignRequest {
                request_id: String::new(),
                campaign: Some(Campaign {
                    name: "x".into(),
                    chain_id: "missing".into(),
                    audience: Some(Audience {
                        segments: vec!["champions".into()],
                        ..Audience::default()
                    }),
                    winback: true,
                    ..Campaign::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.message().contains("campaign.chain_id"),
            "{}",
            err.message()
        );
        let chain = shop.classic_chain();
        let campaign = shop.campaign(chain, 10).await;
        let chain_id = shop
            .campaigns
            .get_campaign(GetCampaignRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap()
            .chain_id;
        let err = shop
            .campaigns
            .create_campaign(CreateCampaignRequest {
                request_id: String::new(),
                campaign: Some(Campaign {
                    name: "x".into(),
                    chain_id: chain_id.clone(),
                    audience: Some(Audience {
                        segments: vec!["no_such_segment".into()],
                        ..Audience::default()
                    }),
                    winback: true,
                    ..Campaign::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.message().contains("campaign.audience.segments[0]"),
            "{}",
            err.message()
        );
        // A second win-back campaign for the same lifecycle state cannot run beside the first.
        let overlapping = shop
            .campaigns
            .create_campaign(CreateCampaignRequest {
                request_id: String::new(),
                campaign: Some(Campaign {
                    name: "overlap".into(),
                    chain_id,
                    audience: Some(Audience {
                        lifecycle_states: vec![LifecycleState::Sleeping as i32],
                        ..Audience::default()
                    }),
                    winback: true,
                    ..Campaign::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(overlapping.code(), Code::FailedPrecondition);
        assert!(
            overlapping
                .message()
                .contains("campaign.audience.lifecycle_states[0]"),
            "{}",
            overlapping.message()
        );
        // An unknown customer: NOT_FOUND naming it, and nobody else is enrolled.
        shop.customers(&ids("b", 1), "Europe/Moscow").await;
        let err = shop
            .campaigns
            .enrol_customers(EnrolCustomersRequest {
                campaign_id: campaign.clone(),
                customer_ids: vec!["b-0".into(), "ghost".into()],
                trigger: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.message().contains("customer_ids[1]"),
            "{}",
            err.message()
        );
        let listed = shop
            .campaigns
            .list_enrolments(ListEnrolmentsRequest {
                campaign_id: campaign.clone(),
                ..ListEnrolmentsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(listed.enrolments.is_empty(), "nothing stored");
        // A bad policy names its field.
        let err = shop
            .campaigns
            .update_policy(UpdatePolicyRequest {
                policy: Some(ContactPolicy {
                    quiet_hours_end: "9 am".into(),
                    ..ContactPolicy::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("policy.quiet_hours_end"));
        // No token; a token without the campaigns scopes.
        let mut anonymous = CampaignsServiceClient::new(shop.stack.channel.clone());
        let err = anonymous.get_policy(GetPolicyRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let narrow = shop
            .stack
            .token_with_scopes(&shop.tenant_id, &["profiles:read"]);
        let mut narrow = CampaignsServiceClient::new(shop.stack.authed(&narrow));
        let err = narrow
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(shop.classic_chain()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        shop.stack.stop().await;
    }
);

impl Shop {
    /// A one-step chain on email, optionally with the dead-customer suppression.
    async fn one_step_campaign(&mut self, name: &str, suppress_after_days: Option<i64>) -> String {
        let chain = Chain {
            name: name.into(),
            steps: vec![Step {
                name: "touch".into(),
                channels: vec![email("reminder")],
                suppress_if_no_click_within: suppress_after_days
                    .map(|d| to_duration(chrono::Duration::days(d))),
                ..Step::default()
            }],
            ..Chain::default()
        };
        self.campaign(chain, 0).await
    }

    async fn complete(&mut self, campaign_id: &str) {
        self.campaigns
            .complete_campaign(CompleteCampaignRequest {
                campaign_id: campaign_id.into(),
            })
            .await
            .unwrap();
    }

    fn advance(&self, by: chrono::Duration) {
        self.stack.clock.advance(by);
    }
}

db_test!(
    the_chain_cap_and_the_cool_down_hold_at_their_exact_boundaries,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.customers(&ids("k", 2), "Europe/Moscow").await;
        let t0 = shop.now();
        // Two win-back chains for k-0 (each campaign completed before the next runs).
        let first = shop.one_step_campaign("first", None).await;
        assert_eq!(shop.enrol(&first, &["k-0".into()]).await[0].skip_reason, 0);
        shop.complete(&first).await;
        shop.advance(chrono::Duration::days(10));
        let second = shop.one_step_campaign("second", None).await;
        assert_eq!(shop.enrol(&second, &["k-0".into()]).await[0].skip_reason, 0);
        shop.complete(&second).await;
        // A third within 365 days of the first: capped, up to the last second.
        let third = shop.one_step_campaign("third", None).await;
        shop.advance(
            (t0 + chrono::Duration::days(365) - chrono::Duration::seconds(1)) - shop.now(),
        );
        let d = shop.enrol(&third, &["k-0".into()]).await.remove(0);
        assert_eq!(d.skip_reason, SkipReason::Capped as i32);
        assert!(d.enrolment_id.is_empty());
        // Exactly 365 days after the first, it has left the window.
        shop.advance(chrono::Duration::seconds(1));
        let d = shop.enrol(&third, &["k-0".into()]).await.remove(0);
        assert_eq!(d.skip_reason, 0, "{d:?}");
        // k-1 comes back through the chain: 90 days of cool-down from the purchase.
        let d = shop.enrol(&third, &["k-1".into()]).await.remove(0);
        shop.settle(std::slice::from_ref(&d.enrolment_id), 1).await;
        let placed = shop.now();
        shop.profiles
            .record_orders(RecordOrdersRequest {
                orders: vec![Order {
                    order_id: "k-1-order".into(),
                    customer_id: "k-1".into(),
                    placed_at: Some(to_timestamp(placed)),
                    total: Some(Money {
                        amount_minor: 100_000,
                        currency: "RUB".into(),
                    }),
                    ..Order::default()
                }],
            })
            .await
            .unwrap();
        shop.wait_for(&d.enrolment_id, |e| {
            e.state == EnrolmentState::Returned as i32
        })
        .await;
        shop.complete(&third).await;
        let fourth = shop.one_step_campaign("fourth", None).await;
        shop.advance(
            (placed + chrono::Duration::days(90) - chrono::Duration::seconds(1)) - shop.now(),
        );
        let d = shop.enrol(&fourth, &["k-1".into()]).await.remove(0);
        assert_eq!(d.skip_reason, SkipReason::Cooldown as i32);
        shop.advance(chrono::Duration::seconds(1));
        let d = shop.enrol(&fourth, &["k-1".into()]).await.remove(0);
        assert_eq!(d.skip_reason, 0, "{d:?}");
        shop.stack.stop().await;
    }
);

db_test!(
    a_pause_never_repeats_a_touch_and_late_steps_turn_stale,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.customers(&ids("s", 1), "Europe/Moscow").await;
        let step = |name: &str, days: i64| Step {
            name: name.into(),
            delay: Some(to_duration(chrono::Duration::days(days))),
            channels: vec![email("reminder")],
            ..Step::default()
        };
        let chain = Chain {
            name: "three".into(),
            steps: vec![step("a", 0), step("b", 2), step("c", 1)],
            ..Chain::default()
        };
        // The default weekly cap (3) leaves room for all three.
        let campaign = shop.campaign(chain, 0).await;
        let d = shop.enrol(&campaign, &["s-0".into()]).await.remove(0);
        shop.settle(std::slice::from_ref(&d.enrolment_id), 1).await;
        shop.campaigns
            .pause_campaign(PauseCampaignRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap();
        // Step b falls due during the pause: nothing is sent.
        shop.advance(chrono::Duration::days(2) + chrono::Duration::hours(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(shop.messages_of("s-0").await.len(), 1);
        // Resumed an hour late (within the 24 h lateness): b runs once.
        shop.campaigns
            .activate_campaign(ActivateCampaignRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap();
        shop.settle(std::slice::from_ref(&d.enrolment_id), 2).await;
        assert_eq!(shop.messages_of("s-0").await.len(), 2);
        // Step c falls due during a longer pause: on resume it is stale, not sent.
        shop.campaigns
            .pause_campaign(PauseCampaignRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap();
        shop.advance(chrono::Duration::days(3));
        shop.campaigns
            .activate_campaign(ActivateCampaignRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap();
        shop.settle(std::slice::from_ref(&d.enrolment_id), 3).await;
        let e = shop.enrolment(&d.enrolment_id).await;
        let outcomes: Vec<String> = e.steps.iter().map(|s| word(s.outcome)).collect();
        assert_eq!(outcomes, ["sent", "sent", "skipped_stale"]);
        assert_eq!(shop.messages_of("s-0").await.len(), 2);
        shop.stack.stop().await;
    }
);

db_test!(
    a_dead_customer_who_does_not_click_in_7_days_is_suppressed,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.customers(&ids("x", 1), "Europe/Moscow").await;
        let campaign = shop.one_step_campaign("breaking up", Some(7)).await;
        let d = shop.enrol(&campaign, &["x-0".into()]).await.remove(0);
        shop.settle(std::slice::from_ref(&d.enrolment_id), 1).await;
        shop.advance(chrono::Duration::days(7) + chrono::Duration::minutes(1));
        shop.wait_for(&d.enrolment_id, |e| {
            e.state == EnrolmentState::Completed as i32
        })
        .await;
        let suppressions = shop
            .delivery
            .list_suppressions(winback_proto::delivery::ListSuppressionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .suppressions;
        assert!(
            suppressions.iter().any(|s| s.contact == "x-0@example.com"
                && s.reason == "dead_cleanup"
                && s.marketing_only),
            "{suppressions:?}"
        );
        shop.stack.stop().await;
    }
);

db_test!(
    an_abandoned_cart_enrols_through_the_trigger_and_the_report_matches_the_events,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.customers(&ids("t", 1), "Europe/Moscow").await;
        let chain = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(Chain {
                    name: "cart".into(),
                    steps: vec![Step {
                        name: "cart".into(),
                        delay: Some(to_duration(chrono::Duration::hours(1))),
                        channels: vec![email("reminder")],
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
        let campaign = start_campaign(
            &mut shop.campaigns,
            Campaign {
                name: "cart".into(),
                chain_id: chain.chain_id,
                audience: Some(Audience {
                    triggers: vec![Trigger::CartAbandoned as i32],
                    ..Audience::default()
                }),
                ..Campaign::default()
            },
        )
        .await;
        shop.profiles
            .record_engagement(winback_proto::profiles::RecordEngagementRequest {
                events: vec![winback_proto::profiles::EngagementEvent {
                    event_id: "cart-1".into(),
                    customer_id: "t-0".into(),
                    occurred_at: Some(to_timestamp(shop.now())),
                    kind: Some(
                        winback_proto::profiles::engagement_event::Kind::CartAbandoned(
                            winback_proto::profiles::CartAbandoned {
                                value: Some(Money {
                                    amount_minor: 500_000,
                                    currency: "RUB".into(),
                                }),
                                lines: vec![],
                            },
                        ),
                    ),
                }],
            })
            .await
            .unwrap();
        let mut enrolment = None;
        for _ in 0..200 {
            let listed = shop
                .campaigns
                .list_enrolments(ListEnrolmentsRequest {
                    campaign_id: campaign.clone(),
                    ..ListEnrolmentsRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .enrolments;
            if let Some(e) = listed.into_iter().next() {
                enrolment = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = enrolment.expect("the abandoned cart enrols the customer");
        assert_eq!(e.trigger, Trigger::CartAbandoned as i32);
        assert_eq!(e.state, EnrolmentState::Running as i32);
        shop.advance(chrono::Duration::hours(1));
        shop.settle(std::slice::from_ref(&e.enrolment_id), 1).await;
        // The campaigns feed, read as any consumer would: the report agrees with it.
        let mut feed = winback_proto::events::events_service_client::EventsServiceClient::new(
            shop.stack.authed(
                &shop
                    .stack
                    .token_with_scopes(&shop.tenant_id, &["events:read"]),
            ),
        );
        let mut stream = feed
            .subscribe(winback_proto::events::SubscribeRequest {
                source: winback_proto::events::EventSource::Campaigns as i32,
                after_cursor: String::new(),
                types: vec![],
                tenant_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let (mut started, mut sent) = (0, 0);
        while let Ok(Ok(Some(reply))) =
            tokio::time::timeout(Duration::from_millis(700), stream.message()).await
        {
            match reply.event.and_then(|e| e.payload) {
                Some(winback_proto::events::event::Payload::EnrolmentStarted(s))
                    if s.campaign_id == campaign && !s.holdout =>
                {
                    started += 1
                }
                Some(winback_proto::events::event::Payload::StepExecuted(s))
                    if s.campaign_id == campaign && word(s.outcome) == "sent" =>
                {
                    sent += 1
                }
                _ => {}
            }
        }
        let total = shop.report(&campaign).await.total.unwrap();
        assert_eq!((total.enrolled, total.touched), (started, sent));
        assert_eq!((started, sent), (1, 1));
        // Decided once, though 4 step workers read the queue: no "already in chain" rows.
        let decisions = shop
            .campaigns
            .list_enrolments(ListEnrolmentsRequest {
                campaign_id: campaign.clone(),
                ..ListEnrolmentsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .enrolments;
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        shop.stack.stop().await;
    }
);

db_test!(
    the_audience_is_enrolled_on_demand_with_a_reason_for_everyone_left_out,
    |db| async move {
        let mut shop = Shop::open(db).await;
        // a, b: reachable; c: no consent; d: asked not to be contacted.
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        shop.customers(&all[..2], "Europe/Moscow").await;
        shop.profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: all[2..]
                    .iter()
                    .map(|id| Customer {
                        customer_id: id.clone(),
                        email: format!("{id}@example.com"),
                        ..Customer::default()
                    })
                    .collect(),
            })
            .await
            .unwrap();
        shop.profiles
            .record_consent(RecordConsentRequest {
                request_id: String::new(),
                customer_id: "d".into(),
                consent: Some(ConsentRecord {
                    channel: Channel::Email as i32,
                    purpose: MessagePurpose::Advertising as i32,
                    granted: false,
                    source: "survey".into(),
                    recorded_at: Some(to_timestamp(shop.now())),
                }),
                do_not_contact: true,
            })
            .await
            .unwrap();
        // Two purchases a year ago: nobody is active any more.
        let orders = all
            .iter()
            .flat_map(|id| {
                ["2025-01-10T10:00:00Z", "2025-03-10T10:00:00Z"]
                    .iter()
                    .enumerate()
                    .map(|(i, at)| Order {
                        order_id: format!("{id}-{i}"),
                        customer_id: id.clone(),
                        placed_at: Some(to_timestamp(utc(at))),
                        total: Some(Money {
                            amount_minor: 300_000,
                            currency: "RUB".into(),
                        }),
                        ..Order::default()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        shop.profiles
            .record_orders(RecordOrdersRequest { orders })
            .await
            .unwrap();
        let mut segmentation =
            winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient::new(
                shop.stack.authed(&shop.stack.token_with_scopes(
                    &shop.tenant_id,
                    &["segmentation:read", "segmentation:write"],
                )),
            );
        let run = segmentation
            .recompute(winback_proto::segmentation::RecomputeRequest {
                as_of: Some(to_timestamp(shop.now())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(run.customers_scored, 4);
        let asleep = vec![
            LifecycleState::HotInactive as i32,
            LifecycleState::Sleeping as i32,
            LifecycleState::NearlyLost as i32,
            LifecycleState::Dead as i32,
        ];
        let chain_a = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(shop.classic_chain()),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap()
            .chain_id;
        let mut second = shop.classic_chain();
        second.name = "classic B".into();
        second.steps.truncate(2);
        let chain_b = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(second),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap()
            .chain_id;
        let campaign = |name: &str, min_clv_minor: i64| Campaign {
            name: name.into(),
            chain_id: chain_a.clone(),
            audience: Some(Audience {
                lifecycle_states: asleep.clone(),
                min_clv_minor,
                ..Audience::default()
            }),
            variants: vec![
                Variant {
                    name: "A".into(),
                    weight: 1,
                    chain_id: String::new(),
                },
                Variant {
                    name: "B".into(),
                    weight: 1,
                    chain_id: chain_b.clone(),
                },
            ],
            winback: true,
            ..Campaign::default()
        };
        // A CLV floor nobody reaches: everyone reachable is "LTV too low".
        let rich = shop
            .campaigns
            .create_campaign(CreateCampaignRequest {
                request_id: String::new(),
                campaign: Some(campaign("rich only", 1_000_000_000_000)),
            })
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap()
            .campaign_id;
        let enrol_all = |id: String| EnrolAudienceRequest { campaign_id: id };
        let err = shop
            .campaigns
            .enrol_audience(enrol_all(rich.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::FailedPrecondition,
            "a draft does not enrol"
        );
        shop.campaigns
            .activate_campaign(ActivateCampaignRequest {
                campaign_id: rich.clone(),
            })
            .await
            .unwrap();
        let r = shop
            .campaigns
            .enrol_audience(enrol_all(rich.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.enrolled, r.held_out), (0, 0));
        assert_eq!(r.skipped.get("ltv_too_low"), Some(&3), "{r:?}");
        assert_eq!(r.skipped.get("refused_contact"), Some(&1), "{r:?}");
        shop.complete(&rich).await;
        let open = start_campaign(&mut shop.campaigns, campaign("everyone", 0)).await;
        let r = shop
            .campaigns
            .enrol_audience(enrol_all(open.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.enrolled, 2, "{r:?}");
        assert_eq!(r.skipped.get("no_consent"), Some(&1), "{r:?}");
        assert_eq!(r.skipped.get("refused_contact"), Some(&1), "{r:?}");
        let listed = shop
            .campaigns
            .list_enrolments(ListEnrolmentsRequest {
                campaign_id: open.clone(),
                ..ListEnrolmentsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .enrolments;
        assert_eq!(listed.len(), 4, "every decision is recorded");
        for e in listed
            .iter()
            .filter(|e| e.state == EnrolmentState::Running as i32)
        {
            assert!(["A", "B"].contains(&e.variant.as_str()), "{e:?}");
            assert!(!e.segment.is_empty(), "the segment at enrolment is kept");
        }
        let c = listed.iter().find(|e| e.customer_id == "c").unwrap();
        assert_eq!(c.state, EnrolmentState::Skipped as i32);
        assert_eq!(c.skip_reason, SkipReason::NoConsent as i32);
        shop.stack.stop().await;
    }
);

/// Writes delivery events into the running stack's delivery outbox, as delivery does.
async fn delivery_events(shop: &Shop, payloads: Vec<winback_proto::events::event::Payload>) {
    use sea_orm::TransactionTrait;
    let url = shop
        .stack
        .config
        .database
        .url_for("delivery", &shop.stack.config.data_dir);
    let db = winback_platform::db::connect(&url, "delivery", 2)
        .await
        .unwrap();
    let outbox =
        winback_platform::events::Outbox::new(winback_proto::events::EventSource::Delivery);
    let txn = db.begin().await.unwrap();
    for payload in payloads {
        outbox
            .append(&txn, &shop.tenant_id, shop.now(), payload)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
}

db_test!(
    profiles_learns_opens_unsubscribes_and_suppressed_contacts_from_delivery,
    |db| async move {
        use winback_proto::events::event::Payload;
        use winback_proto::events::{ContactUnsubscribed, MessageStatusChanged};
        let mut shop = Shop::open(db).await;
        shop.profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: vec![Customer {
                    customer_id: "m-0".into(),
                    email: "m0@example.com".into(),
                    phone: "+79161234567".into(),
                    ..Customer::default()
                }],
            })
            .await
            .unwrap();
        for channel in [Channel::Email, Channel::Sms] {
            shop.profiles
                .record_consent(RecordConsentRequest {
                    request_id: String::new(),
                    customer_id: "m-0".into(),
                    consent: Some(ConsentRecord {
                        channel: channel as i32,
                        purpose: MessagePurpose::Advertising as i32,
                        granted: true,
                        source: "signup_form".into(),
                        recorded_at: Some(to_timestamp(shop.now())),
                    }),
                    do_not_contact: false,
                })
                .await
                .unwrap();
        }
        delivery_events(
            &shop,
            vec![
                Payload::MessageStatusChanged(MessageStatusChanged {
                    message_id: "msg-1".into(),
                    customer_id: "m-0".into(),
                    channel: Channel::Email as i32,
                    status: "opened".into(),
                    ..MessageStatusChanged::default()
                }),
                Payload::MessageStatusChanged(MessageStatusChanged {
                    message_id: "msg-2".into(),
                    customer_id: "m-0".into(),
                    channel: Channel::Sms as i32,
                    status: "suppressed".into(),
                    reason: "21610 unsubscribed number".into(),
                    ..MessageStatusChanged::default()
                }),
                Payload::ContactUnsubscribed(ContactUnsubscribed {
                    customer_id: "m-0".into(),
                    channel: Channel::Email as i32,
                    contact: "m0@example.com".into(),
                    method: "one_click".into(),
                    message_id: "msg-1".into(),
                }),
            ],
        )
        .await;
        let mut facts = None;
        for _ in 0..200 {
            let f = shop
                .profiles
                .get_facts(winback_proto::profiles::GetFactsRequest {
                    customer_id: "m-0".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .facts
                .unwrap();
            let email = f
                .channels
                .iter()
                .find(|c| c.channel == Channel::Email as i32)
                .unwrap();
            if f.last_open_at.is_some() && !email.advertising {
                facts = Some(f);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let facts = facts.expect("profiles applies delivery's events");
        let sms = facts
            .channels
            .iter()
            .find(|c| c.channel == Channel::Sms as i32)
            .unwrap();
        assert!(sms.suppressed && sms.advertising, "{sms:?}");
        let history = shop
            .profiles
            .list_consent_history(winback_proto::profiles::ListConsentHistoryRequest {
                customer_id: "m-0".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            history
                .records
                .iter()
                .any(|c| c.source == "unsubscribe_link" && !c.granted),
            "{history:?}"
        );
        // An SMS-only chain cannot reach the customer: suppressed, with the reason recorded.
        let chain = Chain {
            name: "sms only".into(),
            steps: vec![Step {
                name: "sms".into(),
                channels: vec![ChannelChoice {
                    channel: Channel::Sms as i32,
                    template_id: "reminder".into(),
                }],
                ..Step::default()
            }],
            ..Chain::default()
        };
        let campaign = shop.campaign(chain, 0).await;
        let d = shop.enrol(&campaign, &["m-0".into()]).await.remove(0);
        assert_eq!(d.skip_reason, SkipReason::Suppressed as i32);
        shop.stack.stop().await;
    }
);

db_test!(
    a_retried_create_with_its_request_id_creates_once,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.customers(&["c-1".to_owned()], "Europe/Moscow").await;
        // Chain and campaign: the retry returns the first result; nothing doubles.
        let chain = CreateChainRequest {
            request_id: "chain-1".into(),
            chain: Some(shop.classic_chain()),
        };
        let first = shop.campaigns.create_chain(chain.clone()).await.unwrap();
        let again = shop.campaigns.create_chain(chain.clone()).await.unwrap();
        assert_eq!(first.get_ref(), again.get_ref());
        let chain_id = first.into_inner().chain.unwrap().chain_id;
        let mut changed = chain.clone();
        changed.chain.as_mut().unwrap().name = "other".into();
        let reused = shop.campaigns.create_chain(changed).await.unwrap_err();
        assert_eq!(reused.code(), Code::AlreadyExists);
        assert!(reused.message().contains("request_id"), "{reused:?}");
        let chains = shop
            .campaigns
            .list_chains(ListChainsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .chains;
        assert_eq!(chains.len(), 1);
        let campaign = CreateCampaignRequest {
            request_id: "campaign-1".into(),
            campaign: Some(Campaign {
                name: "win back".into(),
                chain_id,
                audience: Some(Audience {
                    lifecycle_states: vec![LifecycleState::Sleeping as i32],
                    ..Audience::default()
                }),
                winback: true,
                ..Campaign::default()
            }),
        };
        let first = shop
            .campaigns
            .create_campaign(campaign.clone())
            .await
            .unwrap();
        let again = shop.campaigns.create_campaign(campaign).await.unwrap();
        assert_eq!(first.get_ref(), again.get_ref());
        let campaigns = shop
            .campaigns
            .list_campaigns(ListCampaignsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .campaigns;
        assert_eq!(campaigns.len(), 1);

        // Offer template and ladder.
        use winback_proto::offers::{
            CreateLadderRequest, CreateOfferTemplateRequest, Ladder, ListLaddersRequest,
            ListOfferTemplatesRequest, OfferKind, OfferTemplate,
        };
        let template = CreateOfferTemplateRequest {
            request_id: "template-1".into(),
            template: Some(OfferTemplate {
                name: "5 % off".into(),
                kind: OfferKind::PercentOff as i32,
                percent_off: 5,
                valid_for: Some(to_duration(chrono::Duration::hours(72))),
                ..OfferTemplate::default()
            }),
        };
        let first = shop
            .offers
            .create_offer_template(template.clone())
            .await
            .unwrap();
        let again = shop.offers.create_offer_template(template).await.unwrap();
        assert_eq!(first.get_ref(), again.get_ref());
        let templates = shop
            .offers
            .list_offer_templates(ListOfferTemplatesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .templates;
        // The shop's own template plus this one, once.
        assert_eq!(templates.len(), 2);
        let ladder = CreateLadderRequest {
            request_id: "ladder-1".into(),
            ladder: Some(Ladder {
                name: "soft to strong".into(),
                template_ids: vec![first.into_inner().template.unwrap().template_id],
                ..Ladder::default()
            }),
        };
        let first = shop.offers.create_ladder(ladder.clone()).await.unwrap();
        let again = shop.offers.create_ladder(ladder).await.unwrap();
        assert_eq!(first.get_ref(), again.get_ref());
        let ladders = shop
            .offers
            .list_ladders(ListLaddersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ladders;
        assert_eq!(ladders.len(), 1);

        // Consent: the retry records nothing new.
        use winback_proto::profiles::ListConsentHistoryRequest;
        let history = |shop: &mut Shop| {
            let mut profiles = shop.profiles.clone();
            async move {
                profiles
                    .list_consent_history(ListConsentHistoryRequest {
                        customer_id: "c-1".into(),
                        page: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        let before = history(&mut shop).await;
        let consent = RecordConsentRequest {
            request_id: "consent-1".into(),
            customer_id: "c-1".into(),
            consent: Some(ConsentRecord {
                channel: Channel::Sms as i32,
                purpose: MessagePurpose::Advertising as i32,
                granted: true,
                source: "survey".into(),
                recorded_at: Some(to_timestamp(shop.now())),
            }),
            do_not_contact: false,
        };
        let first = shop.profiles.record_consent(consent.clone()).await.unwrap();
        let again = shop.profiles.record_consent(consent).await.unwrap();
        assert_eq!(first.get_ref(), again.get_ref());
        let after = history(&mut shop).await;
        assert_eq!(
            format!("{:?}", after).matches("survey").count(),
            format!("{:?}", before).matches("survey").count() + 1
        );
        shop.stack.stop().await;
    }
);

db_test!(
    a_step_that_fails_says_why_in_get_and_list_enrolments,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.customers(&["f-0".to_owned()], "Europe/Moscow").await;
        let campaign = shop.one_step_campaign("doomed", None).await;
        // The template goes away after the chain was checked: delivery refuses the send.
        shop.delivery
            .delete_template(winback_proto::delivery::DeleteTemplateRequest {
                template_id: "reminder".into(),
                channel: Channel::Email as i32,
                locale: String::new(),
            })
            .await
            .unwrap();
        let d = shop.enrol(&campaign, &["f-0".into()]).await.remove(0);
        shop.settle(std::slice::from_ref(&d.enrolment_id), 1).await;
        let e = shop.enrolment(&d.enrolment_id).await;
        let step = &e.steps[0];
        assert_eq!(word(step.outcome), "failed", "{e:?}");
        assert!(
            step.failure_reason.starts_with("CHANNEL_EMAIL: "),
            "{step:?}"
        );
        assert!(step.failure_reason.contains("reminder"), "{step:?}");
        let listed = shop
            .campaigns
            .list_enrolments(ListEnrolmentsRequest {
                campaign_id: campaign.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .enrolments;
        assert_eq!(
            listed[0].steps, e.steps,
            "ListEnrolments carries the steps too"
        );
        shop.stack.stop().await;
    }
);

db_test!(
    chains_campaigns_and_ladders_are_edited_by_mask_where_their_state_allows,
    |db| async move {
        let mut shop = Shop::open(db).await;
        let chain = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(shop.classic_chain()),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap();
        let mask = |paths: &[&str]| {
            Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            })
        };
        // The name alone changes; the steps stay.
        let renamed = shop
            .campaigns
            .update_chain(UpdateChainRequest {
                chain: Some(Chain {
                    chain_id: chain.chain_id.clone(),
                    name: "classic, renamed".into(),
                    ..Chain::default()
                }),
                update_mask: mask(&["name"]),
            })
            .await
            .unwrap()
            .into_inner()
            .chain
            .unwrap();
        assert_eq!(renamed.name, "classic, renamed");
        assert_eq!(renamed.steps, chain.steps);
        let draft = shop
            .campaigns
            .create_campaign(CreateCampaignRequest {
                request_id: String::new(),
                campaign: Some(Campaign {
                    name: "win back".into(),
                    chain_id: chain.chain_id.clone(),
                    audience: Some(Audience {
                        lifecycle_states: vec![LifecycleState::Sleeping as i32],
                        ..Audience::default()
                    }),
                    holdout_percent: 10,
                    winback: true,
                    ..Campaign::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap();
        let update = |paths: &[&str], holdout: i32, name: &str| UpdateCampaignRequest {
            campaign: Some(Campaign {
                campaign_id: draft.campaign_id.clone(),
                name: name.into(),
                holdout_percent: holdout,
                ..Campaign::default()
            }),
            update_mask: mask(paths),
        };
        // A draft: the holdout can change.
        let edited = shop
            .campaigns
            .update_campaign(update(&["holdout_percent"], 20, ""))
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap();
        assert_eq!(
            (edited.holdout_percent, edited.name.as_str()),
            (20, "win back")
        );
        // Bad values are refused and nothing is stored.
        let bad = shop
            .campaigns
            .update_campaign(update(&["holdout_percent"], 80, ""))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        shop.campaigns
            .activate_campaign(ActivateCampaignRequest {
                campaign_id: draft.campaign_id.clone(),
            })
            .await
            .unwrap();
        // Active: nothing can change, and its chain is frozen.
        let active = shop
            .campaigns
            .update_campaign(update(&["name"], 0, "x"))
            .await
            .unwrap_err();
        assert_eq!(active.code(), Code::FailedPrecondition);
        let frozen = shop
            .campaigns
            .update_chain(UpdateChainRequest {
                chain: Some(Chain {
                    chain_id: chain.chain_id.clone(),
                    name: "again".into(),
                    ..Chain::default()
                }),
                update_mask: mask(&["name"]),
            })
            .await
            .unwrap_err();
        assert_eq!(frozen.code(), Code::FailedPrecondition);
        shop.campaigns
            .pause_campaign(PauseCampaignRequest {
                campaign_id: draft.campaign_id.clone(),
            })
            .await
            .unwrap();
        // Paused: the name yes, the split no (it is what the report measures).
        let split = shop
            .campaigns
            .update_campaign(update(&["name", "holdout_percent"], 30, "y"))
            .await
            .unwrap_err();
        assert_eq!(split.code(), Code::InvalidArgument);
        assert!(
            split.message().contains("update_mask.paths[1]"),
            "{split:?}"
        );
        let paused = shop
            .campaigns
            .update_campaign(update(&["name"], 0, "win back, autumn"))
            .await
            .unwrap()
            .into_inner()
            .campaign
            .unwrap();
        assert_eq!(
            (paused.name.as_str(), paused.holdout_percent),
            ("win back, autumn", 20)
        );

        // A ladder: rungs replaced, name kept.
        use winback_proto::offers::{CreateLadderRequest, Ladder, UpdateLadderRequest};
        let second = percent_off_template(&mut shop.offers, 15, 1500).await;
        let ladder = shop
            .offers
            .create_ladder(CreateLadderRequest {
                request_id: String::new(),
                ladder: Some(Ladder {
                    name: "soft to strong".into(),
                    template_ids: vec![shop.offer_template_id.clone()],
                    ..Ladder::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .ladder
            .unwrap();
        let climbed = shop
            .offers
            .update_ladder(UpdateLadderRequest {
                ladder: Some(Ladder {
                    ladder_id: ladder.ladder_id.clone(),
                    template_ids: vec![shop.offer_template_id.clone(), second],
                    ..Ladder::default()
                }),
                update_mask: mask(&["template_ids"]),
            })
            .await
            .unwrap()
            .into_inner()
            .ladder
            .unwrap();
        assert_eq!(
            (climbed.name.as_str(), climbed.template_ids.len()),
            ("soft to strong", 2)
        );
        shop.stack.stop().await;
    }
);

db_test!(
    a_chain_whose_template_needs_variables_a_step_does_not_fill_does_not_validate,
    |db| async move {
        let mut shop = Shop::open(db).await;
        shop.delivery
            .upsert_template(UpsertTemplateRequest {
                template: Some(MessageTemplate {
                    template_id: "store_invite".into(),
                    channel: Channel::Email as i32,
                    subject: "Ждём вас, {{ customer.first_name }}".into(),
                    text: "Магазин: {{ store_address }}. {{ unsubscribe_url }}".into(),
                    extra_variables: vec!["store_address".into()],
                    ..MessageTemplate::default()
                }),
            })
            .await
            .unwrap();
        let chain = Chain {
            name: "invite".into(),
            steps: vec![Step {
                name: "invite".into(),
                channels: vec![email("store_invite")],
                ..Step::default()
            }],
            ..Chain::default()
        };
        let checked = shop
            .campaigns
            .validate_chain(ValidateChainRequest {
                chain: Some(chain.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!checked.valid);
        let v = &checked.violations[0];
        assert_eq!(v.field, "chain.steps[0].channels[0].template_id");
        assert!(v.description.contains("store_address"), "{v:?}");
        // CreateChain refuses it the same way, and stores nothing.
        let refused = shop
            .campaigns
            .create_chain(CreateChainRequest {
                request_id: String::new(),
                chain: Some(chain),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        let chains = shop
            .campaigns
            .list_chains(ListChainsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .chains;
        assert!(chains.is_empty());
        shop.stack.stop().await;
    }
);
