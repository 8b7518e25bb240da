//! `winback demo`: the whole job on a generated shop. The embedded stack starts on a manual
//! clock in a fresh folder; a seeded shop is loaded through the profiles API; segmentation
//! finds who is asleep; campaigns run the classic four-touch chain with an offer ladder
//! (10 % holdout), the dead-customer cleanup and the abandoned-cart trigger; the clock
//! moves through 45 days while a seeded response model opens (through delivery's tracking
//! links), clicks, redeems and buys; the report is printed and written as JSON and HTML.

pub mod html;
pub mod respond;
pub mod shop;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::clock::{Clock, ManualClock};
use winback_platform::config::{Config, DeliveryConfig, EventsConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::time::{to_duration, to_timestamp};
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::*;
use winback_proto::common::{
    Channel as Medium, LifecycleState, MessagePurpose, Money, PageRequest,
};
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::delivery::{
    ChannelSettings, FileSinkSettings, MessageTemplate, SetChannelSettingsRequest,
    UpsertTemplateRequest, channel_settings,
};
use winback_proto::events::event::Payload;
use winback_proto::events::events_service_client::EventsServiceClient;
use winback_proto::events::{EventSource, SubscribeRequest};
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::offers::*;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::*;
use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient;
use winback_proto::segmentation::{GetSegmentSummaryRequest, RecomputeRequest};

use self::shop::{Kind, Shop};

type Authed = InterceptedService<Channel, CallCredentials>;

/// What `winback demo` is asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Customers to generate.
    pub customers: usize,
    /// Seed of the shop and of the response model.
    pub seed: u64,
    /// Output folder (replaced).
    pub out: PathBuf,
    /// Days the clock moves through.
    pub days: i64,
    /// Show progress bars.
    pub progress: bool,
    /// A folder with `customers.csv`, `orders.csv` and optionally `events.csv` (columns:
    /// docs/import.md) to replay instead of a generated shop.
    pub import: Option<PathBuf>,
}

/// What a demo run produced.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The win-back campaign's report.
    pub report: GetCampaignReportResponse,
    /// Segment summary after the first recompute.
    pub summary: winback_proto::segmentation::GetSegmentSummaryResponse,
    /// Seconds the run took.
    pub seconds: f64,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// The data folder (SQLite files, outbox).
    pub data_dir: PathBuf,
    /// The tenant the shop runs under.
    pub tenant_id: String,
    /// The win-back campaign.
    pub campaign_id: String,
}

/// The clock the demo starts at: a Monday morning in Moscow.
pub fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_300_800, 0).unwrap_or_default() // 2026-06-01T08:00:00Z
}

struct Clients {
    profiles: ProfilesServiceClient<Authed>,
    segmentation: SegmentationServiceClient<Authed>,
    campaigns: CampaignsServiceClient<Authed>,
    offers: OffersServiceClient<Authed>,
    delivery: DeliveryServiceClient<Authed>,
    events: EventsServiceClient<Authed>,
}

fn bar(progress: bool, len: u64, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let began = Instant::now();
    if opts.out.exists() {
        std::fs::remove_dir_all(&opts.out)
            .with_context(|| format!("remove the old {}", opts.out.display()))?;
    }
    std::fs::create_dir_all(&opts.out)?;
    let tracking = free_port()?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: opts.out.clone(),
        delivery: DeliveryConfig {
            tracking_listen: Some(format!("127.0.0.1:{tracking}").parse()?),
            public_url: format!("http://127.0.0.1:{tracking}"),
            ..DeliveryConfig::default()
        },
        // The demo moves the clock as soon as the work of a tick is done: the step and send
        // workers wake on every move of the manual clock (they polled every 10–20 ms, a
        // fifth of the demo's statements); the event feeds look for news often (they also
        // wake on their outbox's commits; 200 ms here measured no faster).
        // One tenant on one machine: the demo is not throttled.
        quotas: winback_platform::config::QuotaConfig::unlimited(),
        events: EventsConfig {
            poll_interval_ms: 20,
            ..EventsConfig::default()
        },
        ..Config::default()
    };
    let start = match &opts.import {
        Some(dir) => import_start(dir)?,
        None => start_time(),
    };
    let clock = ManualClock::new(start);
    let stack =
        crate::embedded::EmbeddedStack::start(config.clone(), Arc::new(clock.clone())).await?;
    let config = Config {
        listen: stack.addr,
        ..config
    };
    let tenant = crate::admin::create_tenant(&config, "Demo home goods").await?;
    let channel = winback_platform::grpc::lazy_channel(&stack.url())?;
    let authed = InterceptedService::new(channel, CallCredentials::bearer(&tenant.token)?);
    let limit = 64 * 1024 * 1024;
    let mut c = Clients {
        profiles: ProfilesServiceClient::new(authed.clone()).max_decoding_message_size(limit),
        segmentation: SegmentationServiceClient::new(authed.clone())
            .max_decoding_message_size(limit),
        campaigns: CampaignsServiceClient::new(authed.clone()).max_decoding_message_size(limit),
        offers: OffersServiceClient::new(authed.clone()),
        delivery: DeliveryServiceClient::new(authed.clone()),
        events: EventsServiceClient::new(authed),
    };

    let loading = Instant::now();
    let shop = match &opts.import {
        None => {
            let shop = shop::generate(opts.customers, opts.seed, clock.now());
            let generated = loading.elapsed();
            let split = load(&mut c, &shop, &clock, opts.progress).await?;
            println!(
                "Loaded {} customers and {} orders through the profiles API in {:.1} s \
                 (generating {:.1} s, customers {:.1} s, consents {:.1} s, orders {:.1} s).",
                shop.customers.len(),
                shop.orders.len(),
                loading.elapsed().as_secs_f64(),
                generated.as_secs_f64(),
                split[0].as_secs_f64(),
                split[1].as_secs_f64(),
                split[2].as_secs_f64()
            );
            shop
        }
        Some(dir) => {
            import(&mut c, dir).await?;
            println!(
                "Imported {} through the profiles API in {:.1} s; the clock starts at {}.",
                dir.display(),
                loading.elapsed().as_secs_f64(),
                clock.now().format("%Y-%m-%d %H:%M UTC")
            );
            imported_shop(&mut c, clock.now()).await?
        }
    };

    let run = c
        .segmentation
        // No as-of: the services' clock is the demo's, and the current facts are read.
        .recompute(RecomputeRequest {
            as_of: None,
            ..Default::default()
        })
        .await?
        .into_inner();
    let summary = c
        .segmentation
        .get_segment_summary(GetSegmentSummaryRequest {
            locale: "en".into(),
            history_limit: 0,
        })
        .await?
        .into_inner();
    println!(
        "\nSegments of {} customers (recomputed in {:.1} s):\n",
        run.customers_scored,
        run.took
            .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
    );
    print!("{}", crate::segments::render_summary(&summary));

    let setting_up = Instant::now();
    let (campaign_id, campaign_names) = set_up_campaigns(&mut c, opts.seed).await?;
    // Abandoned carts arrive as engagement: the trigger enrols them.
    let carts: Vec<EngagementEvent> = shop
        .abandoned_carts
        .iter()
        .map(|&i| EngagementEvent {
            event_id: format!("cart-{i}"),
            customer_id: shop.customers[i].id.clone(),
            occurred_at: Some(to_timestamp(clock.now())),
            kind: Some(engagement_event::Kind::CartAbandoned(CartAbandoned {
                value: Some(rub(shop.customers[i].mean_check_minor)),
                lines: vec![],
            })),
        })
        .collect();
    // A call takes at most 1,000 events (1 % of a shop over 100,000 customers is more).
    for events in carts.chunks(1000) {
        c.profiles
            .record_engagement(RecordEngagementRequest {
                events: events.to_vec(),
            })
            .await?;
    }

    // Campaigns first reads the history the load wrote (every purchase is an event).
    caught_up(&config).await?;
    println!(
        "Campaigns set up, enrolled and caught up with the history in {:.1} s.",
        setting_up.elapsed().as_secs_f64()
    );
    let mut sim = Simulation::new(&shop, opts.seed, &opts.out, &tenant.tenant_id, start);
    sim.campaign_names = campaign_names;
    sim.set_members(members(&mut c, &campaign_id).await?);
    let campaigns_db = winback_platform::db::connect(
        &config.database.url_for("campaigns", &config.data_dir),
        "campaigns",
        1,
    )
    .await?;
    let delivery_db = winback_platform::db::connect(
        &config.database.url_for("delivery", &config.data_dir),
        "delivery",
        1,
    )
    .await?;
    let ticks = opts.days * 4;
    let chains = Instant::now();
    let progress = bar(opts.progress, ticks as u64, "45 days of chains");
    // Every step due at a time runs before the clock moves on: the steps enrolment made
    // due right now first.
    settle(&campaigns_db, clock.now()).await?;
    // Where a tick's time goes: the services running the due steps, the customers reacting.
    let (mut stepping, mut reacting) = (StdDuration::ZERO, StdDuration::ZERO);
    for _ in 0..ticks {
        clock.advance(Duration::hours(6));
        let started = Instant::now();
        settle(&campaigns_db, clock.now()).await?;
        sent_out(&delivery_db).await?;
        stepping += started.elapsed();
        let started = Instant::now();
        sim.react(&mut c, &campaigns_db, clock.now()).await?;
        // The reactions reach campaigns before the clock moves on, so a step's condition
        // ("not opened yet") sees the same opens in every run of a seed.
        caught_up(&config).await?;
        reacting += started.elapsed();
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!(
        "Ran {} days of chains in {:.1} s (steps {:.1} s; customers {:.1} s: reading {:.1} s, \
         opening and clicking {:.1} s, buying {:.1} s).",
        opts.days,
        chains.elapsed().as_secs_f64(),
        stepping.as_secs_f64(),
        reacting.as_secs_f64(),
        sim.spent[0].as_secs_f64(),
        sim.spent[1].as_secs_f64(),
        sim.spent[2].as_secs_f64()
    );
    // The last purchases, opens and redemptions reach campaigns, then the report.
    caught_up(&config).await?;
    let report = c
        .campaigns
        .get_campaign_report(GetCampaignReportRequest {
            campaign_id: campaign_id.clone(),
        })
        .await?
        .into_inner();
    println!("\n{}", crate::campaign_report::render(&report));

    let mut written = Vec::new();
    let json_path = opts.out.join("report.json");
    let json = serde_json::json!({
        "seed": opts.seed,
        "customers": opts.customers,
        "segments": crate::segments::summary_json(&summary),
        "campaign": crate::campaign_report::to_json(&report),
        "returns_over_time": sim.timeline_json(),
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    written.push(json_path);
    let html_path = opts.out.join("report.html");
    std::fs::write(&html_path, html::page(&summary, &report, &sim.timeline))?;
    written.push(html_path);
    written.push(opts.out.join("outbox"));
    stack.stop().await?;
    if winback_platform::db::statement_profile::enabled() {
        eprintln!("{}", winback_platform::db::statement_profile::report(40));
    }
    Ok(DemoOutcome {
        report,
        summary,
        seconds: began.elapsed().as_secs_f64(),
        written,
        data_dir: opts.out.clone(),
        tenant_id: tenant.tenant_id,
        campaign_id,
    })
}

fn rub(minor: i64) -> Money {
    Money {
        amount_minor: minor,
        currency: "RUB".into(),
    }
}

/// Customers, consents and orders through the profiles API.
async fn load(
    c: &mut Clients,
    shop: &Shop,
    clock: &ManualClock,
    progress: bool,
) -> anyhow::Result<[StdDuration; 3]> {
    let mut split = [StdDuration::ZERO; 3];
    let started = Instant::now();
    let customers = bar(progress, shop.customers.len() as u64, "customers");
    for chunk in shop.customers.chunks(1000) {
        c.profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers: chunk
                    .iter()
                    .map(|s| Customer {
                        customer_id: s.id.clone(),
                        name: s.name.clone(),
                        email: s.email.clone(),
                        phone: s.phone.clone(),
                        push_tokens: if s.push_token.is_empty() {
                            vec![]
                        } else {
                            vec![PushToken {
                                platform: "android".into(),
                                token: s.push_token.clone(),
                            }]
                        },
                        locale: "en".into(),
                        time_zone: s.time_zone.clone(),
                        ..Customer::default()
                    })
                    .collect(),
            })
            .await?;
        customers.inc(chunk.len() as u64);
    }
    customers.finish_and_clear();
    split[0] = started.elapsed();
    let started = Instant::now();
    let consents: Vec<(String, Medium)> = shop
        .customers
        .iter()
        .flat_map(|s| {
            [
                (s.email_consent, Medium::Email),
                (s.sms_consent, Medium::Sms),
                (s.push_consent, Medium::Push),
            ]
            .into_iter()
            .filter(|(yes, _)| *yes)
            .map(|(_, m)| (s.id.clone(), m))
        })
        .collect();
    let consent_bar = bar(progress, consents.len() as u64, "consents");
    let at = to_timestamp(clock.now() - Duration::days(1));
    for chunk in consents.chunks(1000) {
        c.profiles
            .record_consents(RecordConsentsRequest {
                consents: chunk
                    .iter()
                    .map(|(id, medium)| RecordConsentRequest {
                        request_id: String::new(),
                        customer_id: id.clone(),
                        consent: Some(ConsentRecord {
                            channel: *medium as i32,
                            purpose: MessagePurpose::Advertising as i32,
                            granted: true,
                            source: "signup_form".into(),
                            recorded_at: Some(at),
                        }),
                        do_not_contact: false,
                    })
                    .collect(),
            })
            .await?;
        consent_bar.inc(chunk.len() as u64);
    }
    consent_bar.finish_and_clear();
    split[1] = started.elapsed();
    let started = Instant::now();
    // One client stream, as `winback import` sends orders: the service records the chunks
    // that arrive together in one transaction.
    let orders = bar(progress, shop.orders.len() as u64, "orders");
    let chunks: Vec<StreamOrdersRequest> = shop
        .orders
        .chunks(1000)
        .map(|chunk| StreamOrdersRequest {
            orders: chunk
                .iter()
                .map(|o| Order {
                    order_id: o.order_id.clone(),
                    customer_id: shop.customers[o.customer].id.clone(),
                    placed_at: Some(to_timestamp(o.placed_at)),
                    total: Some(rub(o.total_minor)),
                    ..Order::default()
                })
                .collect(),
            skip_invalid: false,
        })
        .collect();
    let sent = orders.clone();
    let reply = c
        .profiles
        .stream_orders(futures::stream::iter(chunks).map(move |chunk| {
            sent.inc(chunk.orders.len() as u64);
            chunk
        }))
        .await?
        .into_inner();
    anyhow::ensure!(
        reply.recorded as usize == shop.orders.len(),
        "the profiles service recorded {} of {} orders",
        reply.recorded,
        shop.orders.len()
    );
    orders.finish_and_clear();
    split[2] = started.elapsed();
    Ok(split)
}

/// Where the clock of an imported history starts: 08:00 UTC of the day after its last
/// order or event, so the latest purchase is recent and nothing lies in the future.
fn import_start(dir: &Path) -> anyhow::Result<DateTime<Utc>> {
    let orders = crate::import::latest_time(&dir.join("orders.csv"), "placed_at")?;
    let events_path = dir.join("events.csv");
    let events = if events_path.exists() {
        crate::import::latest_time(&events_path, "occurred_at")?
    } else {
        None
    };
    let last = orders
        .max(events)
        .with_context(|| format!("{}: no order with a readable placed_at", dir.display()))?;
    let day = (last + Duration::days(1)).date_naive();
    Ok(day
        .and_hms_opt(8, 0, 0)
        .map_or(last + Duration::days(1), |t| t.and_utc()))
}

/// Imports the folder's files as `winback import` does and prints the import's report.
async fn import(c: &mut Clients, dir: &Path) -> anyhow::Result<()> {
    let mut reports = vec![
        crate::import::customers(&mut c.profiles, &dir.join("customers.csv")).await?,
        crate::import::orders(&mut c.profiles, &dir.join("orders.csv")).await?,
    ];
    let events = dir.join("events.csv");
    if events.exists() {
        reports.push(crate::import::events(&mut c.profiles, &events).await?);
    }
    for r in &reports {
        println!(
            "{}: {} rows, {} stored, {} rejected",
            r.file,
            r.rows,
            r.stored,
            r.rejected.len()
        );
        for rejected in r.rejected.iter().take(10) {
            println!("  line {}: {}", rejected.line, rejected.reason);
        }
        if r.rejected.len() > 10 {
            println!("  … and {} more", r.rejected.len() - 10);
        }
    }
    Ok(())
}

/// The imported customers as the response model sees them, from their facts.
async fn imported_shop(c: &mut Clients, now: DateTime<Utc>) -> anyhow::Result<Shop> {
    let mut stream = c
        .profiles
        .stream_facts(StreamFactsRequest {
            changed_since_cursor: String::new(),
            chunk_size: 5000,
            as_of: None,
        })
        .await?
        .into_inner();
    let mut facts = Vec::new();
    while let Some(chunk) = stream.message().await? {
        facts.extend(chunk.facts);
    }
    Ok(shop::from_facts(&facts, now))
}

fn email_template(id: &str, subject: &str, body: &str) -> MessageTemplate {
    MessageTemplate {
        template_id: id.into(),
        channel: Medium::Email as i32,
        subject: subject.into(),
        text: format!("{body}\n\nhttps://shop.example/back"),
        html: format!(
            "<html>\n<body>\n<p>{body}</p>\n<p><a href=\"https://shop.example/back\">Come back</a></p>\n</body>\n</html>"
        ),
        ..MessageTemplate::default()
    }
}

fn short_template(id: &str, channel: Medium, body: &str) -> MessageTemplate {
    MessageTemplate {
        template_id: id.into(),
        channel: channel as i32,
        text: body.into(),
        ..MessageTemplate::default()
    }
}

/// Templates, offers and a ladder, the three chains and the three campaigns. Returns the
/// win-back campaign.
/// Creates and starts the demo's campaigns; returns the win-back campaign's id and every
/// campaign's name by id. Each campaign's holdout split is seeded by the demo's seed and its
/// name, so the same seed splits the same customers in every run.
async fn set_up_campaigns(
    c: &mut Clients,
    seed: u64,
) -> anyhow::Result<(String, HashMap<String, String>)> {
    let texts = [
        (
            "winback_reminder",
            "We missed you",
            "You have not visited for a while, {{ customer.first_name }}. We kept something for you.",
        ),
        (
            "winback_value",
            "New this season",
            "New arrivals picked for you. Have a look.",
        ),
        (
            "winback_limited_offer",
            "An offer for 72 hours",
            "Your personal code {{ coupon.code }}: {{ coupon.hours_left }} hours left.",
        ),
        (
            "winback_last_chance",
            "24 hours left",
            "Last day for your code {{ coupon.code }}.",
        ),
        (
            "winback_breaking_up",
            "Are we breaking up?",
            "Should we stop writing? Click if you want to hear from us.",
        ),
        (
            "cart_reminder",
            "Your cart is waiting",
            "The things you picked are still in your cart.",
        ),
    ];
    for (id, subject, body) in texts {
        for template in [
            email_template(id, subject, body),
            short_template(id, Medium::Sms, body),
            short_template(id, Medium::Push, body),
        ] {
            c.delivery
                .upsert_template(UpsertTemplateRequest {
                    template: Some(template),
                })
                .await?;
        }
    }
    // What each message costs (the file sink stands in for the providers).
    for (channel, kopecks) in [(Medium::Email, 50), (Medium::Sms, 400), (Medium::Push, 10)] {
        c.delivery
            .set_channel_settings(SetChannelSettingsRequest {
                settings: Some(ChannelSettings {
                    channel: channel as i32,
                    provider: Some(channel_settings::Provider::FileSink(FileSinkSettings {
                        directory: String::new(),
                    })),
                    cost_per_message: Some(rub(kopecks)),
                    ..ChannelSettings::default()
                }),
            })
            .await?;
    }
    c.delivery
        .upsert_template(UpsertTemplateRequest {
            template: Some(short_template(
                "manager_call_task",
                Medium::ManagerTask,
                "Call {{ customer.name }} about the cart left yesterday.",
            )),
        })
        .await?;
    // An escalating ladder: free shipping → 10 % → 500 RUB off from 3,000 RUB.
    let mut rungs = Vec::new();
    for (name, kind, percent, amount, cost) in [
        ("Free shipping", OfferKind::FreeShipping, 0, 30_000, 30_000),
        ("10 % off", OfferKind::PercentOff, 10, 0, 25_000),
        ("500 RUB off", OfferKind::AmountOff, 0, 50_000, 50_000),
    ] {
        let t = c
            .offers
            .create_offer_template(CreateOfferTemplateRequest {
                request_id: String::new(),
                template: Some(OfferTemplate {
                    name: name.into(),
                    kind: kind as i32,
                    percent_off: percent,
                    amount: (amount > 0).then(|| rub(amount)),
                    valid_for: Some(to_duration(Duration::hours(72))),
                    estimated_cost: Some(rub(cost)),
                    ..OfferTemplate::default()
                }),
            })
            .await?
            .into_inner()
            .template
            .unwrap_or_default();
        rungs.push(t.template_id);
    }
    let ladder = c
        .offers
        .create_ladder(CreateLadderRequest {
            request_id: String::new(),
            ladder: Some(Ladder {
                ladder_id: String::new(),
                name: "soft to strong".into(),
                template_ids: rungs,
            }),
        })
        .await?
        .into_inner()
        .ladder
        .unwrap_or_default()
        .ladder_id;
    let presets = c
        .campaigns
        .list_chain_presets(ListChainPresetsRequest {})
        .await?
        .into_inner()
        .presets;
    let preset = |key: &str| {
        presets
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.chain.clone())
            .unwrap_or_default()
    };
    let mut classic = preset("classic_four_touch");
    if let Some(step) = classic.steps.get_mut(2) {
        step.offer_ladder_id = ladder;
    }
    let create = |chain: Chain| {
        let mut campaigns = c.campaigns.clone();
        async move {
            Ok::<_, tonic::Status>(
                campaigns
                    .create_chain(CreateChainRequest {
                        request_id: String::new(),
                        chain: Some(chain),
                    })
                    .await?
                    .into_inner()
                    .chain
                    .unwrap_or_default()
                    .chain_id,
            )
        }
    };
    let classic = create(classic).await?;
    let dead = create(preset("dead_cleanup")).await?;
    let cart = create(preset("abandoned_cart")).await?;
    let mut winback = String::new();
    let mut names = HashMap::new();
    for (name, chain, audience, holdout, is_winback) in [
        (
            "Win back the sleeping",
            classic,
            Audience {
                lifecycle_states: vec![
                    LifecycleState::HotInactive as i32,
                    LifecycleState::Sleeping as i32,
                    LifecycleState::NearlyLost as i32,
                ],
                ..Audience::default()
            },
            10,
            true,
        ),
        (
            "Are we breaking up?",
            dead,
            Audience {
                lifecycle_states: vec![LifecycleState::Dead as i32],
                ..Audience::default()
            },
            0,
            false,
        ),
        (
            "Abandoned cart",
            cart,
            Audience {
                triggers: vec![Trigger::CartAbandoned as i32],
                ..Audience::default()
            },
            0,
            false,
        ),
    ] {
        let id = c
            .campaigns
            .create_campaign(CreateCampaignRequest {
                request_id: String::new(),
                campaign: Some(Campaign {
                    name: name.into(),
                    chain_id: chain,
                    audience: Some(audience.clone()),
                    holdout_percent: holdout,
                    winback: is_winback,
                    assignment_seed: format!("demo-{seed}-{name}"),
                    ..Campaign::default()
                }),
            })
            .await?
            .into_inner()
            .campaign
            .unwrap_or_default()
            .campaign_id;
        c.campaigns
            .activate_campaign(ActivateCampaignRequest {
                campaign_id: id.clone(),
            })
            .await?;
        if !audience.lifecycle_states.is_empty() {
            let r = c
                .campaigns
                .enrol_audience(EnrolAudienceRequest {
                    campaign_id: id.clone(),
                })
                .await?
                .into_inner();
            let mut skipped: Vec<String> =
                r.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
            skipped.sort();
            println!(
                "{name}: {} enrolled, {} held out; not enrolled: {}",
                r.enrolled,
                r.held_out,
                if skipped.is_empty() {
                    "nobody".into()
                } else {
                    skipped.join(", ")
                }
            );
        }
        names.insert(id.clone(), name.to_owned());
        if is_winback {
            winback = id;
        }
    }
    Ok((winback, names))
}

/// Who is in the win-back campaign: customer → (enrolment id, held out).
async fn members(c: &mut Clients, campaign_id: &str) -> anyhow::Result<HashMap<String, bool>> {
    let mut out = HashMap::new();
    let mut token = String::new();
    loop {
        let page = c
            .campaigns
            .list_enrolments(ListEnrolmentsRequest {
                campaign_id: campaign_id.into(),
                customer_id: String::new(),
                state: 0,
                page: Some(PageRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                }),
            })
            .await?
            .into_inner();
        for e in page.enrolments {
            if e.state == EnrolmentState::Running as i32
                || e.state == EnrolmentState::Holdout as i32
            {
                out.insert(e.customer_id, e.state == EnrolmentState::Holdout as i32);
            }
        }
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            return Ok(out);
        }
    }
}

/// Waits until the campaigns workers have run every step due by `now` (the demo reads the
/// campaigns database of its own embedded stack for that, nothing else).
async fn settle(db: &sea_orm::DatabaseConnection, now: DateTime<Utc>) -> anyhow::Result<()> {
    // A tick can make thousands of steps due at once (the first reminders of everyone).
    for _ in 0..24_000 {
        let rows = winback_platform::db::query(
            db,
            // EXISTS, not COUNT: while thousands of steps are due, a count walks all of
            // them every 5 ms (2,200 counts, 2.4 s of a 50,000-customer run).
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM enrolments WHERE state = 1 AND due_at_us <= $1)
                  OR EXISTS (SELECT 1 FROM enrolment_requests) THEN 1 ELSE 0 END AS n",
            vec![now.timestamp_micros().into()],
        )
        .await?;
        let n: i64 = rows.first().map_or(Ok(0), |r| r.try_get("", "n"))?;
        if n == 0 {
            return Ok(());
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    anyhow::bail!("campaign steps did not run within 120 s")
}

/// Waits until delivery has sent every message it was given (none queued or sending):
/// the tracking server ignores an open of a message not yet out, so reacting earlier would
/// lose opens by chance, and a seeded run would differ from the next.
async fn sent_out(db: &sea_orm::DatabaseConnection) -> anyhow::Result<()> {
    for _ in 0..24_000 {
        let rows = winback_platform::db::query(
            db,
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM messages WHERE status IN (1, 2)) THEN 1 ELSE 0 END AS n",
            vec![],
        )
        .await?;
        let n: i64 = rows.first().map_or(Ok(0), |r| r.try_get("", "n"))?;
        if n == 0 {
            return Ok(());
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    anyhow::bail!("delivery did not send its messages within 120 s")
}

/// Waits until campaigns has handled every event profiles, delivery and offers wrote (the
/// demo compares campaigns' stored cursors with the heads of those outboxes, in its own
/// data folder).
async fn caught_up(config: &Config) -> anyhow::Result<()> {
    let open = |service: &'static str| {
        let url = config.database.url_for(service, &config.data_dir);
        async move { winback_platform::db::connect(&url, service, 1).await }
    };
    let campaigns = open("campaigns").await?;
    for source in ["profiles", "delivery", "offers"] {
        let head = outbox_head(&open(source).await?).await?;
        let started = Instant::now();
        loop {
            let rows = winback_platform::db::query(
                &campaigns,
                "SELECT position FROM event_cursor WHERE consumer = 'campaigns' AND source = $1",
                vec![source.into()],
            )
            .await?;
            let position: String = rows
                .first()
                .map_or(Ok(String::new()), |r| r.try_get("", "position"))?;
            if cursor_place(&position) >= head {
                break;
            }
            if started.elapsed() > StdDuration::from_secs(300) {
                anyhow::bail!("campaigns did not catch up with {source}'s events in 300 s");
            }
            tokio::time::sleep(StdDuration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// The place of the last event in a service's event outbox: its row's sequence number and
/// its index in the row ((0, 0) for an empty outbox).
async fn outbox_head(db: &sea_orm::DatabaseConnection) -> anyhow::Result<(i64, i64)> {
    let rows = winback_platform::db::query(
        db,
        "SELECT seq, event_count FROM event_outbox ORDER BY seq DESC LIMIT 1",
        vec![],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok((0, 0));
    };
    let event_count: i64 = row.try_get("", "event_count")?;
    Ok((row.try_get("", "seq")?, event_count - 1))
}

/// The place a feed cursor names, comparable with [`outbox_head`] ((0, 0) for the start).
fn cursor_place(cursor: &str) -> (i64, i64) {
    cursor
        .parse::<winback_platform::events::Cursor>()
        .map_or((0, 0), |c| (c.seq, c.index))
}

/// Pixel and link fetches in flight at once: recipients read their mail side by side, and
/// the tracking server records the reactions that arrive together in one commit.
const FETCHES_AT_ONCE: usize = 256;

/// A member of the win-back campaign, as the simulation sees them.
struct Member<'a> {
    id: &'a str,
    /// Index in the shop.
    index: usize,
    holdout: bool,
    /// Chance of coming back on their own within one 6-hour tick.
    tick_chance: f64,
}

/// Tries of one pixel or link fetch.
const FETCH_TRIES: u32 = 6;

/// How long (× 10 ms) a sent email's file may take to appear in the outbox.
const EML_WAIT_TRIES: usize = 500;

/// The customers' side of the demo: reading mail, clicking, buying, coming back.
struct Simulation<'a> {
    shop: &'a Shop,
    seed: u64,
    outbox: PathBuf,
    index: HashMap<&'a str, usize>,
    /// The win-back campaign's members, treated and held out.
    members: Vec<Member<'a>>,
    cursor: String,
    /// Campaign names by id: a customer's reactions are drawn by campaign name, customer
    /// and step, not by the (random) message id, so a seed gives the same run every time.
    campaign_names: HashMap<String, String>,
    /// Emails not yet on disk when first looked for: (message id, customer, coupon, draw key).
    unread: Vec<(String, String, String, String)>,
    /// Came back during the run, by index in the shop.
    returned: Vec<bool>,
    orders: u64,
    http: reqwest::Client,
    /// (day, treated return rate, holdout return rate).
    pub timeline: Vec<(i64, f64, f64)>,
    /// Time spent reading the touches (feed and `.eml` files), opening and clicking through
    /// the tracking server, and buying.
    spent: [StdDuration; 3],
    start: DateTime<Utc>,
}

impl<'a> Simulation<'a> {
    fn new(shop: &'a Shop, seed: u64, out: &Path, tenant: &str, start: DateTime<Utc>) -> Self {
        Self {
            shop,
            seed,
            outbox: out.join("outbox").join(tenant),
            index: shop
                .customers
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.as_str(), i))
                .collect(),
            members: Vec::new(),
            cursor: String::new(),
            campaign_names: HashMap::new(),
            unread: Vec::new(),
            returned: vec![false; shop.customers.len()],
            orders: 0,
            // Redirects are not followed: the tracked link points at a made-up shop.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            timeline: Vec::new(),
            spent: [StdDuration::ZERO; 3],
            start,
        }
    }

    fn kind(&self, customer: &str) -> Option<(Kind, bool)> {
        let c = &self.shop.customers[*self.index.get(customer)?];
        Some((c.kind, c.email.ends_with("@old-mail.example")))
    }

    /// Who is in the win-back campaign (customer → held out), in a stable order; each
    /// member's chance of coming back on their own in a 6-hour tick is worked out once.
    fn set_members(&mut self, members: HashMap<String, bool>) {
        let mut members: Vec<Member<'a>> = members
            .into_iter()
            .filter_map(|(customer, holdout)| {
                let (&id, &index) = self.index.get_key_value(customer.as_str())?;
                let kind = self.shop.customers[index].kind;
                Some(Member {
                    id,
                    index,
                    holdout,
                    tick_chance: 1.0 - (1.0 - respond::natural_daily(kind)).powf(0.25),
                })
            })
            .collect();
        members.sort_unstable_by_key(|m| m.index);
        self.members = members;
    }

    fn has_returned(&self, customer: &str) -> bool {
        self.index.get(customer).is_some_and(|&i| self.returned[i])
    }

    /// One 6-hour tick: new touches are read (or not), clicked, bought from; everyone in
    /// the campaign may also come back on their own.
    async fn react(
        &mut self,
        c: &mut Clients,
        campaigns_db: &sea_orm::DatabaseConnection,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        // Every step of this tick is committed with its event: read the campaigns feed up to
        // its head (no waiting for silence).
        let head = outbox_head(campaigns_db).await?;
        if head > cursor_place(&self.cursor) {
            let mut stream = c
                .events
                .subscribe(SubscribeRequest {
                    source: EventSource::Campaigns as i32,
                    after_cursor: self.cursor.clone(),
                    types: vec![],
                    tenant_id: String::new(),
                })
                .await?
                .into_inner();
            while let Some(reply) = stream.message().await? {
                let Some(event) = reply.event else { continue };
                self.cursor = event.cursor.clone();
                if let Some(Payload::StepExecuted(s)) = event.payload
                    && s.outcome == winback_proto::common::StepResult::Sent as i32
                    && s.channel == Medium::Email as i32
                {
                    let campaign = self
                        .campaign_names
                        .get(&s.campaign_id)
                        .map_or(s.campaign_id.as_str(), String::as_str);
                    let draw = format!("{campaign}/{}/{}", s.customer_id, s.step);
                    self.unread
                        .push((s.message_id, s.customer_id, s.coupon_code, draw));
                }
                if cursor_place(&self.cursor) >= head {
                    break;
                }
            }
        }
        let reading = Instant::now();
        // Decide first, then fetch the pixels and links side by side (as many recipients
        // do at once), then buy.
        let unread = std::mem::take(&mut self.unread);
        let mut fetches = Vec::new();
        let mut buyers = Vec::new();
        for (message_id, customer, coupon, draw) in unread {
            let path = self.outbox.join(format!("{message_id}.eml"));
            // The file sink writes a moment after the step is recorded: wait for it rather
            // than reading it a tick later, which would move the reaction in time and
            // make a seeded run differ from the next.
            let mut raw = std::fs::read_to_string(&path);
            for _ in 0..EML_WAIT_TRIES {
                if raw.is_ok() {
                    break;
                }
                tokio::time::sleep(StdDuration::from_millis(10)).await;
                raw = std::fs::read_to_string(&path);
            }
            let Ok(raw) = raw else {
                self.unread.push((message_id, customer, coupon, draw));
                continue;
            };
            let Some((kind, dead_address)) = self.kind(&customer) else {
                continue;
            };
            if respond::draw(self.seed, &draw, "open") >= respond::open(kind, dead_address) {
                continue;
            }
            let links = tracking_links(&raw);
            fetches.extend(links.iter().find(|l| l.contains("/o/")).cloned());
            if respond::draw(self.seed, &draw, "click") >= respond::click(kind) {
                continue;
            }
            fetches.extend(links.iter().find(|l| l.contains("/c/")).cloned());
            if !self.has_returned(&customer)
                && respond::draw(self.seed, &draw, "buy") < respond::buy(kind, !coupon.is_empty())
            {
                buyers.push((customer, coupon));
            }
        }
        self.spent[0] += reading.elapsed();
        let fetching = Instant::now();
        let http = self.http.clone();
        futures::stream::iter(fetches.into_iter().map(|url| {
            let http = http.clone();
            async move {
                // A click's redirect goes to the shop, which does not exist here. A busy
                // tracking server answers 503 and a real client retries; so does this one,
                // or a reaction would be lost by chance and a seeded run would differ.
                for attempt in 0..FETCH_TRIES {
                    match http.get(&url).send().await {
                        Ok(r) if !r.status().is_server_error() => break,
                        _ => tokio::time::sleep(StdDuration::from_millis(20 << attempt)).await,
                    }
                }
            }
        }))
        .buffer_unordered(FETCHES_AT_ONCE)
        .collect::<Vec<()>>()
        .await;
        self.spent[1] += fetching.elapsed();
        let buying = Instant::now();

        // Natural returns, the same hazard for the treated and the holdout.
        let stamp = format!(":{}", now.timestamp());
        for m in &self.members {
            if self.returned[m.index] {
                continue;
            }
            let key = [m.id.as_bytes(), stamp.as_bytes()];
            if respond::draw_parts(self.seed, key, "natural") < m.tick_chance
                && !buyers.iter().any(|(b, _)| b == m.id)
            {
                buyers.push((m.id.to_owned(), String::new()));
            }
        }
        self.purchase(c, buyers, now).await?;
        self.spent[2] += buying.elapsed();
        let (mut treated, mut held, mut treated_back, mut held_back) = (0.0, 0.0, 0.0, 0.0);
        for m in &self.members {
            let back = f64::from(u8::from(self.returned[m.index]));
            if m.holdout {
                held += 1.0;
                held_back += back;
            } else {
                treated += 1.0;
                treated_back += back;
            }
        }
        let day = (now - self.start).num_hours() / 24;
        if now.timestamp() % 86_400 == self.start.timestamp() % 86_400 {
            self.timeline.push((
                day,
                if treated > 0.0 {
                    treated_back / treated
                } else {
                    0.0
                },
                if held > 0.0 { held_back / held } else { 0.0 },
            ));
        }
        Ok(())
    }

    /// This tick's purchases: coupons redeemed side by side, then every order in one call.
    async fn purchase(
        &mut self,
        c: &mut Clients,
        buyers: Vec<(String, String)>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let placed = now - Duration::minutes(30);
        let mut orders = Vec::new();
        let mut redemptions = Vec::new();
        for (customer, coupon) in buyers {
            let Some(&i) = self.index.get(customer.as_str()) else {
                continue;
            };
            if self.returned[i] {
                continue;
            }
            let check = self.shop.customers[i].mean_check_minor;
            // After a coupon the check runs a little higher ("came for the bonus" shows in
            // the report).
            let total = if coupon.is_empty() {
                check
            } else {
                check + check / 5
            };
            self.orders += 1;
            let order_id = format!("demo-{}", self.orders);
            if !coupon.is_empty() {
                redemptions.push(RedeemCouponRequest {
                    code: coupon.clone(),
                    customer_id: customer.clone(),
                    order_id: order_id.clone(),
                    order: Some(Cart {
                        total: Some(rub(total)),
                        lines: vec![],
                    }),
                });
            }
            orders.push(Order {
                order_id,
                customer_id: customer.clone(),
                placed_at: Some(to_timestamp(placed)),
                total: Some(rub(total)),
                coupon_code: coupon,
                ..Order::default()
            });
            self.returned[i] = true;
        }
        let offers = c.offers.clone();
        let mut redeemed = futures::stream::iter(redemptions.into_iter().map(|r| {
            let mut offers = offers.clone();
            async move { offers.redeem_coupon(r).await }
        }))
        .buffer_unordered(16);
        while let Some(result) = redeemed.next().await {
            if let Err(e) = result {
                tracing::debug!(error = %e.message(), "coupon not redeemed");
            }
        }
        for chunk in orders.chunks(1000) {
            c.profiles
                .record_orders(RecordOrdersRequest {
                    orders: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    fn timeline_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.timeline
                .iter()
                .map(|(day, t, h)| serde_json::json!({"day": day, "treated": t, "holdout": h}))
                .collect(),
        )
    }
}

/// Tracking links of an `.eml` (quoted-printable soft breaks undone).
fn tracking_links(raw: &str) -> Vec<String> {
    let text = raw
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("http://127.0.0.1:") {
        let tail = &rest[at..];
        let end = tail
            .find(|ch: char| ch == '"' || ch.is_whitespace() || ch == '<' || ch == '>')
            .unwrap_or(tail.len());
        let link = &tail[..end];
        if (link.contains("/o/") || link.contains("/c/")) && !out.iter().any(|l| l == link) {
            out.push(link.to_owned());
        }
        rest = &tail[end..];
    }
    out
}
