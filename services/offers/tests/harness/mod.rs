//! An offers service on a test database, with clients for two tenants.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::auth::TokenSigner;
use winback_platform::clock::ManualClock;
use winback_platform::config::{Config, DatabaseConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::host::ServiceContext;
use winback_platform::testing::{TestDatabase, test_keys};
use winback_proto::common::Money;
use winback_proto::offers::offers_service_client::OffersServiceClient;
use winback_proto::offers::{
    Cart, CreateOfferTemplateRequest, IssueCouponRequest, OfferKind, OfferTemplate,
};
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;

pub type Client = OffersServiceClient<InterceptedService<Channel, CallCredentials>>;

pub struct Harness {
    pub a: Client,
    /// Profiles of tenant t-a, in the same server.
    pub profiles: ProfilesServiceClient<InterceptedService<Channel, CallCredentials>>,
    pub b: Client,
    pub clock: ManualClock,
    pub channel: Channel,
    pub signer: TokenSigner,
    pub db: DatabaseConnection,
    shutdown: CancellationToken,
}

pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

pub fn rub(minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor: minor,
        currency: "RUB".into(),
    })
}

pub fn cart(total: i64) -> Option<Cart> {
    Some(Cart {
        total: rub(total),
        lines: Vec::new(),
    })
}

pub fn percent_off(p: i32) -> OfferTemplate {
    OfferTemplate {
        name: format!("{p} % off"),
        kind: OfferKind::PercentOff as i32,
        percent_off: p,
        estimated_cost: rub(30_000),
        ..Default::default()
    }
}

impl Harness {
    pub async fn start(db: &TestDatabase) -> Self {
        let (signer, verifier) = test_keys();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            listen: addr,
            data_dir: db.dir().to_path_buf(),
            database: DatabaseConfig {
                url: db.url_template.clone(),
                max_connections: 8,
            },
            ..Config::default()
        };
        let clock = ManualClock::new(start_time());
        let shutdown = CancellationToken::new();
        let ctx = ServiceContext {
            // Benches share these harnesses: no call quota (the quota tests set their own).
            quotas: winback_platform::quotas::Quotas::new(
                winback_platform::config::QuotaConfig::unlimited(),
            ),
            config,
            clock: Arc::new(clock.clone()),
            verifier,
            shutdown: shutdown.clone(),
            // Offers asks profiles (in the same test server) about first-order-only offers.
            service_credentials: Some(
                CallCredentials::bearer(&signer.service_token("offers", 600).unwrap()).unwrap(),
            ),
            jetstream: Default::default(),
        };
        let mut server = ctx.server();
        let mounted = vec![
            winback_offers::mount(&ctx, &mut server).await.unwrap(),
            winback_profiles::mount(&ctx, &mut server).await.unwrap(),
        ];
        tokio::spawn(async move { ctx.serve(server, listener, mounted).await.unwrap() });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = |tenant: &str| {
            let token = signer.tenant_token(tenant, &["*"], 600).unwrap();
            OffersServiceClient::with_interceptor(
                channel.clone(),
                CallCredentials::bearer(&token).unwrap(),
            )
        };
        let db_conn = winback_platform::db::connect(&db.url("offers"), "offers", 2)
            .await
            .unwrap();
        let token = signer.tenant_token("t-a", &["*"], 600).unwrap();
        let profiles = ProfilesServiceClient::with_interceptor(
            channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        );
        Self {
            a: client("t-a"),
            profiles,
            b: client("t-b"),
            clock,
            channel: channel.clone(),
            signer,
            db: db_conn,
            shutdown,
        }
    }

    pub fn client_with_scopes(&self, scopes: &[&str]) -> Client {
        let token = self.signer.tenant_token("t-a", scopes, 600).unwrap();
        OffersServiceClient::with_interceptor(
            self.channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        )
    }

    pub async fn template(&mut self, t: OfferTemplate) -> String {
        self.a
            .create_offer_template(CreateOfferTemplateRequest {
                request_id: String::new(),
                template: Some(t),
            })
            .await
            .unwrap()
            .into_inner()
            .template
            .unwrap()
            .template_id
    }

    pub async fn issue(
        &mut self,
        template_id: &str,
        customer: &str,
        key: &str,
    ) -> winback_proto::offers::Coupon {
        self.a
            .issue_coupon(IssueCouponRequest {
                template_id: template_id.into(),
                customer_id: customer.into(),
                idempotency_key: key.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .coupon
            .unwrap()
    }

    /// Event types in the outbox for tenant t-a.
    pub async fn outbox_events(&self) -> Vec<String> {
        winback_platform::testing::outbox_event_types(&self.db, "t-a").await
    }

    pub fn stop(self) {
        self.shutdown.cancel();
    }
}
