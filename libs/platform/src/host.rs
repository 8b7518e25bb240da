//! Starting a service: what every service needs to run (configuration, clock, token
//! verifier, shutdown), one way to open its database, and one way to serve it, alone or
//! with the others in one process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sea_orm::{DatabaseConnection, DbErr};
use sea_orm_migration::MigratorTrait;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use winback_proto::events::EventSource;
use winback_proto::events::events_service_server::EventsServiceServer;

use crate::auth::{AuthError, TokenVerifier, read_key};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, ConfigError, EventTransportKind, Peer};
use crate::error::ServiceError;
use crate::events::{
    EventTransport, EventsGrpc, FeedReader, GrpcEventTransport, JetStream, JetStreamError, Outbox,
};
use crate::grpc::CallCredentials;
use crate::grpc::{GrpcServer, ServeError};

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened or migrated.
    #[error("database of {service}: {source}")]
    Database {
        /// The service.
        service: &'static str,
        /// Why.
        source: DbErr,
    },
    /// Token keys.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Telemetry.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The key file that seals secrets at rest.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// A file the service needs at start.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Binding the listener.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// NATS JetStream (`events.transport = "jetstream"`).
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
}

/// What every service is started with.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// The configuration.
    pub config: Config,
    /// The clock.
    pub clock: SharedClock,
    /// Verifies tokens.
    pub verifier: TokenVerifier,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// The service credential for calls to other services, when one is configured.
    pub service_credentials: Option<CallCredentials>,
    /// Per-tenant quotas, kept fresh from the platform database while serving.
    pub quotas: crate::quotas::Quotas,
    /// This process's JetStream connection (`events.transport = "jetstream"`), made on
    /// first use and shared by its relays and consumers; start with `Default::default()`.
    pub jetstream: LazyJetStream,
}

/// A JetStream connection made on first use, shared by the clones of a context.
#[derive(Debug, Clone, Default)]
pub struct LazyJetStream(Arc<tokio::sync::OnceCell<JetStream>>);

/// A service added to a server: its name and the feed of its outbox, if it has one.
#[derive(Debug)]
pub struct Mounted {
    /// Fully qualified gRPC service name.
    pub name: &'static str,
    /// The event source and feed reader the service publishes.
    pub feed: Option<(EventSource, FeedReader)>,
}

impl ServiceContext {
    /// A context reading the public key named by the configuration, on the wall clock.
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        Self::with_clock(config, Arc::new(SystemClock), shutdown)
    }

    /// A context on the given clock (tests and the demo pass a manual one).
    pub fn with_clock(
        config: Config,
        clock: SharedClock,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let pem = read_key(&config.auth.public_key_path(&config.data_dir))?;
        let verifier = TokenVerifier::from_pem(&pem, &config.auth.issuer)?;
        let service_credentials =
            match std::fs::read_to_string(config.auth.service_token_path(&config.data_dir)) {
                Ok(token) => {
                    let token = token.trim();
                    verifier.verify(token)?;
                    Some(
                        CallCredentials::bearer(token)
                            .map_err(|s| AuthError::Invalid(s.message().to_owned()))?,
                    )
                }
                Err(_) => None,
            };
        let quotas = crate::quotas::Quotas::new(config.quotas);
        // Page tokens are signed with a key every replica derives from the shared secrets key.
        let secrets = crate::secrets::SecretBox::open_or_create(
            &config.auth.secrets_key_path(&config.data_dir),
        )?;
        crate::paging::use_key(&secrets.derive("winback page tokens v1"));
        Ok(Self {
            config,
            clock,
            verifier,
            shutdown,
            service_credentials,
            quotas,
            jetstream: LazyJetStream::default(),
        })
    }

    /// The JetStream connection of this process (connecting on first use; the client
    /// keeps reconnecting while the server is away).
    pub async fn jetstream(&self) -> Result<JetStream, JetStreamError> {
        self.jetstream
            .0
            .get_or_try_init(|| JetStream::connect(&self.config.events.jetstream))
            .await
            .cloned()
    }

    /// What the consumer `consumer` reads `peer`'s events through: the peer's gRPC feed
    /// (with this process's service credential) or its JetStream stream, as configured.
    pub async fn event_transport(
        &self,
        peer: Peer,
        consumer: &str,
    ) -> Result<Arc<dyn EventTransport>, ServiceError> {
        match self.config.events.transport {
            EventTransportKind::Jetstream => {
                let jetstream = self.jetstream().await.map_err(ServiceError::internal)?;
                Ok(Arc::new(jetstream.transport(consumer)))
            }
            EventTransportKind::Feed => {
                let credentials = self.service_credentials.clone().ok_or_else(|| {
                    ServiceError::FailedPrecondition(
                        "no service credential configured (auth.service_token_file)".into(),
                    )
                })?;
                let channel = crate::grpc::lazy_channel(&self.config.peer_url(peer))
                    .map_err(ServiceError::internal)?;
                Ok(Arc::new(GrpcEventTransport::new(
                    channel,
                    credentials,
                    None,
                )))
            }
        }
    }

    /// A channel to `peer` (connects on first use) and the credentials to call it as a
    /// service acting for `tenant`. Services always talk through gRPC, also in one process.
    pub fn peer(
        &self,
        peer: Peer,
        tenant: &str,
    ) -> Result<(Channel, CallCredentials), ServiceError> {
        let credentials = self
            .service_credentials
            .as_ref()
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(
                    "no service credential configured (auth.service_token_file)".into(),
                )
            })?
            .for_tenant(tenant)
            .map_err(|s| ServiceError::invalid("tenant", s.message()))?;
        let channel = crate::grpc::lazy_channel(&self.config.peer_url(peer))
            .map_err(ServiceError::internal)?;
        Ok((channel, credentials))
    }

    /// Opens `service`'s database and runs its migrations (and the event feed's).
    pub async fn database<M: MigratorTrait>(
        &self,
        service: &'static str,
    ) -> Result<DatabaseConnection, StartError> {
        let url = self.config.database.url_for(service, &self.config.data_dir);
        crate::db::connect_and_migrate::<M>(&url, service, self.config.database.max_connections)
            .await
            .map_err(|source| StartError::Database { service, source })
    }

    /// Opens `service`'s database with migrations `M`, builds its gRPC service with `make`
    /// (given the database, its outbox and the message size limit), adds it to `server` and
    /// reports it SERVING. The one way every service is mounted.
    pub async fn mount<M, S>(
        &self,
        server: &mut GrpcServer,
        service: &'static str,
        source: EventSource,
        make: impl FnOnce(DatabaseConnection, Outbox, usize) -> S,
    ) -> Result<Mounted, StartError>
    where
        M: MigratorTrait,
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let db = self.database::<M>(service).await?;
        let outbox = Outbox::new(source);
        let feed = FeedReader::new(db.clone(), &outbox);
        server
            .add_service(make(db, outbox, self.config.server.max_message_bytes))
            .await;
        server
            .health()
            .set_service_status(S::NAME, ServingStatus::Serving)
            .await;
        Ok(Mounted {
            name: S::NAME,
            feed: Some((source, feed)),
        })
    }

    /// A server with this context's limits, token verifier and tenant quotas.
    pub fn server(&self) -> GrpcServer {
        GrpcServer::new(&self.config.server, self.verifier.clone()).with_quotas(self.quotas.clone())
    }

    /// Adds the event feed of the mounted services, then serves until shutdown. Logs one
    /// line once every service is serving.
    pub async fn serve(
        &self,
        mut server: GrpcServer,
        listener: TcpListener,
        mounted: Vec<Mounted>,
    ) -> Result<(), StartError> {
        let names: Vec<&str> = mounted.iter().map(|m| m.name).collect();
        let feeds: Vec<(EventSource, FeedReader)> =
            mounted.into_iter().filter_map(|m| m.feed).collect();
        let relays = feeds.clone();
        if !feeds.is_empty() {
            let events = EventsGrpc::new(
                feeds,
                Duration::from_millis(self.config.events.poll_interval_ms),
                self.config.events.batch_size,
                self.shutdown.clone(),
            );
            server
                .add_service(
                    EventsServiceServer::new(events)
                        .max_decoding_message_size(self.config.server.max_message_bytes),
                )
                .await;
            server
                .health()
                .set_service_status(winback_proto::service_names::EVENTS, ServingStatus::Serving)
                .await;
        }
        if self.config.events.transport == EventTransportKind::Jetstream {
            self.start_relays(&relays).await?;
        }
        self.watch_platform().await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.config.listen,
            source,
        })?;
        tracing::info!(%addr, services = ?names, "winback is serving");
        let shutdown = self.shutdown.clone();
        server
            .serve(listener, async move { shutdown.cancelled().await })
            .await?;
        Ok(())
    }

    /// Relays each mounted service's outbox to JetStream.
    async fn start_relays(&self, feeds: &[(EventSource, FeedReader)]) -> Result<(), StartError> {
        let jetstream = self.jetstream().await?;
        for (source, feed) in feeds {
            tokio::spawn(jetstream.clone().relay(
                feed.clone(),
                *source,
                self.config.events.batch_size,
                Duration::from_millis(self.config.events.poll_interval_ms),
                self.shutdown.clone(),
            ));
        }
        Ok(())
    }

    /// Loads the revoked API keys and the tenants' quotas from the platform database and
    /// keeps them fresh, so a revoked key fails here within `auth.revocation_poll_ms`
    /// without a lookup per call.
    async fn watch_platform(&self) -> Result<(), StartError> {
        let database = |source| StartError::Database {
            service: crate::tenancy::PLATFORM_DB,
            source,
        };
        let db = crate::tenancy::open_platform_db(&self.config)
            .await
            .map_err(database)?;
        let every = Duration::from_millis(self.config.auth.revocation_poll_ms);
        self.verifier
            .revocations()
            .watch(
                crate::api_keys::ApiKeyStore::new(db.clone()),
                every,
                self.shutdown.clone(),
            )
            .await
            .map_err(database)?;
        self.quotas
            .watch(db, every, self.shutdown.clone())
            .await
            .map_err(database)
    }

    /// Binds the configured listen address.
    pub async fn bind(&self) -> Result<TcpListener, StartError> {
        TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: self.config.listen,
                source,
            })
    }
}

/// Runs one service alone until `shutdown`: the stack mode's process.
pub async fn serve_alone<F>(
    config: Config,
    shutdown: CancellationToken,
    mount: F,
) -> Result<(), StartError>
where
    F: for<'a> FnOnce(
        &'a ServiceContext,
        &'a mut GrpcServer,
    ) -> BoxFuture<'a, Result<Mounted, StartError>>,
{
    let ctx = ServiceContext::new(config, shutdown)?;
    let listener = ctx.bind().await?;
    let mut server = ctx.server();
    let mounted = mount(&ctx, &mut server).await?;
    ctx.serve(server, listener, vec![mounted]).await
}

/// The `main` of a one-service binary: configuration from `winback.toml` and `WINBACK_*`,
/// telemetry, shutdown on SIGINT/SIGTERM, then `serve`.
pub fn service_main<F, Fut>(service: &'static str, serve: F) -> Result<(), StartError>
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Bind {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
    runtime.block_on(async move {
        let config = Config::load(None)?;
        let _telemetry = crate::telemetry::init(&config.telemetry, &format!("winback-{service}"))?;
        let shutdown = crate::shutdown::on_signal();
        serve(config, shutdown).await
    })
}
