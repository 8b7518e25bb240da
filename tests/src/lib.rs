//! The end-to-end harness: the whole stack started in-process on a test database
//! (SQLite or PostgreSQL), with tenants and clients the way an integrator would use them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback::admin::{CreatedTenant, create_tenant, signer};
use winback::embedded::EmbeddedStack;
use winback_platform::clock::ManualClock;
use winback_platform::config::{Config, DatabaseConfig, DeliveryConfig, EventsConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::testing::TestDatabase;
use winback_platform::time::to_duration;
use winback_proto::campaigns::campaigns_service_client::CampaignsServiceClient;
use winback_proto::campaigns::{ActivateCampaignRequest, Campaign, CreateCampaignRequest};
use winback_proto::common::Money;
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::offers::{CreateOfferTemplateRequest, OfferKind, OfferTemplate};

/// A client channel with credentials.
pub type Authed = InterceptedService<Channel, CallCredentials>;

/// A running stack for one test.
#[derive(Debug)]
pub struct TestStack {
    /// The stack.
    pub stack: EmbeddedStack,
    /// Its configuration (data folder, database URL).
    pub config: Config,
    /// Its clock.
    pub clock: ManualClock,
    /// A channel to it.
    pub channel: Channel,
}

impl TestStack {
    /// Starts the stack on `db`, on a manual clock standing at 2026-01-01.
    pub async fn start(db: &TestDatabase) -> Self {
        Self::start_with(db, |_| {}).await
    }

    /// Starts the stack with `adjust` applied to the test configuration. The services'
    /// warnings show with a failing test's output (`RUST_LOG` for more).
    pub async fn start_with(db: &TestDatabase, adjust: impl FnOnce(&mut Config)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: db.dir().to_path_buf(),
            database: DatabaseConfig {
                url: db.url_template.clone(),
                max_connections: 5,
            },
            // The campaign_steps bench runs on this stack: no call quota.
            quotas: winback_platform::config::QuotaConfig::unlimited(),
            events: EventsConfig {
                poll_interval_ms: 50,
                ..EventsConfig::default()
            },
            // Any free port: several stacks run at once.
            delivery: DeliveryConfig {
                tracking_listen: Some("127.0.0.1:0".parse().unwrap()),
                ..DeliveryConfig::default()
            },
            ..Config::default()
        };
        adjust(&mut config);
        let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let clock = ManualClock::new(start);
        let stack = EmbeddedStack::start(config.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        let config = Config {
            listen: stack.addr,
            ..config
        };
        let channel = Channel::from_shared(stack.url()).unwrap().connect_lazy();
        Self {
            stack,
            config,
            clock,
            channel,
        }
    }

    /// Creates a tenant and returns it with its token.
    pub async fn tenant(&self, name: &str) -> CreatedTenant {
        create_tenant(&self.config, name).await.unwrap()
    }

    /// A token of `tenant` carrying only `scopes`.
    pub fn token_with_scopes(&self, tenant: &str, scopes: &[&str]) -> String {
        signer(&self.config)
            .unwrap()
            .tenant_token(tenant, scopes, 600)
            .unwrap()
    }

    /// The service credential the stack wrote at start (`keys/service.jwt`).
    pub fn service_token(&self) -> String {
        let path = self.config.auth.service_token_path(&self.config.data_dir);
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    }

    /// A service context of this deployment, as another service process would build it.
    pub fn service_context(&self) -> winback_platform::host::ServiceContext {
        winback_platform::host::ServiceContext::with_clock(
            self.config.clone(),
            Arc::new(self.clock.clone()),
            self.stack.shutdown.clone(),
        )
        .unwrap()
    }

    /// The channel with a bearer token.
    pub fn authed(&self, token: &str) -> Authed {
        InterceptedService::new(
            self.channel.clone(),
            CallCredentials::bearer(token).unwrap(),
        )
    }

    /// Shuts the stack down.
    pub async fn stop(self) {
        self.stack.stop().await.unwrap();
    }
}

/// Creates a percent-off offer template valid for 72 hours, estimated to cost
/// `estimated_cost_minor` RUB kopecks a coupon; returns its id.
pub async fn percent_off_template(
    offers: &mut OffersServiceClient<Authed>,
    percent: i32,
    estimated_cost_minor: i64,
) -> String {
    offers
        .create_offer_template(CreateOfferTemplateRequest {
            request_id: String::new(),
            template: Some(OfferTemplate {
                name: format!("{percent} % off"),
                kind: OfferKind::PercentOff as i32,
                percent_off: percent,
                valid_for: Some(to_duration(chrono::Duration::hours(72))),
                estimated_cost: Some(Money {
                    amount_minor: estimated_cost_minor,
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
        .template_id
}

/// Creates `campaign` and activates it; returns its id.
pub async fn start_campaign(
    campaigns: &mut CampaignsServiceClient<Authed>,
    campaign: Campaign,
) -> String {
    let id = campaigns
        .create_campaign(CreateCampaignRequest {
            request_id: String::new(),
            campaign: Some(campaign),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap()
        .campaign_id;
    campaigns
        .activate_campaign(ActivateCampaignRequest {
            campaign_id: id.clone(),
        })
        .await
        .unwrap();
    id
}
