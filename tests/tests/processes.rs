//! The stack mode for real: the five services as separate processes on PostgreSQL, two
//! replicas each of campaigns and delivery, events on NATS JetStream. A shop's history is
//! imported, recomputed, a two-step win-back campaign runs over the real SMTP test server,
//! customers buy, and the report is checked against what the SMTP server received —
//! once with a node (one campaigns and one delivery replica) killed with SIGKILL while
//! the first step is being sent, once with a rolling restart mid-run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_e2e::{Authed, percent_off_template, start_campaign};
use winback_platform::config::{Config, DatabaseConfig, JetStreamConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::testing::TestDatabase;
use winback_platform::time::{to_duration, to_timestamp};
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::*;
use winback_proto::common::{
    Channel as Medium, LifecycleState, MessagePurpose, Money, PageRequest,
};
use winback_proto::delivery::channel_settings::Provider;
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;
use winback_proto::delivery::{
    ChannelSettings, MessageTemplate, SetChannelSettingsRequest, SmtpSettings,
    UpsertTemplateRequest,
};
use winback_proto::offers::ListCouponsRequest;
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{
    ConsentRecord, Customer, Order, RecordConsentRequest, RecordOrdersRequest,
    UpsertCustomersRequest,
};
use winback_proto::segmentation::RecomputeRequest;
use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient;
use winback_testkit::{SmtpSink, header_value};

const CUSTOMERS: usize = 40;

/// A service binary beside this test's (built by `cargo nextest run --workspace`; built
/// here when missing).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "-p", name, "--bin", name])
            .status()
            .unwrap();
        assert!(built.success(), "cargo build -p {name}");
    }
    path
}

fn free_port() -> u16 {
    winback_testkit::free_port().port()
}

/// One service process of the stack.
struct Process {
    name: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts it and waits until it serves.
    async fn start(&mut self) {
        let mut command = Command::new(binary(&format!("winback-{}", self.name)));
        command
            .envs(self.env.iter().cloned())
            .env("WINBACK_LISTEN", format!("127.0.0.1:{}", self.port))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .await
            .unwrap();
        let serving = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.write_all(format!("{line}\n").as_bytes()).await.unwrap();
                if line.contains("winback is serving") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(serving, Ok(true)),
            "{} on {} did not serve:\n{}",
            self.name,
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, nothing flushed.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// SIGTERM, then waits for the process to drain and exit.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().unwrap();
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .unwrap();
            assert!(sent.success());
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .expect("a graceful stop within 30 s")
                .unwrap();
            assert!(status.success(), "{} stopped with {status}", self.name);
        }
    }
}

/// The processes of one stack: profiles, segmentation, offers, and two replicas each of
/// campaigns and delivery. Campaigns replica `i` sends through delivery replica `i`.
struct Stack {
    processes: Vec<Process>,
    data_dir: tempfile::TempDir,
    config: Config,
    jetstream: JetStreamConfig,
}

impl Stack {
    async fn start(db: &TestDatabase, jetstream: JetStreamConfig) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: data_dir.path().to_path_buf(),
            database: DatabaseConfig {
                url: db.url_template.clone(),
                max_connections: 5,
            },
            ..Config::default()
        };
        // What `winback keys init` writes: token keys, the service credential, secrets.
        winback::embedded::ensure_keys(&config).unwrap();
        let ports: BTreeMap<&str, u16> = [
            "profiles",
            "segmentation",
            "offers",
            "campaigns-a",
            "campaigns-b",
            "delivery-a",
            "delivery-b",
        ]
        .into_iter()
        .map(|name| (name, free_port()))
        .collect();
        let url = |name: &str| format!("http://127.0.0.1:{}", ports[name]);
        let mut processes = Vec::new();
        for (name, replica) in [
            ("profiles", ""),
            ("segmentation", ""),
            ("offers", ""),
            ("delivery", "a"),
            ("delivery", "b"),
            ("campaigns", "a"),
            ("campaigns", "b"),
        ] {
            let id = if replica.is_empty() {
                name.to_owned()
            } else {
                format!("{name}-{replica}")
            };
            let delivery = if replica == "b" {
                "delivery-b"
            } else {
                "delivery-a"
            };
            let env: Vec<(String, String)> = [
                ("WINBACK_DATA_DIR", data_dir.path().display().to_string()),
                ("WINBACK_DATABASE__URL", db.url_template.clone()),
                // Seven processes share the server's 100 connections with the other tests.
                ("WINBACK_DATABASE__MAX_CONNECTIONS", "3".into()),
                ("WINBACK_CLIENTS__PROFILES", url("profiles")),
                ("WINBACK_CLIENTS__SEGMENTATION", url("segmentation")),
                ("WINBACK_CLIENTS__OFFERS", url("offers")),
                ("WINBACK_CLIENTS__CAMPAIGNS", url("campaigns-a")),
                ("WINBACK_CLIENTS__DELIVERY", url(delivery)),
                ("WINBACK_EVENTS__TRANSPORT", "jetstream".into()),
                ("WINBACK_EVENTS__POLL_INTERVAL_MS", "50".into()),
                ("WINBACK_EVENTS__JETSTREAM__URL", jetstream.url.clone()),
                (
                    "WINBACK_EVENTS__JETSTREAM__PREFIX",
                    jetstream.prefix.clone(),
                ),
                ("WINBACK_EVENTS__JETSTREAM__ACK_WAIT_MS", "2000".into()),
                ("WINBACK_DELIVERY__TRACKING_LISTEN", "127.0.0.1:0".into()),
                // A killed replica's claims run out quickly.
                ("WINBACK_DELIVERY__LEASE_MS", "1500".into()),
                ("WINBACK_CAMPAIGNS__LEASE_MS", "1500".into()),
                ("WINBACK_QUOTAS__CALLS_PER_SECOND", "0".into()),
                ("WINBACK_QUOTAS__MESSAGES_PER_DAY", "0".into()),
                // Warnings, and the line that says a process serves.
                (
                    "WINBACK_TELEMETRY__LOG_FILTER",
                    "warn,winback_platform::host=info".into(),
                ),
                ("NO_COLOR", "1".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let mut process = Process {
                name,
                port: ports[id.as_str()],
                env,
                log: data_dir.path().join(format!("{id}.log")),
                child: None,
            };
            process.start().await;
            processes.push(process);
        }
        Self {
            processes,
            data_dir,
            config,
            jetstream,
        }
    }

    fn process(&mut self, name: &str, replica: usize) -> &mut Process {
        self.processes
            .iter_mut()
            .filter(|p| p.name == name)
            .nth(replica)
            .unwrap()
    }

    fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                format!(
                    "--- {}:{}\n{}",
                    p.name,
                    p.port,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
            })
            .collect()
    }

    async fn client(&self, name: &str, token: &str) -> Authed {
        let port = self.processes.iter().find(|p| p.name == name).unwrap().port;
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        InterceptedService::new(channel, CallCredentials::bearer(token).unwrap())
    }

    async fn shutdown(mut self) {
        for p in &mut self.processes {
            p.kill().await;
        }
        let jetstream = winback_platform::events::JetStream::connect(&self.jetstream)
            .await
            .unwrap();
        jetstream.delete_streams().await.unwrap();
        drop(self.data_dir);
    }
}

/// What happens to the stack in the middle of the first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// One campaigns and one delivery replica die (SIGKILL) and stay dead.
    NodeKilled,
    /// Campaigns, delivery and profiles restarted one at a time (SIGTERM, start again).
    RollingRestart,
}

/// An email as the SMTP server received it.
#[derive(Debug, Clone)]
struct Email {
    message_id: String,
    customer: String,
    step: String,
    coupon: String,
}

fn emails(sink: &SmtpSink) -> Vec<Email> {
    sink.messages()
        .iter()
        .map(|m| Email {
            message_id: header_value(m, "Message-ID"),
            customer: header_value(m, "X-Winback-Customer-Id"),
            step: header_value(m, "X-Winback-Step"),
            coupon: header_value(m, "X-Winback-Coupon-Code"),
        })
        .collect()
}

async fn wait_for<T>(what: &str, stack: &Stack, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 120 s\n{}", stack.logs());
}

async fn win_back(disruption: Disruption) {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let Some(jetstream) = winback_platform::testing::jetstream().await else {
        db.cleanup().await;
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(files.path().join("smtp")).await;
    let mut stack = Stack::start(&db, jetstream).await;
    let tenant = winback::admin::create_tenant(&stack.config, "home goods")
        .await
        .unwrap();
    let token = tenant.token.clone();
    let mut profiles = ProfilesServiceClient::new(stack.client("profiles", &token).await);
    let mut segmentation =
        SegmentationServiceClient::new(stack.client("segmentation", &token).await);
    let mut offers = OffersServiceClient::new(stack.client("offers", &token).await);
    let mut campaigns = CampaignsServiceClient::new(stack.client("campaigns", &token).await);
    let mut delivery = DeliveryServiceClient::new(stack.client("delivery", &token).await);

    // The shop's history: everyone bought twice, the last time 300 days ago.
    let now = chrono::Utc::now();
    let rub = |minor: i64| Money {
        amount_minor: minor,
        currency: "RUB".into(),
    };
    let customer = |i: usize| format!("c{i:02}");
    profiles
        .upsert_customers(UpsertCustomersRequest {
            update_mask: None,
            customers: (0..CUSTOMERS)
                .map(|i| Customer {
                    customer_id: customer(i),
                    name: format!("Customer {i}"),
                    email: format!("c{i:02}@example.com"),
                    time_zone: "UTC".into(),
                    ..Customer::default()
                })
                .collect(),
        })
        .await
        .unwrap();
    for i in 0..CUSTOMERS {
        profiles
            .record_consent(RecordConsentRequest {
                request_id: String::new(),
                customer_id: customer(i),
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
    }
    let order = |id: String, customer: String, days_ago: i64, total: i64| Order {
        order_id: id,
        customer_id: customer,
        placed_at: Some(to_timestamp(now - chrono::Duration::days(days_ago))),
        total: Some(rub(total)),
        ..Order::default()
    };
    profiles
        .record_orders(RecordOrdersRequest {
            orders: (0..CUSTOMERS)
                .flat_map(|i| {
                    [
                        order(format!("o{i}-1"), customer(i), 420, 150_000),
                        order(format!("o{i}-2"), customer(i), 300, 250_000),
                    ]
                })
                .collect(),
        })
        .await
        .unwrap();

    // Email over the real SMTP server; the templates; a coupon on the second step.
    delivery
        .set_channel_settings(SetChannelSettingsRequest {
            settings: Some(ChannelSettings {
                channel: Medium::Email as i32,
                provider: Some(Provider::Smtp(SmtpSettings {
                    host: "127.0.0.1".into(),
                    port: i32::from(sink.port),
                    security: "plain".into(),
                    from: "Home goods <news@shop.example>".into(),
                    pool_size: 4,
                    ..SmtpSettings::default()
                })),
                cost_per_message: Some(rub(50)),
                ..ChannelSettings::default()
            }),
        })
        .await
        .unwrap();
    for (id, subject, text) in [
        (
            "reminder",
            "We missed you",
            "We missed you, {{ customer.name }}.",
        ),
        ("offer", "A code for you", "Your code {{ coupon.code }}."),
    ] {
        delivery
            .upsert_template(UpsertTemplateRequest {
                template: Some(MessageTemplate {
                    template_id: id.into(),
                    channel: Medium::Email as i32,
                    subject: subject.into(),
                    text: text.into(),
                    ..MessageTemplate::default()
                }),
            })
            .await
            .unwrap();
    }
    let offer = percent_off_template(&mut offers, 10, 20_000).await;
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
    let email = |template: &str| {
        vec![ChannelChoice {
            channel: Medium::Email as i32,
            template_id: template.into(),
        }]
    };
    let chain = campaigns
        .create_chain(CreateChainRequest {
            request_id: String::new(),
            chain: Some(Chain {
                name: "reminder, then a code".into(),
                steps: vec![
                    Step {
                        name: "reminder".into(),
                        delay: Some(to_duration(chrono::Duration::zero())),
                        channels: email("reminder"),
                        ..Step::default()
                    },
                    Step {
                        name: "offer".into(),
                        delay: Some(to_duration(chrono::Duration::seconds(8))),
                        channels: email("offer"),
                        offer_template_id: offer,
                        ..Step::default()
                    },
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
    // Active before the recompute: the customers entering a lapsed state enrol through
    // segmentation's events, carried by JetStream.
    let campaign = start_campaign(
        &mut campaigns,
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
                triggers: vec![Trigger::SegmentEntered as i32],
                ..Audience::default()
            }),
            holdout_percent: 25,
            winback: true,
            assignment_seed: "processes".into(),
            ..Campaign::default()
        },
    )
    .await;
    let run = segmentation
        .recompute(RecomputeRequest {
            as_of: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.customers_scored, CUSTOMERS as i64);

    let list = async |campaigns: &mut CampaignsServiceClient<Authed>| {
        campaigns
            .list_enrolments(ListEnrolmentsRequest {
                campaign_id: campaign.clone(),
                page: Some(PageRequest {
                    page_size: 1000,
                    page_token: String::new(),
                }),
                ..ListEnrolmentsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .enrolments
    };
    let mut polls = 0;
    let enrolments = wait_for("every customer's enrolment", &stack, async || {
        let all = list(&mut campaigns).await;
        polls += 1;
        if polls % 50 == 0 {
            eprintln!("{} of {CUSTOMERS} enrolled", all.len());
        }
        (all.len() == CUSTOMERS).then_some(all)
    })
    .await;
    let held_out: BTreeSet<String> = enrolments
        .iter()
        .filter(|e| e.state == EnrolmentState::Holdout as i32)
        .map(|e| e.customer_id.clone())
        .collect();
    let treated: BTreeSet<String> = enrolments
        .iter()
        .filter(|e| e.state != EnrolmentState::Holdout as i32)
        .map(|e| e.customer_id.clone())
        .collect();
    assert!(!held_out.is_empty() && treated.len() > held_out.len());

    // The disruption, while the first step's emails are going out.
    wait_for("the first emails", &stack, async || {
        (emails(&sink).len() >= 3).then_some(())
    })
    .await;
    match disruption {
        Disruption::NodeKilled => {
            stack.process("campaigns", 1).kill().await;
            stack.process("delivery", 1).kill().await;
        }
        Disruption::RollingRestart => {
            for (name, replica) in [("campaigns", 1), ("delivery", 1), ("profiles", 0)] {
                let process = stack.process(name, replica);
                process.stop().await;
                process.start().await;
            }
        }
    }

    // Both steps reach every treated customer.
    let expected: BTreeSet<(String, String)> = treated
        .iter()
        .flat_map(|c| [(c.clone(), "0".to_owned()), (c.clone(), "1".to_owned())])
        .collect();
    let received = wait_for("both steps' emails", &stack, async || {
        let got = emails(&sink);
        let pairs: BTreeSet<(String, String)> = got
            .iter()
            .map(|e| (e.customer.clone(), e.step.clone()))
            .collect();
        (pairs.len() >= expected.len()).then_some(got)
    })
    .await;
    // Let anything late arrive before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let received = {
        let again = emails(&sink);
        assert!(again.len() >= received.len());
        again
    };
    let pairs: BTreeSet<(String, String)> = received
        .iter()
        .map(|e| (e.customer.clone(), e.step.clone()))
        .collect();
    assert_eq!(
        pairs, expected,
        "each treated customer got both steps, nobody else"
    );
    assert!(received.iter().all(|e| !held_out.contains(&e.customer)));
    // Every message once: a message is one Message-ID, and each (customer, step) has one.
    let mut ids_of: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for e in &received {
        ids_of
            .entry((e.customer.clone(), e.step.clone()))
            .or_default()
            .insert(e.message_id.clone());
    }
    assert!(
        ids_of.values().all(|ids| ids.len() == 1),
        "one message per customer and step: {ids_of:?}"
    );
    let copies = received.len() - expected.len();
    match disruption {
        // A graceful stop records every message it handed over.
        Disruption::RollingRestart => assert_eq!(copies, 0, "no email arrived twice"),
        // SIGKILL can land between the SMTP server's 250 and the commit that records it;
        // such a message goes again after the lease, with the same Message-ID. At most the
        // killed replica's messages in flight (two claim batches).
        Disruption::NodeKilled => {
            eprintln!("emails received twice after the SIGKILL: {copies}");
            assert!(copies <= 2 * 50, "{copies} copies");
        }
    }
    // Every coupon once: one per treated customer, in their second step's email.
    let codes: Vec<&str> = received
        .iter()
        .filter(|e| e.step == "1")
        .map(|e| e.coupon.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(codes.len(), treated.len(), "{codes:?}");
    assert!(codes.iter().all(|c| !c.is_empty()));
    let coupons = offers
        .list_coupons(ListCouponsRequest {
            page: Some(PageRequest {
                page_size: 1000,
                page_token: String::new(),
            }),
            ..ListCouponsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .coupons;
    assert_eq!(
        coupons.len(),
        treated.len(),
        "one coupon per treated customer"
    );

    // Three treated customers and one held out come back.
    let buyers: Vec<String> = treated.iter().take(3).cloned().collect();
    let holdout_buyer = held_out.iter().next().unwrap().clone();
    let back = chrono::Utc::now();
    let mut orders: Vec<Order> = buyers
        .iter()
        .map(|c| Order {
            placed_at: Some(to_timestamp(back)),
            ..order(format!("back-{c}"), c.clone(), 0, 300_000)
        })
        .collect();
    orders.push(Order {
        placed_at: Some(to_timestamp(back)),
        ..order(
            format!("back-{holdout_buyer}"),
            holdout_buyer.clone(),
            0,
            200_000,
        )
    });
    profiles
        .record_orders(RecordOrdersRequest { orders })
        .await
        .unwrap();

    // The report, recomputed from what the SMTP server received and what was bought.
    let report = wait_for("the returns in the report", &stack, async || {
        let report = campaigns
            .get_campaign_report(GetCampaignReportRequest {
                campaign_id: campaign.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let total = report.total.clone().unwrap_or_default();
        (total.returned == 3 && total.holdout_returned == 1).then_some(report)
    })
    .await;
    let total = report.total.unwrap();
    assert_eq!(total.enrolled, treated.len() as i64);
    assert_eq!(total.held_out, held_out.len() as i64);
    assert_eq!(total.touched, treated.len() as i64);
    assert_eq!(total.gross_revenue.unwrap().amount_minor, 3 * 300_000);
    assert_eq!(total.holdout_revenue.unwrap().amount_minor, 200_000);
    assert_eq!(
        total.channel_cost.unwrap().amount_minor,
        50 * expected.len() as i64,
        "every message costed once"
    );
    let steps: BTreeMap<String, i64> = report
        .steps
        .iter()
        .map(|s| (s.key.clone(), s.touched))
        .collect();
    assert!(
        steps.values().all(|t| *t == treated.len() as i64),
        "{steps:?}"
    );

    stack.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_on_jetstream_survive_a_killed_node() {
    win_back(Disruption::NodeKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_on_jetstream_survive_a_rolling_restart() {
    win_back(Disruption::RollingRestart).await;
}
