//! The delivery service: templates, the durable outbox, channels, retries, suppression and tracking.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `sending`,
//! `worker`, `templates`, `suppressions`, `settings`, `messages` → `channels` (carriers) →
//! `domain` (pure rules) → `store` (SQL).

mod channels;
mod context;
mod domain;
mod grpc;
mod messages;
mod reactions;
mod sending;
mod settings;
pub mod store;
mod suppressions;
mod templates;
mod tracking;
mod worker;

use tokio_util::sync::CancellationToken;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError, serve_alone};
use winback_proto::delivery::delivery_service_server::DeliveryServiceServer;
use winback_proto::events::EventSource;

/// Name of the service's database and schema.
pub const SERVICE: &str = "delivery";

/// Opens the database, runs the migrations, adds the service to `server`, starts the
/// tracking server on `delivery.tracking_listen` and the outbox worker (unless
/// `delivery.workers` is off).
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    let secret = tracking_secret(&ctx.config).map_err(|source| StartError::Io {
        what: "the tracking secret",
        source,
    })?;
    let secrets = std::sync::Arc::new(winback_platform::secrets::SecretBox::open_or_create(
        &ctx.config.auth.secrets_key_path(&ctx.config.data_dir),
    )?);
    let clock = ctx.clock.clone();
    let mut config = ctx.config.delivery.clone();
    let sink_dir = ctx.config.data_dir.join("outbox");
    let shutdown = ctx.shutdown.clone();
    let quotas = ctx.quotas.clone();
    let tracking_addr = config.tracking_address(ctx.config.listen);
    let tracking = std::net::TcpListener::bind(tracking_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| StartError::Io {
            what: "the tracking server's address (delivery.tracking_listen; by default the gRPC port + 1)",
            source,
        })?;
    if let Ok(bound) = tracking.local_addr() {
        config.public_url = config.public_base(bound);
        tracking_addr_log(bound, &config.public_url);
    }
    let tracking =
        tokio::net::TcpListener::from_std(tracking).map_err(|source| StartError::Io {
            what: "the tracking server's address (delivery.tracking_listen)",
            source,
        })?;
    ctx.mount::<store::Migrator, _>(
        server,
        SERVICE,
        EventSource::Delivery,
        |db, outbox, limit| {
            let delivery =
                context::Delivery::new(db, outbox, clock, config, &secret, secrets, sink_dir)
                    .with_quotas(quotas);
            // Rows written before sealing, or under a rotated-out key, are sealed anew.
            let resealing = delivery.clone();
            tokio::spawn(async move {
                match resealing.reseal_settings().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(rows = n, "channel settings sealed under the current key")
                    }
                    Err(error) => tracing::warn!(%error, "channel settings could not be resealed"),
                }
            });
            tokio::spawn(tracking::serve(
                delivery.clone(),
                tracking,
                shutdown.clone(),
            ));
            if delivery.config.workers {
                tokio::spawn(delivery.clone().run_worker(shutdown));
            }
            DeliveryServiceServer::new(grpc::DeliveryGrpc { delivery })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
    )
    .await
}

/// The configured tracking secret, or a random one kept in `data_dir/tracking.key` (made on
/// first start) so links stay valid across restarts.
fn tracking_secret(config: &Config) -> Result<Vec<u8>, std::io::Error> {
    if !config.delivery.tracking_secret.is_empty() {
        return Ok(config.delivery.tracking_secret.as_bytes().to_vec());
    }
    let beside_keys = tracking_key_path(config);
    // Data folders from before the key moved beside the other keys keep their secret.
    for path in [beside_keys.clone(), config.data_dir.join("tracking.key")] {
        if let Ok(secret) = std::fs::read(&path)
            && secret.len() >= 32
        {
            return Ok(secret);
        }
    }
    ensure_tracking_key(&beside_keys)
}

/// Where the tracking secret lives: beside the token keys, on the keys volume.
pub fn tracking_key_path(config: &Config) -> std::path::PathBuf {
    config
        .auth
        .public_key_path(&config.data_dir)
        .parent()
        .map(|dir| dir.join("tracking.key"))
        .unwrap_or_else(|| config.data_dir.join("keys/tracking.key"))
}

/// Reads the tracking secret at `path`, creating a random one when missing (`winback keys
/// init` does this for the stack).
pub fn ensure_tracking_key(path: &std::path::Path) -> Result<Vec<u8>, std::io::Error> {
    if let Ok(secret) = std::fs::read(path)
        && secret.len() >= 32
    {
        return Ok(secret);
    }
    let mut secret = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut secret)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, &secret)?;
    Ok(secret)
}

fn tracking_addr_log(bound: std::net::SocketAddr, public_url: &str) {
    tracing::info!(%bound, public_url, "tracking server (opens, clicks, unsubscribes, callbacks)");
}

/// Runs the delivery service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    serve_alone(config, shutdown, |ctx, server| Box::pin(mount(ctx, server))).await
}
