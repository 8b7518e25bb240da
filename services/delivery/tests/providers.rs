//! SMS, push and webhooks through local servers that speak Twilio's, SMS.ru's, FCM's and a
//! signed webhook's real request and reply shapes: what goes out, the providers' permanent
//! refusals (which suppress), their signed status callbacks (forged and replayed ones
//! refused), and 30 % faults that still end with every message delivered once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::Harness;
use harness::providers::*;
use tonic::Code;
use winback_platform::db_test;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::channel_settings::Provider;
use winback_proto::delivery::*;

async fn template(h: &mut Harness, client: char, channel: Channel, text: &str) {
    let t = MessageTemplate {
        template_id: "nudge".into(),
        channel: channel as i32,
        locale: "ru".into(),
        subject: "Скучаем".into(),
        text: text.into(),
        json: if matches!(channel, Channel::Push | Channel::ManagerTask) {
            "{\"deeplink\": \"shop://sale\", \"priority\": 2}".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let c = if client == 'a' { &mut h.a } else { &mut h.b };
    c.upsert_template(UpsertTemplateRequest { template: Some(t) })
        .await
        .unwrap();
}

async fn settings(h: &mut Harness, client: char, channel: Channel, provider: Provider) {
    let c = if client == 'a' { &mut h.a } else { &mut h.b };
    c.set_channel_settings(SetChannelSettingsRequest {
        settings: Some(ChannelSettings {
            channel: channel as i32,
            provider: Some(provider),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

fn to(key: &str, channel: Channel, contact: &str) -> SendRequest {
    let mut recipient = Recipient {
        customer_id: format!("c-{key}"),
        name: "Анна".into(),
        ..Default::default()
    };
    match channel {
        Channel::Sms => recipient.phone = contact.into(),
        Channel::Push => recipient.push_token = contact.into(),
        _ => recipient.address = contact.into(),
    }
    SendRequest {
        idempotency_key: key.into(),
        channel: channel as i32,
        template_id: "nudge".into(),
        locale: "ru".into(),
        recipient: Some(recipient),
        purpose: MessagePurpose::Advertising as i32,
        metadata: [("campaign_id".to_owned(), "cmp-1".to_owned())].into(),
        ..Default::default()
    }
}

async fn send(h: &mut Harness, client: char, r: SendRequest) -> Message {
    let c = if client == 'a' { &mut h.a } else { &mut h.b };
    c.send(r).await.unwrap().into_inner().message.unwrap()
}

async fn wait(h: &mut Harness, client: char, id: &str, want: MessageStatus) -> Message {
    for _ in 0..400 {
        let c = if client == 'a' { &mut h.a } else { &mut h.b };
        let m = c
            .get_message(GetMessageRequest {
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("message {id} never reached {want:?}");
}

fn twilio(p: &Providers) -> Provider {
    Provider::Twilio(TwilioSettings {
        base_url: p.url.clone(),
        account_sid: TWILIO_SID.into(),
        auth_token: TWILIO_TOKEN.into(),
        from: "+15005550006".into(),
    })
}

fn fcm(p: &Providers) -> Provider {
    Provider::Fcm(FcmSettings {
        base_url: p.url.clone(),
        project_id: "bakery-app".into(),
        access_token: FCM_TOKEN.into(),
    })
}

/// Twilio's own signature of a callback (what their servers compute).
fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    use aws_lc_rs::hmac;
    use base64::Engine;
    let mut sorted = params.to_vec();
    sorted.sort();
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, TWILIO_TOKEN.as_bytes());
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, data.as_bytes()).as_ref())
}

db_test!(
    sms_push_and_webhooks_speak_each_provider_api,
    |db| async move {
        let p = Providers::start().await;
        let mut h = Harness::start(db).await;
        template(
            &mut h,
            'a',
            Channel::Sms,
            "Анна, мы скучаем: -10% до пятницы",
        )
        .await;
        template(
            &mut h,
            'a',
            Channel::Push,
            "{{ customer.first_name }}, для вас скидка",
        )
        .await;
        template(
            &mut h,
            'a',
            Channel::ManagerTask,
            "Позвонить {{ customer.first_name }}",
        )
        .await;
        settings(&mut h, 'a', Channel::Sms, twilio(&p)).await;
        settings(&mut h, 'a', Channel::Push, fcm(&p)).await;
        settings(
            &mut h,
            'a',
            Channel::ManagerTask,
            Provider::Webhook(WebhookSettings {
                url: format!("{}/hook", p.url),
                secret: HOOK_SECRET.into(),
            }),
        )
        .await;

        // Twilio: a form POST with basic auth, the sid back, the status callback URL given.
        let sms = send(&mut h, 'a', to("s1", Channel::Sms, "+79161234567")).await;
        let sms = wait(&mut h, 'a', &sms.message_id, MessageStatus::Sent).await;
        assert_eq!(
            sms.sms_segments, 1,
            "Cyrillic: UCS-2, one 70-character segment"
        );
        let accepted = p.accepted();
        let twilio_sent = accepted.iter().find(|a| a.provider == "twilio").unwrap();
        assert_eq!(sms.provider_message_id, twilio_sent.id);
        assert_eq!(twilio_sent.text, "Анна, мы скучаем: -10% до пятницы");
        let callback_url = format!("{}/callbacks/twilio/t-a", h.tracking);
        let form: Vec<(String, String)> = serde_json::from_value(twilio_sent.body.clone()).unwrap();
        assert!(form.contains(&("StatusCallback".into(), callback_url.clone())));
        assert!(form.contains(&("From".into(), "+15005550006".into())));

        // FCM: bearer token, notification, string-only data.
        let push = send(&mut h, 'a', to("p1", Channel::Push, "device-token-1")).await;
        let push = wait(&mut h, 'a', &push.message_id, MessageStatus::Sent).await;
        let fcm_sent = p
            .accepted()
            .into_iter()
            .find(|a| a.provider == "fcm")
            .unwrap();
        assert_eq!(push.provider_message_id, fcm_sent.id);
        let data = &fcm_sent.body["message"]["data"];
        assert_eq!(data["priority"], "2", "numbers become strings");
        assert_eq!(data["deeplink"], "shop://sale");
        assert_eq!(data["campaign_id"], "cmp-1");
        assert_eq!(data["message_id"], push.message_id.as_str());
        assert_eq!(fcm_sent.text, "Анна, для вас скидка");

        // Webhook: signed (the receiver checked), with an idempotency key.
        let task = send(&mut h, 'a', to("m1", Channel::ManagerTask, "manager-7")).await;
        wait(&mut h, 'a', &task.message_id, MessageStatus::Sent).await;
        let hook = p
            .accepted()
            .into_iter()
            .find(|a| a.provider == "webhook")
            .unwrap();
        assert_eq!(hook.to, task.message_id);
        assert_eq!(hook.body["payload"]["deeplink"], "shop://sale");
        assert_eq!(hook.text, "Позвонить Анна");

        // A signed status callback marks the SMS delivered.
        let http = reqwest::Client::new();
        let params = [
            ("MessageSid", twilio_sent.id.as_str()),
            ("MessageStatus", "delivered"),
            ("AccountSid", TWILIO_SID),
        ];
        let post = |signature: String| {
            http.post(&callback_url)
                .header("x-twilio-signature", signature)
                .form(&params)
                .send()
        };
        let forged = post("bm90IGEgc2lnbmF0dXJl".into()).await.unwrap();
        assert_eq!(forged.status(), 403);
        let m = wait(&mut h, 'a', &sms.message_id, MessageStatus::Sent).await;
        assert_eq!(
            m.status,
            MessageStatus::Sent as i32,
            "a forged callback changes nothing"
        );
        let ok = post(twilio_signature(&callback_url, &params))
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        wait(&mut h, 'a', &sms.message_id, MessageStatus::Delivered).await;
        let replay = post(twilio_signature(&callback_url, &params))
            .await
            .unwrap();
        assert_eq!(replay.status(), 409, "a replayed callback is refused");

        // Permanent refusals suppress the contact; the next send is refused up front.
        for (key, channel, contact) in [
            ("s-stop", Channel::Sms, "+15005550004"),
            ("s-bad", Channel::Sms, "+15005550001"),
            ("p-gone", Channel::Push, "unregistered"),
            ("p-bad", Channel::Push, "bad-token"),
        ] {
            let m = send(&mut h, 'a', to(key, channel, contact)).await;
            wait(&mut h, 'a', &m.message_id, MessageStatus::Bounced).await;
            let again =
                h.a.send(to(&format!("{key}-2"), channel, contact))
                    .await
                    .unwrap_err();
            assert_eq!(again.code(), Code::FailedPrecondition, "{contact}");
        }
        // A payload FCM names a field of is our fault, not the token's: failed, not suppressed.
        let m = send(&mut h, 'a', to("p-payload", Channel::Push, "bad-payload")).await;
        wait(&mut h, 'a', &m.message_id, MessageStatus::Failed).await;
        send(&mut h, 'a', to("p-payload-2", Channel::Push, "bad-payload")).await;

        // SMS.ru for the other tenant: per-number status, a hashed delivery report.
        template(
            &mut h,
            'b',
            Channel::Sms,
            "Hello again, 10% off until Friday",
        )
        .await;
        settings(
            &mut h,
            'b',
            Channel::Sms,
            Provider::SmsRu(SmsRuSettings {
                base_url: p.url.clone(),
                api_id: SMS_RU_API_ID.into(),
                from: "Bakery".into(),
            }),
        )
        .await;
        let ru = send(&mut h, 'b', to("r1", Channel::Sms, "+79161112233")).await;
        let ru = wait(&mut h, 'b', &ru.message_id, MessageStatus::Sent).await;
        assert_eq!(ru.sms_segments, 1, "Latin only: GSM-7");
        let ru_sent = p
            .accepted()
            .into_iter()
            .find(|a| a.provider == "sms_ru")
            .unwrap();
        assert_eq!(ru_sent.to, "79161112233");
        let blocked = send(&mut h, 'b', to("r2", Channel::Sms, "+79990000207")).await;
        wait(&mut h, 'b', &blocked.message_id, MessageStatus::Bounced).await;
        let entry = format!("sms_status\n{}\n103\n1767225600", ru_sent.id);
        let sms_ru_url = format!("{}/callbacks/sms_ru/t-b", h.tracking);
        let hash = {
            use aws_lc_rs::digest;
            let d = digest::digest(
                &digest::SHA256,
                format!("{SMS_RU_API_ID}{entry}").as_bytes(),
            );
            d.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let bad = http
            .post(&sms_ru_url)
            .form(&[
                ("data[0]", entry.as_str()),
                ("hash", "0".repeat(64).as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 403);
        let good = http
            .post(&sms_ru_url)
            .form(&[("data[0]", entry.as_str()), ("hash", hash.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(good.status(), 200);
        assert_eq!(good.text().await.unwrap(), "100");
        wait(&mut h, 'b', &ru.message_id, MessageStatus::Delivered).await;
        let replay = http
            .post(&sms_ru_url)
            .form(&[("data[0]", entry.as_str()), ("hash", hash.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 409);
        // Tenant a has no SMS.ru account: its callback address does not exist.
        let elsewhere = http
            .post(format!("{}/callbacks/sms_ru/t-a", h.tracking))
            .form(&[("data[0]", entry.as_str()), ("hash", hash.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), 404);
        h.stop();
    }
);

db_test!(
    provider_faults_still_deliver_every_message_once,
    |db| async move {
        let p = Providers::start().await;
        // Retries are short so the test moves; the 429's Retry-After of 1 s is honoured
        // on the service clock, which the loop below advances.
        let mut h = Harness::start_with(db, |d| {
            d.retry_base_ms = 200;
            d.retry_max_ms = 2_000;
            d.max_attempts = 30;
            d.provider_timeout_ms = 300;
        })
        .await;
        p.inject_faults(30, Duration::from_millis(600));
        template(&mut h, 'a', Channel::Sms, "Мы скучаем").await;
        template(&mut h, 'a', Channel::Push, "Скидка для вас").await;
        settings(&mut h, 'a', Channel::Sms, twilio(&p)).await;
        settings(&mut h, 'a', Channel::Push, fcm(&p)).await;
        let mut ids = Vec::new();
        for i in 0..60 {
            let sms = send(
                &mut h,
                'a',
                to(&format!("s{i}"), Channel::Sms, &format!("+7916000{i:04}")),
            )
            .await;
            let push = send(
                &mut h,
                'a',
                to(&format!("p{i}"), Channel::Push, &format!("device-{i}")),
            )
            .await;
            ids.push(sms.message_id);
            ids.push(push.message_id);
        }
        let mut done = false;
        for _ in 0..300 {
            h.clock.advance(chrono::Duration::seconds(2));
            tokio::time::sleep(Duration::from_millis(50)).await;
            if p.accepted().len() >= 120 {
                done = true;
                break;
            }
        }
        assert!(done, "only {} of 120 delivered", p.accepted().len());
        for id in &ids {
            wait(&mut h, 'a', id, MessageStatus::Sent).await;
        }
        let mut per_contact: HashMap<String, usize> = HashMap::new();
        for a in p.accepted() {
            *per_contact.entry(a.to).or_default() += 1;
        }
        assert_eq!(per_contact.len(), 120);
        assert!(
            per_contact.values().all(|n| *n == 1),
            "a message went out twice"
        );
        let faults = p.state.faults.load(std::sync::atomic::Ordering::SeqCst);
        assert!(faults >= 20, "only {faults} faults were injected");
        h.stop();
    }
);

db_test!(
    no_read_of_delivery_returns_a_secret_and_none_is_stored_in_clear,
    |db| async move {
        let db: &winback_platform::testing::TestDatabase = db;
        let p = Providers::start().await;
        let mut h = Harness::start(db).await;
        template(&mut h, 'a', Channel::Sms, "Анна, мы скучаем").await;
        template(&mut h, 'a', Channel::Push, "Для вас скидка").await;
        template(&mut h, 'a', Channel::ManagerTask, "Позвонить").await;
        let smtp_password = "smtp-password-Zq81";
        let dkim_key = "dkim-private-key-Zq82";
        settings(
            &mut h,
            'a',
            Channel::Email,
            Provider::Smtp(SmtpSettings {
                host: "127.0.0.1".into(),
                port: 2525,
                security: "plain".into(),
                username: "shop".into(),
                password: smtp_password.into(),
                from: "shop@example.ru".into(),
                dkim_private_key: dkim_key.into(),
                ..Default::default()
            }),
        )
        .await;
        settings(&mut h, 'a', Channel::Sms, twilio(&p)).await;
        settings(&mut h, 'a', Channel::Push, fcm(&p)).await;
        let hook = || {
            Provider::Webhook(WebhookSettings {
                url: format!("{}/hook", p.url),
                secret: HOOK_SECRET.into(),
            })
        };
        settings(&mut h, 'a', Channel::ManagerTask, hook()).await;
        let secrets = [
            smtp_password,
            dkim_key,
            TWILIO_TOKEN,
            FCM_TOKEN,
            HOOK_SECRET,
        ];

        // The secrets really are used: messages go out through each provider.
        let sms = send(&mut h, 'a', to("s1", Channel::Sms, "+79161234567")).await;
        wait(&mut h, 'a', &sms.message_id, MessageStatus::Sent).await;
        let push = send(&mut h, 'a', to("p1", Channel::Push, "device-token-1")).await;
        wait(&mut h, 'a', &push.message_id, MessageStatus::Sent).await;
        let task = send(&mut h, 'a', to("m1", Channel::ManagerTask, "manager-7")).await;
        wait(&mut h, 'a', &task.message_id, MessageStatus::Sent).await;

        // Every Get and List of delivery, as text: no secret anywhere.
        let mut reads = Vec::new();
        let settings_read =
            h.a.get_channel_settings(GetChannelSettingsRequest {})
                .await
                .unwrap()
                .into_inner();
        reads.push(format!("{settings_read:?}"));
        reads.push(format!(
            "{:?}",
            h.a.list_messages(ListMessagesRequest::default())
                .await
                .unwrap()
                .into_inner()
        ));
        for id in [&sms.message_id, &push.message_id, &task.message_id] {
            reads.push(format!(
                "{:?}",
                h.a.get_message(GetMessageRequest {
                    message_id: id.clone()
                })
                .await
                .unwrap()
                .into_inner()
            ));
        }
        reads.push(format!(
            "{:?}",
            h.a.list_templates(ListTemplatesRequest::default())
                .await
                .unwrap()
                .into_inner()
        ));
        reads.push(format!(
            "{:?}",
            h.a.get_template(GetTemplateRequest {
                template_id: "nudge".into(),
                channel: Channel::Sms as i32,
                locale: "ru".into(),
            })
            .await
            .unwrap()
            .into_inner()
        ));
        reads.push(format!(
            "{:?}",
            h.a.list_suppressions(ListSuppressionsRequest::default())
                .await
                .unwrap()
                .into_inner()
        ));
        for read in &reads {
            for secret in secrets {
                assert!(!read.contains(secret), "{secret} in {read}");
            }
        }
        // A fingerprint tells which secret is set.
        let fingerprints: HashMap<String, String> = settings_read
            .settings
            .iter()
            .flat_map(|s| s.secret_fingerprints.clone())
            .collect();
        let mut names: Vec<&str> = fingerprints.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "fcm.access_token",
                "smtp.dkim_private_key",
                "smtp.password",
                "twilio.auth_token",
                "webhook.secret"
            ]
        );

        // Nothing of them at rest.
        let conn = winback_platform::db::connect(&db.url("delivery"), "delivery", 1)
            .await
            .unwrap();
        let rows =
            winback_platform::db::query(&conn, "SELECT settings FROM channel_settings", vec![])
                .await
                .unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            let bytes: Vec<u8> = r.try_get("", "settings").unwrap();
            assert!(bytes.starts_with(b"WBS1"));
            for secret in secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} stored in clear"
                );
            }
        }

        // A write that leaves the secret empty keeps it (the next SMS still goes out); a
        // secret named in clear_secrets goes.
        let mut no_token = twilio(&p);
        if let Provider::Twilio(t) = &mut no_token {
            t.auth_token.clear();
        }
        settings(&mut h, 'a', Channel::Sms, no_token).await;
        let again = send(&mut h, 'a', to("s2", Channel::Sms, "+79161234568")).await;
        wait(&mut h, 'a', &again.message_id, MessageStatus::Sent).await;
        h.a.set_channel_settings(SetChannelSettingsRequest {
            settings: Some(ChannelSettings {
                channel: Channel::ManagerTask as i32,
                provider: Some(hook()),
                clear_secrets: vec!["webhook.secret".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        let after =
            h.a.get_channel_settings(GetChannelSettingsRequest {})
                .await
                .unwrap()
                .into_inner();
        assert!(
            after
                .settings
                .iter()
                .all(|s| !s.secret_fingerprints.contains_key("webhook.secret"))
        );
        let err =
            h.a.set_channel_settings(SetChannelSettingsRequest {
                settings: Some(ChannelSettings {
                    channel: Channel::ManagerTask as i32,
                    provider: Some(hook()),
                    clear_secrets: vec!["webhook.url".into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            winback_platform::error::field_violations(&err)[0].field,
            "settings.clear_secrets"
        );
        h.stop();

        // Rotating the key: the next start re-seals every row under the new key, and the
        // secrets still open (the same fingerprints).
        let new_key =
            winback_platform::secrets::SecretBox::rotate(&db.dir().join("keys/secrets.key"))
                .unwrap();
        let mut h = Harness::start(db).await;
        let mut resealed = false;
        for _ in 0..200 {
            let rows =
                winback_platform::db::query(&conn, "SELECT settings FROM channel_settings", vec![])
                    .await
                    .unwrap();
            resealed = rows.iter().all(|r| {
                let bytes: Vec<u8> = r.try_get("", "settings").unwrap();
                winback_platform::secrets::SecretBox::key_id_of(&bytes) == Some(new_key.as_str())
            });
            if resealed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(resealed, "every row sealed under {new_key}");
        let reread =
            h.a.get_channel_settings(GetChannelSettingsRequest {})
                .await
                .unwrap()
                .into_inner();
        let sms_fingerprint = |r: &GetChannelSettingsResponse| {
            r.settings
                .iter()
                .find_map(|s| s.secret_fingerprints.get("twilio.auth_token").cloned())
        };
        assert_eq!(sms_fingerprint(&reread), sms_fingerprint(&settings_read));
        h.stop();
    }
);
