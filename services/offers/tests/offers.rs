//! The offers service through its gRPC client, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use harness::{Harness, cart, percent_off, rub};
use tonic::Code;
use winback_platform::db_test;
use winback_platform::error::field_violations;
use winback_proto::common::{Money, PageRequest};
use winback_proto::offers::*;
use winback_proto::profiles::{Customer, Order, RecordOrdersRequest, UpsertCustomersRequest};

db_test!(
    templates_and_ladders_are_validated_and_the_ladder_climbs_one_rung_at_a_time,
    |db| async move {
        let mut h = Harness::start(db).await;
        // Bad input names the field and stores nothing.
        let err =
            h.a.create_offer_template(CreateOfferTemplateRequest {
                request_id: String::new(),
                template: Some(OfferTemplate {
                    percent_off: 150,
                    ..percent_off(0)
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), field_violations(&err)[0].field.as_str()),
            (Code::InvalidArgument, "template.percent_off")
        );
        let past = OfferTemplate {
            valid_until: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..percent_off(10)
        };
        let err =
            h.a.create_offer_template(CreateOfferTemplateRequest {
                request_id: String::new(),
                template: Some(past),
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&err)[0].field, "template.valid_until");
        let negative = OfferTemplate {
            name: "x".into(),
            kind: OfferKind::AmountOff as i32,
            amount: rub(-100),
            ..Default::default()
        };
        let err =
            h.a.create_offer_template(CreateOfferTemplateRequest {
                request_id: String::new(),
                template: Some(negative),
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&err)[0].field, "template.amount");
        // A made-up currency is refused like profiles refuses it.
        let made_up = OfferTemplate {
            name: "x".into(),
            kind: OfferKind::AmountOff as i32,
            amount: Some(Money {
                amount_minor: 100,
                currency: "ZZZ".into(),
            }),
            ..Default::default()
        };
        let err =
            h.a.create_offer_template(CreateOfferTemplateRequest {
                request_id: String::new(),
                template: Some(made_up),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&err)[0].field, "template.amount");
        let listed =
            h.a.list_offer_templates(ListOfferTemplatesRequest::default())
                .await
                .unwrap()
                .into_inner();
        assert!(listed.templates.is_empty());

        let shipping = h
            .template(OfferTemplate {
                name: "Free shipping".into(),
                kind: OfferKind::FreeShipping as i32,
                amount: rub(39_000),
                ..Default::default()
            })
            .await;
        let bonus = h
            .template(OfferTemplate {
                name: "500 points".into(),
                kind: OfferKind::BonusPoints as i32,
                bonus_points: 500,
                estimated_cost: rub(25_000),
                ..Default::default()
            })
            .await;
        let discount = h.template(percent_off(15)).await;
        let got =
            h.a.get_offer_template(GetOfferTemplateRequest {
                template_id: shipping.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .template
            .unwrap();
        assert_eq!(
            got.valid_for.unwrap().seconds,
            72 * 3600,
            "win-back default validity"
        );
        let err =
            h.a.get_offer_template(GetOfferTemplateRequest {
                template_id: "tpl_nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            h.b.get_offer_template(GetOfferTemplateRequest {
                template_id: shipping.clone()
            })
            .await
            .unwrap_err()
            .code(),
            Code::NotFound
        );

        let err =
            h.a.create_ladder(CreateLadderRequest {
                request_id: String::new(),
                ladder: Some(Ladder {
                    name: "soft to strong".into(),
                    template_ids: vec![shipping.clone(), "tpl_nope".into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        // NOT_FOUND names the missing resource and the field that pointed at it.
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(field_violations(&err)[0].field, "ladder.template_ids[1]");
        {
            use tonic_types::StatusExt;
            let info = err.get_details_resource_info().expect("ResourceInfo");
            assert_eq!(info.resource_name, "tpl_nope");
        }
        assert!(
            err.message().contains("ladder.template_ids[1]"),
            "{}",
            err.message()
        );
        let ladder =
            h.a.create_ladder(CreateLadderRequest {
                request_id: String::new(),
                ladder: Some(Ladder {
                    name: "soft to strong".into(),
                    template_ids: vec![shipping.clone(), bonus.clone(), discount.clone()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .ladder
            .unwrap();

        // Rung by rung, never a jump to the strongest.
        for (rung, expected) in [shipping.clone(), bonus.clone(), discount.clone()]
            .iter()
            .enumerate()
        {
            let next =
                h.a.next_offer(NextOfferRequest {
                    ladder_id: ladder.ladder_id.clone(),
                    customer_id: "anna".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (
                    next.rung as usize,
                    next.template.as_ref().unwrap().template_id.as_str(),
                    next.exhausted
                ),
                (rung, expected.as_str(), false)
            );
            h.a.issue_coupon(IssueCouponRequest {
                template_id: expected.clone(),
                customer_id: "anna".into(),
                idempotency_key: format!("anna:{rung}"),
                ladder_id: ladder.ladder_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let done =
            h.a.next_offer(NextOfferRequest {
                ladder_id: ladder.ladder_id.clone(),
                customer_id: "anna".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(done.exhausted && done.template.is_none());
        let boris =
            h.a.next_offer(NextOfferRequest {
                ladder_id: ladder.ladder_id.clone(),
                customer_id: "boris".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(boris.rung, 0);

        // A batch: each customer's own next rung, in request order; a batch issue from a
        // rung records it like a single one.
        h.a.issue_coupons(IssueCouponsRequest {
            template_id: shipping.clone(),
            recipients: vec![CouponRecipient {
                customer_id: "boris".into(),
                idempotency_key: "boris:0".into(),
            }],
            campaign_id: String::new(),
            ladder_id: ladder.ladder_id.clone(),
        })
        .await
        .unwrap();
        let batch =
            h.a.next_offers(NextOffersRequest {
                ladder_id: ladder.ladder_id.clone(),
                customer_ids: vec!["vera".into(), "anna".into(), "boris".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .offers;
        let rungs: Vec<(i32, bool)> = batch.iter().map(|o| (o.rung, o.exhausted)).collect();
        assert_eq!(rungs, [(0, false), (3, true), (1, false)]);
        assert_eq!(batch[2].template.as_ref().unwrap().template_id, bonus);
        let err =
            h.a.next_offers(NextOffersRequest {
                ladder_id: ladder.ladder_id.clone(),
                customer_ids: vec!["vera".into(), " ".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&err)[0].field, "customer_ids[1]");
        let err =
            h.a.next_offers(NextOffersRequest {
                ladder_id: "no-such-ladder".into(),
                customer_ids: vec!["vera".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // Archived templates issue no more coupons.
        let archived =
            h.a.archive_offer_template(ArchiveOfferTemplateRequest {
                template_id: discount.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(archived.template.unwrap().archived);
        let err =
            h.a.issue_coupon(IssueCouponRequest {
                template_id: discount,
                customer_id: "vera".into(),
                idempotency_key: "v".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let page =
            h.a.list_offer_templates(ListOfferTemplatesRequest {
                page: Some(PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
                include_archived: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.templates.len(), 1);
        assert!(!page.page.unwrap().next_page_token.is_empty());
        h.stop();
    }
);

db_test!(
    issue_is_idempotent_and_codes_are_personal,
    |db| async move {
        let mut h = Harness::start(db).await;
        let t = h
            .template(OfferTemplate {
                code_prefix: "beau".into(),
                ..percent_off(10)
            })
            .await;
        let first = h.issue(&t, "anna", "enrolment-1:step-2").await;
        let retry = h.issue(&t, "anna", "enrolment-1:step-2").await;
        assert_eq!(first.code, retry.code);
        assert!(first.code.starts_with("BEAU-"), "{}", first.code);
        assert_eq!(first.state, CouponState::Active as i32);
        assert_eq!(first.time_left.unwrap().seconds, 72 * 3600);
        // The same key for someone else is a conflict, not a second coupon.
        let err =
            h.a.issue_coupon(IssueCouponRequest {
                template_id: t.clone(),
                customer_id: "boris".into(),
                idempotency_key: "enrolment-1:step-2".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        // One coupon per customer per template by default.
        let err =
            h.a.issue_coupon(IssueCouponRequest {
                template_id: t.clone(),
                customer_id: "anna".into(),
                idempotency_key: "other".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        // A batch: retried, it returns the same coupons.
        let recipients: Vec<CouponRecipient> = (0..50)
            .map(|i| CouponRecipient {
                customer_id: format!("c{i}"),
                idempotency_key: format!("batch:{i}"),
            })
            .collect();
        let batch =
            h.a.issue_coupons(IssueCouponsRequest {
                template_id: t.clone(),
                recipients: recipients.clone(),
                campaign_id: "camp-1".into(),
                ladder_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let again =
            h.a.issue_coupons(IssueCouponsRequest {
                template_id: t.clone(),
                recipients,
                campaign_id: "camp-1".into(),
                ladder_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.coupons.len(), 50);
        assert_eq!(
            batch.coupons.iter().map(|c| &c.code).collect::<Vec<_>>(),
            again.coupons.iter().map(|c| &c.code).collect::<Vec<_>>()
        );
        let usage =
            h.a.get_budget_usage(GetBudgetUsageRequest {
                template_id: t.clone(),
                campaign_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                usage.coupons_issued,
                usage.estimated_cost.unwrap().amount_minor
            ),
            (51, 51 * 30_000)
        );
        let campaign =
            h.a.get_budget_usage(GetBudgetUsageRequest {
                template_id: String::new(),
                campaign_id: "camp-1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(campaign.coupons_issued, 50);
        let err =
            h.a.issue_coupons(IssueCouponsRequest {
                template_id: t.clone(),
                recipients: vec![CouponRecipient {
                    customer_id: String::new(),
                    idempotency_key: "k".into(),
                }],
                campaign_id: String::new(),
                ladder_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&err)[0].field, "recipients[0].customer_id");
        let err =
            h.a.issue_coupon(IssueCouponRequest {
                template_id: "tpl_nope".into(),
                customer_id: "x".into(),
                idempotency_key: "k".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // Reading a code: any case and spacing; a typo is refused before any lookup.
        let got =
            h.a.get_coupon(GetCouponRequest {
                code: first.code.to_lowercase().replace('-', " "),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.coupon.unwrap().customer_id, "anna");
        let mut typo = first.code.clone().into_bytes();
        let last = typo.len() - 2;
        typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
        let err =
            h.a.get_coupon(GetCouponRequest {
                code: String::from_utf8(typo).unwrap(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), field_violations(&err)[0].field.as_str()),
            (Code::InvalidArgument, "code")
        );
        let listed =
            h.a.list_coupons(ListCouponsRequest {
                campaign_id: "camp-1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.coupons.len(), 50);
        assert_eq!(
            h.outbox_events()
                .await
                .iter()
                .filter(|e| *e == "coupon_issued")
                .count(),
            51
        );
        h.stop();
    }
);

db_test!(validation_gives_the_exact_reason, |db| async move {
    let mut h = Harness::start(db).await;
    let t = h
        .template(OfferTemplate {
            conditions: Some(OfferConditions {
                min_order: rub(200_000),
                include_categories: vec!["shoes".into()],
                ..Default::default()
            }),
            ..percent_off(10)
        })
        .await;
    let code = h.issue(&t, "anna", "k1").await.code;
    let validate = |h: &mut Harness, customer: &str, cart: Option<Cart>| {
        let mut client = h.a.clone();
        let code = code.clone();
        let customer = customer.to_owned();
        async move {
            client
                .validate_coupon(ValidateCouponRequest {
                    code,
                    customer_id: customer,
                    cart,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let shoes = |price: i64| {
        Some(Cart {
            total: rub(price),
            lines: vec![CartLine {
                sku: "s".into(),
                category: "shoes".into(),
                quantity: 1,
                unit_price: rub(price),
            }],
        })
    };
    let ok = validate(&mut h, "anna", shoes(300_000)).await;
    assert!(ok.eligible);
    assert_eq!(ok.discount.unwrap().amount_minor, 30_000);
    assert_eq!(
        validate(&mut h, "anna", shoes(100_000)).await.reason,
        IneligibleReason::BelowMinimum as i32
    );
    let bags = Some(Cart {
        total: rub(300_000),
        lines: vec![CartLine {
            sku: "b".into(),
            category: "bags".into(),
            quantity: 1,
            unit_price: rub(300_000),
        }],
    });
    assert_eq!(
        validate(&mut h, "anna", bags).await.reason,
        IneligibleReason::WrongCategory as i32
    );
    assert_eq!(
        validate(&mut h, "boris", shoes(300_000)).await.reason,
        IneligibleReason::NotOwner as i32
    );
    let unknown =
        h.a.validate_coupon(ValidateCouponRequest {
            code: "2222-2222-2222".into(),
            customer_id: "anna".into(),
            cart: shoes(300_000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.reason, IneligibleReason::Unknown as i32);
    h.a.redeem_coupon(RedeemCouponRequest {
        code: code.clone(),
        customer_id: "anna".into(),
        order_id: "o1".into(),
        order: shoes(300_000),
    })
    .await
    .unwrap();
    assert_eq!(
        validate(&mut h, "anna", shoes(300_000)).await.reason,
        IneligibleReason::AlreadyUsed as i32
    );
    let later = h.issue(&t, "vera", "k2").await.code;
    h.clock.advance(chrono::Duration::hours(73));
    let expired =
        h.a.validate_coupon(ValidateCouponRequest {
            code: later.clone(),
            customer_id: "vera".into(),
            cart: shoes(300_000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.reason, IneligibleReason::Expired as i32);
    let coupon =
        h.a.get_coupon(GetCouponRequest { code: later })
            .await
            .unwrap()
            .into_inner()
            .coupon
            .unwrap();
    assert_eq!(
        (coupon.state, coupon.time_left.unwrap().seconds),
        (CouponState::Expired as i32, 0)
    );
    // The sweep reports it once and emits coupon_expired.
    let swept =
        h.a.sweep_expired_coupons(SweepExpiredCouponsRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(swept.expired, 1);
    assert_eq!(
        h.a.sweep_expired_coupons(SweepExpiredCouponsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .expired,
        0
    );
    assert!(
        h.outbox_events()
            .await
            .contains(&"coupon_expired".to_owned())
    );
    let signals =
        h.a.list_fraud_signals(ListFraudSignalsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .signals;
    assert!(
        signals
            .iter()
            .any(|s| s.kind == "not_owner" && s.customer_id == "boris"),
        "{signals:?}"
    );
    h.stop();
});

db_test!(
    a_hundred_racing_redemptions_of_one_code_let_exactly_one_win,
    |db| async move {
        let mut h = Harness::start(db).await;
        let t = h.template(percent_off(20)).await;
        let code = h.issue(&t, "anna", "k").await.code;
        let attempts = (0..100).map(|i| {
            let mut client = h.a.clone();
            let code = code.clone();
            async move {
                client
                    .redeem_coupon(RedeemCouponRequest {
                        code,
                        customer_id: "anna".into(),
                        order_id: format!("order-{i}"),
                        order: cart(100_000),
                    })
                    .await
            }
        });
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "{:?}",
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(|e| e.message().to_owned())
                .take(3)
                .collect::<Vec<_>>()
        );
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| e.code() == Code::FailedPrecondition)
        );
        let winner = winners[0].get_ref();
        assert_eq!(winner.discount.as_ref().unwrap().amount_minor, 20_000);
        let order = winner.coupon.as_ref().unwrap().order_id.clone();
        // The winning order again: the same answer, no second redemption.
        let again =
            h.a.redeem_coupon(RedeemCouponRequest {
                code: code.clone(),
                customer_id: "anna".into(),
                order_id: order.clone(),
                order: cart(100_000),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.discount.unwrap().amount_minor, 20_000);
        let events = h.outbox_events().await;
        assert_eq!(events.iter().filter(|e| *e == "coupon_redeemed").count(), 1);
        let usage =
            h.a.get_budget_usage(GetBudgetUsageRequest {
                template_id: t.clone(),
                campaign_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                usage.coupons_redeemed,
                usage.real_cost.unwrap().amount_minor
            ),
            (1, 20_000)
        );
        // Cancelled order: the coupon comes back and can be used once more.
        let err =
            h.a.release_coupon(ReleaseCouponRequest {
                code: code.clone(),
                order_id: "someone-else".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&err)[0].field, "order_id");
        let released =
            h.a.release_coupon(ReleaseCouponRequest {
                code: code.clone(),
                order_id: order,
            })
            .await
            .unwrap()
            .into_inner()
            .coupon
            .unwrap();
        assert_eq!(released.state, CouponState::Active as i32);
        h.a.redeem_coupon(RedeemCouponRequest {
            code,
            customer_id: "anna".into(),
            order_id: "order-new".into(),
            order: cart(50_000),
        })
        .await
        .unwrap();
        assert!(
            h.outbox_events()
                .await
                .contains(&"coupon_released".to_owned())
        );
        h.stop();
    }
);

db_test!(
    failed_attempts_lock_out_for_a_growing_time,
    |db| async move {
        let mut h = Harness::start(db).await;
        let t = h.template(percent_off(10)).await;
        let code = h.issue(&t, "anna", "k").await.code;
        let guess = |h: &mut Harness| {
            let mut client = h.a.clone();
            async move {
                let mut request = tonic::Request::new(ValidateCouponRequest {
                    code: "2222-2222-2222".into(),
                    customer_id: "mallory".into(),
                    cart: cart(1_000),
                });
                request
                    .metadata_mut()
                    .insert("x-winback-source", "till-7".parse().unwrap());
                client.validate_coupon(request).await.unwrap().into_inner()
            }
        };
        for _ in 0..5 {
            assert_eq!(guess(&mut h).await.reason, IneligibleReason::Unknown as i32);
        }
        let locked = guess(&mut h).await;
        assert_eq!(locked.reason, IneligibleReason::Locked as i32);
        let until = locked.locked_until.unwrap().seconds;
        assert_eq!(until - harness::start_time().timestamp(), 15 * 60);
        // Locked out from the same till even as another customer.
        let mut request = tonic::Request::new(RedeemCouponRequest {
            code: code.clone(),
            customer_id: "anna".into(),
            order_id: "o".into(),
            order: cart(1_000),
        });
        request
            .metadata_mut()
            .insert("x-winback-source", "till-7".parse().unwrap());
        let locked = h.a.redeem_coupon(request).await.unwrap_err();
        assert_eq!(locked.code(), Code::ResourceExhausted);
        // The lockout says when it ends (at most the 15 minutes of the first one).
        use tonic_types::StatusExt;
        let wait = locked
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo");
        assert!(
            wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(15 * 60)
        );
        // The lockout ends; the next one lasts twice as long.
        h.clock.advance(chrono::Duration::minutes(16));
        for _ in 0..5 {
            assert_eq!(guess(&mut h).await.reason, IneligibleReason::Unknown as i32);
        }
        let again = guess(&mut h).await;
        assert_eq!(
            again.locked_until.unwrap().seconds - (harness::start_time().timestamp() + 16 * 60),
            30 * 60
        );
        let signals =
            h.a.list_fraud_signals(ListFraudSignalsRequest {
                source: "till-7".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .signals;
        assert!(signals.iter().filter(|s| s.kind == "lockout").count() >= 2);
        assert!(signals.iter().all(|s| s.source == "till-7"));
        h.stop();
    }
);

db_test!(the_budget_caps_coupons_and_discount, |db| async move {
    let mut h = Harness::start(db).await;
    let t = h
        .template(OfferTemplate {
            budget: Some(Budget {
                max_coupons: 3,
                max_discount: None,
            }),
            ..percent_off(10)
        })
        .await;
    for i in 0..3 {
        h.issue(&t, &format!("c{i}"), &format!("k{i}")).await;
    }
    let err =
        h.a.issue_coupon(IssueCouponRequest {
            template_id: t.clone(),
            customer_id: "c9".into(),
            idempotency_key: "k9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // A retry of an issued coupon still answers.
    h.issue(&t, "c0", "k0").await;
    let money = h
        .template(OfferTemplate {
            budget: Some(Budget {
                max_coupons: 0,
                max_discount: rub(15_000),
            }),
            estimated_cost: rub(5_000),
            ..percent_off(10)
        })
        .await;
    let a = h.issue(&money, "a", "ma").await.code;
    let b = h.issue(&money, "b", "mb").await.code;
    h.a.redeem_coupon(RedeemCouponRequest {
        code: a,
        customer_id: "a".into(),
        order_id: "oa".into(),
        order: cart(100_000),
    })
    .await
    .unwrap();
    let spent =
        h.a.validate_coupon(ValidateCouponRequest {
            code: b,
            customer_id: "b".into(),
            cart: cart(100_000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spent.reason, IneligibleReason::BudgetSpent as i32);

    // Callers without the scope, or without a token, are refused.
    let mut reader = h.client_with_scopes(&["offers:read"]);
    reader
        .list_offer_templates(ListOfferTemplatesRequest::default())
        .await
        .unwrap();
    let err = reader
        .issue_coupon(IssueCouponRequest {
            template_id: t,
            customer_id: "x".into(),
            idempotency_key: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut anonymous = offers_service_client::OffersServiceClient::new(h.channel.clone());
    assert_eq!(
        anonymous
            .list_ladders(ListLaddersRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    h.stop();
});

db_test!(
    a_first_order_only_coupon_is_refused_once_the_customer_has_bought_since_it_was_issued,
    |db| async move {
        let mut h = Harness::start(db).await;
        let t = h
            .template(OfferTemplate {
                conditions: Some(OfferConditions {
                    first_order_only: true,
                    per_customer_limit: 1,
                    ..Default::default()
                }),
                ..percent_off(10)
            })
            .await;
        h.profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: ["anna", "boris"]
                    .map(|id| Customer {
                        customer_id: id.into(),
                        ..Default::default()
                    })
                    .to_vec(),
            })
            .await
            .unwrap();
        let purchase = |id: &str, customer: &str, hours_after_start: i64| Order {
            order_id: id.into(),
            customer_id: customer.into(),
            placed_at: Some(winback_platform::time::to_timestamp(
                harness::start_time() + chrono::Duration::hours(hours_after_start),
            )),
            total: rub(50_000),
            ..Default::default()
        };
        // Both bought before the offer; only Anna buys again after it.
        h.profiles
            .record_orders(RecordOrdersRequest {
                orders: vec![
                    purchase("old-a", "anna", -48),
                    purchase("old-b", "boris", -48),
                ],
            })
            .await
            .unwrap();
        let anna = h.issue(&t, "anna", "k-anna").await;
        let boris = h.issue(&t, "boris", "k-boris").await;
        // A customer profiles has never heard of has bought nothing since.
        let carl = h.issue(&t, "carl", "k-carl").await;
        h.clock.advance(chrono::Duration::hours(2));
        h.profiles
            .record_orders(RecordOrdersRequest {
                orders: vec![purchase("new-a", "anna", 1)],
            })
            .await
            .unwrap();

        let checked =
            h.a.validate_coupon(ValidateCouponRequest {
                code: anna.code.clone(),
                customer_id: "anna".into(),
                cart: cart(100_000),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!checked.eligible);
        assert_eq!(checked.reason, IneligibleReason::NotFirstOrder as i32);
        let refused =
            h.a.redeem_coupon(RedeemCouponRequest {
                code: anna.code.clone(),
                customer_id: "anna".into(),
                order_id: "o-anna".into(),
                order: cart(100_000),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().contains("not_first_order"),
            "{}",
            refused.message()
        );

        for (coupon, customer) in [(&boris, "boris"), (&carl, "carl")] {
            let redeemed =
                h.a.redeem_coupon(RedeemCouponRequest {
                    code: coupon.code.clone(),
                    customer_id: customer.into(),
                    order_id: format!("o-{customer}"),
                    order: cart(100_000),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(redeemed.discount.unwrap().amount_minor, 10_000);
        }
        h.stop();
    }
);
