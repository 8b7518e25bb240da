//! A profiles service on a test database, with clients for two tenants.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::clock::ManualClock;
use winback_platform::config::{Config, DatabaseConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::host::ServiceContext;
use winback_platform::testing::{TestDatabase, test_keys};
use winback_proto::common::Money;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{Customer, Order, OrderLine};

pub type Client = ProfilesServiceClient<InterceptedService<Channel, CallCredentials>>;

pub struct Harness {
    pub a: Client,
    pub b: Client,
    pub clock: ManualClock,
    pub channel: Channel,
    pub signer: winback_platform::auth::TokenSigner,
    pub db_url: String,
    shutdown: CancellationToken,
}

pub fn at(day: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::days(day)
}

pub fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(winback_platform::time::to_timestamp(t))
}

pub fn rub(minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor: minor,
        currency: "RUB".into(),
    })
}

pub fn customer(id: &str) -> Customer {
    Customer {
        customer_id: id.into(),
        name: format!("Customer {id}"),
        email: format!("{id}@example.ru"),
        phone: "+79161234567".into(),
        time_zone: "Europe/Moscow".into(),
        locale: "ru-RU".into(),
        ..Default::default()
    }
}

pub fn order(id: &str, customer: &str, day: i64, total: i64) -> Order {
    Order {
        order_id: id.into(),
        customer_id: customer.into(),
        placed_at: ts(at(day)),
        total: rub(total),
        lines: vec![OrderLine {
            sku: "sku-1".into(),
            category: "tattoo".into(),
            quantity: 1,
            unit_price: rub(total),
        }],
        store: "arbat".into(),
        coupon_code: String::new(),
    }
}

impl Harness {
    pub async fn start(db: &TestDatabase) -> Self {
        let (signer, verifier) = test_keys();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: db.dir().to_path_buf(),
            database: DatabaseConfig {
                url: db.url_template.clone(),
                max_connections: 5,
            },
            ..Config::default()
        };
        let clock = ManualClock::new(at(400));
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
            service_credentials: None,
            jetstream: Default::default(),
        };
        let mut server = ctx.server();
        let mounted = winback_profiles::mount(&ctx, &mut server).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { ctx.serve(server, listener, vec![mounted]).await.unwrap() });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = |tenant: &str| {
            let token = signer.tenant_token(tenant, &["*"], 600).unwrap();
            ProfilesServiceClient::with_interceptor(
                channel.clone(),
                CallCredentials::bearer(&token).unwrap(),
            )
            .max_decoding_message_size(64 * 1024 * 1024)
        };
        Self {
            a: client("t-a"),
            b: client("t-b"),
            clock,
            channel: channel.clone(),
            db_url: db.url("profiles"),
            signer,
            shutdown,
        }
    }

    pub fn stop(self) {
        self.shutdown.cancel();
    }
}
