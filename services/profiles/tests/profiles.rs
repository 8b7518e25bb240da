//! The profiles service through its gRPC contract, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use harness::{Harness, at, customer, order, rub, ts};
use tokio_stream::StreamExt;
use tonic::Code;
use winback_platform::db_test;
use winback_platform::error::field_violations;
use winback_platform::testing::TestDatabase;
use winback_proto::common::{Channel, MessagePurpose, PageRequest};
use winback_proto::profiles::engagement_event::Kind;
use winback_proto::profiles::*;

async fn upsert(client: &mut harness::Client, customers: Vec<Customer>) -> UpsertCustomersResponse {
    client
        .upsert_customers(UpsertCustomersRequest {
            update_mask: None,
            customers,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn facts(client: &mut harness::Client, id: &str) -> CustomerFacts {
    client
        .get_facts(GetFactsRequest {
            customer_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .facts
        .unwrap()
}

async fn record(
    client: &mut harness::Client,
    orders: Vec<Order>,
) -> Result<RecordOrdersResponse, tonic::Status> {
    client
        .record_orders(RecordOrdersRequest { orders })
        .await
        .map(|r| r.into_inner())
}

db_test!(
    customers_are_upserted_read_listed_and_updated_in_part,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        let created = upsert(
            &mut h.a,
            vec![customer("c1"), customer("c2"), customer("c3")],
        )
        .await;
        assert_eq!((created.created, created.updated), (3, 0));

        // An update that sets only the name keeps the rest.
        let change = Customer {
            customer_id: "c2".into(),
            name: "Anna".into(),
            tags: vec!["vip".into()],
            ..Default::default()
        };
        let updated = upsert(&mut h.a, vec![change]).await;
        assert_eq!((updated.created, updated.updated), (0, 1));
        let got =
            h.a.get_customer(GetCustomerRequest {
                customer_id: "c2".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let c = got.customer.unwrap();
        assert_eq!(c.name, "Anna");
        assert_eq!(c.email, "c2@example.ru");
        assert_eq!(c.time_zone, "Europe/Moscow");
        let f = got.facts.unwrap();
        assert!(
            f.channels
                .iter()
                .any(|ch| ch.channel == Channel::Email as i32 && ch.has_contact)
        );

        // Paging and the tag filter.
        let page =
            h.a.list_customers(ListCustomersRequest {
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: String::new(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.customers.len(), 2);
        let token = page.page.unwrap().next_page_token;
        assert!(!token.is_empty());
        let rest =
            h.a.list_customers(ListCustomersRequest {
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.customers.len(), 1);
        assert!(rest.page.unwrap().next_page_token.is_empty());
        let vip =
            h.a.list_customers(ListCustomersRequest {
                tag: "vip".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vip.customers.len(), 1);
        h.stop();
    }
);

db_test!(
    invalid_customers_are_refused_naming_the_field_and_nothing_is_stored,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        let mut bad_email = customer("c2");
        bad_email.email = "not-an-email".into();
        let mut bad_phone = customer("c3");
        bad_phone.phone = "89161234567".into();
        let mut bad_zone = customer("c4");
        bad_zone.time_zone = "Moscow".into();
        let status =
            h.a.upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: vec![customer("c1"), bad_email, bad_phone, bad_zone],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "customers[1].email",
                "customers[2].phone",
                "customers[3].time_zone"
            ]
        );
        // All or nothing: the good row was not stored either.
        let status =
            h.a.get_customer(GetCustomerRequest {
                customer_id: "c1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);

        let too_many: Vec<Customer> = (0..1001).map(|i| customer(&format!("c{i}"))).collect();
        let status =
            h.a.upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: too_many,
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&status)[0].field, "customers");
        h.stop();
    }
);

db_test!(
    orders_are_idempotent_and_other_content_under_the_same_id_is_already_exists,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;
        let first = record(
            &mut h.a,
            vec![
                order("o1", "c1", 10, 150_000),
                order("o2", "c1", 40, 50_000),
            ],
        )
        .await
        .unwrap();
        assert_eq!(first.outcomes, vec![OrderOutcome::Recorded as i32; 2]);
        // A retry of the same batch changes nothing.
        let retry = record(
            &mut h.a,
            vec![
                order("o1", "c1", 10, 150_000),
                order("o2", "c1", 40, 50_000),
            ],
        )
        .await
        .unwrap();
        assert_eq!(retry.outcomes, vec![OrderOutcome::Duplicate as i32; 2]);
        let f = facts(&mut h.a, "c1").await;
        assert_eq!(
            (f.order_count, f.purchase_days, f.total_spent_minor),
            (2, 2, 200_000)
        );

        // The same id with another total is a conflict, and the batch stores nothing.
        let status = record(
            &mut h.a,
            vec![order("o3", "c1", 50, 1_000), order("o1", "c1", 10, 999)],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
        assert!(
            status.message().contains("orders[1].order_id"),
            "{}",
            status.message()
        );
        assert_eq!(facts(&mut h.a, "c1").await.order_count, 2);
        h.stop();
    }
);

db_test!(
    bad_orders_are_refused_naming_the_row_and_nothing_is_stored,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;

        let status = record(
            &mut h.a,
            vec![order("o1", "c1", 1, 100), order("o2", "ghost", 1, 100)],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("orders[1].customer_id"),
            "{}",
            status.message()
        );

        let mut future = order("o3", "c1", 0, 100);
        future.placed_at = ts(at(400) + chrono::Duration::hours(1));
        let mut negative = order("o4", "c1", 1, 100);
        negative.total = rub(-5);
        let mut currency = order("o5", "c1", 1, 100);
        currency.total.as_mut().unwrap().currency = "RUR".into();
        let mut overflow = order("o6", "c1", 1, 100);
        overflow.lines[0].quantity = i32::MAX;
        overflow.lines[0].unit_price = rub(i64::MAX / 2);
        let status = record(
            &mut h.a,
            vec![
                order("o7", "c1", 1, 100),
                future,
                negative,
                currency,
                overflow,
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(
            fields.contains(&"orders[1].placed_at".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"orders[2].total.amount_minor".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"orders[3].total.currency".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.iter().any(|f| f.starts_with("orders[4].lines[0]")),
            "{fields:?}"
        );
        assert_eq!(facts(&mut h.a, "c1").await.order_count, 0, "nothing stored");

        let too_many: Vec<Order> = (0..1001)
            .map(|i| order(&format!("o{i}"), "c1", 1, 1))
            .collect();
        assert_eq!(
            record(&mut h.a, too_many).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        h.stop();
    }
);

db_test!(
    the_order_stream_keeps_good_rows_and_reports_the_rejected_ones,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1"), customer("c2")]).await;
        let mut bad = order("o-bad", "c1", 3, 100);
        bad.total = rub(-1);
        let chunks = vec![
            StreamOrdersRequest {
                orders: vec![order("o1", "c1", 1, 100), order("o2", "ghost", 2, 100)],
                skip_invalid: true,
            },
            StreamOrdersRequest {
                orders: vec![bad, order("o1", "c1", 1, 100), order("o3", "c2", 4, 300)],
                skip_invalid: false,
            },
        ];
        let reply =
            h.a.stream_orders(tokio_stream::iter(chunks))
                .await
                .unwrap()
                .into_inner();
        assert_eq!((reply.recorded, reply.duplicates), (2, 1));
        let rejected: Vec<(i64, String)> = reply
            .rejected
            .iter()
            .map(|r| (r.index, r.field.clone()))
            .collect();
        assert_eq!(
            rejected,
            vec![
                (1, "orders[1].customer_id".to_owned()),
                (2, "orders[2].total.amount_minor".to_owned())
            ]
        );

        // Without skip_invalid the first bad chunk ends the stream with the error.
        let status =
            h.a.stream_orders(tokio_stream::iter(vec![StreamOrdersRequest {
                orders: vec![order("o9", "ghost", 1, 1)],
                skip_invalid: false,
            }]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        h.stop();
    }
);

db_test!(
    a_stream_refused_midway_keeps_the_chunks_before_the_bad_one,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1"), customer("c2")]).await;
        // Sent at once, these chunks are recorded as one group: each must still see what
        // the chunks before it recorded, and the bad one ends the stream there.
        let chunk = |orders| StreamOrdersRequest {
            orders,
            skip_invalid: false,
        };
        let chunks = vec![
            chunk(vec![order("o1", "c1", 1, 100), order("o2", "c2", 2, 200)]),
            chunk(vec![order("o3", "c1", 5, 300), order("o1", "c1", 1, 100)]),
            chunk(vec![order("o2", "c2", 2, 999)]),
            chunk(vec![order("o4", "c2", 9, 50)]),
        ];
        let status =
            h.a.stream_orders(tokio_stream::iter(chunks))
                .await
                .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(
            status.message().contains("orders[4].order_id"),
            "{status:?}"
        );

        let c1 = facts(&mut h.a, "c1").await;
        assert_eq!((c1.purchase_days, c1.total_spent_minor), (2, 400));
        let c2 = facts(&mut h.a, "c2").await;
        assert_eq!((c2.purchase_days, c2.total_spent_minor), (1, 200));
        // The chunk after the refused one was not stored: o4 is new.
        let outcomes = record(&mut h.a, vec![order("o4", "c2", 9, 50)])
            .await
            .unwrap()
            .outcomes;
        assert_eq!(outcomes, vec![OrderOutcome::Recorded as i32]);
        h.stop();
    }
);

/// A `StreamOrders` call whose chunks the test sends one by one, and the call's answer.
fn open_order_stream(
    h: &Harness,
) -> (
    tokio::sync::mpsc::Sender<StreamOrdersRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<StreamOrdersResponse>, tonic::Status>>,
) {
    let (send, chunks) = tokio::sync::mpsc::channel(4);
    let mut client = h.a.clone();
    let stream = tokio::spawn(async move {
        client
            .stream_orders(tokio_stream::wrappers::ReceiverStream::new(chunks))
            .await
    });
    (send, stream)
}

db_test!(
    a_refused_stream_is_answered_while_the_client_still_holds_it_open,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;
        // The chunks are read ahead by a task of their own; a refusal must end the call
        // at once, not when the client closes its side.
        let (send, stream) = open_order_stream(&h);
        let chunk = |orders| StreamOrdersRequest {
            orders,
            skip_invalid: false,
        };
        send.send(chunk(vec![order("o1", "c1", 1, 100)]))
            .await
            .unwrap();
        let mut bad = order("o2", "c1", 2, 100);
        bad.total = rub(-1);
        send.send(chunk(vec![bad])).await.unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), stream)
            .await
            .expect("the refusal waited for the client to close the stream")
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("orders[1].total.amount_minor"),
            "{status:?}"
        );
        assert_eq!(facts(&mut h.a, "c1").await.purchase_days, 1);
        drop(send);
        h.stop();
    }
);

db_test!(
    many_customers_are_read_at_once_in_the_order_asked,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(
            &mut h.a,
            vec![customer("c1"), customer("c2"), customer("c3")],
        )
        .await;
        upsert(&mut h.b, vec![customer("b-only")]).await;
        record(&mut h.a, vec![order("o1", "c2", 3, 250)])
            .await
            .unwrap();
        let consent = |channel: Channel| ConsentRecord {
            channel: channel as i32,
            purpose: MessagePurpose::Advertising as i32,
            granted: true,
            source: "signup_form".into(),
            recorded_at: None,
        };
        for channel in [Channel::Sms, Channel::Email] {
            h.a.record_consent(RecordConsentRequest {
                request_id: String::new(),
                customer_id: "c2".into(),
                consent: Some(consent(channel)),
                do_not_contact: false,
            })
            .await
            .unwrap();
        }

        let ids = ["c3", "ghost", "c2", "b-only", "c3"]
            .map(String::from)
            .to_vec();
        let reply =
            h.a.get_customers(GetCustomersRequest { customer_ids: ids })
                .await
                .unwrap()
                .into_inner();
        let order: Vec<&str> = reply
            .customers
            .iter()
            .map(|c| c.customer.as_ref().unwrap().customer_id.as_str())
            .collect();
        assert_eq!(order, vec!["c3", "c2"]);
        // Another tenant's customer is as unknown as one nobody has.
        assert_eq!(reply.not_found, vec!["ghost", "b-only"]);
        // Each entry is what GetCustomer returns for that customer.
        let one =
            h.a.get_customer(GetCustomerRequest {
                customer_id: "c2".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.customers[1], one);
        assert_eq!(one.consents.len(), 2);
        assert_eq!(one.facts.as_ref().unwrap().total_spent_minor, 250);

        for (ids, field) in [
            (Vec::new(), "customer_ids"),
            (vec!["c1".to_owned(), String::new()], "customer_ids[1]"),
            ((0..1001).map(|i| format!("c{i}")).collect(), "customer_ids"),
        ] {
            let status =
                h.a.get_customers(GetCustomersRequest { customer_ids: ids })
                    .await
                    .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            let fields: Vec<String> = field_violations(&status)
                .into_iter()
                .map(|v| v.field)
                .collect();
            assert!(fields.contains(&field.to_owned()), "{fields:?}");
        }
        h.stop();
    }
);

db_test!(
    a_stream_sees_what_other_writers_did_between_its_groups,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1"), customer("c2")]).await;
        // The stream keeps the facts it wrote between its groups; another writer in between
        // must not be overwritten by them.
        let (send, stream) = open_order_stream(&h);
        let chunk = |orders| StreamOrdersRequest {
            orders,
            skip_invalid: true,
        };
        send.send(chunk(vec![
            order("o1", "c1", 1, 100),
            order("o2", "c2", 2, 200),
        ]))
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while facts(&mut h.a, "c1").await.purchase_days != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "first group not stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Between the groups: another order for c1, and c2 erased.
        record(&mut h.a, vec![order("o3", "c1", 5, 300)])
            .await
            .unwrap();
        h.a.erase_customer(EraseCustomerRequest {
            customer_id: "c2".into(),
            reason: "asked to".into(),
        })
        .await
        .unwrap();
        send.send(chunk(vec![
            order("o4", "c1", 9, 50),
            order("o5", "c2", 10, 70),
        ]))
        .await
        .unwrap();
        drop(send);
        let reply = stream.await.unwrap().unwrap().into_inner();
        assert_eq!((reply.recorded, reply.duplicates), (3, 0));
        let rejected: Vec<(i64, &str)> = reply
            .rejected
            .iter()
            .map(|r| (r.index, r.field.as_str()))
            .collect();
        assert_eq!(rejected, vec![(3, "orders[3].customer_id")]);
        let c1 = facts(&mut h.a, "c1").await;
        assert_eq!((c1.purchase_days, c1.total_spent_minor), (3, 450));
        h.stop();
    }
);

db_test!(
    refunds_and_cancellations_adjust_the_facts,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;
        record(
            &mut h.a,
            vec![
                order("o1", "c1", 10, 1000),
                order("o2", "c1", 20, 2000),
                order("o3", "c1", 30, 3000),
            ],
        )
        .await
        .unwrap();
        let refund = |id: &str, order: &str, amount: i64| AdjustOrderRequest {
            order_id: order.into(),
            kind: AdjustmentKind::Refund as i32,
            amount: rub(amount),
            adjustment_id: id.into(),
            occurred_at: None,
        };
        let after =
            h.a.adjust_order(refund("r1", "o3", 500))
                .await
                .unwrap()
                .into_inner()
                .facts
                .unwrap();
        assert_eq!(after.total_spent_minor, 5500);
        // Idempotent; and a refund above what is left is refused.
        let again =
            h.a.adjust_order(refund("r1", "o3", 500))
                .await
                .unwrap()
                .into_inner()
                .facts
                .unwrap();
        assert_eq!(again.total_spent_minor, 5500);
        let status =
            h.a.adjust_order(refund("r2", "o3", 2600))
                .await
                .unwrap_err();
        assert_eq!(field_violations(&status)[0].field, "amount.amount_minor");

        let cancel = AdjustOrderRequest {
            order_id: "o3".into(),
            kind: AdjustmentKind::Cancellation as i32,
            amount: None,
            adjustment_id: "x1".into(),
            occurred_at: None,
        };
        let after =
            h.a.adjust_order(cancel)
                .await
                .unwrap()
                .into_inner()
                .facts
                .unwrap();
        assert_eq!(
            (
                after.order_count,
                after.purchase_days,
                after.total_spent_minor
            ),
            (2, 2, 3000)
        );
        assert_eq!(after.last_purchase_at, ts(at(20)));
        let status =
            h.a.adjust_order(AdjustOrderRequest {
                order_id: "nope".into(),
                kind: AdjustmentKind::Cancellation as i32,
                adjustment_id: "x2".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        h.stop();
    }
);

fn engagement(id: &str, customer: &str, day: i64, kind: Kind) -> EngagementEvent {
    EngagementEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        occurred_at: ts(at(day)),
        kind: Some(kind),
    }
}

db_test!(
    engagement_updates_the_facts_and_a_complaint_refuses_every_channel,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;
        h.a.record_consent(RecordConsentRequest {
            request_id: String::new(),
            customer_id: "c1".into(),
            consent: Some(ConsentRecord {
                channel: Channel::Email as i32,
                purpose: MessagePurpose::Advertising as i32,
                granted: true,
                source: "signup_form".into(),
                recorded_at: None,
            }),
            do_not_contact: false,
        })
        .await
        .unwrap();
        let sent = |i: i64| {
            engagement(
                &format!("s{i}"),
                "c1",
                300 + i,
                Kind::MessageSent(MessageSent::default()),
            )
        };
        let events = vec![
            sent(1),
            sent(2),
            sent(3),
            engagement("v1", "c1", 305, Kind::SiteVisited(SiteVisited::default())),
            engagement(
                "cart1",
                "c1",
                306,
                Kind::CartAbandoned(CartAbandoned {
                    value: rub(4500),
                    lines: vec![],
                }),
            ),
        ];
        let reply =
            h.a.record_engagement(RecordEngagementRequest {
                events: events.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.recorded, reply.duplicates), (5, 0));
        let retry =
            h.a.record_engagement(RecordEngagementRequest { events })
                .await
                .unwrap()
                .into_inner();
        assert_eq!((retry.recorded, retry.duplicates), (0, 5));
        let f = facts(&mut h.a, "c1").await;
        assert_eq!(f.consecutive_unopened, 3);
        assert_eq!(f.last_cart_value_minor, 4500);
        assert_eq!(f.last_visit_at, ts(at(305)));
        assert!(
            f.channels[0].advertising,
            "email advertising consent granted"
        );

        h.a.record_engagement(RecordEngagementRequest {
            events: vec![
                engagement(
                    "o1",
                    "c1",
                    307,
                    Kind::MessageOpened(MessageOpened::default()),
                ),
                engagement(
                    "complaint",
                    "c1",
                    308,
                    Kind::Complained(Complained {
                        channel: Channel::Email as i32,
                        do_not_contact: true,
                        text: "stop writing to me".into(),
                    }),
                ),
            ],
        })
        .await
        .unwrap();
        let f = facts(&mut h.a, "c1").await;
        assert_eq!(f.consecutive_unopened, 0);
        assert!(f.do_not_contact);
        assert!(f.channels.iter().all(|c| !c.advertising && !c.service));
        let history =
            h.a.list_consent_history(ListConsentHistoryRequest {
                customer_id: "c1".into(),
                page: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.records.len(), 11, "the grant plus ten refusals");
        assert!(history.records[0].source == "complaint" && !history.records[0].granted);

        let status =
            h.a.record_engagement(RecordEngagementRequest {
                events: vec![engagement(
                    "x",
                    "ghost",
                    1,
                    Kind::SiteVisited(SiteVisited::default()),
                )],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let status =
            h.a.record_consent(RecordConsentRequest {
                request_id: String::new(),
                customer_id: "c1".into(),
                consent: Some(ConsentRecord {
                    source: "form".into(),
                    ..Default::default()
                }),
                do_not_contact: false,
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&status)[0].field, "consent.channel");
        h.stop();
    }
);

db_test!(
    consents_of_many_customers_are_recorded_together_all_or_none,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1"), customer("c2")]).await;
        let change = |id: &str, channel: Channel, granted: bool| RecordConsentRequest {
            request_id: String::new(),
            customer_id: id.into(),
            consent: Some(ConsentRecord {
                channel: channel as i32,
                purpose: MessagePurpose::Advertising as i32,
                granted,
                source: "loyalty_export".into(),
                recorded_at: None,
            }),
            do_not_contact: false,
        };
        let history = |h: &mut Harness, id: &str| {
            let mut client = h.a.clone();
            let id = id.to_owned();
            async move {
                client
                    .list_consent_history(ListConsentHistoryRequest {
                        customer_id: id,
                        page: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .records
            }
        };
        // A bad change anywhere refuses the batch, naming it; nothing is stored.
        let mut bad = change("c2", Channel::Sms, true);
        bad.consent.as_mut().unwrap().source = String::new();
        let status =
            h.a.record_consents(RecordConsentsRequest {
                consents: vec![change("c1", Channel::Email, true), bad],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&status)[0].field,
            "consents[1].consent.source"
        );
        let status =
            h.a.record_consents(RecordConsentsRequest {
                consents: vec![
                    change("c1", Channel::Email, true),
                    change("ghost", Channel::Email, true),
                ],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("consents[1].customer_id"),
            "{status:?}"
        );
        let status =
            h.a.record_consents(RecordConsentsRequest { consents: vec![] })
                .await
                .unwrap_err();
        assert_eq!(field_violations(&status)[0].field, "consents");
        assert!(history(&mut h, "c1").await.is_empty(), "nothing stored");

        let stored =
            h.a.record_consents(RecordConsentsRequest {
                consents: vec![
                    change("c1", Channel::Email, true),
                    change("c2", Channel::Sms, true),
                    change("c1", Channel::Push, true),
                    change("c1", Channel::Email, false),
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .consents;
        assert_eq!(stored.len(), 4);
        assert_eq!(history(&mut h, "c1").await.len(), 3);
        let f1 = facts(&mut h.a, "c1").await;
        let advertising = |f: &CustomerFacts, channel: Channel| {
            f.channels
                .iter()
                .find(|c| c.channel == channel as i32)
                .is_some_and(|c| c.advertising)
        };
        // The last change of a customer's channel wins.
        assert!(!advertising(&f1, Channel::Email));
        assert!(advertising(&f1, Channel::Push));
        assert!(advertising(&facts(&mut h.a, "c2").await, Channel::Sms));
        // The current consent holds one decision per channel and purpose, the last one.
        let current =
            h.a.get_customer(GetCustomerRequest {
                customer_id: "c1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .consents;
        let decisions: Vec<(i32, bool)> = current.iter().map(|c| (c.channel, c.granted)).collect();
        assert_eq!(
            decisions,
            vec![(Channel::Email as i32, false), (Channel::Push as i32, true)]
        );
        // Another tenant cannot record consent for these customers.
        let status =
            h.b.record_consents(RecordConsentsRequest {
                consents: vec![change("c1", Channel::Email, true)],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        h.stop();
    }
);

db_test!(
    bonus_balances_are_set_adjusted_and_spent_from_the_earliest_expiry,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;
        let lot = |points: i64, day: i64| BonusLot {
            points,
            expires_at: ts(at(day)),
        };
        let balance =
            h.a.set_bonus_balance(SetBonusBalanceRequest {
                customer_id: "c1".into(),
                lots: vec![lot(500, 410), lot(300, 430)],
            })
            .await
            .unwrap()
            .into_inner()
            .balance
            .unwrap();
        assert_eq!((balance.points, balance.points_expiring), (800, 500));
        let spend = AdjustBonusBalanceRequest {
            customer_id: "c1".into(),
            adjustment_id: "a1".into(),
            points: -600,
            expires_at: None,
            reason: "purchase".into(),
        };
        let after =
            h.a.adjust_bonus_balance(spend.clone())
                .await
                .unwrap()
                .into_inner()
                .balance
                .unwrap();
        assert_eq!(after.points, 200);
        assert_eq!(after.nearest_expiry_at, ts(at(430)));
        let again =
            h.a.adjust_bonus_balance(spend)
                .await
                .unwrap()
                .into_inner()
                .balance
                .unwrap();
        assert_eq!(again.points, 200, "idempotent");
        let too_much =
            h.a.adjust_bonus_balance(AdjustBonusBalanceRequest {
                customer_id: "c1".into(),
                adjustment_id: "a2".into(),
                points: -1000,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(too_much.code(), Code::FailedPrecondition);
        assert_eq!(facts(&mut h.a, "c1").await.bonus_points, 200);
        let past =
            h.a.set_bonus_balance(SetBonusBalanceRequest {
                customer_id: "c1".into(),
                lots: vec![lot(1, 10)],
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&past)[0].field, "lots[0].expires_at");
        h.stop();
    }
);

async fn stream_all(client: &mut harness::Client, cursor: &str) -> (Vec<CustomerFacts>, String) {
    let mut stream = client
        .stream_facts(StreamFactsRequest {
            changed_since_cursor: cursor.into(),
            chunk_size: 7,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    let mut last = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        all.extend(chunk.facts);
        last = chunk.cursor;
    }
    (all, last)
}

/// Streams what changed since `cursor`, again from where the last read ended, until `done`
/// holds for everything read (on PostgreSQL a change shows once every older transaction on
/// the server is done); also returns the cursor to resume from.
async fn changed_until(
    client: &mut harness::Client,
    cursor: String,
    done: impl Fn(&[CustomerFacts]) -> bool,
) -> (Vec<CustomerFacts>, String) {
    let mut changed = Vec::new();
    let mut next = cursor;
    for _ in 0..100 {
        let (batch, after) = stream_all(client, &next).await;
        changed.extend(batch);
        next = after;
        if done(&changed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (changed, next)
}

/// The number of facts in each chunk of a whole-tenant stream of 7 per chunk.
async fn chunk_sizes(client: &mut harness::Client) -> Vec<usize> {
    let mut stream = client
        .stream_facts(StreamFactsRequest {
            changed_since_cursor: String::new(),
            chunk_size: 7,
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(chunk) = stream.next().await {
        sizes.push(chunk.unwrap().facts.len());
    }
    sizes
}

db_test!(
    facts_stream_for_the_whole_tenant_and_since_a_cursor,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        let customers: Vec<Customer> = (0..30).map(|i| customer(&format!("c{i:02}"))).collect();
        upsert(&mut h.a, customers).await;
        // An empty tenant gets one empty chunk (with the cursor to resume from).
        assert_eq!(chunk_sizes(&mut h.b).await, vec![0]);
        upsert(&mut h.b, vec![customer("other-tenant")]).await;
        let (all, cursor) = stream_all(&mut h.a, "").await;
        assert_eq!(all.len(), 30, "only this tenant's customers");
        assert!(all.windows(2).all(|w| w[0].customer_id < w[1].customer_id));
        assert_eq!(chunk_sizes(&mut h.a).await, vec![7, 7, 7, 7, 2]);
        // A tenant of whole chunks ends without an empty one.
        let six: Vec<Customer> = (0..6).map(|i| customer(&format!("b{i}"))).collect();
        upsert(&mut h.b, six).await;
        assert_eq!(chunk_sizes(&mut h.b).await, vec![7]);

        record(
            &mut h.a,
            vec![order("o1", "c05", 1, 100), order("o2", "c17", 2, 100)],
        )
        .await
        .unwrap();
        let (changed, next) = changed_until(&mut h.a, cursor, |changed| {
            changed.iter().filter(|f| f.order_count == 1).count() == 2
        })
        .await;
        let ids: std::collections::BTreeSet<String> = changed
            .iter()
            .filter(|f| f.order_count == 1)
            .map(|f| f.customer_id.clone())
            .collect();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec!["c05", "c17"]);
        let (nothing_new, _) = stream_all(&mut h.a, &next).await;
        assert!(
            nothing_new.is_empty(),
            "nothing changed since: {nothing_new:?}"
        );

        let status =
            h.a.stream_facts(StreamFactsRequest {
                changed_since_cursor: "garbage".into(),
                chunk_size: 0,
                as_of: None,
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&status)[0].field, "changed_since_cursor");
        h.stop();
    }
);

db_test!(
    a_customer_changed_many_times_comes_once_and_chunks_cut_a_write_anywhere,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        let ids: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        upsert(&mut h.a, ids.iter().map(|id| customer(id)).collect()).await;
        let (_, cursor) = stream_all(&mut h.a, "").await;
        // One write of ten customers, then three writes of c3 and one of c3 and c8.
        let first: Vec<Order> = (0..10)
            .map(|i| order(&format!("o{i}"), &ids[i], 1, 100))
            .collect();
        record(&mut h.a, first).await.unwrap();
        for n in 0..3 {
            record(&mut h.a, vec![order(&format!("p{n}"), "c3", 2 + n, 100)])
                .await
                .unwrap();
        }
        record(
            &mut h.a,
            vec![order("q1", "c3", 6, 100), order("q2", "c8", 6, 100)],
        )
        .await
        .unwrap();

        // Chunks of 7 (stream_all) cut the first write; on PostgreSQL the last writes show
        // once every older transaction on the server is done.
        let (changed, _) = changed_until(&mut h.a, cursor.clone(), |changed| {
            changed
                .iter()
                .any(|f| f.customer_id == "c3" && f.order_count == 5)
        })
        .await;
        let mut served: Vec<&str> = changed.iter().map(|f| f.customer_id.as_str()).collect();
        served.sort_unstable();
        assert_eq!(
            served,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "each once"
        );
        // Each with its facts as they are now.
        let c3 = changed.iter().find(|f| f.customer_id == "c3").unwrap();
        assert_eq!(c3.order_count, 5);
        let c8 = changed.iter().find(|f| f.customer_id == "c8").unwrap();
        assert_eq!(c8.order_count, 2);
        // Resuming from inside the first write's chunks serves the rest of it once.
        let (first_chunk, inside) = {
            let mut stream =
                h.a.stream_facts(StreamFactsRequest {
                    changed_since_cursor: cursor.clone(),
                    chunk_size: 4,
                    as_of: None,
                })
                .await
                .unwrap()
                .into_inner();
            let chunk = stream.next().await.unwrap().unwrap();
            (chunk.facts, chunk.cursor)
        };
        assert_eq!(first_chunk.len(), 4);
        let (rest, _) = stream_all(&mut h.a, &inside).await;
        let mut all: Vec<String> = first_chunk
            .iter()
            .chain(&rest)
            .map(|f| f.customer_id.clone())
            .collect();
        all.sort_unstable();
        assert_eq!(all, ids);
        h.stop();
    }
);

db_test!(
    a_whole_tenant_stream_spans_pages_in_whole_chunks,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        // 7,001 customers at 3,500 per chunk: the stream reads pages of two chunks (7,000
        // customers, the largest whole number of chunks within 10,000), so the last
        // customer comes from a second page.
        let ids: Vec<String> = (0..7001).map(|i| format!("c{i:05}")).collect();
        for batch in ids.chunks(1000) {
            upsert(&mut h.a, batch.iter().map(|id| customer(id)).collect()).await;
        }
        record(&mut h.a, vec![order("o1", "c07000", 1, 4200)])
            .await
            .unwrap();
        let mut stream =
            h.a.stream_facts(StreamFactsRequest {
                changed_since_cursor: String::new(),
                chunk_size: 3500,
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner();
        let (mut sizes, mut streamed) = (Vec::new(), Vec::new());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            sizes.push(chunk.facts.len());
            streamed.extend(chunk.facts);
        }
        assert_eq!(sizes, vec![3500, 3500, 1]);
        let streamed_ids: Vec<&str> = streamed.iter().map(|f| f.customer_id.as_str()).collect();
        assert_eq!(
            streamed_ids,
            ids.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let last = streamed.last().unwrap();
        assert_eq!(last, &facts(&mut h.a, "c07000").await);
        assert_eq!(last.total_spent_minor, 4200);
        h.stop();
    }
);

db_test!(
    a_tenant_never_sees_another_tenants_customers,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("shared-id")]).await;
        let status =
            h.b.get_customer(GetCustomerRequest {
                customer_id: "shared-id".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let status = record(&mut h.b, vec![order("o1", "shared-id", 1, 100)])
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::NotFound,
            "tenant B cannot order for tenant A's customer"
        );
        // The same external id is independent per tenant.
        upsert(&mut h.b, vec![customer("shared-id")]).await;
        record(&mut h.b, vec![order("o1", "shared-id", 1, 100)])
            .await
            .unwrap();
        assert_eq!(facts(&mut h.a, "shared-id").await.order_count, 0);
        assert_eq!(facts(&mut h.b, "shared-id").await.order_count, 1);
        let listed =
            h.b.list_customers(ListCustomersRequest::default())
                .await
                .unwrap()
                .into_inner();
        assert_eq!(listed.customers.len(), 1);
        h.stop();
    }
);

db_test!(erase_leaves_no_personal_data_behind, |db| async move {
    use sea_orm::ConnectionTrait;
    let db: &TestDatabase = db;
    let mut h = Harness::start(db).await;
    let mut anna = customer("c-anna");
    anna.name = "Anna Petrova".into();
    anna.email = "anna.petrova@example.ru".into();
    anna.phone = "+79169998877".into();
    anna.birthday = "1990-05-17".into();
    anna.push_tokens = vec![PushToken {
        platform: "android".into(),
        token: "fcm-token-of-anna".into(),
    }];
    upsert(&mut h.a, vec![anna]).await;
    record(&mut h.a, vec![order("o1", "c-anna", 5, 1000)])
        .await
        .unwrap();
    h.a.record_engagement(RecordEngagementRequest {
        events: vec![engagement(
            "q1",
            "c-anna",
            6,
            Kind::Searched(Searched {
                query: "Anna Petrova wedding ring".into(),
            }),
        )],
    })
    .await
    .unwrap();

    h.a.erase_customer(EraseCustomerRequest {
        customer_id: "c-anna".into(),
        reason: "gdpr request".into(),
    })
    .await
    .unwrap();

    let c =
        h.a.get_customer(GetCustomerRequest {
            customer_id: "c-anna".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(c.customer.as_ref().unwrap().erased);
    assert_eq!(c.facts.as_ref().unwrap().order_count, 1, "orders are kept");

    // Read every text and blob column of every profiles table: no personal value remains.
    let conn = winback_platform::db::connect(&h.db_url, "profiles", 1)
        .await
        .unwrap();
    let backend = conn.get_database_backend();
    let tables = [
        "customers",
        "consents",
        "consent_history",
        "orders",
        "engagement_events",
        "bonus_balances",
        "facts",
    ];
    let personal = [
        "Anna",
        "Petrova",
        "anna.petrova",
        "79169998877",
        "1990-05-17",
        "fcm-token-of-anna",
        "wedding",
    ];
    for table in tables {
        let rows = conn
            .query_all_raw(sea_orm::Statement::from_string(
                backend,
                format!("SELECT * FROM {table}"),
            ))
            .await
            .unwrap();
        for row in rows {
            let dump = format!("{row:?}");
            for value in personal {
                assert!(!dump.contains(value), "{value} left in {table}: {dump}");
            }
        }
    }
    // Erased customers take no new orders or upserts.
    let status = record(&mut h.a, vec![order("o2", "c-anna", 7, 10)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    h.stop();
});

db_test!(
    concurrent_writes_for_one_customer_lose_nothing,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(&mut h.a, vec![customer("c1")]).await;
        let mut calls = Vec::new();
        for i in 0..16 {
            let mut client = h.a.clone();
            calls.push(tokio::spawn(async move {
                let orders = vec![order(&format!("o{i}"), "c1", i, 100)];
                client
                    .record_orders(RecordOrdersRequest { orders })
                    .await
                    .map(|_| ())
            }));
            let mut client = h.a.clone();
            calls.push(tokio::spawn(async move {
                let events = vec![engagement(
                    &format!("s{i}"),
                    "c1",
                    300 + i,
                    Kind::MessageSent(MessageSent::default()),
                )];
                client
                    .record_engagement(RecordEngagementRequest { events })
                    .await
                    .map(|_| ())
            }));
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let f = facts(&mut h.a, "c1").await;
        assert_eq!(f.order_count, 16, "no order lost from the facts");
        assert_eq!(f.total_spent_minor, 1600);
        assert_eq!(
            f.consecutive_unopened, 16,
            "no engagement lost from the facts"
        );
        h.stop();
    }
);

async fn stream_as_of(client: &mut harness::Client, day: i64) -> Vec<CustomerFacts> {
    let mut stream = client
        .stream_facts(StreamFactsRequest {
            changed_since_cursor: String::new(),
            chunk_size: 2,
            as_of: ts(at(day)),
        })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.cursor.is_empty(), "a past time has no feed position");
        all.extend(chunk.facts);
    }
    all
}

db_test!(
    facts_as_of_a_past_time_count_only_what_had_happened_then,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        upsert(
            &mut h.a,
            vec![customer("c1"), customer("c2"), customer("c3")],
        )
        .await;
        record(
            &mut h.a,
            vec![
                order("o1", "c1", 10, 1000),
                order("o2", "c1", 20, 2000),
                order("o3", "c1", 30, 3000),
                order("o4", "c2", 60, 700),
            ],
        )
        .await
        .unwrap();
        let adjust = |id: &str, order: &str, kind: AdjustmentKind, amount: i64, day: i64| {
            AdjustOrderRequest {
                order_id: order.into(),
                kind: kind as i32,
                amount: (amount > 0).then(|| rub(amount)).flatten(),
                adjustment_id: id.into(),
                occurred_at: ts(at(day)),
            }
        };
        h.a.adjust_order(adjust("r1", "o2", AdjustmentKind::Refund, 500, 25))
            .await
            .unwrap();
        h.a.adjust_order(adjust("x1", "o3", AdjustmentKind::Cancellation, 0, 40))
            .await
            .unwrap();
        let opened = |id: &str, day: i64| {
            engagement(
                id,
                "c1",
                day,
                Kind::MessageOpened(MessageOpened {
                    message_id: id.into(),
                    ..Default::default()
                }),
            )
        };
        h.a.record_engagement(RecordEngagementRequest {
            events: vec![opened("e1", 15), opened("e2", 50)],
        })
        .await
        .unwrap();

        // Day 22: two orders, the refund not yet made, one open. c2 and c3 were created on
        // day 400 (the clock) and had done nothing by then: they are left out.
        let then = stream_as_of(&mut h.a, 22).await;
        let ids: Vec<&str> = then.iter().map(|f| f.customer_id.as_str()).collect();
        assert_eq!(ids, vec!["c1"]);
        let c1 = &then[0];
        assert_eq!(
            (
                c1.purchase_days,
                c1.total_spent_minor,
                c1.repeat_spent_minor
            ),
            (2, 3000, 2000)
        );
        assert_eq!(c1.last_purchase_at, ts(at(20)));
        assert_eq!(c1.last_open_at, ts(at(15)));
        // c2 once it had bought.
        let later = stream_as_of(&mut h.a, 61).await;
        assert_eq!(later.len(), 2);
        assert_eq!(later[1].total_spent_minor, 700);
        // Day 35: the refund counts, the cancellation not yet.
        let c1 = &stream_as_of(&mut h.a, 35).await[0];
        assert_eq!((c1.purchase_days, c1.total_spent_minor), (3, 5500));
        // Day 45: the cancelled order is gone; now, everything.
        let c1 = &stream_as_of(&mut h.a, 45).await[0];
        assert_eq!((c1.purchase_days, c1.total_spent_minor), (2, 2500));
        let now = facts(&mut h.a, "c1").await;
        assert_eq!(
            (now.total_spent_minor, now.last_open_at),
            (2500, ts(at(50)))
        );
        assert_eq!(now.repeat_spent_minor, 1500);

        let status =
            h.a.stream_facts(StreamFactsRequest {
                changed_since_cursor: "0.1".into(),
                chunk_size: 0,
                as_of: ts(at(22)),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), field_violations(&status)[0].field.as_str()),
            (Code::InvalidArgument, "as_of")
        );
        h.stop();
    }
);

db_test!(
    an_update_mask_clears_the_fields_it_names_and_only_those,
    |db| async move {
        let db: &TestDatabase = db;
        let mut h = Harness::start(db).await;
        let mut c1 = customer("c1");
        c1.tags = vec!["vip".into()];
        upsert(&mut h.a, vec![c1]).await;
        let get = |h: &mut Harness| {
            let mut client = h.a.clone();
            async move {
                client
                    .get_customer(GetCustomerRequest {
                        customer_id: "c1".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .customer
                    .unwrap()
            }
        };
        // Email and tags cleared on purpose; the phone (empty, not in the mask) is kept.
        h.a.upsert_customers(UpsertCustomersRequest {
            customers: vec![Customer {
                customer_id: "c1".into(),
                ..Default::default()
            }],
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["email".into(), "tags".into()],
            }),
        })
        .await
        .unwrap();
        let c = get(&mut h).await;
        assert_eq!(c.email, "");
        assert!(c.tags.is_empty());
        assert_eq!(c.phone, "+79161234567");
        assert_eq!(c.name, "Customer c1");
        // A path that is not a customer field is refused, naming it; nothing changes.
        let refused =
            h.a.upsert_customers(UpsertCustomersRequest {
                customers: vec![Customer {
                    customer_id: "c1".into(),
                    ..Default::default()
                }],
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["phone".into(), "customer_id".into()],
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&refused)[0].field, "update_mask.paths[1]");
        assert_eq!(get(&mut h).await.phone, "+79161234567");
    }
);
