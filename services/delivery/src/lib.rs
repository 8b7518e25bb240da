//! The delivery service: templates, the durable outbox, channels, retries, suppression and tracking.
//!
//! A library with one entry point, [`serve`], and [`mount`] for the `winback` binary that
//! runs every service in one process. Reads top-down: `grpc` (handlers) → `store`.

mod grpc;
pub mod store;

use tokio_util::sync::CancellationToken;
use winback_platform::config::Config;
use winback_platform::grpc::GrpcServer;
use winback_platform::host::{Mounted, ServiceContext, StartError, serve_alone};
use winback_proto::delivery::delivery_service_server::DeliveryServiceServer;
use winback_proto::events::EventSource;

/// Name of the service's database and schema.
pub const SERVICE: &str = "delivery";

/// Opens the database, runs the migrations, and adds the service to `server`.
pub async fn mount(ctx: &ServiceContext, server: &mut GrpcServer) -> Result<Mounted, StartError> {
    ctx.mount::<store::Migrator, _>(
        server,
        SERVICE,
        EventSource::Delivery,
        |_db, _outbox, limit| {
            DeliveryServiceServer::new(grpc::DeliveryGrpc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
    )
    .await
}

/// Runs the delivery service alone until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    serve_alone(config, shutdown, |ctx, server| Box::pin(mount(ctx, server))).await
}
