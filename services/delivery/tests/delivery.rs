//! The delivery service through its gRPC client, on SQLite and PostgreSQL, sending email
//! over SMTP to a real SMTP server (aiosmtpd).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::time::Duration;

use harness::{DKIM_ED25519_KEY, Harness, SmtpSink, header_value, link_starting};
use tonic::Code;
use winback_platform::clock::Clock;
use winback_platform::db_test;
use winback_platform::error::field_violations;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::channel_settings::Provider;
use winback_proto::delivery::*;

fn welcome_back() -> MessageTemplate {
    MessageTemplate {
        template_id: "welcome-back".into(),
        channel: Channel::Email as i32,
        locale: "ru".into(),
        subject: "We miss you, {{ customer.first_name }}".into(),
        text: "Your code {{ coupon.code }}. Unsubscribe: {{ unsubscribe_url }}".into(),
        html: "<html><body><p>Code <b>{{ coupon.code }}</b></p><a href=\"https://shop.example/sale?a=1&b=2\">Shop</a>\
               <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></body></html>"
            .into(),
        ..Default::default()
    }
}

fn email_to(key: &str, address: &str) -> SendRequest {
    let variables = prost_types::Struct {
        fields: [(
            "coupon".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                    fields: [(
                        "code".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(
                                "WB-7K3M-Q9XT".into(),
                            )),
                        },
                    )]
                    .into(),
                })),
            },
        )]
        .into(),
    };
    SendRequest {
        idempotency_key: key.into(),
        channel: Channel::Email as i32,
        template_id: "welcome-back".into(),
        locale: "ru".into(),
        recipient: Some(Recipient {
            customer_id: format!("c-{key}"),
            email: address.into(),
            name: "Anna Petrova".into(),
            ..Default::default()
        }),
        purpose: MessagePurpose::Advertising as i32,
        variables: Some(variables),
        metadata: [("campaign_id".to_owned(), "cmp-1".to_owned())].into(),
        ..Default::default()
    }
}

async fn wait_for_status(h: &mut Harness, id: &str, want: MessageStatus) -> Message {
    for _ in 0..500 {
        let m =
            h.a.get_message(GetMessageRequest {
                message_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        if m.status == want as i32 {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("message {id} never reached {want:?}");
}

db_test!(
    email_goes_over_smtp_once_with_one_click_unsubscribe_headers,
    |db| async move {
        let sink = SmtpSink::start(db.dir().join("smtp")).await;
        let mut h = Harness::start(db).await;

        // A typo in a variable is refused when the template is saved, and nothing is stored.
        let typo =
            h.a.upsert_template(UpsertTemplateRequest {
                template: Some(MessageTemplate {
                    subject: "Hi {{ customer.frist_name }}".into(),
                    ..welcome_back()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(typo.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&typo)[0].field, "template.subject");
        let missing =
            h.a.get_template(GetTemplateRequest {
                template_id: "welcome-back".into(),
                channel: Channel::Email as i32,
                locale: "ru".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);

        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        h.a.set_channel_settings(SetChannelSettingsRequest {
            settings: Some(ChannelSettings {
                channel: Channel::Email as i32,
                provider: Some(Provider::Smtp(SmtpSettings {
                    host: "127.0.0.1".into(),
                    port: i32::from(sink.port),
                    security: "plain".into(),
                    from: "Bakery <news@bakery.example>".into(),
                    pool_size: 4,
                    dkim_selector: "wb2026".into(),
                    dkim_domain: "bakery.example".into(),
                    dkim_private_key: DKIM_ED25519_KEY.into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

        // The same key twice is one message.
        let first =
            h.a.send(email_to("k1", "anna@example.ru"))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
        let again =
            h.a.send(email_to("k1", "anna@example.ru"))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
        assert_eq!(first.message_id, again.message_id);
        // The same key for someone else is a conflict.
        let reused = h.a.send(email_to("k1", "boris@example.ru")).await;
        assert!(
            reused.is_ok(),
            "same customer id, other address: still the same send"
        );
        let sent = wait_for_status(&mut h, &first.message_id, MessageStatus::Sent).await;
        assert!(
            sent.timeline
                .iter()
                .any(|s| s.status == MessageStatus::Queued as i32)
        );
        assert!(sent.sent_at.is_some());

        let stored = sink.messages();
        assert_eq!(stored.len(), 1, "exactly one email for one idempotency key");
        let email = &stored[0];
        assert!(
            email.contains(&format!("Message-ID: <{}@winback>", first.message_id)),
            "{email}"
        );
        assert!(email.contains("Subject: We miss you, Anna"), "{email}");
        assert!(
            email.contains(&format!("List-Unsubscribe: <{}/u/", h.tracking)),
            "{email}"
        );
        assert!(
            email.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{email}"
        );
        assert!(email.contains("multipart/alternative"), "{email}");
        // Links go through the signed click redirect; the pixel is in.
        assert!(
            email.contains(&format!("href=\"{}/c/", h.tracking)),
            "{email}"
        );
        assert!(
            email.contains(&format!("href=\"{}/u/", h.tracking)),
            "{email}"
        );
        assert!(
            email.contains(&format!("src=\"{}/o/", h.tracking)),
            "{email}"
        );
        assert!(!email.contains("shop.example"), "{email}");
        assert!(!email.contains("&#x2f;"), "{email}");
        // DKIM signs the message, unsubscribe headers included.
        let dkim = header_value(email, "DKIM-Signature");
        assert!(
            dkim.contains("d=bakery.example") && dkim.contains("s=wb2026"),
            "{dkim}"
        );
        let signed: Vec<String> = dkim
            .split(';')
            .find_map(|tag| tag.trim().strip_prefix("h="))
            .expect("h= tag")
            .split(':')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for wanted in [
            "from",
            "subject",
            "list-unsubscribe",
            "list-unsubscribe-post",
        ] {
            assert!(
                signed.iter().any(|h| h == wanted),
                "{wanted} not signed: {dkim}"
            );
        }

        // An unknown mailbox (550) bounces and suppresses the address; the next send is refused.
        let ghost =
            h.a.send(email_to("k2", "ghost@unknown.invalid"))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
        wait_for_status(&mut h, &ghost.message_id, MessageStatus::Bounced).await;
        let refused =
            h.a.send(email_to("k3", "ghost@unknown.invalid"))
                .await
                .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().contains("suppressed"),
            "{}",
            refused.message()
        );
        let listed =
            h.a.list_suppressions(ListSuppressionsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .suppressions;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].contact, "ghost@unknown.invalid");

        // A busy server (451) is retried later, not given up.
        let busy =
            h.a.send(email_to("k4", "carl@busy.invalid"))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waiting =
            h.a.get_message(GetMessageRequest {
                message_id: busy.message_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        assert_eq!(waiting.status, MessageStatus::Queued as i32);
        assert!(waiting.attempts >= 1);
        assert_eq!(sink.messages().len(), 1);
        h.stop();
    }
);

db_test!(
    suppressions_in_a_batch_are_all_or_none_and_stop_the_next_send,
    |db| async move {
        let mut h = Harness::start(db).await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        let suppression = |channel: Channel, contact: &str| Suppression {
            channel: channel as i32,
            contact: contact.into(),
            reason: "dead_cleanup".into(),
            customer_id: "c-1".into(),
            created_at: None,
            marketing_only: true,
        };
        let listed = |h: &mut Harness| {
            let mut client = h.a.clone();
            async move {
                client
                    .list_suppressions(ListSuppressionsRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .suppressions
            }
        };
        // One malformed contact refuses the batch, naming it; nothing is stored.
        let refused =
            h.a.add_suppressions(AddSuppressionsRequest {
                suppressions: vec![
                    suppression(Channel::Email, "anna@example.ru"),
                    suppression(Channel::Sms, "not a phone"),
                ],
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&refused)[0].field,
            "suppressions[1].contact"
        );
        let empty =
            h.a.add_suppressions(AddSuppressionsRequest {
                suppressions: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(field_violations(&empty)[0].field, "suppressions");
        assert!(listed(&mut h).await.is_empty());

        let stored =
            h.a.add_suppressions(AddSuppressionsRequest {
                suppressions: vec![
                    suppression(Channel::Email, "anna@example.ru"),
                    suppression(Channel::Sms, "+79161234567"),
                ],
            })
            .await
            .unwrap()
            .into_inner()
            .suppressions;
        assert_eq!(
            (stored[0].contact.as_str(), stored[0].reason.as_str()),
            ("anna@example.ru", "dead_cleanup")
        );
        assert_eq!(listed(&mut h).await.len(), 2);
        // Marketing to a suppressed address is refused up front.
        let next =
            h.a.send(email_to("k1", "anna@example.ru"))
                .await
                .unwrap_err();
        assert_eq!(next.code(), Code::FailedPrecondition);
        // Tenant b has its own list.
        let other =
            h.b.list_suppressions(ListSuppressionsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .suppressions;
        assert!(other.is_empty());
        h.stop();
    }
);

db_test!(
    bad_sends_are_refused_and_nothing_is_stored,
    |db| async move {
        let mut h = Harness::start(db).await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        let bad_address =
            h.a.send(email_to("k1", "not-an-address"))
                .await
                .unwrap_err();
        assert_eq!(bad_address.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&bad_address)[0].field, "recipient.email");
        let no_variables =
            h.a.send(SendRequest {
                variables: None,
                ..email_to("k2", "anna@example.ru")
            })
            .await
            .unwrap_err();
        assert_eq!(no_variables.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&no_variables)[0].field, "variables");
        let unknown =
            h.a.send(SendRequest {
                template_id: "nope".into(),
                ..email_to("k3", "anna@example.ru")
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        let listed =
            h.a.list_messages(ListMessagesRequest::default())
                .await
                .unwrap()
                .into_inner();
        assert!(
            listed.messages.is_empty(),
            "nothing stored for refused sends"
        );

        // Tenants are apart; scopes and tokens are checked.
        let other =
            h.b.send(email_to("k4", "anna@example.ru"))
                .await
                .unwrap_err();
        assert_eq!(other.code(), Code::NotFound);
        let read_only = h
            .client_with_scopes(&["delivery:read"])
            .send(email_to("k5", "anna@example.ru"))
            .await
            .unwrap_err();
        assert_eq!(read_only.code(), Code::PermissionDenied);
        let mut anonymous =
            winback_proto::delivery::delivery_service_client::DeliveryServiceClient::new(
                h.channel.clone(),
            );
        let anonymous = anonymous
            .send(email_to("k6", "anna@example.ru"))
            .await
            .unwrap_err();
        assert_eq!(anonymous.code(), Code::Unauthenticated);

        // Without settings the embedded default writes .eml files under data_dir/outbox.
        let m =
            h.a.send(email_to("k7", "anna@example.ru"))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
        wait_for_status(&mut h, &m.message_id, MessageStatus::Sent).await;
        let eml = db
            .dir()
            .join("outbox")
            .join("t-a")
            .join(format!("{}.eml", m.message_id));
        assert!(
            std::fs::read_to_string(eml)
                .unwrap()
                .contains("List-Unsubscribe-Post")
        );
        h.stop();
    }
);

/// The file sink's copy of a message, with quoted-printable soft breaks undone.
fn outbox_copy(db: &winback_platform::testing::TestDatabase, message_id: &str) -> String {
    std::fs::read_to_string(db.dir().join(format!("outbox/t-a/{message_id}.eml")))
        .unwrap()
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

async fn send(h: &mut Harness, r: SendRequest) -> Message {
    h.a.send(r).await.unwrap().into_inner().message.unwrap()
}

db_test!(
    reactions_arriving_together_each_move_their_message_once_in_order,
    |db| async move {
        let mut h = Harness::start(db).await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        let mut links = Vec::new();
        let mut ids = Vec::new();
        for i in 0..3 {
            let m = send(
                &mut h,
                email_to(&format!("t{i}"), &format!("c{i}@example.ru")),
            )
            .await;
            wait_for_status(&mut h, &m.message_id, MessageStatus::Sent).await;
            let eml = outbox_copy(db, &m.message_id);
            // Pixels and clicks of one message mixed: several land in one group commit.
            for _ in 0..3 {
                links.push(link_starting(&eml, &format!("{}/o/", h.tracking)));
                links.push(link_starting(&eml, &format!("{}/c/", h.tracking)));
            }
            ids.push(m.message_id);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let fetches = links.into_iter().map(|link| {
            let http = http.clone();
            async move { http.get(link).send().await.unwrap().status().as_u16() }
        });
        let codes = futures::future::join_all(fetches).await;
        assert!(codes.iter().all(|c| *c == 200 || *c == 302), "{codes:?}");
        for id in ids {
            let m = wait_for_status(&mut h, &id, MessageStatus::Clicked).await;
            let steps: Vec<i32> = m
                .timeline
                .iter()
                .map(|s| s.status)
                .filter(|s| {
                    *s == MessageStatus::Opened as i32 || *s == MessageStatus::Clicked as i32
                })
                .collect();
            assert_eq!(
                steps,
                vec![MessageStatus::Opened as i32, MessageStatus::Clicked as i32],
                "one open then one click for {id}"
            );
        }
        h.stop();
    }
);

db_test!(
    opens_clicks_and_one_click_unsubscribes_come_back_and_stop_the_next_send,
    |db| async move {
        let mut h = Harness::start(db).await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        // No channel settings: the file sink (the embedded default) carries the email.
        let m = send(&mut h, email_to("t1", "anna@example.ru")).await;
        wait_for_status(&mut h, &m.message_id, MessageStatus::Sent).await;
        let eml = outbox_copy(db, &m.message_id);
        let pixel = link_starting(&eml, &format!("{}/o/", h.tracking));
        let click = link_starting(&eml, &format!("{}/c/", h.tracking));
        let unsubscribe = link_starting(&eml, &format!("{}/u/", h.tracking));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();

        // The pixel: a GIF, and the message is opened — once, however often it loads.
        for _ in 0..2 {
            let r = http.get(&pixel).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "image/gif");
        }
        let opened = wait_for_status(&mut h, &m.message_id, MessageStatus::Opened).await;
        let opens = opened
            .timeline
            .iter()
            .filter(|s| s.status == MessageStatus::Opened as i32)
            .count();
        assert_eq!(opens, 1);

        // The click goes where the message pointed, and nowhere else.
        let r = http.get(&click).send().await.unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()["location"], "https://shop.example/sale?a=1&b=2");
        wait_for_status(&mut h, &m.message_id, MessageStatus::Clicked).await;
        let token = click.rsplit('/').next().unwrap();
        let (payload, tag) = token.split_once('.').unwrap();
        let forged_payload = {
            use base64::Engine;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let text = String::from_utf8(engine.decode(payload).unwrap()).unwrap();
            engine
                .encode(text.replace("https://shop.example/sale?a=1&b=2", "https://evil.example/"))
        };
        for forged in [format!("{forged_payload}.{tag}"), "garbage".to_owned()] {
            let r = http
                .get(format!("{}/c/{forged}", h.tracking))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "a forged click link must not redirect");
            assert!(r.headers().get("location").is_none());
        }

        // The page for people: a button, and nothing changes on GET.
        let page = http.get(&unsubscribe).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<form method=\"post\""));
        let later = SendRequest {
            send_after: Some(prost_types::Timestamp {
                seconds: h.clock.now().timestamp() + 3_600,
                nanos: 0,
            }),
            ..email_to("t2", "anna@example.ru")
        };
        let queued = send(&mut h, later).await;
        assert_eq!(queued.status, MessageStatus::Queued as i32);

        // RFC 8058 one-click: no cookie, no confirmation.
        let r = http
            .post(&unsubscribe)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The next marketing send is refused at once, and the queued one never goes out.
        let refused =
            h.a.send(email_to("t3", "anna@example.ru"))
                .await
                .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        h.clock.advance(chrono::Duration::hours(2));
        wait_for_status(&mut h, &queued.message_id, MessageStatus::Suppressed).await;
        // A service message (an order receipt) still may go.
        let receipt = send(
            &mut h,
            SendRequest {
                purpose: MessagePurpose::Service as i32,
                ..email_to("t4", "anna@example.ru")
            },
        )
        .await;
        wait_for_status(&mut h, &receipt.message_id, MessageStatus::Sent).await;

        // Everything is on the feed, the unsubscribe once.
        let events = h.events().await;
        let statuses: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Some(winback_proto::events::event::Payload::MessageStatusChanged(s))
                    if s.message_id == m.message_id =>
                {
                    Some(s.status.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(statuses, ["queued", "sent", "opened", "clicked"]);
        let unsubscribes: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Some(winback_proto::events::event::Payload::ContactUnsubscribed(u)) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(unsubscribes.len(), 1);
        assert_eq!(unsubscribes[0].method, "one_click");
        assert_eq!(unsubscribes[0].contact, "anna@example.ru");
        assert_eq!(unsubscribes[0].customer_id, "c-t1");
        // A second one-click changes nothing and says so politely.
        let again = http
            .post(&unsubscribe)
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 200);
        h.stop();
    }
);

db_test!(
    a_tenant_over_its_quotas_is_told_when_to_retry,
    |db| async move {
        // Tenant a may queue 2 messages a day; tenant b may make 1 call a second, 2 at once.
        let platform = winback_platform::db::connect(&db.url("platform"), "platform", 2)
            .await
            .unwrap();
        winback_platform::tenancy::TenantRegistry::open(platform.clone())
            .await
            .unwrap();
        use winback_platform::quotas::{TenantQuota, set_tenant_quota};
        let own = |calls_per_second, call_burst, messages_per_day| TenantQuota {
            calls_per_second,
            call_burst,
            messages_per_day,
        };
        set_tenant_quota(&platform, "t-a", own(0, 0, 2))
            .await
            .unwrap();
        set_tenant_quota(&platform, "t-b", own(1, 2, 0))
            .await
            .unwrap();
        let mut h = Harness::start(db).await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        for key in ["q1", "q2"] {
            h.a.send(email_to(key, "anna@example.ru")).await.unwrap();
        }
        let refused =
            h.a.send(email_to("q3", "anna@example.ru"))
                .await
                .unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        use tonic_types::StatusExt;
        let retry = refused.get_details_retry_info().expect("RetryInfo");
        let wait = retry.retry_delay.expect("a delay");
        // The harness clock is at 12:00 UTC: the next day starts in 12 hours.
        assert_eq!(wait, Duration::from_secs(12 * 3600));
        let quota = refused.get_details_quota_failure().expect("QuotaFailure");
        assert_eq!(quota.violations[0].subject, "messages_per_day");
        let batch =
            h.a.send_batch(SendBatchRequest {
                sends: vec![email_to("q4", "anna@example.ru")],
            })
            .await
            .unwrap_err();
        assert_eq!(batch.code(), Code::ResourceExhausted);
        // Nothing was stored for the refused sends.
        let listed =
            h.a.list_messages(ListMessagesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .messages;
        assert_eq!(listed.len(), 2);
        // The next UTC day the quota is fresh.
        h.clock.advance(chrono::Duration::hours(12));
        h.a.send(email_to("q3", "anna@example.ru")).await.unwrap();

        // Tenant b: two calls at once, then the third is refused with the wait.
        let mut refused = None;
        for _ in 0..3 {
            if let Err(status) = h.b.list_templates(ListTemplatesRequest::default()).await {
                refused = Some(status);
            }
        }
        let refused = refused.expect("the third call in a second is refused");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let wait = refused
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .expect("a delay");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        tokio::time::sleep(wait).await;
        h.b.list_templates(ListTemplatesRequest::default())
            .await
            .unwrap();
        // Tenant a (no call limit) is untouched by b's.
        h.a.list_templates(ListTemplatesRequest::default())
            .await
            .unwrap();
    }
);

db_test!(
    a_tenant_without_email_settings_mails_through_the_deployments_smtp_server,
    |db| async move {
        // compose.yaml points this at Mailpit; here the test's SMTP server.
        let sink = SmtpSink::start(db.dir().join("smtp")).await;
        let mut h = Harness::start_with(db, |d| {
            d.default_smtp = format!("127.0.0.1:{}", sink.port);
            d.default_smtp_from = "winback@example.com".into();
        })
        .await;
        h.a.upsert_template(UpsertTemplateRequest {
            template: Some(welcome_back()),
        })
        .await
        .unwrap();
        let sent =
            h.a.send(email_to("d1", "anna@example.ru"))
                .await
                .unwrap()
                .into_inner()
                .message
                .unwrap();
        wait_for_status(&mut h, &sent.message_id, MessageStatus::Sent).await;
        let mut received = Vec::new();
        for _ in 0..100 {
            received = sink.messages();
            if !received.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(received.len(), 1);
        assert!(
            received[0].contains("winback@example.com"),
            "{}",
            received[0]
        );
    }
);
