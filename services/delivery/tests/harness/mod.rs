//! A delivery service on a test database with its worker running, a real SMTP server
//! (aiosmtpd, from `winback-testkit`), and clients for two tenants.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::auth::TokenSigner;
use winback_platform::clock::ManualClock;
use winback_platform::config::{Config, DatabaseConfig, DeliveryConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::host::ServiceContext;
use winback_platform::testing::{TestDatabase, test_keys};
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use winback_testkit::{SmtpSink, free_port, header_value, link_starting, providers};

pub type Client = DeliveryServiceClient<InterceptedService<Channel, CallCredentials>>;

pub struct Harness {
    pub a: Client,
    pub b: Client,
    pub clock: ManualClock,
    pub channel: Channel,
    pub signer: TokenSigner,
    /// The tracking server's base URL.
    pub tracking: String,
    shutdown: CancellationToken,
}

impl Harness {
    pub async fn start(db: &TestDatabase) -> Self {
        Self::start_with(db, |_| {}).await
    }

    /// Starts with the delivery settings changed by `tune`.
    pub async fn start_with(db: &TestDatabase, tune: impl FnOnce(&mut DeliveryConfig)) -> Self {
        let (signer, verifier) = test_keys();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tracking = free_port();
        let config = Config {
            listen: addr,
            data_dir: db.dir().to_path_buf(),
            database: DatabaseConfig {
                url: db.url_template.clone(),
                max_connections: 8,
            },
            delivery: DeliveryConfig {
                tracking_listen: Some(tracking),
                public_url: format!("http://{tracking}"),
                poll_interval_ms: 20,
                retry_base_ms: 1_000,
                provider_timeout_ms: 500,
                ..DeliveryConfig::default()
            },
            ..Config::default()
        };
        let mut config = config;
        tune(&mut config.delivery);
        let tracking_url = config.delivery.public_url.clone();
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap());
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
        let mounted = winback_delivery::mount(&ctx, &mut server).await.unwrap();
        tokio::spawn(async move { ctx.serve(server, listener, vec![mounted]).await.unwrap() });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = |tenant: &str| {
            let token = signer.tenant_token(tenant, &["*"], 600).unwrap();
            DeliveryServiceClient::with_interceptor(
                channel.clone(),
                CallCredentials::bearer(&token).unwrap(),
            )
        };
        Self {
            a: client("t-a"),
            b: client("t-b"),
            clock,
            channel: channel.clone(),
            signer,
            tracking: tracking_url,
            shutdown,
        }
    }

    pub fn client_with_scopes(&self, scopes: &[&str]) -> Client {
        let token = self.signer.tenant_token("t-a", scopes, 600).unwrap();
        DeliveryServiceClient::with_interceptor(
            self.channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        )
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    /// Tenant a's events on the delivery feed so far.
    pub async fn events(&self) -> Vec<winback_proto::events::Event> {
        use winback_proto::events::events_service_client::EventsServiceClient;
        let token = self.signer.tenant_token("t-a", &["*"], 600).unwrap();
        let mut client = EventsServiceClient::with_interceptor(
            self.channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        );
        let mut stream = client
            .subscribe(winback_proto::events::SubscribeRequest {
                source: winback_proto::events::EventSource::Delivery as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Ok(Ok(Some(reply))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), stream.message()).await
        {
            events.extend(reply.event);
        }
        events
    }
}

/// Test DKIM key: Ed25519, base64 of its 32 secret bytes.
pub const DKIM_ED25519_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
