//! The embedded stack: all five services and the event feed in one process on one port,
//! SQLite files under the data folder, token keys generated on first start. Services still
//! talk to each other through their gRPC clients, so the code path is the stack's.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use winback_platform::auth::{
    TokenSigner, TokenVerifier, ensure_key_pair, ensure_service_token, read_key,
};
use winback_platform::clock::SharedClock;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError};

/// Generates the token key pair, the service credential and the key that seals provider
/// secrets in the data folder unless they exist. Returns true when the key pair is new.
pub fn ensure_keys(config: &Config) -> Result<bool, StartError> {
    let private = config.auth.private_key_path(&config.data_dir);
    let public = config.auth.public_key_path(&config.data_dir);
    let created = ensure_key_pair(&private, &public)?;
    if created {
        tracing::info!(public_key = %public.display(), "generated token keys");
    }
    let signer = TokenSigner::from_pem(&read_key(&private)?, &config.auth.issuer)?;
    let verifier = TokenVerifier::from_pem(&read_key(&public)?, &config.auth.issuer)?;
    ensure_service_token(
        &config.auth.service_token_path(&config.data_dir),
        &signer,
        &verifier,
    )?;
    winback_platform::secrets::SecretBox::open_or_create(
        &config.auth.secrets_key_path(&config.data_dir),
    )?;
    // The secret of tracking links, on the keys volume: a re-created delivery container
    // must not break the links in mail already sent. An older data folder's secret stays.
    if config.delivery.tracking_secret.is_empty() && !config.data_dir.join("tracking.key").exists()
    {
        winback_delivery::ensure_tracking_key(&winback_delivery::tracking_key_path(config))
            .map_err(|source| StartError::Io {
                what: "the tracking secret",
                source,
            })?;
    }
    Ok(created)
}

/// Every service mounted (databases open and migrated), not yet serving.
#[derive(Debug)]
pub struct Prepared {
    ctx: ServiceContext,
    server: GrpcServer,
    mounted: Vec<Mounted>,
}

/// Opens every service's database, runs the migrations, and mounts the services.
pub async fn prepare(
    config: Config,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<Prepared, StartError> {
    ensure_keys(&config)?;
    let ctx = ServiceContext::with_clock(config, clock, shutdown)?;
    let mut server = ctx.server();
    let mounted = vec![
        winback_profiles::mount(&ctx, &mut server).await?,
        winback_segmentation::mount(&ctx, &mut server).await?,
        winback_campaigns::mount(&ctx, &mut server).await?,
        winback_offers::mount(&ctx, &mut server).await?,
        winback_delivery::mount(&ctx, &mut server).await?,
    ];
    Ok(Prepared {
        ctx,
        server,
        mounted,
    })
}

impl Prepared {
    /// Serves on `listener` until shutdown.
    pub async fn serve(self, listener: TcpListener) -> Result<(), StartError> {
        self.ctx.serve(self.server, listener, self.mounted).await
    }
}

/// Serves every service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    clock: SharedClock,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    prepare(config, clock, shutdown)
        .await?
        .serve(listener)
        .await
}

/// A running embedded stack (tests and the demo start one in-process).
#[derive(Debug)]
pub struct EmbeddedStack {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    task: JoinHandle<Result<(), StartError>>,
}

impl EmbeddedStack {
    /// Starts the stack on `config.listen` (port 0 picks a free port); returns once every
    /// service's database is migrated and the listener accepts.
    pub async fn start(mut config: Config, clock: SharedClock) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let prepared = prepare(config, clock, shutdown.clone()).await?;
        let task = tokio::spawn(prepared.serve(listener));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(self) -> Result<(), StartError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(StartError::Bind {
                addr: self.addr,
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }
}
