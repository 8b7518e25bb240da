//! Profiles and segmentation on one test server (segmentation reads facts from profiles
//! through its gRPC client, as in the stack), with clients for two tenants.
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
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{
    Customer, Order, OrderLine, RecordOrdersRequest, UpsertCustomersRequest,
};
use winback_proto::segmentation::segmentation_service_client::SegmentationServiceClient;

pub type Profiles = ProfilesServiceClient<InterceptedService<Channel, CallCredentials>>;
pub type Segments = SegmentationServiceClient<InterceptedService<Channel, CallCredentials>>;

pub struct Harness {
    pub profiles: Profiles,
    /// Profiles of tenant t-b (whose segmentation client is `other_tenant`).
    pub other_profiles: Profiles,
    pub segments: Segments,
    pub other_tenant: Segments,
    pub clock: ManualClock,
    pub channel: Channel,
    pub signer: TokenSigner,
    pub segmentation_db: DatabaseConnection,
    shutdown: CancellationToken,
}

pub fn at(day: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::days(day)
}

pub fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(winback_platform::time::to_timestamp(t))
}

pub fn customer(id: &str) -> Customer {
    Customer {
        customer_id: id.into(),
        name: format!("Customer {id}"),
        email: format!("{id}@example.ru"),
        time_zone: "Europe/Moscow".into(),
        ..Default::default()
    }
}

pub fn order(id: &str, customer: &str, day: i64, total: i64) -> Order {
    let money = Some(Money {
        amount_minor: total,
        currency: "RUB".into(),
    });
    Order {
        order_id: id.into(),
        customer_id: customer.into(),
        placed_at: ts(at(day)),
        total: money.clone(),
        lines: vec![OrderLine {
            sku: "sku-1".into(),
            category: "cakes".into(),
            quantity: 1,
            unit_price: money,
        }],
        store: "main".into(),
        coupon_code: String::new(),
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
                max_connections: 5,
            },
            ..Config::default()
        };
        let clock = ManualClock::new(at(400));
        let shutdown = CancellationToken::new();
        let service_token = signer.service_token("segmentation", 600).unwrap();
        let ctx = ServiceContext {
            // Benches share these harnesses: no call quota (the quota tests set their own).
            quotas: winback_platform::quotas::Quotas::new(
                winback_platform::config::QuotaConfig::unlimited(),
            ),
            config,
            clock: Arc::new(clock.clone()),
            verifier,
            shutdown: shutdown.clone(),
            service_credentials: Some(CallCredentials::bearer(&service_token).unwrap()),
            jetstream: Default::default(),
        };
        let mut server = ctx.server();
        let mounted = vec![
            winback_profiles::mount(&ctx, &mut server).await.unwrap(),
            winback_segmentation::mount(&ctx, &mut server)
                .await
                .unwrap(),
        ];
        tokio::spawn(async move { ctx.serve(server, listener, mounted).await.unwrap() });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let creds = |tenant: &str| {
            CallCredentials::bearer(&signer.tenant_token(tenant, &["*"], 600).unwrap()).unwrap()
        };
        let segmentation_db =
            winback_platform::db::connect(&db.url("segmentation"), "segmentation", 2)
                .await
                .unwrap();
        Self {
            profiles: ProfilesServiceClient::with_interceptor(channel.clone(), creds("t-a")),
            other_profiles: ProfilesServiceClient::with_interceptor(channel.clone(), creds("t-b")),
            segments: SegmentationServiceClient::with_interceptor(channel.clone(), creds("t-a"))
                .max_decoding_message_size(64 * 1024 * 1024),
            other_tenant: SegmentationServiceClient::with_interceptor(
                channel.clone(),
                creds("t-b"),
            )
            .max_decoding_message_size(64 * 1024 * 1024),
            clock,
            channel,
            signer,
            segmentation_db,
            shutdown,
        }
    }

    /// A segmentation client of tenant t-a carrying only `scopes`.
    pub fn segments_with_scopes(&self, scopes: &[&str]) -> Segments {
        let token = self.signer.tenant_token("t-a", scopes, 600).unwrap();
        SegmentationServiceClient::with_interceptor(
            self.channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        )
    }

    pub async fn add_customers(&mut self, ids: &[&str]) {
        let customers = ids.iter().map(|id| customer(id)).collect();
        self.profiles
            .upsert_customers(UpsertCustomersRequest {
                update_mask: None,
                customers,
            })
            .await
            .unwrap();
    }

    pub async fn add_orders(&mut self, orders: Vec<Order>) {
        self.profiles
            .record_orders(RecordOrdersRequest { orders })
            .await
            .unwrap();
    }

    /// Event types in segmentation's outbox for tenant t-a.
    pub async fn outbox_events(&self) -> Vec<String> {
        winback_platform::testing::outbox_event_types(&self.segmentation_db, "t-a").await
    }

    pub fn stop(self) {
        self.shutdown.cancel();
    }
}
