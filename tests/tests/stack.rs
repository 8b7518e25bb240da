//! The embedded stack through gRPC clients, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sea_orm::TransactionTrait;
use tonic::Code;
use winback_e2e::TestStack;
use winback_platform::db_test;
use winback_platform::events::Outbox;
use winback_platform::testing::TestDatabase;
use winback_proto::events::event::Payload;
use winback_proto::events::events_service_client::EventsServiceClient;
use winback_proto::events::{Event, EventSource, PurchaseRecorded, SubscribeRequest};

/// Writes purchase events into the profiles outbox of the running stack, as profiles does.
async fn record_purchases(stack: &TestStack, tenant: &str, orders: &[&str]) {
    let url = stack
        .config
        .database
        .url_for("profiles", &stack.config.data_dir);
    let db = winback_platform::db::connect(&url, "profiles", 2)
        .await
        .unwrap();
    let outbox = Outbox::new(EventSource::Profiles);
    let txn = db.begin().await.unwrap();
    for order in orders {
        let payload = Payload::PurchaseRecorded(PurchaseRecorded {
            customer_id: "c-1".into(),
            order_id: (*order).into(),
            ..Default::default()
        });
        outbox
            .append(&txn, tenant, stack.clock_now(), payload)
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
}

trait ClockNow {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc>;
}

impl ClockNow for TestStack {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use winback_platform::clock::Clock;
        self.clock.now()
    }
}

/// Reads the profiles feed with `token` until it has been quiet for a while.
async fn read_feed(
    stack: &TestStack,
    token: &str,
    tenant_field: &str,
) -> Result<Vec<Event>, tonic::Status> {
    let mut client = EventsServiceClient::new(stack.authed(token));
    let mut stream = client
        .subscribe(SubscribeRequest {
            source: EventSource::Profiles as i32,
            after_cursor: String::new(),
            types: vec![],
            tenant_id: tenant_field.into(),
        })
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(700), stream.message()).await {
        match next? {
            Some(reply) => events.extend(reply.event),
            None => break,
        }
    }
    Ok(events)
}

/// Waits until the feed serves `count` events in all (on PostgreSQL an event becomes
/// visible once every older transaction on the server has finished), so the reads that
/// follow see a settled feed.
async fn settle(stack: &TestStack, count: usize) {
    let service = stack.service_token();
    for _ in 0..30 {
        if read_feed(stack, &service, "").await.unwrap().len() >= count {
            return;
        }
    }
    panic!("the feed never showed {count} events");
}

db_test!(
    a_token_for_one_tenant_never_reads_another_tenants_events,
    |db| async move {
        let db: &TestDatabase = db;
        let stack = TestStack::start(db).await;
        let tattoo = stack.tenant("Tattoo studio").await;
        let salon = stack.tenant("Beauty salon").await;
        record_purchases(&stack, &tattoo.tenant_id, &["o-1", "o-2", "o-3"]).await;
        record_purchases(&stack, &salon.tenant_id, &["o-4", "o-5"]).await;
        settle(&stack, 5).await;

        // The tattoo studio's token, even naming the salon in the request, sees only its own.
        let seen = read_feed(&stack, &tattoo.token, &salon.tenant_id)
            .await
            .unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|e| e.tenant_id == tattoo.tenant_id));

        let seen = read_feed(&stack, &salon.token, "").await.unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|e| e.tenant_id == salon.tenant_id));

        // A service credential reads every tenant, or one it names.
        let service = stack.service_token();
        assert_eq!(read_feed(&stack, &service, "").await.unwrap().len(), 5);
        assert_eq!(
            read_feed(&stack, &service, &salon.tenant_id)
                .await
                .unwrap()
                .len(),
            2
        );

        stack.stop().await;
    }
);

db_test!(
    the_feed_refuses_missing_tokens_and_missing_scopes,
    |db| async move {
        let db: &TestDatabase = db;
        let stack = TestStack::start(db).await;
        let shop = stack.tenant("Web shop").await;

        let mut anonymous = EventsServiceClient::new(stack.channel.clone());
        let status = anonymous
            .subscribe(SubscribeRequest {
                source: EventSource::Profiles as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);

        let narrow = stack.token_with_scopes(&shop.tenant_id, &["profiles:read"]);
        let status = read_feed(&stack, &narrow, "").await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);

        let status = EventsServiceClient::new(stack.authed(&shop.token))
            .subscribe(SubscribeRequest {
                source: EventSource::Profiles as i32,
                after_cursor: "not-a-cursor".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            winback_platform::error::field_violations(&status)[0].field,
            "after_cursor"
        );

        stack.stop().await;
    }
);

db_test!(
    a_service_reaches_its_peers_with_the_service_credential,
    |db| async move {
        use winback_platform::config::Peer;
        use winback_proto::offers::ListLaddersRequest;
        use winback_proto::offers::offers_service_client::OffersServiceClient;

        let db: &TestDatabase = db;
        let stack = TestStack::start(db).await;
        let shop = stack.tenant("Cafe").await;
        let ctx = stack.service_context();
        let (channel, credentials) = ctx.peer(Peer::Offers, &shop.tenant_id).unwrap();
        let ladders = OffersServiceClient::with_interceptor(channel, credentials)
            .list_ladders(ListLaddersRequest::default())
            .await
            .unwrap()
            .into_inner();
        // The service credential acts for the tenant (a bad one would be UNAUTHENTICATED).
        assert!(ladders.ladders.is_empty());
        stack.stop().await;
    }
);

db_test!(an_oversized_message_is_refused, |db| async move {
    use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
    use winback_proto::profiles::{Customer, UpsertCustomersRequest};

    let db: &TestDatabase = db;
    let stack = TestStack::start(db).await;
    let shop = stack.tenant("Retail").await;
    let limit = stack.config.server.max_message_bytes;
    let huge = UpsertCustomersRequest {
        update_mask: None,
        customers: vec![Customer {
            customer_id: "c-1".into(),
            name: "x".repeat(limit + 1),
            ..Default::default()
        }],
    };
    let status = ProfilesServiceClient::new(stack.authed(&shop.token))
        .max_encoding_message_size(usize::MAX)
        .upsert_customers(huge)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    stack.stop().await;
});

db_test!(
    every_list_call_refuses_a_page_token_it_did_not_give,
    |db| async move {
        use tonic::Request;
        use winback_platform::error::field_violations;
        use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient as Campaigns;
        use winback_proto::common::PageRequest;
        use winback_proto::delivery::delivery_service_client::DeliveryServiceClient as Delivery;
        use winback_proto::offers::offers_service_client::OffersServiceClient as Offers;
        use winback_proto::profiles::profiles_service_client::ProfilesServiceClient as Profiles;
        use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient as Segmentation;
        let db: &TestDatabase = db;
        let stack = TestStack::start(db).await;
        let shop = stack.tenant("Flower shop").await;
        let other = stack.tenant("Bakery").await;
        let channel = stack.authed(&shop.token);
        let page = |token: &str| {
            Some(PageRequest {
                page_size: 1,
                page_token: token.into(),
            })
        };
        // Two offer templates, so the first page of one has a next page.
        let mut campaigns = Campaigns::new(channel.clone());
        let mut offers = Offers::new(channel.clone());
        for percent in [5, 10] {
            winback_e2e::percent_off_template(&mut offers, percent, 1000).await;
        }
        let list = |token: &str| winback_proto::offers::ListOfferTemplatesRequest {
            page: page(token),
            ..Default::default()
        };
        let first = offers
            .list_offer_templates(list(""))
            .await
            .unwrap()
            .into_inner();
        let next = first.page.unwrap().next_page_token;
        assert!(!next.is_empty());
        let second = offers
            .list_offer_templates(list(&next))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.templates.len(), 1);
        assert_ne!(
            second.templates[0].template_id,
            first.templates[0].template_id
        );
        // Another tenant cannot use the shop's token; other filters cannot either.
        let foreign = Offers::new(stack.authed(&other.token))
            .list_offer_templates(list(&next))
            .await
            .unwrap_err();
        assert_eq!(field_violations(&foreign)[0].field, "page.page_token");
        let filtered = offers
            .list_offer_templates(winback_proto::offers::ListOfferTemplatesRequest {
                page: page(&next),
                include_archived: true,
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&filtered)[0].field, "page.page_token");

        let refused = |status: tonic::Status| {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(field_violations(&status)[0].field, "page.page_token");
        };
        // Every list call, with garbage and with a token from another call.
        for token in ["zzz", next.as_str()] {
            let p = page(token);
            let mut profiles = Profiles::new(channel.clone());
            let mut delivery = Delivery::new(channel.clone());
            let mut segmentation = Segmentation::new(channel.clone());
            use winback_proto::{
                campaigns as c, delivery as d, offers as o, profiles as pr, segmentation as s,
            };
            refused(
                campaigns
                    .list_campaigns(Request::new(c::ListCampaignsRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                campaigns
                    .list_enrolments(Request::new(c::ListEnrolmentsRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                delivery
                    .list_templates(Request::new(d::ListTemplatesRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                delivery
                    .list_messages(Request::new(d::ListMessagesRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                delivery
                    .list_suppressions(Request::new(d::ListSuppressionsRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                campaigns
                    .list_chains(Request::new(c::ListChainsRequest { page: p.clone() }))
                    .await
                    .unwrap_err(),
            );
            refused(
                offers
                    .list_ladders(Request::new(o::ListLaddersRequest { page: p.clone() }))
                    .await
                    .unwrap_err(),
            );
            refused(
                offers
                    .list_coupons(Request::new(o::ListCouponsRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                offers
                    .list_fraud_signals(Request::new(o::ListFraudSignalsRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                profiles
                    .list_customers(Request::new(pr::ListCustomersRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                profiles
                    .list_consent_history(Request::new(pr::ListConsentHistoryRequest {
                        customer_id: "c-1".into(),
                        page: p.clone(),
                    }))
                    .await
                    .unwrap_err(),
            );
            refused(
                segmentation
                    .list_transitions(Request::new(s::ListTransitionsRequest {
                        page: p.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err(),
            );
        }
        refused(offers.list_offer_templates(list("zzz")).await.unwrap_err());
        stack.stop().await;
    }
);
